"""Who the client is behind a proxy: its address and whether it came over TLS.

With ``proxy_headers`` on, a request whose direct peer is trusted
(``forwarded_allow_ips``) is believed about the client: ``X-Forwarded-For`` and
``X-Forwarded-Proto`` (the de-facto headers nginx, HAProxy and load balancers send) or,
when neither is present, ``Forwarded`` (RFC 7239). Anyone else's headers are ignored,
so a client cannot claim another address by sending them itself.

Each proxy appends the address it got the request from, so the list reads client
first, nearest proxy last. The client is the right-most entry that is not a trusted
proxy: entries left of it were written by the client or by proxies nobody vouches
for. If every entry is trusted, the left-most is the client (as uvicorn does).

Pure: no I/O; docs/deployment.md ("A proxy in front") has the operator's view.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .errors import SettingError

__all__ = ["ANY", "UNIX", "Client", "TrustedPeers", "forwarded_client"]

ANY = "*"  # forwarded_allow_ips: every peer is trusted
UNIX = "unix"  # forwarded_allow_ips: a peer on the Unix socket is trusted

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SECURE = {"https": True, "wss": True, "http": False, "ws": False}
# One RFC 7239 §4 forwarded-pair: token "=" ( token / quoted-string ).
_PAIR = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z:\[\]-]*)\s*'
)


class Client(NamedTuple):
    """The client as the app sees it."""

    addr: str  # an IP address; "" for a Unix socket peer nobody named
    secure: bool  # it reached us (or the proxy it trusts) over TLS


class TrustedPeers:
    """The peers whose proxy headers are believed (``forwarded_allow_ips``)."""

    __slots__ = ("any", "networks", "unix")

    def __init__(self, entries: Iterable[str]) -> None:
        """Each entry is an address, a network (``10.0.0.0/8``), ``'unix'`` or ``'*'``;
        anything else is a :class:`SettingError` naming it."""
        self.any = False
        self.unix = False
        self.networks: list[_Network] = []
        for entry in entries:
            text = entry.strip()
            if text == ANY:
                self.any = True
            elif text.lower() == UNIX:
                self.unix = True
            else:
                self.networks.append(_network(text))

    def trusts(self, host: str | None) -> bool:
        """Whether the peer ``host`` may send proxy headers (None: a Unix socket peer)."""
        if self.any:
            return True
        if host is None:
            return self.unix
        address = _address(host)
        return address is not None and any(address in net for net in self.networks)


def forwarded_client(
    peer: str | None,
    secure: bool,
    trusted: TrustedPeers,
    get_all: Callable[[str], list[str]],
) -> Client:
    """The client of one request whose direct peer is ``peer`` (None: a Unix socket
    peer), received over TLS if ``secure``; ``get_all(name)`` returns every value of a
    request header.

    An untrusted peer's headers change nothing. A trusted peer's change only what they
    name: no address header keeps the peer's address, no scheme keeps ``secure``.
    """
    fallback = Client(peer or "", secure)
    if not trusted.trusts(peer):
        return fallback
    hosts = _split(get_all("X-Forwarded-For"))
    protos = _split(get_all("X-Forwarded-Proto"))
    if not hosts and not protos:
        hosts, protos = _forwarded(get_all("Forwarded"))
    index = _client_index(hosts, trusted)
    addr = fallback.addr
    if index is not None:
        addr = _canonical(hosts[index]) or addr
    proto = ""
    if protos:
        # Aligned with the addresses when each hop added one of each; otherwise the one
        # the trusted peer set.
        aligned = index is not None and len(protos) == len(hosts)
        proto = (protos[index] if aligned and index is not None else protos[-1]).lower()
    return Client(addr, _SECURE.get(proto, secure))


#: Entries of an address header looked at from the right, at most: a chain of trusted
#: proxies is a few hops long, and each look parses an address (some 3 µs), so a 64 KiB
#: header of thousands of trusted-looking entries cost 30 ms per request before.
MAX_PROXY_HOPS = 32


def _client_index(hosts: list[str], trusted: TrustedPeers) -> int | None:
    """The right-most entry that is not a trusted proxy (all trusted: the left-most;
    past MAX_PROXY_HOPS trusted entries, the last one looked at)."""
    if not hosts:
        return None
    if trusted.any:
        return 0  # every entry is trusted: nothing to parse but the client's
    last = max(len(hosts) - MAX_PROXY_HOPS, 0)
    for index in range(len(hosts) - 1, last - 1, -1):
        if not trusted.trusts(_canonical(hosts[index]) or hosts[index]):
            return index
    return last


def _split(values: list[str]) -> list[str]:
    """The entries of a comma-separated header, over all its lines (RFC 9110 §5.3)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _forwarded(values: list[str]) -> tuple[list[str], list[str]]:
    """The ``for`` and ``proto`` of each element of ``Forwarded`` (RFC 7239 §4), one per
    element ("" where an element has none); nothing at all for a malformed header."""
    hosts: list[str] = []
    protos: list[str] = []
    for value in values:
        for element in _elements(value):
            if element is None:
                return [], []
            hosts.append(element.get("for", ""))
            protos.append(element.get("proto", ""))
    if not any(protos):
        protos = []
    return hosts, protos


def _elements(value: str) -> Iterable[dict[str, str] | None]:
    """Each element's pairs, lower-case names, unquoted values; None where malformed."""
    position, end = 0, len(value)
    pairs: dict[str, str] = {}
    while position < end:
        match = _PAIR.match(value, position)
        if match is None:
            yield None
            return
        name, raw = match.group(1).lower(), match.group(2)
        pairs[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
        separator = value[position : position + 1]
        position += 1
        if separator == ",":
            yield pairs
            pairs = {}
        elif separator not in (";", ""):
            yield None
            return
    if pairs:
        yield pairs


def _canonical(host: str) -> str:
    """An entry as an IP address (port and brackets dropped, IPv4-mapped IPv6 as IPv4),
    or "" if it is none: RFC 7239's ``unknown`` and obfuscated names name no address."""
    text = host.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # an IPv4 address with a port
    address = _address(text)
    return str(address) if address is not None else ""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(text: str) -> _Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise SettingError(
            f"forwarded_allow_ips: {text!r} is not an address, a network such as "
            "10.0.0.0/8 (no host bits set), 'unix' or '*'"
        ) from None
