"""The client behind a proxy (swoolish.core.proxy): who is trusted, which entry counts."""

from __future__ import annotations

import pytest

from swoolish.core.errors import SettingError
from swoolish.core.proxy import Client, TrustedPeers, forwarded_client
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
