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

Only the entries that can name the client are read: the right-most ``MAX_PROXY_HOPS``
(with ``*``, the left-most alone). A ``Forwarded`` element further left is neither
parsed nor checked, so a malformed one there changes nothing, and a long header costs
what its last elements cost.

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
# RFC 7239 §4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ), and
# forwarded-pair = token "=" value, value = token / quoted-string (RFC 9110 §5.6.4: a
# quoted-string may hold commas and semicolons, and "\" escapes any character). Every
# quantifier is possessive and every alternative atomic: no input makes the matcher
# backtrack.
_QUOTED = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_VALUE = rf"(?:{_QUOTED}|[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]*+)"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]++"
# One element's pairs, each followed by ";" or the end, in one pass: a group in a
# repetition keeps its last match, so group 1 is the last "for" value (raw), group 2 the
# last "proto" value (names are case-insensitive).
_PAIR = rf"\s*+(?>(?i:for)=({_VALUE})|(?i:proto)=({_VALUE})|{_TOKEN}={_VALUE})\s*+"
_ELEMENT = re.compile(rf"(?:{_PAIR}(?:;|\Z))*+")
# The header cut at its commas, quoted strings kept whole (a stray quote is a character
# like any other, and the element holding it is malformed): (text, "," or "") each.
_PIECES = re.compile(rf'((?:[^,"]++|{_QUOTED}|")*+)(,|\Z)')


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
        hosts, protos = _forwarded(get_all("Forwarded"), trusted.any)
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


#: Entries of an address header (or elements of ``Forwarded``) looked at from the right,
#: at most: a chain of trusted proxies is a few hops long, and each look parses an
#: address (some 3 µs), so a 64 KiB header of thousands of trusted-looking entries cost
#: 30 ms per request before. Of ``Forwarded``, only those elements are parsed at all:
#: parsing every element of a 60 KB header cost 4 to 16 ms per request.
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


def _forwarded(values: list[str], any_trusted: bool) -> tuple[list[str], list[str]]:
    """The ``for`` and ``proto`` of the elements of ``Forwarded`` (RFC 7239 §4) that may
    name the client, one per element ("" where an element has none): the right-most
    MAX_PROXY_HOPS, or with every peer trusted (``any_trusted``) the left-most alone.
    Nothing at all when one of those is malformed. Elements further left are neither
    parsed nor checked, so a header of thousands costs what 32 cost (docs/security.md,
    "Remote clients")."""
    if any_trusted:
        elements = _first_element(values)
    else:
        elements = _last_elements(values, MAX_PROXY_HOPS)
    hosts: list[str] = []
    protos: list[str] = []
    for text, at_end in elements:
        element = _for_and_proto(text, at_end)
        if element is None:
            return [], []
        hosts.append(element[0])
        protos.append(element[1])
    if not any(protos):
        protos = []
    return hosts, protos


_Element = tuple[str, bool]  # its text; whether it ends its line (a trailing ";" allowed)


def _first_element(values: list[str]) -> list[_Element]:
    """The left-most element of the header's lines (an empty line has none)."""
    for value in values:
        if value:
            match = _PIECES.match(value)
            assert match is not None  # it matches any text up to a comma or the end
            return [(match.group(1), not match.group(2))]
    return []


def _last_elements(values: list[str], count: int) -> list[_Element]:
    """The right-most ``count`` elements of the header's lines, left to right; the text
    left of them is only cut at its commas (without a quote in a line, not even that)."""
    found: list[_Element] = []
    for value in reversed(values):
        found[:0] = _line_tail(value, count - len(found))
        if len(found) == count:
            break
    return found


def _line_tail(value: str, count: int) -> list[_Element]:
    """The right-most ``count`` elements of one line, left to right."""
    # One piece more than asked for: the line may end with a comma (an empty piece).
    pieces = value.rsplit(",", count + 1)[-count - 1 :]
    if len(pieces) > 1 and any('"' in piece for piece in pieces):
        # A comma there may be inside a quoted string: cut the line exactly. Without a
        # quote there, no quoted string can reach them from the left (it would end
        # there), so the plain cut is exact; so is a line without a comma.
        pieces = [piece for piece, _ in _cuts(value)[-count - 1 :]]
    if pieces[-1]:
        ends = [False] * (len(pieces) - 1) + [True]
    else:
        pieces.pop()  # after a trailing comma, or the empty line
        ends = [False] * len(pieces)
    start = max(len(pieces) - count, 0)
    return list(zip(pieces[start:], ends[start:], strict=True))


def _cuts(value: str) -> list[tuple[str, str]]:
    """``value.split(",")`` where a comma inside a quoted string cuts nothing, as
    (piece, the comma after it or "")."""
    cuts: list[tuple[str, str]] = _PIECES.findall(value)
    if len(cuts) > 1 and not cuts[-2][1]:
        cuts.pop()  # the empty match at the end, after a last piece that reached it
    return cuts


def _for_and_proto(text: str, at_end: bool) -> tuple[str, str] | None:
    """The unquoted ``for`` and ``proto`` of one element ("" for a missing one; the
    last of a repeated one); None when the element is malformed."""
    if at_end and text.endswith(";"):
        text = text[:-1]  # "for=a;" ends a line as well as "for=a"
    if not text or text.endswith(";"):
        return None  # no pair, or a ";" with no pair after it
    match = _ELEMENT.fullmatch(text)
    if match is None:
        return None
    return _unquoted(match.group(1)), _unquoted(match.group(2))


def _unquoted(raw: str | None) -> str:
    if raw is None:
        return ""
    return _unquote(raw[1:-1]) if raw.startswith('"') else raw


def _unquote(text: str) -> str:
    """The content of a quoted-string: each backslash and the character it escapes
    replaced by that character (RFC 9110 §5.6.4), left to right, as the pairs go."""
    if "\\" not in text:
        return text
    if "\\\\" not in text:
        return text.replace("\\", "")  # no backslash is escaped: each escapes the next
    if "\0" in text:  # never in a header value (RFC 9110 §5.5); kept exact anyway
        return "".join(_QUOTED_PAIR.split(text))
    # An escaped backslash first (left to right, as the pairs go), then the other pairs.
    return text.replace("\\\\", "\0").replace("\\", "").replace("\0", "\\")


_QUOTED_PAIR = re.compile(r"\\(.)")


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
