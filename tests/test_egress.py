"""Egress policies, proven from inside sandboxes against test hosts in the tests' own network
namespaces, named by a test DNS zone that the server's resolver asks upstream."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import httpx
import pytest

from sandboxd import Sandbox
from tests.conftest import Server, assert_no_leaks, teardown_bridge

GREETER = (
    "import socket, threading, http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'  # keep-alive\n"
    "    def do_GET(self):\n"
    "        body = ('web of ' + self.server.server_address[0]).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "threading.Thread(target=http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever).start()\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8000)); s.listen(16)\n"
    "while True:\n"
    "    c, addr = s.accept(); c.sendall(b'hello'); c.close()\n"
)


class NetnsHost:
    """A host on "the internet" in a network namespace of its own, linked to this machine by a /30
    (an attached network, which sandboxes may not reach), serving on an address beyond it: this
    machine routes there through the namespace, as it reaches the internet through a gateway."""

    def __init__(self, name: str, peer: str, gateway: str, address: str, serve: str = GREETER) -> None:
        self.netns, self.link, self.peer, self.address = f"sbxd-{name}", f"sbxd{name}", peer, address
        for cmd in (
            f"netns add {self.netns}",
            f"link add {self.link} type veth peer name eth0 netns {self.netns}",
            f"addr add {peer}/30 dev {self.link}",
            f"link set {self.link} up",
            f"-n {self.netns} addr add {gateway}/30 dev eth0",
            f"-n {self.netns} addr add {address}/32 dev lo",
            f"-n {self.netns} link set eth0 up",
            f"-n {self.netns} link set lo up",
            f"route add {address}/32 via {gateway}",
        ):
            subprocess.run(["ip", *cmd.split()], check=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c", serve])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["ip", "link", "del", self.link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)


class Zone:
    """An authoritative DNS server for the test zone, on loopback: name → IPv4 addresses."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.queries: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
                name = query.question[0].name.to_text(omit_final_dot=True)
            except (dns.exception.DNSException, IndexError):
                continue  # not a query (a stray datagram on loopback): a real server ignores it too
            self.queries.append(name)
            response = dns.message.make_response(query)
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif query.question[0].rdtype == 1:  # A
                ttl = 1 if name.startswith("short.") else 30
                response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", *self.records[name]))
            try:
                self.sock.sendto(response.to_wire(), peer)
            except OSError:  # closed meanwhile
                return

    def close(self) -> None:
        self.sock.close()


A_PEER, A_GATEWAY, A = "10.77.210.1", "10.77.210.2", "10.77.220.2"
B_PEER, B_GATEWAY, B = "10.77.211.1", "10.77.211.2", "10.77.221.2"
ZONE = {
    "allowed.test": [A],
    "a.wild.test": [A],
    "wild.test": [B],
    "other.test": [B],
    "denied.test": [A],
    "rebind.test": ["169.254.169.254", "10.77.4.1"],  # metadata, and the sandboxes' gateway
    "api.secure.test": [A],  # brokered: headers injected
    "other.secure.test": [A],  # same server, not brokered
    "short.test": [A],  # a TTL of one second
}
SECRET = "Bearer s3cr3t-" + "token-never-inside"

# An HTTPS and HTTP server on test host A that reports what it received, without echoing the
# secret back (that would put it into the sandbox).
WEB = (
    "import http.server, json, ssl, sys, threading\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = json.dumps({'auth_ok': self.headers.get('Authorization') == sys.argv[3],\n"
    "                           'headers': sorted(k.lower() for k in self.headers.keys())}).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "plain = http.server.ThreadingHTTPServer(('0.0.0.0', 80), H)\n"
    "threading.Thread(target=plain.serve_forever, daemon=True).start()\n"
    "tls = http.server.ThreadingHTTPServer(('0.0.0.0', 443), H)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "tls.socket = ctx.wrap_socket(tls.socket, server_side=True)\n"
    "tls.serve_forever()\n"
)


def make_test_ca(directory: Path) -> Path:
    """A CA for the test zone and a certificate from it for the *.secure.test servers."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test zone CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("api.secure.test"), x509.DNSName("other.secure.test")]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure.test")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "ca.pem"


@pytest.fixture(scope="module")
def net(image_cache: Path, workdir: Path) -> Iterator[Server]:
    hosts: list[NetnsHost] = []
    zone = Zone(ZONE)
    certs = workdir / "egress-certs"
    certs.mkdir(exist_ok=True)
    test_ca = make_test_ca(certs)
    server = Server(
        workdir / "egress",
        "sbxdtest4",
        "10.77.4.0/24",
        SANDBOXD_DNS_UPSTREAM=f'["{zone.address}"]',
        SANDBOXD_BROKER_UPSTREAM_CA=str(test_ca),  # the broker verifies the test servers against it
    )
    web = None
    try:
        hosts += [NetnsHost("ta", A_PEER, A_GATEWAY, A), NetnsHost("tb", B_PEER, B_GATEWAY, B)]
        web = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                "sbxd-ta",
                sys.executable,
                "-c",
                WEB,
                str(certs / "server.pem"),
                str(certs / "server.key"),
                SECRET,
            ]
        )
        server.start()
        server.zone = zone  # type: ignore[attr-defined]
        yield server
        server.delete_all()
        server.stop()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        if web is not None:
            web.kill()
            web.wait()
        zone.close()
        for host in hosts:
            host.close()
    assert_no_leaks(server.data_dir, server.bridge)
    teardown_bridge(server.bridge)


PROBE = (
    "import socket, sys\n"
    "target = sys.argv[1]\n"
    "try:\n"
    "    address = socket.gethostbyname(target)\n"
    "except OSError as e:\n"
    "    print('nxdomain'); sys.exit()\n"
    "try:\n"
    "    s = socket.create_connection((address, 8000), timeout=3)\n"
    "    print('reached', address, s.recv(10).decode())\n"
    "except OSError as e:\n"
    "    print('refused', address, e.errno)\n"
)


def reach(sb: Sandbox, target: str) -> str:
    """'reached <ip> hello', 'refused <ip> <errno>' or 'nxdomain', as seen from inside the sandbox."""
    if not sb.files.exists("/tmp/probe.py"):
        sb.files.write("/tmp/probe.py", PROBE)
    return str(sb.commands.run(f"python3 /tmp/probe.py {target}").stdout.strip())


def test_allow_all_reaches_everything_and_deny_all_nothing(net: Server) -> None:
    with net.create() as sb:
        assert reach(sb, "allowed.test") == f"reached {A} hello"
        assert reach(sb, B) == f"reached {B} hello"
        assert reach(sb, "no-such-name.test") == "nxdomain"
    with net.create(egress={"mode": "deny_all"}) as sb:
        assert reach(sb, "allowed.test") == "nxdomain"
        start = time.monotonic()
        assert reach(sb, A).startswith(f"refused {A}")
        assert time.monotonic() - start < 2  # refused at once, not left to time out


def test_custom_reaches_exactly_the_allowed_names_wildcards_and_cidrs(net: Server) -> None:
    policy = {"mode": "custom", "allowed_domains": ["allowed.test", "*.wild.test"]}
    with net.create(egress=policy) as sb:
        assert reach(sb, A).startswith(f"refused {A}")  # by raw IP, before any name led there
        assert reach(sb, "allowed.test") == f"reached {A} hello"
        assert reach(sb, "a.wild.test") == f"reached {A} hello"
        assert reach(sb, "wild.test") == "nxdomain"  # a wildcard covers subdomains, not the name itself
        assert reach(sb, "other.test") == "nxdomain"
        assert reach(sb, B).startswith(f"refused {B}")  # other.test's address, never admitted
        assert "other.test" not in net.zone.queries  # type: ignore[attr-defined]  # refused names never leave the host
        web = sb.commands.run(
            "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://allowed.test:8080').read().decode())\""
        )
        assert web.stdout.strip() == "web of 0.0.0.0", web.stderr  # plain HTTP, no proxy setting
        with net.client() as http:
            counts = http.get(f"/api/v1/sandboxes/{sb.id}/egress").json()
        assert counts["refused_lookups"] >= 2 and counts["refused_packets"] >= 2
        metrics = httpx.get(f"{net.url}/metrics", headers={"Authorization": f"Bearer {net.key}"}).text
        assert f'sandboxd_egress_refused_packets_total{{sandbox="{sb.id}"}}' in metrics
    with net.create(egress={"mode": "custom", "allowed_cidrs": [f"{B[:-2]}.0/24"]}) as sb:
        assert reach(sb, B) == f"reached {B} hello"
        assert reach(sb, A).startswith(f"refused {A}")


def test_deny_rules_over_allow_all_hold_for_names_and_their_addresses(net: Server) -> None:
    policy = {"mode": "allow_all", "rules": [{"action": "deny", "target": "denied.test"}]}
    with net.create(egress=policy) as sb:
        assert reach(sb, "other.test") == f"reached {B} hello"
        assert reach(sb, "denied.test") == "nxdomain"
        assert reach(sb, A).startswith(f"refused {A}")  # denied.test's address, looked up by the server


def test_rebinding_and_metadata_tricks_fail(net: Server) -> None:
    policy = {"mode": "custom", "allowed_domains": ["rebind.test"], "allowed_cidrs": ["10.0.0.0/8"]}
    with net.create(egress=policy) as sb:
        assert reach(sb, "rebind.test") == "nxdomain"  # its answers pointed inward: all removed
        assert reach(sb, "169.254.169.254").startswith("refused")
        assert reach(sb, "10.77.4.1").startswith("refused")  # the host itself, even inside an allowed CIDR
        assert reach(sb, A) == f"reached {A} hello"  # the CIDR rule itself works


def test_a_policy_changes_while_the_sandbox_runs(net: Server) -> None:
    with net.create() as sb, net.client() as http:
        assert reach(sb, B) == f"reached {B} hello"
        changed = http.put(f"/api/v1/sandboxes/{sb.id}/egress", json={"mode": "deny_all"})
        assert changed.status_code == 200 and changed.json()["policy"]["mode"] == "deny_all"
        assert reach(sb, B).startswith(f"refused {B}")
        assert reach(sb, "other.test") == "nxdomain"
        http.put(f"/api/v1/sandboxes/{sb.id}/egress", json={"mode": "custom", "allowed_domains": ["other.test"]})
        assert reach(sb, "other.test") == f"reached {B} hello"
        assert reach(sb, "allowed.test") == "nxdomain"
        assert http.get(f"/api/v1/sandboxes/{sb.id}").json()["egress"]["allowed_domains"] == ["other.test"]


@pytest.mark.parametrize(
    ("egress", "field"),
    [
        ({"mode": "custom", "allowed_domains": ["not a domain"]}, "egress.allowed_domains"),
        ({"mode": "custom", "allowed_cidrs": ["10.0.0.0/33"]}, "egress.allowed_cidrs"),
        ({"mode": "custom", "allowed_cidrs": ["::1/128"]}, "egress.allowed_cidrs"),
        ({"mode": "custom", "allowed_domains": [f"d{i}.test" for i in range(51)]}, "egress.allowed_domains"),
        ({"mode": "allow_all", "rules": [{"action": "maybe", "target": "x.test"}]}, "egress.rules.0.action"),
        ({"mode": "deny_all", "allowed_domains": ["x.test"]}, "egress"),
    ],
)
def test_bad_policies_are_refused_by_field(net: Server, egress: dict[str, object], field: str) -> None:
    with net.client() as http:
        r = http.post("/api/v1/sandboxes", json={"egress": egress})
    assert r.status_code == 400 and r.json()["field"] == field, r.text


FETCH = (
    "import json, ssl, sys, urllib.request\n"
    "headers = {'X-Remove-Me': '1', 'Authorization': 'Bearer mine'}\n"
    "if len(sys.argv) > 3: headers['Host'] = sys.argv[3]\n"
    "request = urllib.request.Request(sys.argv[1], headers=headers)\n"
    "context = None if sys.argv[2] == 'verified' else ssl._create_unverified_context()\n"
    "try:\n"
    "    print(urllib.request.urlopen(request, context=context, timeout=5).read().decode())\n"
    "except Exception as e:\n"
    "    print(json.dumps({'error': str(e)}))\n"
)


def fetch(sb: Sandbox, url: str, unverified: bool = False, host: str = "") -> dict[str, object]:
    import json

    if not sb.files.exists("/tmp/fetch.py"):
        sb.files.write("/tmp/fetch.py", FETCH)
    mode = "unverified" if unverified else "verified"
    out = sb.commands.run(f"python3 /tmp/fetch.py {url} {mode} {host}").stdout
    return dict(json.loads(out))


def test_credentials_are_brokered_over_https_and_never_inside(net: Server) -> None:
    transform = {
        "domain": "api.secure.test",
        "inject_headers": {"Authorization": SECRET},
        "strip_headers": ["X-Remove-Me"],
    }
    with net.create(transforms=[transform], env={"NOT_THE_SECRET": "x"}) as sb:
        brokered = fetch(sb, "https://api.secure.test/")  # verified: the sandbox trusts the broker's CA
        assert brokered.get("auth_ok") is True, brokered
        assert "x-remove-me" not in brokered["headers"]  # type: ignore[operator]
        # Plain HTTP is not brokered: a secret never goes out in clear text.
        plain = fetch(sb, "http://api.secure.test/")
        assert plain.get("auth_ok") is False and "x-remove-me" in plain["headers"]  # type: ignore[operator]
        # Nor does it follow a Host header to another site behind the same address (fronting).
        fronted = fetch(sb, "https://api.secure.test/", host="other.secure.test")
        assert "421" in str(fronted.get("error")), fronted
        # Another name on the same server is passed through untouched: its certificate is the
        # test zone's own (which the sandbox does not trust), and no header is added.
        passthrough = fetch(sb, "https://other.secure.test/")
        assert "certificate verify failed" in str(passthrough.get("error")), passthrough
        untouched = fetch(sb, "https://other.secure.test/", unverified=True)
        assert untouched.get("auth_ok") is False and "x-remove-me" in untouched["headers"]  # type: ignore[operator]
        # The secret is nowhere inside: not in files, environments or command lines.
        # (the pattern comes in on stdin, assembled by printf, so grep's own command line lacks it)
        search = (
            "printf 's3cr3t-%s\\n' token | grep -rlsF -f - /etc /root /tmp /usr/local /proc/[0-9]*/environ "
            "/proc/[0-9]*/cmdline 2>/dev/null"
        )
        sb.files.write("/tmp/canary", "s3cr3t-" + "token")  # the search does find it where it is
        assert sb.commands.run(search).stdout == "/tmp/canary\n"
        sb.files.remove("/tmp/canary")
        found = sb.commands.run(search)
        assert found.stdout == "", found.stdout
        assert SECRET not in str(sb.refresh())  # the API shows the header's name only
        assert sb.info["transforms"][0]["inject_headers"] == {"Authorization": "***"}


def test_nothing_of_a_sandboxs_policy_outlives_it(net: Server) -> None:
    import json

    def objects() -> str:
        out = subprocess.run(
            ["nft", "-j", "list", "table", "inet", "sandboxd_sbxdtest4"], capture_output=True, text=True
        )
        return out.stdout

    with net.create(egress={"mode": "custom", "allowed_domains": ["api.secure.test"]},
                    transforms=[{"domain": "api.secure.test", "inject_headers": {"X-Key": "k"}}]) as sb:  # fmt: skip
        assert fetch(sb, "https://api.secure.test/").get("auth_ok") is False  # reached through the broker
        from sandboxd.runtimes.local.network.egress import tag

        mark = tag(sb.id)
        assert mark in objects()
        intercepted = [i for i in json.loads(objects())["nftables"] if i.get("set", {}).get("name") == "intercept"]
        assert intercepted and intercepted[0]["set"].get("elem")
    table = json.loads(objects())["nftables"]
    assert mark not in json.dumps(table)
    for item in table:
        if item.get("set", {}).get("name") == "intercept" or item.get("map", {}).get("name") == "egress":
            assert not (item.get("set") or item.get("map")).get("elem"), item


def test_brokering_obeys_the_egress_policy_and_its_changes(net: Server) -> None:
    transform = {"domain": "api.secure.test", "inject_headers": {"Authorization": SECRET}}
    # A CIDR rule refusing the brokered name's address holds through the broker too.
    policy = {"mode": "allow_all", "rules": [{"action": "deny", "target": f"{A}/32"}]}
    with net.create(egress=policy, transforms=[transform]) as sb:
        assert "error" in fetch(sb, "https://api.secure.test/")
    with net.create(transforms=[transform]) as sb, net.client() as http:
        assert fetch(sb, "https://api.secure.test/").get("auth_ok") is True
        http.put(f"/api/v1/sandboxes/{sb.id}/egress", json={"mode": "deny_all"})
        refused = fetch(sb, f"https://{A}/", unverified=True, host="api.secure.test")  # by IP, name cached
        assert "error" in refused and "auth_ok" not in refused, refused


KEEP_ALIVE = (  # one TCP connection, two requests 12 s apart: past the address's admission
    "import socket, time\n"
    "s = socket.create_connection((socket.gethostbyname('short.test'), 8080), timeout=5)\n"
    "for pause in (0, 12):\n"
    "    time.sleep(pause)\n"
    "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: short.test\\r\\n\\r\\n')\n"
    "    data = b''\n"
    "    while not data.endswith(b'0.0.0.0'):\n"
    "        data += s.recv(4096)\n"
    "    print(data.split(b'\\r\\n\\r\\n', 1)[1].decode())\n"
)


def test_an_open_connection_outlives_its_addresss_ttl(net: Server) -> None:
    with net.create(egress={"mode": "custom", "allowed_domains": ["short.test"]}) as sb:
        sb.files.write("/tmp/keep.py", KEEP_ALIVE)
        out = sb.commands.run("python3 /tmp/keep.py", timeout=30)
        assert out.stdout == "web of 0.0.0.0\nweb of 0.0.0.0\n", out.stderr
        assert reach(sb, A).startswith(f"refused {A}")  # a new connection by IP: admission expired
