"""The compiled reader of plain handshake heads (``upgrade_head``) against httptools.

The worker answers a handshake read by ``upgrade_head`` without a parser
(``HttpConnection._upgrade_at_once``), so whatever it accepts must be read exactly as
httptools reads it: the same target, version, fields (grouped by name as the worker
groups those httptools hands over, ``parsed_headers``), end of the head and keep-alive,
and only requests httptools also calls an upgrade. Everything else must be declined
(None) and so left to httptools. Checked on the handshakes clients send and on tens of
thousands of mutations of them.
"""

from __future__ import annotations

import random

import httptools
import pytest

from swoolish.core.heads import upgrade_head
from swoolish.worker.http import MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from swoolish.worker.request import parsed_headers

pytestmark = pytest.mark.skipif(
    upgrade_head is None, reason="the C accelerator was not built (or SWOOLISH_NO_SPEEDUPS is set)"
)

KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
HANDSHAKES = [
    # websockets, picows/aiohttp style clients, a browser
    (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:9501\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n\r\n"
    ),
    (
        "GET /chat?room=1&x=%20y HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "Origin: https://example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
        "Accept-Encoding: gzip, deflate, br\r\nCookie: a=b; c=d\r\n\r\n"
    ),
    (
        "GET /ws HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        f"{KEY}Sec-WebSocket-Version: 13\r\n\r\n"
    ),
]


class Recorder:
    """What httptools makes of a head: its callbacks' arguments."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[str, str]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # as HttpConnection.on_header: without the spaces and tabs after the value
        self.fields.append((name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")))

    def on_message_complete(self) -> None:
        self.complete = True


def parser_reading(data: bytes) -> tuple | None:
    """httptools' reading of ``data`` as the start of a connection, in
    ``upgrade_head``'s terms, or None unless it makes a GET upgrade of it."""
    seen = Recorder()
    parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as upgrade:
        if parser.get_method() != b"GET" or not seen.complete:
            return None
        return (
            seen.url.decode("latin-1"),
            parser.get_http_version(),
            seen.fields,
            parsed_headers(seen.fields)._dict,
            upgrade.args[0],
            parser.should_keep_alive(),
        )
    except httptools.HttpParserError:
        return None
    return None


def check(data: bytes) -> str:
    """Assert that ``upgrade_head`` reads ``data`` as httptools does or declines it;
    say which."""
    ours = upgrade_head(data, MAX_HEADER_FIELDS, MAX_HEADER_BYTES)
    if ours is None:
        return "declined"
    assert ours == parser_reading(data), data
    return "read"


@pytest.mark.parametrize("text", HANDSHAKES)
def test_the_handshakes_clients_send_are_read_as_httptools_reads_them(text):
    data = text.encode()
    assert check(data) == "read"
    assert check(data + b"\x81\x85abcd") == "read"  # a frame right behind the head
    for cut in range(len(data)):
        assert upgrade_head(data[:cut], MAX_HEADER_FIELDS, MAX_HEADER_BYTES) is None


# the bytes that separate the reading of a head from another
SPICE = [
    b"\r", b"\n", b"\r\n", b"\t", b" ", b":", b",", b";", b"\x00", b"\x7f", b"\x80", b"\xff",
    b'"', b"#", b"<", b"{", b"\\", b"/", b"?", b"%", b"=", b"a", b"Z", b"-", b"_", b"0",
    b"Upgrade", b"upgrade", b"close", b"keep-alive", b"Connection: ", b"Upgrade: ",
    b"Content-Length: 0", b"Transfer-Encoding: chunked", b"Proxy-Connection: close",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"GET", b"POST",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        action = rng.random()
        piece = rng.choice(SPICE)
        if action < 0.4:
            data = data[:at] + piece + data[at:]
        elif action < 0.8:
            data = data[:at] + piece + data[at + rng.randint(1, 4) :]
        else:
            data = data[:at] + data[at + rng.randint(1, 6) :]
    return data


def test_mutated_handshakes_are_read_as_httptools_reads_them_or_declined():
    rng = random.Random(7692)
    outcomes = {"read": 0, "declined": 0}
    for _ in range(30_000):
        outcomes[check(mutate(rng, rng.choice(HANDSHAKES).encode()))] += 1
    # both sides of the line are exercised, not only one
    assert outcomes["read"] > 3_000 and outcomes["declined"] > 3_000, outcomes


@pytest.mark.parametrize(
    "connection",
    ["Upgrade", "upgrade", "UPGRADE", "keep-alive, Upgrade", "Upgrade,close", "close, upgrade",
     " Upgrade ", "Upgrade,", ",Upgrade", "keep-alive", "close", "Upgrade, Upgrade",
     "Upgrade x", "Upgrade;q=1", "Upgrade\t,\tkeep-alive", "upgrades", "", "foo, bar"],
)  # fmt: skip
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_connection_options_are_read_as_httptools_reads_them(connection, version):
    data = (
        f"GET / HTTP/{version}\r\nHost: h\r\nUpgrade: websocket\r\nConnection: {connection}\r\n"
        f"{KEY}\r\n"
    ).encode()
    check(data)


@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket, h2c", "x", "", " ", "\t"])
def test_upgrade_fields_are_read_as_httptools_reads_them(upgrade):
    """An empty ``Upgrade`` is no upgrade to llhttp: that request is a plain GET."""
    data = f"GET / HTTP/1.1\r\nHost: h\r\nUpgrade:{upgrade}\r\nConnection: Upgrade\r\n{KEY}\r\n"
    assert check(data.encode()) == ("read" if upgrade.strip() else "declined")


@pytest.mark.parametrize(
    "extra",
    ["Content-Length: 0\r\n", "Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n",
     "Proxy-Connection: keep-alive\r\n", "X: \x01\r\n", "X: caf\xe9\r\n", " X: folded\r\n",
     "X : y\r\n", "X:\r\n y\r\n"],
)  # fmt: skip
def test_heads_httptools_must_judge_are_declined(extra):
    data = (
        f"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}"
        f"{KEY}\r\n"
    ).encode("latin-1")
    assert upgrade_head(data, MAX_HEADER_FIELDS, MAX_HEADER_BYTES) is None


def test_heads_past_the_limits_are_left_to_the_parser_that_refuses_them():
    head = f"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}"
    many = head + "".join(f"X-{i}: {i}\r\n" for i in range(MAX_HEADER_FIELDS)) + "\r\n"
    assert upgrade_head(many.encode(), MAX_HEADER_FIELDS, MAX_HEADER_BYTES) is None
    assert upgrade_head(many.encode(), MAX_HEADER_FIELDS + 10, MAX_HEADER_BYTES) is not None
    long = head + "X: " + "y" * MAX_HEADER_BYTES + "\r\n\r\n"
    assert upgrade_head(long.encode(), MAX_HEADER_FIELDS, MAX_HEADER_BYTES) is None
    assert upgrade_head(long.encode(), MAX_HEADER_FIELDS, 2 * MAX_HEADER_BYTES) is not None


@pytest.mark.parametrize("length", [1, 255, 256, 257, 1000])
def test_field_names_of_any_length_are_grouped_as_httptools_reads_them(length):
    name = "X-" + "Ab" * (length // 2) + "c" * (length % 2)
    data = (
        f"GET / HTTP/1.1\r\n{name}: 1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"{name.upper()}: 2\r\n{KEY}\r\n"
    ).encode()
    assert check(data) == "read"
    assert upgrade_head(data, MAX_HEADER_FIELDS, MAX_HEADER_BYTES)[3][name.lower()] == ["1", "2"]


def test_it_takes_bytes_only():
    with pytest.raises(TypeError):
        upgrade_head(bytearray(HANDSHAKES[0].encode()), MAX_HEADER_FIELDS, MAX_HEADER_BYTES)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spelling", ["Sec-WebSocket-Key", "sec-websocket-key", "SEC-WEBSOCKET-KEY", "Sec-Websocket-Key"]
)
def test_known_names_in_any_spelling_are_read_as_sent_and_grouped_in_lower_case(spelling):
    # The names and values every handshake carries are str objects made once; one spelt
    # otherwise is still the client's spelling in the field list, and its values still
    # go under the one lower-case key, with the field spelt as usual.
    data = (
        f"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}"
        f"{spelling}: 13\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    assert check(data) == "read"
    _, _, fields, by_name, _, _ = upgrade_head(data, MAX_HEADER_FIELDS, MAX_HEADER_BYTES)
    assert fields[3] == (spelling, "13")
    assert by_name["sec-websocket-key"] == ["dGhlIHNhbXBsZSBub25jZQ==", "13"]
    assert by_name["sec-websocket-version"] == ["13"]
    assert list(by_name) == ["upgrade", "connection", "sec-websocket-key", "sec-websocket-version"]
