"""Benchmark: sandboxd against the OCI runtime driven straight from the shell, in one run.

    .venv/bin/python bench/bench.py [--runs 30] [--only core,agent,...] [--cycle-seconds 60]
        [--cycle-clients 2,4,8] [--scale-max 500] [--footprint-at 100]

Starts its own servers (own data dirs, bridges and subnets; the image cache shared with the tests)
and prints median and p90 in milliseconds, then the other figures beside their baselines or goals.
Sections (--only picks some; all by default):
  core       create→running, create→first exec done, exec of `true` over HTTP, delete, stop, start→running
             and start→first exec done (stop→start of one sandbox; create's figures are its baseline); baselines:
             `runc run` of the same bundle (process `true`), and `runc exec` of `true` in a running
             sandbox, which is what exec would cost without the in-sandbox agent
  agent      exec `true` and a 1 MiB read over the API, and the same straight to the agent's socket
  facades    the OpenSandbox and Vercel facades through their official SDKs next to the native SDK:
             create → first command done, and one command; each facade's overhead (goal < 2 ms a call)
  registry   a 50 MB pull from a loopback registry; create from a pulled image
  templates  template builds, cold and cached; create from a template
  network    egress by name under a policy; the port proxy against the port itself
  cycles     create → exec → delete cycles a second with 2, 4 and 8 concurrent clients, and errors
  scale      small sandboxes (64 MiB, 0.1 cpu) left running up to --scale-max: create → first exec
             per 100 running, the highest count reached, and the memory per idle sandbox at
             --footprint-at (MemAvailable drop, cgroup charge, the agent's RSS/PSS)
The scale section holds hundreds of sandboxes: run it when nothing else runs sandboxes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_sections as sections  # noqa: E402  (beside this file)
from bench_facades import facade_figures  # noqa: E402  (beside this file)
from bench_hibernate import hibernate_figures  # noqa: E402  (beside this file)
from bench_pools import pool_figures  # noqa: E402
from bench_procs import process_figures  # noqa: E402
from bench_snapshots import snapshot_figures  # noqa: E402

from sandboxd.runtimes.local.images.catalog import ImageStore  # noqa: E402
from sandboxd.runtimes.local.oci import mounts  # noqa: E402
from tests.conftest import LOOPBACK_FETCHES, USERNS_BASE, Server, image_cache_path, oci_cli, teardown_bridge  # noqa: E402
from tests.test_registry import LOOPBACK_REGISTRY, TAR, Registry, tar_bytes  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def report(name: str, values: list[float]) -> None:
    med, p90 = statistics.median(values), pct(values, 0.9)
    sys.stdout.write(f"{name:<50} {med:8.1f} {p90:8.1f} {len(values):6d}\n")


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


SECTIONS = ("core", "registry", "templates", "network", "agent", "facades", "cycles", "scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--cycle-seconds", type=float, default=60.0, help="how long each cycles run lasts")
    parser.add_argument("--cycle-clients", default="2,4,8", help="the concurrent clients of each cycles run")
    parser.add_argument("--scale-max", type=int, default=500, help="how many sandboxes the scale section climbs to")
    parser.add_argument("--footprint-at", type=int, default=100, help="the count the footprint is measured at")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(only - set(SECTIONS)))}")
    image_cache_path()
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    results: dict[str, list[float]] = {}
    figures: list[sections.Figure] = []
    try:
        if only & {"core", "registry", "templates", "agent", "facades", "cycles"}:
            server = Server(work / "data", "sbxdbench0", "10.77.9.0/24", **LOOPBACK_FETCHES).start()
            try:
                with server.client() as http:
                    if "core" in only:
                        results.update(core_figures(work, server, http, args.runs))
                        results.update(snapshot_figures(http, args.runs))
                        results.update(pool_figures(http, args.runs))
                    if "agent" in only:
                        results.update(sections.agent_paths(http, server.data_dir, args.runs))
                    if "facades" in only:
                        results.update(facade_figures(server, args.runs))
                    if "registry" in only:
                        results.update(registry_figures(work, http, args.runs))
                    if "templates" in only:
                        results.update(template_figures(http, args.runs))
                if "cycles" in only:
                    clients = tuple(int(c) for c in args.cycle_clients.split(","))
                    figures += sections.cycles(server.url, server.key, clients, args.cycle_seconds)
            finally:
                server.delete_all()
                server.stop()
                teardown_bridge(server.bridge)
        if "network" in only:
            results.update(network_figures(work, args.runs))
        if "scale" in only:
            # A subnet of its own with room for the climb (a /24 holds 253 sandboxes).
            server = Server(work / "scale", "sbxdbench2", "10.77.96.0/22").start()
            try:
                with server.client() as http:
                    series, found = sections.scale(http, server.data_dir, args.scale_max, args.footprint_at)
                results.update(series)
                figures += found
            finally:
                server.delete_all()
                server.stop()
                teardown_bridge(server.bridge)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(f"{'milliseconds':<50} {'p50':>8} {'p90':>8} {'runs':>6}\n")
    for name, values in results.items():
        report(name, values)
    if figures:
        sys.stdout.write("\n" + sections.report_figures(figures))


def core_figures(work: Path, server: Server, http: httpx.Client, runs: int) -> dict[str, list[float]]:
    """Create, first exec and delete; exec over HTTP; runc exec and runc run baselines."""
    results: dict[str, list[float]] = {}
    http.post("/api/v1/sandboxes", json={}).raise_for_status()  # warm caches once
    server.delete_all()
    for _ in range(runs):
        t0 = time.perf_counter()
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
        t1 = time.perf_counter()
        http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": ["true"]}).raise_for_status()
        t2 = time.perf_counter()
        results.setdefault("create → running", []).append((t1 - t0) * 1000)
        results.setdefault("create → first exec done", []).append((t2 - t0) * 1000)
        results.setdefault("delete", []).append(timed(lambda s=sid: http.delete(f"/api/v1/sandboxes/{s}")))

    sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
    body = {"command": ["true"]}
    for _ in range(max(runs, 100)):
        results.setdefault("exec `true` over HTTP (agent)", []).append(
            timed(lambda: http.post(f"/api/v1/sandboxes/{sid}/commands", json=body).raise_for_status())
        )
    results.update(pause_figures(http, sid, runs))
    results.update(process_figures(http, sid, runs))
    results.update(hibernate_figures(http, sid, runs))
    oci = oci_cli(server.data_dir, sid)  # the sandbox's own class (crun where it can run)
    for _ in range(runs):
        results.setdefault(f"baseline: {oci[0]} exec `true` (no HTTP)", []).append(
            timed(lambda: subprocess.run([*oci, "exec", sid, "/bin/true"], check=True))
        )
    bundle_src = json.loads((server.data_dir / "sandboxes" / sid / "config.json").read_text())
    # Stop → start of the same sandbox, until it answers an exec (beside create → first exec done).
    for _ in range(runs):
        results.setdefault("stop", []).append(
            timed(lambda: http.post(f"/api/v1/sandboxes/{sid}/stop").raise_for_status())
        )
        t0 = time.perf_counter()
        http.post(f"/api/v1/sandboxes/{sid}/start").raise_for_status()
        t1 = time.perf_counter()
        http.post(f"/api/v1/sandboxes/{sid}/commands", json=body).raise_for_status()
        results.setdefault("start → running", []).append((t1 - t0) * 1000)
        results.setdefault("start → first exec done", []).append((time.perf_counter() - t0) * 1000)
    http.delete(f"/api/v1/sandboxes/{sid}")
    results["baseline: runc run of the same bundle"] = baseline_runc_run(work, bundle_src, runs)
    return results


def pause_figures(http: httpx.Client, sid: str, runs: int) -> dict[str, list[float]]:
    """Pause and resume of a running sandbox over HTTP (the freezer, the record), and a first exec
    after a resume. Goal: resume ≤ 20 ms."""
    results: dict[str, list[float]] = {}
    path = f"/api/v1/sandboxes/{sid}"
    body = {"command": ["true"]}
    for _ in range(max(runs, 50)):
        pause = timed(lambda: http.post(f"{path}/pause").raise_for_status())
        resume = timed(lambda: http.post(f"{path}/resume").raise_for_status())
        results.setdefault("pause", []).append(pause)
        results.setdefault("resume (goal ≤ 20)", []).append(resume)
        results.setdefault("pause → resume", []).append(pause + resume)
        results.setdefault("resume → exec `true` done", []).append(
            resume + timed(lambda: http.post(f"{path}/commands", json=body).raise_for_status())
        )
    return results


def registry_figures(work: Path, http: httpx.Client, runs: int) -> dict[str, list[float]]:
    """Pull of a 50 MB image from a loopback registry (fresh store each time), and create from a
    pulled, cached image next to create from the base image."""
    (work / "registry").mkdir()
    registry = Registry(work / "registry")
    out: dict[str, list[float]] = {}
    try:
        registry.push_image("bench", "big", [(tar_bytes(("blob.bin", os.urandom(50 * 1024 * 1024))), TAR)])
        base = ImageStore(image_cache_path(), USERNS_BASE).get("debian").layers[0]
        with open(work / "base.tar", "wb") as f:
            import tarfile

            with tarfile.open(fileobj=f, mode="w") as tar:
                tar.add(base, arcname=".")
        registry.push_image("bench", "debian", [((work / "base.tar").read_bytes(), TAR)])
        for i in range(min(runs, 10)):
            store = ImageStore(work / f"pull{i}", USERNS_BASE, outbound=LOOPBACK_REGISTRY)
            out.setdefault("pull 50 MB image (loopback registry)", []).append(
                timed(lambda s=store: s.pull(f"{registry.host}/bench:big"))
            )
            shutil.rmtree(work / f"pull{i}")
        cached = f"{registry.host}/bench:debian"
        first = http.post("/api/v1/sandboxes", json={"image": cached}).json()["id"]  # pulls once
        http.delete(f"/api/v1/sandboxes/{first}")
        for image in ("debian", cached):
            label = "create → running, base image" if image == "debian" else "create → running, pulled cached image"
            for _ in range(runs):
                start = time.perf_counter()
                sid = http.post("/api/v1/sandboxes", json={"image": image}).json()["id"]
                out.setdefault(label, []).append((time.perf_counter() - start) * 1000)
                http.delete(f"/api/v1/sandboxes/{sid}")
        shared = ImageStore(image_cache_path(), USERNS_BASE)
        shared.delete(cached)
        shared.gc()
    finally:
        registry.close()
    return out


def template_figures(http: httpx.Client, runs: int) -> dict[str, list[float]]:
    """A three-step template: built cold (steps unique to the run), rebuilt with every step in the
    cache, and sandboxes started from it (four layers) next to the base image (one)."""
    out: dict[str, list[float]] = {}

    def build(name: str, marker: str) -> dict[str, object]:
        steps = [
            {"type": "run", "command": f"echo {marker} > /opt/one"},
            {"type": "copy", "path": "/opt/two", "content": marker},
            {"type": "run", "command": "python3 -c 'print(1)' > /opt/three"},
        ]
        r = http.post("/api/v1/templates", params={"wait": True}, json={"name": name, "steps": steps}, timeout=300)
        r.raise_for_status()
        assert r.json()["state"] == "ready", r.text
        return dict(r.json())

    name = "bench-" + os.urandom(4).hex()
    for i in range(min(runs, 5)):
        out.setdefault("template build, cold (3 steps)", []).append(timed(lambda i=i: build(name, f"{name}-{i}")))
    for _ in range(runs):
        out.setdefault("template build, warm step cache", []).append(timed(lambda: build(name, f"{name}-0")))
    for label, body in (
        ("create → running, base image (again)", {}),
        ("create → running, template", {"template": name}),
    ):
        for _ in range(runs):
            start = time.perf_counter()
            sid = http.post("/api/v1/sandboxes", json=body).json()["id"]
            out.setdefault(label, []).append((time.perf_counter() - start) * 1000)
            http.delete(f"/api/v1/sandboxes/{sid}")
    for version in http.get("/api/v1/templates", params={"name": name}).json()["items"]:
        http.delete(f"/api/v1/templates/{name}/versions/{version['version']}")
    return out


CLIENT = (
    "import socket, sys, time, urllib.request\n"
    "times = []\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    start = time.perf_counter()\n"
    "    urllib.request.urlopen(sys.argv[1]).read()\n"  # a new lookup and connection each time
    "    times.append((time.perf_counter() - start) * 1000)\n"
    "print(' '.join(f'{t:.3f}' for t in times))\n"
)


# Keep-alive HTTP servers as apps are written: one that answers each request in one write, and
# Python's http.server with HTTP/1.1, which writes the head and then the body (without TCP_NODELAY:
# Nagle holds the body until the head is acknowledged, so the receiver's delayed ACK is on the path).
ONE_WRITE_APP = (
    "import socket, sys, threading\n"
    "def serve(c):\n"
    "    buf = b''\n"
    "    while True:\n"
    "        data = c.recv(65536)\n"
    "        if not data: return\n"
    "        buf += data\n"
    "        while b'\\r\\n\\r\\n' in buf:\n"
    "            _, buf = buf.split(b'\\r\\n\\r\\n', 1)\n"
    "            c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)
TWO_WRITES_APP = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_GET(self):\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', '2')\n"
    "        self.end_headers()\n"
    "        self.wfile.write(b'ok')\n"
    "    def log_message(self, *args): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), H).serve_forever()\n"
)
PORT_APPS = {8000: ("1 write", ONE_WRITE_APP), 8001: ("head, body: 2 writes", TWO_WRITES_APP)}


def network_figures(work: Path, runs: int) -> dict[str, list[float]]:
    """Requests from inside a sandbox to a test host by name, through a custom egress policy
    (the resolver admits the address, the kernel checks it) next to an allow-all sandbox; and the
    port proxy next to connecting to the sandbox's port directly, both from the host."""
    from tests.test_egress import A_GATEWAY, A_PEER, ZONE, A, NetnsHost, Zone

    out: dict[str, list[float]] = {}
    zone = Zone(ZONE)
    host = NetnsHost("ta", A_PEER, A_GATEWAY, A)
    server = Server(work / "net", "sbxdbench1", "10.77.8.0/24", SANDBOXD_DNS_UPSTREAM=f'["{zone.address}"]')
    try:
        server.start()
        count = max(runs, 50)
        for label, egress in (
            ("egress: HTTP by name, allow-all sandbox", {"mode": "allow_all"}),
            ("egress: HTTP by name, custom policy", {"mode": "custom", "allowed_domains": ["allowed.test"]}),
        ):
            with server.create(egress=egress) as sb:
                sb.files.write("/tmp/client.py", CLIENT)
                result = sb.commands.run(f"python3 /tmp/client.py http://allowed.test:8080/ {count + 5}")
                out[label] = [float(t) for t in result.stdout.split()][5:]
        with server.create(ports=list(PORT_APPS)) as sb:
            for port, (_, app) in PORT_APPS.items():
                sb.files.write(f"/srv/app{port}.py", app)
                sb.commands.run(f"python3 /srv/app{port}.py {port}", background=True)
            time.sleep(0.5)
            out.update(port_figures(server, sb.id, sb.traffic_token, max(runs, 200)))
    finally:
        server.delete_all()
        server.stop()
        teardown_bridge(server.bridge)
        zone.close()
        host.close()
    return out


def port_figures(server: Server, sandbox_id: str, token: str, count: int) -> dict[str, list[float]]:
    """Each app's port straight from the host, and through the proxy's host and path routes, each
    on a kept-alive connection (httpx). Direct, the two-write app waits for the client's own delayed
    ACK (about 40 ms, the client's choice); through the proxy, for the proxy's, which it sends at once."""
    out: dict[str, list[float]] = {}
    address = server_address(server, sandbox_id)
    for port, (kind, _) in PORT_APPS.items():
        routes = {
            "direct": (f"http://{address}:{port}/x", {}),
            "proxy, host route": (
                f"{server.url}/x",
                {"Host": f"{sandbox_id.replace('_', '-')}-{port}.localhost:{server.port}", "X-Sandbox-Token": token},
            ),
            "proxy, path route": (
                f"{server.url}/api/v1/sandboxes/{sandbox_id}/ports/{port}/x",
                {"X-Sandbox-Token": token},
            ),
        }
        for route, (url, headers) in routes.items():
            with httpx.Client(timeout=10) as http:
                for _ in range(10):  # the connection, and the proxy's own to the app
                    http.get(url, headers=headers).raise_for_status()
                out[f"port ({kind}): {route}"] = [
                    timed(lambda u=url, h=headers: http.get(u, headers=h).raise_for_status()) for _ in range(count)
                ]
    return out


def server_address(server: Server, sandbox_id: str) -> str:
    """The sandbox's address on the bridge, from the server's own record (the API does not show it)."""
    import sqlite3

    with sqlite3.connect(server.data_dir / "sandboxd.db") as db:
        record = db.execute("select runtime from sandboxes where id = ?", (sandbox_id,)).fetchone()[0]
    return str(json.loads(record)["address"])


def baseline_runc_run(work: Path, config: dict, runs: int) -> list[float]:  # type: ignore[type-arg]
    """`runc run` of the sandbox's own bundle with `true` as its process: create, start, wait, delete."""
    image = list(reversed(ImageStore(image_cache_path(), USERNS_BASE).get("debian").layers))
    times = []
    for i in range(runs):
        bundle = work / f"bundle{i}"
        for sub in ("upper", "work", "rootfs"):
            (bundle / sub).mkdir(parents=True)
        os.chown(bundle / "upper", 1_000_000, 1_000_000)
        mounts.mount_overlay(image, bundle / "upper", bundle / "work", bundle / "rootfs")
        cfg = json.loads(json.dumps(config))
        cfg["root"]["path"] = str(bundle / "rootfs")
        cfg["process"]["args"] = ["/bin/true"]
        cfg["process"].pop("rlimits", None)  # crun's way; runc would need CAP_SYS_RESOURCE for them
        cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] != "/.sandboxd"]
        cfg["linux"]["cgroupsPath"] = f"/sandboxd-bench-{i}"
        # The sandbox joined a user namespace made for it (userns.py), gone since: runc makes one.
        cfg["linux"]["namespaces"] = [{"type": ns["type"]} for ns in cfg["linux"]["namespaces"]]
        (bundle / "config.json").write_text(json.dumps(cfg))
        root = str(work / "runc-baseline")
        times.append(
            timed(
                lambda b=bundle, n=i, root=root: subprocess.run(
                    ["runc", "--root", root, "run", "--bundle", str(b), f"bench-{n}"],
                    check=True,
                    stdin=subprocess.DEVNULL,
                )
            )
        )
        mounts.unmount(bundle / "rootfs")
    return times


if __name__ == "__main__":
    main()
