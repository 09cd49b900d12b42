"""The client behind a proxy (swoolish.core.proxy): who is trusted, which entry counts."""

from __future__ import annotations

import random
import re
import sys

import pytest

from swoolish.core.errors import SettingError
from swoolish.core.proxy import (
    MAX_PROXY_HOPS,
    Client,
    TrustedPeers,
    _canonical,
    forwarded_client,
)
from swoolish.core.settings import Settings

LOCAL = TrustedPeers(["127.0.0.1", "::1"])


def headers(**fields: str | list[str]):
    """A ``get_all`` over ``fields`` (x_forwarded_for= names X-Forwarded-For)."""
    table = {
        name.replace("_", "-").lower(): value if isinstance(value, list) else [value]
        for name, value in fields.items()
    }
    return lambda name: table.get(name.lower(), [])


def client(peer, trusted=LOCAL, secure=False, **fields):
    return forwarded_client(peer, secure, trusted, headers(**fields))


# ---------------------------------------------------------------------------- trust


def test_trusted_peers_match_addresses_networks_unix_and_any():
    trusted = TrustedPeers(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "unix"])
    assert trusted.trusts("10.1.2.3") and trusted.trusts("192.0.2.7")
    assert trusted.trusts("2001:db8::1") and trusted.trusts(None)
    assert not trusted.trusts("192.0.2.8") and not trusted.trusts("11.0.0.1")
    assert not trusted.trusts("not an address") and not trusted.trusts("")
    # a dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses
    assert trusted.trusts("::ffff:10.9.9.9")
    assert not LOCAL.trusts(None), "a Unix socket peer is trusted only when listed"
    everyone = TrustedPeers(["*"])
    assert everyone.trusts("203.0.113.9") and everyone.trusts(None)


@pytest.mark.parametrize("entry", ["example.com", "10.0.0.1/8", "10.0.0.0/33", "", "1.2.3"])
def test_a_bad_entry_is_refused_by_name(entry):
    with pytest.raises(SettingError, match=r"forwarded_allow_ips: .* is not an address"):
        TrustedPeers([entry])


def test_the_setting_is_checked_when_set():
    with pytest.raises(SettingError, match="'localhost' is not an address"):
        Settings({"forwarded_allow_ips": ["localhost"]})
    assert Settings({"forwarded_allow_ips": ["unix", "*"]}).forwarded_allow_ips == ("unix", "*")


# ---------------------------------------------------------------------------- the address


def test_an_untrusted_peer_cannot_claim_another_address():
    forged = client("203.0.113.5", x_forwarded_for="1.2.3.4", x_forwarded_proto="https")
    assert forged == Client("203.0.113.5", False)


def test_a_trusted_peer_names_the_client():
    assert client("127.0.0.1", x_forwarded_for="198.51.100.7") == Client("198.51.100.7", False)


def test_without_headers_the_peer_is_the_client():
    assert client("127.0.0.1") == Client("127.0.0.1", False)
    assert client("127.0.0.1", secure=True) == Client("127.0.0.1", True)


def test_the_right_most_untrusted_entry_is_the_client():
    # The client wrote "6.6.6.6" itself; the trusted proxy appended the real address.
    chain = "6.6.6.6, 198.51.100.7, 127.0.0.1"
    assert client("127.0.0.1", x_forwarded_for=chain).addr == "198.51.100.7"
    two_lines = ["6.6.6.6", "198.51.100.7"]
    assert client("127.0.0.1", x_forwarded_for=two_lines).addr == "198.51.100.7"


def test_every_entry_trusted_means_the_left_most_is_the_client():
    assert client("127.0.0.1", x_forwarded_for="::1, 127.0.0.1").addr == "::1"
    everyone = TrustedPeers(["*"])
    assert client("10.0.0.1", everyone, x_forwarded_for="6.6.6.6, 10.0.0.2").addr == "6.6.6.6"


def test_a_chain_past_32_trusted_entries_is_looked_at_from_the_right_32_deep():
    """Thousands of entries cost one look each no more: with every peer trusted, the
    left-most is taken as it is; otherwise 32 trusted entries from the right at most."""
    forged = ", ".join(["6.6.6.6"] + ["127.0.0.1"] * 10_000)
    everyone = TrustedPeers(["*"])
    assert client("10.0.0.1", everyone, x_forwarded_for=forged).addr == "6.6.6.6"
    assert client("127.0.0.1", x_forwarded_for=forged).addr == "127.0.0.1"
    chain = ", ".join(["198.51.100.7"] + ["127.0.0.1"] * 31)
    assert client("127.0.0.1", x_forwarded_for=chain).addr == "198.51.100.7"


def test_entries_are_canonical_addresses():
    assert client("127.0.0.1", x_forwarded_for="198.51.100.7:4711").addr == "198.51.100.7"
    assert client("127.0.0.1", x_forwarded_for="[2001:DB8::1]:443").addr == "2001:db8::1"
    assert client("127.0.0.1", x_forwarded_for="::ffff:198.51.100.7").addr == "198.51.100.7"


def test_an_entry_that_is_no_address_leaves_the_peer():
    assert client("127.0.0.1", x_forwarded_for="unknown").addr == "127.0.0.1"
    assert client("127.0.0.1", x_forwarded_for="<script>").addr == "127.0.0.1"


def test_a_unix_socket_peer():
    unix = TrustedPeers(["unix"])
    assert client(None, unix, x_forwarded_for="198.51.100.7").addr == "198.51.100.7"
    assert client(None, x_forwarded_for="198.51.100.7") == Client("", False), "not trusted"
    assert client(None, unix) == Client("", False)


# ---------------------------------------------------------------------------- the scheme


@pytest.mark.parametrize(
    ("proto", "secure"), [("https", True), ("wss", True), ("HTTPS", True), ("http", False)]
)
def test_the_scheme_comes_from_x_forwarded_proto(proto, secure):
    assert client("127.0.0.1", x_forwarded_proto=proto).secure is secure
    assert client("127.0.0.1", secure=True, x_forwarded_proto=proto).secure is secure


def test_an_unknown_scheme_changes_nothing():
    assert client("127.0.0.1", secure=True, x_forwarded_proto="gopher").secure is True


def test_the_scheme_follows_the_hop_of_the_client():
    # client -https-> edge proxy -http-> nginx (trusted) -> us: each hop added one of each
    view = client(
        "127.0.0.1",
        TrustedPeers(["127.0.0.1", "10.0.0.0/8"]),
        x_forwarded_for="198.51.100.7, 10.0.0.5",
        x_forwarded_proto="https, http",
    )
    assert view == Client("198.51.100.7", True)
    # counts that do not match: the trusted peer's own (right-most) value
    mismatched = client(
        "127.0.0.1", x_forwarded_for="198.51.100.7", x_forwarded_proto="http, https"
    )
    assert mismatched == Client("198.51.100.7", True)


# ---------------------------------------------------------------------------- Forwarded


def test_forwarded_is_read_when_no_x_forwarded_header_is_there():
    value = 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https;by=10.0.0.1'
    assert client("127.0.0.1", forwarded=value) == Client("2001:db8::7", True)
    assert client("127.0.0.1", forwarded="For=198.51.100.7;Proto=http", secure=True) == Client(
        "198.51.100.7", False
    )


def test_x_forwarded_headers_win_over_forwarded():
    view = client("127.0.0.1", x_forwarded_for="198.51.100.7", forwarded="for=6.6.6.6")
    assert view.addr == "198.51.100.7"


@pytest.mark.parametrize("value", ["for", "for=1.2.3.4 junk", 'for="1.2.3.4', "for=1.2.3.4;;"])
def test_a_malformed_forwarded_header_is_ignored(value):
    assert client("127.0.0.1", forwarded=value) == Client("127.0.0.1", False)


def test_forwarded_unknown_and_obfuscated_leave_the_peer():
    assert client("127.0.0.1", forwarded="for=unknown").addr == "127.0.0.1"
    assert client("127.0.0.1", forwarded="for=_hidden;proto=https") == Client("127.0.0.1", True)


def test_forwarded_from_an_untrusted_peer_is_ignored():
    view = client("203.0.113.5", forwarded="for=1.2.3.4;proto=https")
    assert view == Client("203.0.113.5", False)


# ---------------------------------------------------------------------------- Forwarded, long


def pattern_calls(call):
    """``call()``'s result, and how many times it ran a compiled regular expression
    (``re.Pattern`` methods, ``re.sub`` included): the work of parsing, counted without
    a clock."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "c_call" and isinstance(getattr(arg, "__self__", None), re.Pattern):
            calls += 1

    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    return result, calls


def test_a_long_forwarded_is_read_from_the_right_32_elements_deep():
    """10,000 elements, a malformed one far on the left: answered as the right-most 32
    say, after parsing no more than those (the whole header was parsed before, pair by
    pair, and the malformed element made it answer with the peer's address)."""
    chain = ["for=6.6.6.6", "for"] + ["for=6.6.6.6"] * 9_966 + ["for=198.51.100.7;proto=https"]
    value = ", ".join(chain + ["for=127.0.0.1"] * 31)
    view, calls = pattern_calls(lambda: client("127.0.0.1", forwarded=value))
    assert view == Client("198.51.100.7", True)
    assert calls <= 2 * MAX_PROXY_HOPS, f"{calls} regular expression calls for 32 elements"


def test_with_every_peer_trusted_only_the_left_most_forwarded_element_is_read():
    everyone = TrustedPeers(["*"])
    value = ", ".join(
        ["for=198.51.100.7;proto=https", 'for="unterminated'] + ["for=6.6.6.6"] * 9_998
    )
    view, calls = pattern_calls(lambda: client("10.0.0.1", everyone, forwarded=value))
    assert view == Client("198.51.100.7", True)
    assert calls <= 2


def test_a_malformed_element_among_the_last_32_still_voids_forwarded():
    value = ", ".join(["for=198.51.100.7"] * 100 + ["for=1.2.3.4 junk"] + ["for=127.0.0.1"] * 31)
    assert client("127.0.0.1", forwarded=value) == Client("127.0.0.1", False)


@pytest.mark.parametrize(
    ("value", "addr"),
    [
        # commas and semicolons inside quoted strings cut no element and no pair
        ('for=6.6.6.6, for="[2001:db8::7]:4711";by="a,b;c", for=127.0.0.1', "2001:db8::7"),
        ('by="x,for=6.6.6.6";for=198.51.100.7, for=127.0.0.1', "198.51.100.7"),
        ('for=198.51.100.7;host="a,\\"b,c", for=127.0.0.1', "198.51.100.7"),
        # escapes are undone in the entry looked at: "\1" is "1"
        ('for="\\1\\9\\8.51.100.7", for="127.0.0.1"', "198.51.100.7"),
        # the last of a repeated parameter counts; names are case-insensitive
        ("for=6.6.6.6;FOR=198.51.100.7, for=127.0.0.1", "198.51.100.7"),
        # a line may end with ";" or ","; several lines make one list
        (["for=198.51.100.7;", "for=127.0.0.1,"], "198.51.100.7"),
        (["for=198.51.100.7", "", "for=127.0.0.1"], "198.51.100.7"),
    ],
)
def test_forwarded_elements_are_cut_as_rfc_7239_says(value, addr):
    assert client("127.0.0.1", forwarded=value).addr == addr


@pytest.mark.parametrize(
    "value", ["for=1.2.3.4;, for=127.0.0.1", ", for=1.2.3.4", "for=1.2.3.4,, for=127.0.0.1"]
)
def test_an_empty_element_or_pair_voids_forwarded(value):
    assert client("127.0.0.1", forwarded=value) == Client("127.0.0.1", False)


# The whole header parsed left to right, pair by pair (RFC 7239 §4), as before the
# right-most 32 elements were all that is parsed: for every valid header, and for every
# header of at most 32 elements, the answer must not change.
_REFERENCE_PAIR = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z:\[\]-]*)\s*'
)


def reference_elements(value):
    position, pairs = 0, {}
    while position < len(value):
        match = _REFERENCE_PAIR.match(value, position)
        if match is None:
            yield None
            return
        raw = match.group(2)
        unquoted = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pairs[match.group(1).lower()] = unquoted
        position = match.end() + 1
        separator = value[match.end() : position]
        if separator == ",":
            yield pairs
            pairs = {}
        elif separator not in (";", ""):
            yield None
            return
    if pairs:
        yield pairs


def reference_client(peer, trusted, lines):
    elements = [element for line in lines for element in reference_elements(line)]
    if not trusted.trusts(peer) or None in elements or not elements:
        return Client(peer or "", False)
    hosts = [element.get("for", "") for element in elements]
    protos = [element.get("proto", "") for element in elements]
    if trusted.any:
        index = 0
    else:
        last = max(len(hosts) - MAX_PROXY_HOPS, 0)
        index = next(
            (
                i
                for i in range(len(hosts) - 1, last - 1, -1)
                if not trusted.trusts(_canonical(hosts[i]) or hosts[i])
            ),
            last,
        )
    addr = _canonical(hosts[index]) or peer or ""
    return Client(addr, {"https": True, "wss": True}.get(protos[index].lower(), False))


FOR = [
    "1.2.3.4",
    "127.0.0.1",
    "198.51.100.7",
    "[2001:db8::1]:443",
    '"[2001:db8::7]:4711"',
    '"\\1\\2\\7.0.0.1"',
    "unknown",
    "_hidden",
    '"a,b;c"',
    '"\\\\"',
    '"\\""',
    '""',
    "",
]
PROTO = ["http", "https", "HTTPS", "wss", '"https"', '"ht\\tps"', "gopher", ""]
OTHER = ["by", "host", "x-ext"]


def random_element(rng: random.Random) -> str:
    pairs = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(["for", "For", "proto", "PROTO", *OTHER])
        values = FOR if name.lower() == "for" else PROTO if name.lower() == "proto" else FOR + PROTO
        space = rng.choice(["", "", " ", "\t"])
        pairs.append(f"{space}{name}={rng.choice(values)}{rng.choice(['', ' '])}")
    return ";".join(pairs)


def random_line(rng: random.Random, elements: int) -> str:
    line = ",".join(random_element(rng) for _ in range(elements))
    return line + rng.choice(["", "", ",", ";"]) if line else line


def random_damage(rng: random.Random, line: str) -> str:
    at = rng.randrange(len(line) + 1)
    return line[:at] + rng.choice([";", ",", " ", '"', "\\", "=", "for", "é"]) + line[at:]


@pytest.mark.parametrize("seed", range(4))
def test_forwarded_answers_as_the_whole_header_parsed_left_to_right(seed):
    """Random headers, valid ones up to 80 elements and damaged ones up to 16 (all of
    which are read, unless every peer is trusted), from trusted and untrusted peers: the
    same answer as the reference parser's."""
    rng = random.Random(seed)
    trusts = [LOCAL, TrustedPeers(["unix", "10.0.0.0/8"])]
    for _ in range(500):
        many = rng.random() < 0.3
        lines = [
            random_line(rng, rng.randint(0, 40 if many else 8)) for _ in range(rng.randint(1, 2))
        ]
        damaged = not many and rng.random() < 0.5
        if damaged:
            lines[-1] = random_damage(rng, lines[-1])
        for trusted in trusts if damaged else [*trusts, TrustedPeers(["*"])]:
            for peer in ("127.0.0.1", None, "10.1.1.1"):
                expected = reference_client(peer, trusted, lines)
                assert client(peer, trusted, forwarded=lines) == expected, lines
