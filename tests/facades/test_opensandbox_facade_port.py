"""SANDBOXD_FACADE_PORTS: the OpenSandbox API at its original paths on a listener of its own
(api/facades/listener.py, serve.py), for clients whose base URL has no path. The official SDK,
given only that listener's address and a key, creates a sandbox, runs a command in it through the
execd endpoint handed out there (no /opensandbox in it) and kills it; a SIGTERM to the server stops
both listeners and the process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.models.sandboxes import Host, Volume
from opensandbox.sync import SandboxSync

from tests.conftest import USERNS_BASE, Server, assert_no_leaks, free_port, teardown_bridge

os.environ.setdefault("OPENSANDBOX_DISABLE_METRICS", "1")
BRIDGE, SUBNET = "sbxdfac0", "10.77.130.0/24"


def listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_facade_port_serves_original_paths_and_stops_with_the_server(image_cache: Path, workdir: Path) -> None:
    port = free_port()
    allowed = workdir / "facade-port-binds"
    (allowed / "shared").mkdir(parents=True)
    os.chown(allowed / "shared", USERNS_BASE, USERNS_BASE)  # the sandbox's root may write there
    (allowed / "link").symlink_to("/etc")  # a link out of the allowed root, made by "someone"
    env = {
        "SANDBOXD_FACADE_PORTS": json.dumps({"opensandbox": port}),
        "SANDBOXD_BIND_ALLOW": json.dumps([str(allowed)]),
    }
    srv = Server(workdir / "facade-port", BRIDGE, SUBNET, **env)
    srv.start()
    try:
        base = f"http://127.0.0.1:{port}"
        key = {"OPEN-SANDBOX-API-KEY": srv.key}
        body = {"image": {"uri": "debian"}, "entrypoint": ["sleep", "infinity"], "timeout": 300}
        with httpx.Client(timeout=60) as http:
            # The raw answer first: Location as this listener's clients reach it, no prefix.
            r = http.post(f"{base}/v1/sandboxes", json={**body, "resourceLimits": {"memory": "128Mi"}}, headers=key)
            assert r.status_code == 202, r.text
            raw_id = r.json()["id"]
            assert r.headers["location"] == f"/v1/sandboxes/{raw_id}"
            r = http.get(f"{base}/v1/sandboxes/{raw_id}/endpoints/44772", headers=key)
            assert r.json()["endpoint"] == f"127.0.0.1:{port}/sandboxes/{raw_id}/proxy/44772", r.text
            assert http.delete(f"{base}/v1/sandboxes/{raw_id}", headers=key).status_code == 204
            # Host volumes: only beneath the operator's allowed root, never out of it by .. or a link.
            for host, sub in (
                ("/etc", None),
                (f"{allowed}/../..", "etc"),
                (str(allowed), "link"),
                (f"{allowed}/link", None),
            ):
                bad: dict[str, object] = {"name": "h", "mountPath": "/h", "host": {"path": host}}
                if sub:
                    bad["subPath"] = sub
                r = http.post(f"{base}/v1/sandboxes", json={**body, "volumes": [bad]}, headers=key)
                assert r.status_code == 400 and "volumes[0]" in r.json()["message"], (host, sub, r.text)
            # The prefixed paths are the main listener's only.
            assert http.get(f"{base}/opensandbox/v1/sandboxes", headers=key).status_code == 404
            native_auth = {"Authorization": f"Bearer {srv.key}"}
            assert http.get(f"{base}/api/v1/sandboxes", headers=native_auth).status_code == 404

        transport = httpx.HTTPTransport()
        config = ConnectionConfigSync(domain=base, api_key=srv.key, transport=transport)
        shared = Volume(name="shared", host=Host(path=str(allowed)), mount_path="/shared", sub_path="shared")
        sb = SandboxSync.create(
            "debian",
            entrypoint=["sleep", "infinity"],
            timeout=timedelta(minutes=5),
            volumes=[shared],
            connection_config=config,
        )
        try:
            endpoint = sb.get_endpoint(44772)
            assert endpoint.endpoint == f"127.0.0.1:{port}/sandboxes/{sb.id}/proxy/44772"
            run = sb.commands.run("echo through the facade port > /tmp/fp.txt; hostname")
            assert run.exit_code == 0
            with srv.client() as native:  # it ran inside that sandbox
                got = native.get(f"/api/v1/sandboxes/{sb.id}/files", params={"path": "/tmp/fp.txt"})
                assert got.content == b"through the facade port\n"
            sb.files.write_file("/tmp/up.txt", "up")
            assert sb.files.read_file("/tmp/up.txt") == "up"
            assert sb.commands.run("echo -n to the host > /shared/out.txt").exit_code == 0  # allowed/shared
            assert (allowed / "shared" / "out.txt").read_text() == "to the host"
            sb.kill()
            with srv.client() as native:
                assert native.get(f"/api/v1/sandboxes/{sb.id}").json()["status"]["state"] == "terminated"
        finally:
            sb.close()
            transport.close()

        assert srv.proc is not None and listening(port) and listening(srv.port)
        srv.proc.terminate()  # SIGTERM to the server: both listeners go, the process exits
        try:
            # uvicorn passes the signal on once it is down (as a server without facades does).
            assert srv.proc.wait(20) in (0, -signal.SIGTERM)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit on SIGTERM: {srv.log.read_text()[-3000:]}") from None
        assert not listening(port) and not listening(srv.port)
        log = srv.log.read_text()
        assert log.count("Shutting down") >= 2 and "Application shutdown complete" in log  # both, in order
        assert log.rindex("Shutting down") < log.rindex("Application shutdown complete")
    finally:
        with contextlib.suppress(Exception):
            if srv.proc is not None and srv.proc.poll() is None:
                srv.delete_all()
        srv.stop()
        assert_no_leaks(srv.data_dir, srv.bridge)
        teardown_bridge(srv.bridge)
        shutil.rmtree(allowed, ignore_errors=True)
