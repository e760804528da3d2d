"""A sandbox's network from the command line: its ports (`port`), its timeout (`timeout`) and its
egress policy with what the policy refused lately (`egress`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from sandboxd_sdk.cli._common import connect, err, fail


def _safe(text: object) -> str:
    """A value that came from a sandbox (a name it looked up), printed without control characters."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


@click.command()
@click.argument("sandbox_id")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--signed", is_flag=True, help="A URL carrying an expiring signature: works in a browser, no token.")
@click.option(
    "--expires-in",
    type=click.IntRange(1, 7 * 24 * 3600),
    default=3600,
    show_default=True,
    help="Seconds a signed URL works.",
)
@click.option("--wait", is_flag=True, help="Wait until something in the sandbox listens on the port.")
@click.option("--wait-timeout", type=click.FloatRange(0), default=60.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Print the port as JSON.")
def port(
    sandbox_id: str, port: int, signed: bool, expires_in: int, wait: bool, wait_timeout: float, as_json: bool
) -> None:
    """Exposes PORT of a sandbox (if it is not yet) and prints its URL through the server's proxy."""
    sb = connect(sandbox_id)
    try:
        described = sb.expose_port(port)
        url = sb.port_url(port, signed=True, expires_in=expires_in) if signed else str(described["url"])
        if wait:
            sb.wait_for_port(port, timeout=wait_timeout)
    finally:
        sb.close()
    if as_json:
        click.echo(json.dumps({**described, "url": url}, indent=2))
        return
    click.echo(url)
    if not signed and not described.get("public"):
        err.print(
            "private port: send the sandbox's traffic token as the X-Sandbox-Token header "
            f"(sandboxd get {sandbox_id} --json shows it), or use --signed for a URL that carries its own",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@click.command()
@click.argument("sandbox_id")
@click.argument("seconds", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the sandbox as JSON.")
def timeout(sandbox_id: str, seconds: int, as_json: bool) -> None:
    """Renews a running sandbox's timeout: it is destroyed SECONDS from now."""
    sb = connect(sandbox_id)
    try:
        sb.set_timeout(seconds)
    finally:
        sb.close()
    if as_json:
        click.echo(json.dumps(sb.info, indent=2))
    else:
        click.echo(f"{sb.id} expires at {sb.info['expires_at']} (in {seconds} s)")


@click.command()
@click.argument("sandbox_id")
@click.option("--allow-all", is_flag=True, help="Allow everything but the --deny targets.")
@click.option("--deny-all", is_flag=True, help="Refuse everything but the --allow-* targets.")
@click.option("--allow-domain", multiple=True, help="example.com or *.example.com; repeatable. Refuses the rest.")
@click.option("--allow-cidr", multiple=True, help="An IPv4 network (10.1.0.0/16); repeatable. Refuses the rest.")
@click.option("--deny", multiple=True, help="A domain, *.domain or IPv4 network to refuse; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the policy and refusals as JSON.")
def egress(
    sandbox_id: str,
    allow_all: bool,
    deny_all: bool,
    allow_domain: tuple[str, ...],
    allow_cidr: tuple[str, ...],
    deny: tuple[str, ...],
    as_json: bool,
) -> None:
    """Shows a sandbox's egress policy and what it refused lately; with options, replaces the
    policy first (it holds from the next packet on). A refused lookup fails in the sandbox as a
    name that does not exist: look here before suspecting DNS."""
    if allow_all and deny_all:
        fail("--allow-all and --deny-all contradict")
    change = allow_all or deny_all or allow_domain or allow_cidr or deny
    sb = connect(sandbox_id)
    try:
        if change:
            status = sb.set_egress(**_policy(allow_all, deny_all, allow_domain, allow_cidr, deny))
        else:
            status = sb.egress()
    finally:
        sb.close()
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for line in describe(status):
        click.echo(line)


def _policy(
    allow_all: bool, deny_all: bool, domains: tuple[str, ...], cidrs: tuple[str, ...], deny: tuple[str, ...]
) -> dict[str, Any]:
    rules = [{"action": "deny", "target": t} for t in deny]
    if not domains and not cidrs:
        if deny_all:
            return {"mode": "deny_all"} if not rules else {"mode": "custom", "rules": rules, "default_action": "deny"}
        return {"mode": "allow_all", "rules": rules}
    return {
        "mode": "custom",
        "allowed_domains": list(domains),
        "allowed_cidrs": list(cidrs),
        "rules": rules,
        "default_action": "allow" if allow_all else "deny",
    }


def describe(status: dict[str, Any]) -> list[str]:
    """The policy, the refusal counts and the last refusals, as lines for a terminal."""
    policy = status.get("policy") or {"mode": "allow_all"}
    mode = policy.get("mode", "allow_all")
    default = policy.get("default_action") or ("allow" if mode == "allow_all" else "deny")
    lines = [f"policy: {mode}" + ("" if mode == "deny_all" else f" (default {default})")]
    lines += [f"  {r['action']:<6} {r['target']}" for r in policy.get("rules") or []]
    lines += [f"  allow  {t}" for t in [*(policy.get("allowed_domains") or []), *(policy.get("allowed_cidrs") or [])]]
    lines.append(f"refused: {status.get('refused_lookups', 0)} lookups, {status.get('refused_packets', 0)} packets")
    recent = status.get("recent_refusals") or []
    if recent:
        lines.append("last refused (a refused name fails in the sandbox like a name that does not exist):")
        lines += [f"  {_time(r['at'])}  {r['kind']:<10} {_safe(r['target'])}" for r in recent]
    return lines


def _time(at: str) -> str:
    try:
        return datetime.fromisoformat(at).astimezone(UTC).strftime("%H:%M:%S")
    except ValueError:
        return _safe(at)
