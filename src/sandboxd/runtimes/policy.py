"""A sandbox's compiled egress policy, and the decisions read from it: by address (CIDR rules) and by
DNS name (domain rules). The kernel's chain (local/egress.py), the sandboxes' resolver, the credential
broker and the server's own fetches on a sandbox's behalf (outbound.py) all decide through this.

Names are matched label by label, never as presentation text: in DNS a label may hold any byte,
dots included, so ``x\\.wild.example.test`` is one label "x.wild" under example.test, not a
subdomain of wild.example.test. A name with a label that is not a hostname label never matches a
domain rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Letters, digits, hyphen, and underscore (_dmarc, _acme-challenge and SRV names have it).
HOSTNAME_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")


def hostname_labels(labels: Iterable[bytes]) -> tuple[str, ...] | None:
    """The lower-cased labels of a name (the root label dropped), or None if one of them holds a
    byte a hostname cannot (a dot, a backslash, a space...)."""
    out = []
    for label in labels:
        if label == b"":
            continue  # the root
        if not HOSTNAME_LABEL.fullmatch(label):
            return None
        out.append(label.decode("ascii").lower())
    return tuple(out) if out else None


def text_labels(name: str) -> tuple[str, ...] | None:
    """The labels of a host name given as text (an SNI, a URL's host); None if it is no hostname."""
    try:
        raw = name.rstrip(".").encode("ascii")
    except UnicodeEncodeError:
        return None
    return hostname_labels(raw.split(b".")) if raw else None


@dataclass(frozen=True)
class Policy:
    """A compiled egress policy: (action, target) rules in order, then a default action."""

    rules: tuple[tuple[str, str], ...] = ()
    default: str = "allow"

    @classmethod
    def of(cls, egress: Any) -> Policy:
        """From a record's {"rules": [[action, target], ...], "default": ...}; None: allow all."""
        if not egress:
            return cls()
        rules = [(str(action), str(target)) for action, target in egress.get("rules", [])]
        return cls(tuple(rules), str(egress.get("default", "allow")))

    def record(self) -> dict[str, object]:
        return {"rules": [list(r) for r in self.rules], "default": self.default}

    def cidr_rules(self) -> list[tuple[str, ipaddress.IPv4Network]]:
        return [(action, ipaddress.IPv4Network(target)) for action, target in self.rules if _is_cidr(target)]

    @property
    def matches_names(self) -> bool:
        """Whether a name can change the outcome: a domain rule or a deny default."""
        return self.default != "allow" or any(not _is_cidr(target) for _, target in self.rules)

    def decide_address(self, address: str) -> str | None:
        """allow or deny by the first CIDR rule that holds the address; None if none does."""
        ip = ipaddress.IPv4Address(address)
        return next((action for action, network in self.cidr_rules() if ip in network), None)

    def names_explicitly(self, address: str, inward: Sequence[ipaddress.IPv4Network]) -> bool:
        """Whether the first CIDR rule holding this address allows it and lies within one of the
        inward networks (the host's own, metadata...): naming such a network explicitly opens it,
        a wider rule (10.0.0.0/8, 0.0.0.0/0) does not."""
        ip = ipaddress.IPv4Address(address)
        for action, network in self.cidr_rules():
            if ip in network:
                return action == "allow" and any(network.subnet_of(n) for n in inward)
        return False

    def decide(self, name: str) -> str:
        """allow or deny for a host name given as text (an SNI or a URL's host)."""
        return self.decide_labels(text_labels(name))

    def decide_labels(self, labels: tuple[str, ...] | None) -> str:
        """allow or deny for a name's labels (None: not a hostname): the first domain rule that
        matches, else the default. A name that is no hostname matches no rule, and is refused
        wherever a name could matter."""
        if labels is None:
            return "deny" if self.matches_names else self.default
        for action, target in self.rules:
            if _is_cidr(target):
                continue  # a CIDR rule says nothing about names
            wildcard = target.startswith("*.")
            wanted = tuple(target.removeprefix("*.").split("."))
            if wildcard:
                if len(labels) > len(wanted) and labels[-len(wanted) :] == wanted:
                    return action
            elif labels == wanted:
                return action
        return self.default


def _is_cidr(target: str) -> bool:
    try:
        ipaddress.IPv4Network(target)
    except ValueError:
        return False
    return True
