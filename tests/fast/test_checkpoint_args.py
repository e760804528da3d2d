"""The local runtime's memory kind of hibernate (oci/checkpoints.py), what can be checked without
a host where CRIU works: the runc command lines, the image directories, and that the server offers
it only where `criu check` passes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes import criu
from sandboxd.runtimes.local.oci import checkpoints
from sandboxd.runtimes.local.oci.checkpoints import CheckpointImages
from sandboxd.runtimes.local.oci.cli import OciCli

# What would let a checkpoint through that must fail it instead (the sandbox then runs on), or
# leave the processes running beside their saved copy.
PERMISSIVE = {"--tcp-established", "--ext-unix-sk", "--file-locks", "--shell-job", "--leave-running"}


def test_checkpoint_argv_saves_into_the_image_and_refuses_outside_connections(tmp_path: Path) -> None:
    image = tmp_path / "checkpoints" / "sbx_a"
    argv = checkpoints.checkpoint_args("sbx_a", image)
    assert argv[0] == "checkpoint" and argv[-1] == "sbx_a"
    assert argv[argv.index("--image-path") + 1] == str(image)
    assert argv[argv.index("--work-path") + 1] == str(image / "work")
    assert argv[argv.index("--empty-ns") + 1] == "network"
    assert not PERMISSIVE & set(argv)


def test_restore_argv_restores_detached_on_the_bundle_with_the_same_options(tmp_path: Path) -> None:
    image, home = tmp_path / "checkpoints" / "sbx_a", tmp_path / "sandboxes" / "sbx_a"
    argv = checkpoints.restore_args("sbx_a", image, home, home / "pid")
    assert argv[0] == "restore" and argv[-1] == "sbx_a" and "--detach" in argv
    assert argv[argv.index("--image-path") + 1] == str(image)
    assert argv[argv.index("--bundle") + 1] == str(home)
    assert argv[argv.index("--pid-file") + 1] == str(home / "pid")
    assert argv[argv.index("--empty-ns") + 1] == "network"  # as at the checkpoint: CRIU wants both alike
    assert not PERMISSIVE & set(argv)


def recording_binary(tmp_path: Path, exit_code: int) -> tuple[str, Path]:
    """An executable standing in for runc that writes its argv (and its stdin's kind) and exits."""
    out = tmp_path / "argv"
    script = tmp_path / "fake-runc"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}\nreadlink /proc/self/fd/0 >> {out}\n'
        f'echo "criu failed: type DUMP errno 0" >&2\nexit {exit_code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), out


def test_the_cli_runs_the_binary_with_its_state_root_and_these_args(tmp_path: Path) -> None:
    binary, out = recording_binary(tmp_path, 0)
    cli = OciCli("runc", binary, tmp_path / "state")
    image = tmp_path / "img"
    asyncio.run(cli.checkpoint("sbx_a", image))
    expected = ["--root", str(tmp_path / "state"), *checkpoints.checkpoint_args("sbx_a", image)]
    assert out.read_text().splitlines()[:-1] == expected
    read, write = os.pipe()
    try:
        asyncio.run(cli.restore("sbx_a", image, tmp_path, tmp_path / "pid", stdin=read, stdout=write))
    finally:
        os.close(read)
        os.close(write)
    lines = out.read_text().splitlines()
    assert lines[2:-1] == checkpoints.restore_args("sbx_a", image, tmp_path, tmp_path / "pid")
    assert lines[-1].startswith("pipe:")  # the stdin given is what the restore's stdio is


def test_a_failed_checkpoint_is_a_runtime_failure_that_says_why(tmp_path: Path) -> None:
    binary, _ = recording_binary(tmp_path, 1)
    with pytest.raises(RuntimeFailure) as err:
        asyncio.run(OciCli("runc", binary, tmp_path / "state").checkpoint("sbx_a", tmp_path / "img"))
    assert "runc checkpoint failed: criu failed: type DUMP" in err.value.message


def test_image_directories_are_fresh_private_and_removed(tmp_path: Path) -> None:
    images = CheckpointImages(tmp_path)
    assert images.ids() == set() and not images.exists("sbx_a")
    image = images.fresh("sbx_a")
    assert image == tmp_path / "checkpoints" / "sbx_a" and (image / "work").is_dir()
    assert stat.S_IMODE(image.stat().st_mode) == 0o700  # a process image holds the sandbox's memory
    assert not images.exists("sbx_a")  # nothing saved in it yet
    (image / "inventory.img").write_bytes(b"saved")
    assert images.exists("sbx_a") and images.ids() == {"sbx_a"}
    assert not (images.fresh("sbx_a") / "inventory.img").exists()  # a leftover of a failed try goes
    images.remove("sbx_a")
    images.remove("sbx_a")  # again: a delete after a restore removed it
    assert images.ids() == set()


def test_removing_an_image_never_follows_a_link_out(tmp_path: Path) -> None:
    images = CheckpointImages(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    images.root.mkdir()
    (images.root / "sbx_a").symlink_to(outside)
    images.remove("sbx_a")
    assert (outside / "keep").read_text() == "kept" and images.ids() == set()


@pytest.mark.parametrize(
    ("host", "default", "expected"),
    [
        ("criu check failed: vdso", "runc", "criu check failed: vdso"),
        ("criu check failed: vdso", "crun", "criu check failed: vdso"),  # the host's answer first
        (None, "runc", None),
        (None, "crun", "sandboxes run on crun: only runc sandboxes are checkpointed"),
    ],
)
def test_offered_only_where_criu_check_passes(
    monkeypatch: pytest.MonkeyPatch, host: str | None, default: str, expected: str | None
) -> None:
    monkeypatch.setattr(criu, "_cached", [host])
    assert asyncio.run(checkpoints.unavailable(default)) == expected


def test_on_this_host_the_answer_is_criu_checks_own() -> None:
    host = asyncio.run(criu.unavailable())
    answer = asyncio.run(checkpoints.unavailable("runc"))
    assert answer == host


def test_stdio_identities_are_read_from_a_real_process_with_the_agents_kind_of_stdio(tmp_path: Path) -> None:
    """A process whose stdin is a listening unix socket and stdout/stderr one open FIFO, as the
    agent's (booting.py): the identities CRIU knows them by, and the config lines built of them."""
    import socket
    import subprocess

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "agent.sock"))
    listener.listen(1)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)
    # The agent keeps its socket on a descriptor of its own, fd 0 /dev/null (agent/main.go).
    proc = subprocess.Popen(
        ["sleep", "30"], stdin=subprocess.DEVNULL, stdout=writer, stderr=writer, pass_fds=[listener.fileno()]
    )
    try:
        stdio = checkpoints.stdio_of(proc.pid, tmp_path / "agent.sock")
        assert stdio["socket"] == os.fstat(listener.fileno()).st_ino
        assert stdio["inode"] == os.stat(fifo).st_ino and stdio["mnt_id"] > 0
        dump = checkpoints.criu_config(stdio, restore=False)
        assert dump == f"external file[{stdio['mnt_id']}:{stdio['inode']}]\n"
        restore = checkpoints.criu_config(stdio, restore=True).splitlines()
        assert restore[0] == f"inherit-fd fd[0]:socket[{stdio['socket']}]"
        assert restore[1:] == [f"inherit-fd fd[{n}]:file[{stdio['mnt_id']}:{stdio['inode']}]" for n in (1, 2)]
    finally:
        proc.kill()
        proc.wait()
        os.close(writer)
        os.close(reader)
        listener.close()


def test_a_process_that_does_not_hold_the_agents_socket_is_refused(tmp_path: Path) -> None:
    import socket
    import subprocess

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "agent.sock"))
    listener.listen(1)
    proc = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    try:
        with pytest.raises(ValueError, match="does not hold its agent socket"):
            checkpoints.stdio_of(proc.pid, tmp_path / "agent.sock")
        with pytest.raises(ValueError, match="no listening socket"):
            checkpoints.stdio_of(proc.pid, tmp_path / "other.sock")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
        listener.close()


def test_the_config_files_are_written_into_the_image_and_read_back_for_the_restore(tmp_path: Path) -> None:
    images = CheckpointImages(tmp_path)
    image = images.fresh("sbx_a")
    images.write_config("sbx_a", {"socket": 11, "mnt_id": 22, "inode": 33})
    assert (image / checkpoints.CRIU_CONFIG).read_text() == "external file[22:33]\n"
    images.write_config("sbx_a", None)
    assert (image / checkpoints.CRIU_CONFIG).read_text().startswith("inherit-fd fd[0]:socket[11]\n")
