"""The sandboxes' network on this host (plane.py ties it together): the bridge and veths (bridge.py),
egress chains in nftables (egress.py), the policy-aware resolver (dns.py, fairqueue.py) and the
credential broker (broker.py, tls.py, brokered_request.py)."""
