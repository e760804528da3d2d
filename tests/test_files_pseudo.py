"""Writing to kernel interface files (/proc) and devices through the files API: a /proc file is
written in place (a temporary file and a rename cannot work there, and its name leaked into the
error), a device is refused in words, and no error names the agent's temporary file."""

from __future__ import annotations

import pytest

from sandboxd import SandboxError
from tests.conftest import Server


def test_proc_files_are_written_in_place_and_errors_name_the_file(server: Server) -> None:
    with server.create(timeout=120) as sb:
        sleeper = sb.commands.run(["sleep", "60"], background=True)
        pid = sleeper.pid
        info = sb.files.write(f"/proc/{pid}/oom_score_adj", "500")
        assert info["path"] == f"/proc/{pid}/oom_score_adj"
        assert sb.commands.run(f"cat /proc/{pid}/oom_score_adj").stdout == "500\n"
        # /proc/sys is read-only in a sandbox: the error names the file the user wrote, not ours.
        with pytest.raises(SandboxError) as refused:
            sb.files.write("/proc/sys/kernel/hostname", "x")
        assert "/proc/sys/kernel/hostname" in str(refused.value) and ".sandboxd-" not in str(refused.value)
        # A device is not replaced by a regular file.
        with pytest.raises(SandboxError) as device:
            sb.files.write("/dev/null", "x")
        assert "not a regular file" in str(device.value) and ".sandboxd-" not in str(device.value)
        assert sb.commands.run("test -c /dev/null").exit_code == 0
        listing = sb.commands.run("ls -a /proc/sys/kernel/ /dev/ | grep -c sandboxd- || true").stdout.strip()
        assert listing == "0"
