"""Templates built from steps on the session server, the step cache, and runtimes."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

from sandboxd import SandboxError, Templates
from tests.conftest import Server

SERVE = "python3 -m http.server 8000 --bind 127.0.0.1"
PROBE = "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/main.py')\""


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def steps(marker: str) -> list[dict[str, object]]:
    return [
        {"type": "run", "command": f"echo {marker} > /opt/marker && rm /etc/debian_version && echo step-one-says-hi"},
        {"type": "env", "env": {"GREETING": "hello"}},
        {"type": "workdir", "path": "/app"},
        {"type": "copy", "path": "/app/main.py", "content": "print('from main')\n"},
        {"type": "copy", "path": "/app/blob.bin", "content": base64.b64encode(b"\x00\x01binary").decode(),
         "encoding": "base64", "mode": 0o600},
        {"type": "user", "user": "nobody"},
        {"type": "run", "command": "id -un > /tmp/built-by && pwd >> /tmp/built-by"},
    ]  # fmt: skip


def test_build_start_and_rebuild_from_the_cache(server: Server) -> None:
    name = unique("web")  # also in the steps: the step cache is shared by every run on this machine
    lines: list[str] = []
    with Templates(url=server.url, api_key=server.key) as templates:
        built = templates.build(
            name, steps(name), start_command=SERVE, ready_check={"command": PROBE, "timeout": 20}, on_log=lines.append
        )
        assert built["state"] == "ready", built["message"]
        assert built["ref"] == f"{name}:1" and built["steps_cached"] == 0
        log = "\n".join(lines)
        assert "step-one-says-hi" in log and "==> step 7/7: run id -un" in log and f"built {name}:1" in log

        # The sandbox starts on the template's layers with its settings, and create returns only
        # once the readiness check passes: the server answers at once.
        with server.create(template=name) as sb:
            assert sb.info["template"] == f"{name}:1" and sb.info["cwd"] == "/app" and sb.info["user"] == "nobody"
            assert sb.commands.run(PROBE).exit_code == 0
            result = sb.commands.run(
                "cat /opt/marker /tmp/built-by; echo $GREETING; pwd; id -un; ls /etc/debian_version; "
                "stat -c '%a %U' /app/blob.bin; ps -o user= -C python3 | sort -u"
            )
            assert result.stdout.split("\n")[:7] == [name, "nobody", "/app", "hello", "/app", "nobody", "600 root"]
            assert "No such file" in result.stderr  # deleted by a step: the whiteout hides the base's file
            assert result.stdout.split("\n")[7] == "nobody"  # the start command runs as the template's user
            assert sb.files.read("/app/blob.bin") == b"\x00\x01binary"
            in_use = httpx.delete(
                f"{server.url}/api/v1/templates/{name}/versions/1", headers={"Authorization": f"Bearer {server.key}"}
            )
            assert in_use.status_code == 409, in_use.text

        # A changed last step: every step before it comes from the cache.
        changed = steps(name)
        changed[-1] = {"type": "run", "command": "echo changed > /tmp/built-by"}
        lines.clear()
        rebuilt = templates.build(name, changed, start_command=SERVE, ready_check={"command": PROBE})
        assert rebuilt["state"] == "ready" and rebuilt["ref"] == f"{name}:2"
        assert rebuilt["steps_cached"] == 4  # run, workdir, copy, copy; env and user make no layer
        with server.create(template=f"{name}:2") as sb:
            assert sb.commands.run("cat /tmp/built-by /opt/marker").stdout == f"changed\n{name}\n"
        with server.create(template=f"{name}:1") as sb:  # older versions stay usable
            assert sb.commands.run("cat /tmp/built-by").stdout == "nobody\n/app\n"

        fresh = templates.build(name, changed, start_command=SERVE, ready_check={"command": PROBE}, no_cache=True)
        assert fresh["state"] == "ready" and fresh["steps_cached"] == 0  # every step ran again

        assert [v["version"] for v in templates.list(name)] == [1, 2, 3]
        templates.delete(name, 3)
        templates.delete(name, 1)
        with pytest.raises(SandboxError, match="not found"):
            templates.get(name, 1)
        with pytest.raises(SandboxError, match="not found"):
            server.create(template=f"{name}:1")
        templates.delete(name, 2)
    assert not _build_sandboxes_left(server)


def _build_sandboxes_left(server: Server) -> list[str]:
    return [i for i, state in server.build_sandboxes() if state not in ("terminated", "failed")]


def test_a_failing_step_fails_the_build_and_says_which(server: Server) -> None:
    name = unique("broken")
    lines: list[str] = []
    with Templates(url=server.url, api_key=server.key) as templates:
        step = [{"type": "run", "command": "echo about-to-fail; exit 3"}]
        built = templates.build(name, step, on_log=lines.append, check=False)
        assert built["state"] == "failed"
        assert built["message"] == "step 1 (run) exited with code 3"
        assert "    about-to-fail" in lines and "==> build failed: step 1 (run) exited with code 3" in lines
        with pytest.raises(SandboxError, match="failed"):
            server.create(template=f"{name}:1")
        # No ready version to start: the newest one says why (test_templates_errors.py has more).
        with pytest.raises(SandboxError, match="no successful build: version 1 failed"):
            server.create(template=name)
    assert not _build_sandboxes_left(server)


# Passes when the build tries it (a check that never passes fails the build instead), not in a
# sandbox created with HOLD_BACK set.
HELD_BACK = '[ -z "$HOLD_BACK" ] || { echo not yet; false; }'


def test_a_readiness_check_that_does_not_pass_fails_the_create(server: Server) -> None:
    name = unique("never")
    with Templates(url=server.url, api_key=server.key) as templates:
        built = templates.build(name, [], ready_check={"command": HELD_BACK, "timeout": 1})
        assert built["state"] == "ready"
        with server.client() as http:
            body = {"template": name, "metadata": {"t": name}, "env": {"HOLD_BACK": "1"}}
            r = http.post("/api/v1/sandboxes", json=body)
            assert r.status_code == 503 and r.json()["code"] == "NOT_READY", r.text
            assert "did not pass within 1" in r.json()["message"] and "not yet" in r.json()["message"]
            failed = http.get("/api/v1/sandboxes", params={"label": f"t={name}"}).json()["items"]
            assert [f["status"]["reason"] for f in failed] == ["not_ready"]
        # The check belongs to the template's own start command: a caller's entrypoint skips it.
        with server.create(template=name, entrypoint=["sleep", "100"], env={"HOLD_BACK": "1"}) as sb:
            assert sb.state == "running"
        templates.delete(name, 1)


def test_user_and_group_and_reserved_labels(server: Server) -> None:
    with server.create(user="65534:100") as sb:  # OCI images say user:group
        assert sb.commands.run("id -u; id -g").stdout == "65534\n100\n"
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"metadata": {"sandboxd.template-build": "x:1"}})
        assert r.status_code == 400 and r.json()["field"] == "metadata"


@pytest.mark.timeout(900)
def test_shipped_runtimes_work(server: Server) -> None:
    """python3.11 and node18 are built on first use (apt inside a build sandbox; the step cache
    in the shared image directory makes later runs quick)."""
    with server.create(runtime="python3.11", timeout=600) as sb:
        assert sb.info["template"].startswith("python3.11:") and sb.info["cwd"] == "/workspace"
        out = sb.commands.run("python3 --version && python3 -m venv /tmp/v && /tmp/v/bin/pip --version", timeout=120)
        assert out.exit_code == 0 and out.stdout.startswith("Python 3.11."), out.stderr
    with server.create(runtime="node18", timeout=600) as sb:
        out = sb.commands.run("node -e 'console.log(process.version)' && npm --version", timeout=120)
        assert out.exit_code == 0 and out.stdout.startswith("v18."), out.stderr
    with server.client() as http:
        built = {r["name"]: r["built"] for r in http.get("/api/v1/runtimes").json()["items"]}
    assert built["python3.11"] and built["node18"]
