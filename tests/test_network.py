"""The one rule for whether a host is this machine, which ``serve`` (no API key beyond it) and ``pacs`` (no warning
of plain-http credentials to it) both follow."""

from __future__ import annotations

import pytest

from pneumoscan.core.network import is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1",
                                  "localhost", "LOCALHOST", "LocalHost"])
def test_this_machine_is_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", [
    "0.0.0.0", "::", "[::]",  # every interface, not this machine alone
    "localhost.",  # resolved by the system (glibc asks DNS), so it may be another machine
    "localhost.example.org", "localhostx", "localhost:8000", "mylocalhost",  # other names, or a name with a port
    "128.0.0.1", "192.168.1.4", "xray.hospital.org", "",
])  # fmt: skip
def test_any_other_host_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)
