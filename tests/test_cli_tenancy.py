"""`sandboxd keys/projects/orgs` against the session server, and a key made with them used as a user
would: SANDBOXD_API_KEY=<the printed secret>."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import Server


def cli(
    server: Server, *args: str, key: str | None = None, project: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXD_PROJECT"}
    env.update(SANDBOXD_URL=server.url, SANDBOXD_API_KEY=key or server.key, COLUMNS="200")
    if project is not None:
        env["SANDBOXD_PROJECT"] = project
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done.stdout


def test_a_project_key_made_with_the_cli_works_until_revoked(server: Server) -> None:
    name = "cli-" + os.urandom(3).hex()
    project = json.loads(ok(cli(server, "projects", "create", name, "--json")))
    assert project["name"] == name and project["id"].startswith("prj_")
    assert name in ok(cli(server, "projects", "ls"))

    made = cli(server, "keys", "create", "ci", "--scope", "write", "--project", name, "--expires-in", "3600")
    secret = ok(made).strip()
    assert secret.startswith("sbx_key_") and "\n" not in secret
    assert "only time" in made.stderr and "cannot" not in made.stdout
    listed = json.loads(ok(cli(server, "keys", "ls", "--project", name, "--json")))
    assert [(k["name"], k["project_id"], k["scopes"]) for k in listed] == [("ci", project["id"], ["write"])]
    assert listed[0]["expires_at"] and secret.removeprefix(f"sbx_{listed[0]['id']}_") not in json.dumps(listed)
    key_id = listed[0]["id"]
    assert key_id in ok(cli(server, "keys", "ls", "--project", project["id"]))

    sid = json.loads(ok(cli(server, "create", "--memory", "128", "--json", key=secret)))["id"]
    try:
        assert ok(cli(server, "exec", sid, "--", "sh", "-c", "echo from-$0", "key", key=secret)) == "from-key\n"
        assert [s["id"] for s in json.loads(ok(cli(server, "ls", "--json", key=secret)))] == [sid]
        # The server's key in another project does not see it; in its project (global option or
        # the environment) it does.
        assert sid not in ok(cli(server, "--project", "default", "ls", "--json"))
        other = cli(server, "get", sid, project="default")
        assert other.returncode == 1 and "SANDBOX_NOT_FOUND" in other.stderr
        assert sid in ok(cli(server, "--project", name, "ls", "--json"))
        assert sid in ok(cli(server, "get", sid, "--json", project=project["id"]))
        # A project's key cannot step into another project, whatever it names.
        stray = cli(server, "ls", key=secret, project="default")
        assert stray.returncode == 1 and "PROJECT_NOT_FOUND" in stray.stderr

        revoked = json.loads(ok(cli(server, "keys", "revoke", key_id, "--json")))
        assert revoked["id"] == key_id and revoked["revoked_at"]
        refused = cli(server, "exec", sid, "--", "true", key=secret)
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: UNAUTHORIZED"), refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        killed = cli(server, "kill", sid, "--json", project=name)
    assert json.loads(ok(killed))["status"]["state"] == "terminated"
    ok(cli(server, "projects", "rm", name))
    assert name not in ok(cli(server, "projects", "ls"))
    assert key_id not in ok(cli(server, "keys", "ls"))  # deleted with its project


def test_orgs_and_refusals_are_one_line(server: Server) -> None:
    name = "org-" + os.urandom(3).hex()
    org = json.loads(ok(cli(server, "orgs", "create", name, "--json")))
    assert org["id"] in ok(cli(server, "orgs", "ls"))
    admin = ok(cli(server, "keys", "create", "boss", "--scope", "admin", "--org", org["id"])).strip()
    # The organization's admin key sees its own organization's default project only.
    assert [p["name"] for p in json.loads(ok(cli(server, "projects", "ls", "--json", key=admin)))] == ["default"]
    denied = cli(server, "orgs", "create", "nope", key=admin)
    assert denied.returncode == 1 and denied.stderr.count("\n") == 1 and "FORBIDDEN" in denied.stderr
    bad = cli(server, "keys", "create", "x", "--scope", "root")
    assert bad.returncode == 2 and "'root' is not one of" in bad.stderr
    ok(cli(server, "orgs", "rm", org["id"]))
    assert org["id"] not in ok(cli(server, "orgs", "ls"))
    gone = cli(server, "projects", "ls", key=admin)
    assert gone.returncode == 1 and "UNAUTHORIZED" in gone.stderr
