"""Whether a host is this machine: the one rule behind ``serve`` refusing to listen beyond it without an API key and
``pacs`` warning of credentials sent over plain http to another machine."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, an IPv6 one possibly in brackets) is this machine: ``localhost`` in any
    case, or an address in 127.0.0.0/8 or ::1. Any other name is not, ``localhost.`` and ``localhost.example.org``
    included: the system resolves those (glibc sends ``localhost.`` to DNS), so they may be another machine; nor is
    0.0.0.0 or ::, which listen on every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name
        return False
