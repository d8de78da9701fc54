"""The provider address policy on its own: which addresses, hosts, URLs and ports pass."""

from __future__ import annotations

import pytest

from bulletin.channels import egress

REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.3.4.5",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # noqa: S104 (a value checked, not an address bound)
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd00:ec2::254",  # cloud metadata over IPv6
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "not an address",
]
PUBLIC_ADDRESSES = ["8.8.8.8", "157.240.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not egress.is_public(address)
    with pytest.raises(egress.AddressNotAllowed) as caught:
        egress.check_address(address)
    assert str(caught.value) == egress.NOT_ALLOWED
    assert address not in str(caught.value)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_pass(address: str) -> None:
    assert egress.is_public(address)
    egress.check_address(address)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "[::1]",
        "::ffff:127.0.0.1",
        "169.254.169.254.",
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "metadata.google.internal",
        "printer.local",
        "postgres",
    ],
)
def test_hosts_that_are_plainly_internal_are_refused(host: str) -> None:
    assert egress.host_problem(host) is not None


@pytest.mark.parametrize(
    "host", ["graph.facebook.com", "api.twilio.com", "8.8.8.8", "smtp.example.org"]
)
def test_public_hosts_pass(host: str) -> None:
    assert egress.host_problem(host) is None


def test_urls_must_be_https_to_a_public_host() -> None:
    assert egress.url_problem("https", "graph.facebook.com") is None
    assert egress.url_problem("http", "graph.facebook.com") == "must be an https URL"
    assert egress.url_problem("https", "10.0.0.1") is not None
    assert egress.url_problem("https", None) is not None


@pytest.mark.parametrize("port", [25, 465, 587, 2525])
def test_usual_smtp_ports_pass(port: int) -> None:
    assert egress.smtp_port_problem(port) is None


@pytest.mark.parametrize("port", [22, 80, 443, 5432, 6379, 2526])
def test_other_smtp_ports_are_refused(port: int) -> None:
    assert egress.smtp_port_problem(port) is not None
