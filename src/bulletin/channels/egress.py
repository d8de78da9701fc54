"""Where providers may be reached: public addresses only, unless the operator allows others.

An organization admin chooses where its providers are (a WhatsApp or Twilio base URL, an SMTP
host and port). Without a limit, that choice would make this server connect into its own
network on the admin's behalf: a database port, a cloud metadata service, anything behind the
firewall. So a provider address must be ``https`` (SMTP: one of the usual ports) and must not
lead to a loopback, private, link-local, carrier-grade NAT, multicast, reserved or unspecified
address, nor to one of those written as an IPv6 address that embeds an IPv4 one.

The policy is applied twice:

* when a configuration is saved (:func:`url_problem`, :func:`host_problem`,
  :func:`smtp_port_problem`): a fast look at what the text says, so that an obvious mistake or
  attack is answered 422 at once;
* when connecting (:func:`guarded_socket`, :func:`connect`): every address a name resolved to,
  right before the socket connects. This is the check that counts: a name may resolve to
  something else later (DNS rebinding), and only the address actually connected to matters.

``BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES`` turns both off, for tests, local stand-ins and
relays on the operator's own network. It applies to the providers configured in the
environment too: the default is safe, and an operator who runs a relay inside the network says
so once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger("bulletin.channels.egress")

#: What a tenant is told when a provider address is refused. It says nothing of the address.
NOT_ALLOWED = "the provider's address is not allowed (it resolves to a non-public address)"

#: The ports SMTP submission and relaying use: 25 (relay), 465 (implicit TLS), 587
#: (submission) and 2525 (the alternative many email services offer).
SMTP_PORTS = frozenset({25, 465, 587, 2525})

#: Names that always mean this machine or the local network (RFC 6761, RFC 6762, RFC 8375),
#: and the suffix cloud providers use for their internal names.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
#: IPv4 addresses translated into IPv6 (RFC 6052): the IPv4 address is in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: One entry of :func:`socket.getaddrinfo`: family, type, proto, canonname, sockaddr.
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
#: Resolves a host and port to the addresses to try, as :func:`socket.getaddrinfo` does.
Resolver = Callable[[str, int], Awaitable[Sequence[AddrInfo]]]


class AddressNotAllowed(OSError):
    """A provider connection was refused because of where it would have gone.

    An :class:`OSError`, so that a connection attempt to one refused address of a name moves
    on to the name's next address, as after any failed connect. Its text is always the same.
    """

    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: str | IPAddress) -> bool:
    """Whether ``address`` is a public unicast address a provider may be reached at."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` is written as, or ``None`` when it is a name.

    Reads ``[v6]`` brackets and the old IPv4 forms that resolvers still accept (``127.1``,
    ``2130706433``, ``0x7f.0.0.1``).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    text = text.rstrip(".")
    if not text or ":" in text:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):  # not an address; ValueError for NUL and surrogates
        return None


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be a provider's host on its face, or ``None``.

    Literal non-public addresses and names that always mean this machine or its network
    (``localhost``, ``*.internal``, a name without a dot) are refused. Other names are judged
    when connecting, by what they resolve to then.
    """
    address = literal_address(host)
    if address is not None:
        return None if is_public(address) else "is a non-public address"
    name = host.strip().rstrip(".").lower()
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES) or "." not in name:
        return "is a local name, not a public host"
    return None


def url_problem(scheme: str, host: str | None) -> str | None:
    """Why a provider URL with this scheme and host cannot be used, or ``None``."""
    if scheme != "https":
        return "must be an https URL"
    if not host:
        return "has no host"
    problem = host_problem(host)
    return None if problem is None else f"has a host that {problem}"


def smtp_port_problem(port: int) -> str | None:
    """Why an SMTP port cannot be used, or ``None``."""
    if port in SMTP_PORTS:
        return None
    ports = ", ".join(str(p) for p in sorted(SMTP_PORTS))
    return f"must be one of the SMTP ports {ports}"


def check_address(address: str) -> None:
    """Raise :class:`AddressNotAllowed` unless ``address`` (an IP) is public."""
    if not is_public(address):
        # The operator may want to know who tried what; the tenant is told only NOT_ALLOWED.
        log.info("egress.address_refused", address=address)
        raise AddressNotAllowed


def guarded_socket(addr_info: AddrInfo) -> socket.socket:
    """A socket for ``addr_info``, made only if its address is public.

    Called with each address right before it is connected to, so it sees the addresses a name
    resolved to at that moment, and literal addresses too.
    """
    family, type_, proto, _, sockaddr = addr_info
    check_address(str(sockaddr[0]))
    return socket.socket(family=family, type=type_, proto=proto)


async def system_resolver(host: str, port: int) -> Sequence[AddrInfo]:
    """The operating system's answer for ``host``, as :func:`socket.getaddrinfo` gives it."""
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


async def connect(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
) -> socket.socket:
    """A TCP socket connected to ``host``, to the first of its addresses that allows it.

    With ``allow_private`` false, only public addresses are tried; when the name has none,
    :class:`AddressNotAllowed` is raised without anything being connected. The caller keeps
    ``host`` for TLS (server name and certificate). The caller bounds the time it takes.
    """
    addresses = await (resolver or system_resolver)(host, port)
    refused = False
    failure: OSError | None = None
    for family, type_, proto, _, sockaddr in addresses:
        if not allow_private and not is_public(str(sockaddr[0])):
            log.info("egress.address_refused", host=host, address=str(sockaddr[0]))
            refused = True
            continue
        sock = socket.socket(family=family, type=type_ or socket.SOCK_STREAM, proto=proto)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if failure is not None:
        raise failure
    if refused:
        raise AddressNotAllowed
    raise OSError(f"{host} has no address")
