"""Limits proven from inside the sandbox."""

from __future__ import annotations

import time

import httpx

from sandboxd import SandboxError
from tests.conftest import Server


def test_memory_limit_oom_kills_and_is_reported(server: Server) -> None:
    with server.create(memory_mb=64) as sb:
        r = sb.commands.run(["python3", "-c", "b = bytearray(256 * 1024 * 1024); print(len(b))"])
        assert r.exit_code == 137 and r.signal == 9
        assert r.oom_killed and not r.timed_out
        assert r.stdout == ""
        through_shell = sb.commands.run("python3 -c 'b = bytearray(256 * 1024 * 1024)'")
        assert through_shell.exit_code == 137 and through_shell.oom_killed
        # Below the limit is fine, and the sandbox survives its OOM.
        ok = sb.commands.run("python3 -c 'b = bytearray(16 * 1024 * 1024); print(len(b))'")
        assert ok.exit_code == 0 and not ok.oom_killed


def test_the_agent_survives_memory_pressure_and_tmp_is_on_disk(server: Server) -> None:
    with server.create(memory_mb=128) as sb:
        # /tmp is the sandbox's disk like the rest of its root, not memory counted against the limit.
        big = sb.commands.run("head -c 200000000 /dev/zero > /tmp/fill && stat -c %s /tmp/fill")
        assert big.exit_code == 0 and big.stdout == "200000000\n"
        # Many processes each below the limit, together above it: the kernel kills commands, and
        # the sandbox's init (which runs every command) lives on.
        hogs = sb.commands.run(
            "for i in 1 2 3 4; do python3 -c 'b = bytearray(60 * 1024 * 1024); import time; time.sleep(5)' & done; wait"
        )
        assert hogs.exit_code == 0
        assert sb.commands.run("echo alive").stdout == "alive\n"


def test_fork_bomb_hits_the_pids_limit_and_host_stays_responsive(server: Server) -> None:
    with server.create(pids=64, memory_mb=256) as sb:
        # The bomb goes off in a subshell, forked before any pid is taken, and the shell itself
        # then execs its sleep: it needs no fork of its own once every pid is gone (dash exits
        # at once when one fails).
        bomb = sb.commands.run("(bomb() { bomb | bomb & }; bomb) & exec sleep 100", timeout=3)
        assert bomb.timed_out
        start = time.monotonic()
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - start < 2
        # The timeout killed the whole bomb, and the sandbox answers again with its limit intact.
        limit = sb.commands.run("cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
        assert limit.stdout.strip() == "64"
        count = sb.commands.run("ls /proc | grep -c '^[0-9]'")
        assert int(count.stdout) < 10


def test_exhausted_pids_is_a_clear_error_not_a_dead_sandbox(server: Server) -> None:
    hog_code = (
        "import os, time\n"
        "end = time.time() + 300\n"
        "while time.time() < end:\n"  # take every pid the limit allows, and any that frees up
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(300); os._exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.005)\n"
    )
    with server.create(pids=32) as sb:
        sb.files.write("/tmp/hog.py", hog_code)
        hog = sb.commands.run(["python3", "/tmp/hog.py"], background=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                sb.commands.run("true")
            except SandboxError as exc:
                assert exc.status == 503 and exc.code == "SANDBOX_EXHAUSTED", exc
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The sandbox still answers the API, and recovers once the processes are gone.
        hog.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                if sb.commands.run("true").exit_code == 0:
                    break
            except SandboxError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_fork_past_pids_limit_fails_inside(server: Server) -> None:
    with server.create(pids=16) as sb:
        code = (
            "import os, time\n"
            "kids = []\n"
            "try:\n"
            "    for _ in range(64):\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            time.sleep(30); os._exit(0)\n"
            "        kids.append(pid)\n"
            "except OSError as e:\n"
            "    print('refused after', len(kids), e.errno)\n"
            "for k in kids: os.kill(k, 9)\n"
        )
        sb.files.write("/tmp/forks.py", code)
        r = sb.commands.run("python3 /tmp/forks.py")
        assert r.stdout.startswith("refused after"), r
        assert int(r.stdout.split()[2]) < 16


def test_cpu_quota_is_enforced(server: Server) -> None:
    spin = (
        "import time, threading\n"
        "def spin():\n"
        "    end = time.time() + 2\n"
        "    while time.time() < end: pass\n"
        "ts = [threading.Thread(target=spin) for _ in range(2)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import os; t = os.times(); print(t.user + t.system)\n"
    )
    with server.create(cpu=0.25) as sb:
        sb.files.write("/tmp/spin.py", spin)
        used = float(sb.commands.run("python3 /tmp/spin.py").stdout)
        # 2 s of wall time at a quarter of a core is about 0.5 s of CPU; unlimited would be 2-4 s.
        assert used < 1.0, used
        quota = sb.commands.run("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
        assert quota.stdout.split() == ["25000", "100000"]
