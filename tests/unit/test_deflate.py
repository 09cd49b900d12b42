"""permessage-deflate per message (RFC 7692): what is compressed, and how it is read back.

A connection is driven as the event loop drives it, with the fake transport and worker
double of the connection fuzz test; what the server writes is read back by websockets'
own client-side protocol with the negotiated extension, so a frame a real client could
not inflate fails here.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from unit.test_connection_fuzz import FakeTransport, StubWorker, client_frame
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.headers import parse_extension
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from swoolish.core.deflate import compress_message, inflate_message
from swoolish.worker.http import HttpConnection

OFFER = "permessage-deflate; client_max_window_bits"  # what a browser sends


def open_session(offer: str = OFFER, **settings: Any) -> tuple[StubWorker, FakeTransport, Any]:
    """A session whose client offered permessage-deflate; the server's 101 is written."""
    worker = StubWorker(compression=True)
    worker.settings.update({"max_message_size": 1 << 20, **settings})
    transport = FakeTransport()
    transport.protocol = HttpConnection(worker)
    transport.protocol.connection_made(transport)
    transport.protocol.data_received(
        (
            "GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"
        ).encode()
    )
    return worker, transport, transport.protocol


def server_frames(out: bytes) -> tuple[str, list[tuple[int, bytes]], list[Any]]:
    """The negotiated extension header, each server frame as (first byte, payload on the
    wire), and the frames as a websockets client with that extension decodes them."""
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    [extension] = [
        line.partition(":")[2].strip()
        for line in head.decode("latin-1").split("\r\n")
        if line.lower().startswith("sec-websocket-extensions:")
    ]
    raw = []
    pos = 0
    while pos < len(rest):
        b0, n = rest[pos], rest[pos + 1] & 0x7F
        start = pos + 2
        if n == 126:
            n, start = int.from_bytes(rest[pos + 2 : pos + 4], "big"), pos + 4
        raw.append((b0, rest[start : start + n]))
        pos = start + n
    client = ClientProtocol(parse_uri("ws://127.0.0.1/chat"), state=OPEN, max_size=None)
    [(_, params)] = parse_extension(extension)
    client.extensions = [ClientPerMessageDeflateFactory().process_response_params(params, [])]
    client.receive_data(rest)
    assert client.parser_exc is None, client.parser_exc
    return extension, raw, list(client.events_received())


def compressed_client_frame(opcode: int, payload: bytes) -> bytes:
    """A browser's compressed message, a stream of its own (client_no_context_takeover)."""
    comp = zlib.compressobj(wbits=-15)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    return client_frame(opcode, data[:-4], rsv=4)


def test_each_compressed_message_inflates_alone() -> None:
    """The shared compressor's messages never refer to an earlier one: each inflates with
    a fresh decompressor, in any order, and the limit refuses what inflates past it."""
    messages = [b"hello " * 200, b"hello " * 200, b"", b"x" * 5000, bytes(range(256))]
    compressed = [compress_message(m) for m in messages]
    assert len(compressed[1]) == len(compressed[0])  # no back-reference into message 0
    for message, data in reversed(list(zip(messages, compressed, strict=True))):
        assert inflate_message(data, 15, 1 << 20) == message
    assert inflate_message(compressed[3], 15, 4999) is None  # inflates past the limit
    assert inflate_message(b"\xff\xff\xff", 15, 1 << 20) is None  # not deflate data


def test_small_messages_go_uncompressed_large_ones_compressed() -> None:
    """Under websocket_compression_threshold RSV1 is clear and the payload is plain;
    at it and over, RSV1 is set; a websockets client decodes both to what was pushed."""
    _, transport, conn = open_session(websocket_compression_threshold=512)
    small, large = "s" * 511, "L" * 512
    assert conn.push(small, None) and conn.push(large.encode(), None)
    extension, raw, frames = server_frames(bytes(transport.out))
    assert "server_no_context_takeover" in extension
    assert "client_no_context_takeover" in extension
    assert raw[0] == (0x81, small.encode())
    assert raw[1][0] == 0xC2 and len(raw[1][1]) < 100
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.TEXT, small.encode()),
        (Opcode.BINARY, large.encode()),
    ]


def test_the_window_the_client_asked_for_is_kept() -> None:
    """A client that asked for server_max_window_bits=9 gets messages that refer at most
    512 bytes back (RFC 7692 §7.1.2.1): a 9-bit decompressor inflates them."""
    _, transport, conn = open_session(f"{OFFER}; server_max_window_bits=9")
    message = random.Random(7).randbytes(1000) * 60  # repeats only 1,000 bytes back
    assert conn.push(message, None)
    extension, raw, frames = server_frames(bytes(transport.out))
    assert "server_max_window_bits=9" in extension
    inflated = zlib.decompressobj(wbits=-9).decompress(raw[0][1] + b"\x00\x00\xff\xff")
    assert inflated == message == frames[0].data


def test_threshold_zero_compresses_every_message() -> None:
    _, transport, conn = open_session(websocket_compression_threshold=0)
    for message in ("", "a", "b" * 100):
        assert conn.push(message, None)
    _, raw, frames = server_frames(bytes(transport.out))
    assert [b0 for b0, _ in raw] == [0xC1, 0xC1, 0xC1]
    assert [f.data for f in frames] == [b"", b"a", b"b" * 100]


def test_context_takeover_keeps_a_compressor_per_connection() -> None:
    """With the setting on, the server does not promise server_no_context_takeover and a
    repeated message refers back to the first: smaller, and still decoded in order."""
    _, transport, conn = open_session(
        websocket_compression_threshold=0, websocket_compression_context_takeover=True
    )
    message = "".join(f"{i:05d}," for i in range(300))
    assert conn.push(message, None) and conn.push(message, None)
    extension, raw, frames = server_frames(bytes(transport.out))
    assert "server_no_context_takeover" not in extension
    assert len(raw[1][1]) < len(raw[0][1]) // 4
    assert [f.data for f in frames] == [message.encode()] * 2


def test_compressed_client_messages_take_the_fast_path() -> None:
    """A browser's compressed messages, small and large, text and binary, are inflated
    without the protocol object and echoed: small ones plain, large ones compressed."""
    worker, transport, conn = open_session()
    big = ("é" * 400).encode()
    conn.data_received(
        compressed_client_frame(1, b"hi")
        + compressed_client_frame(2, b"\x00\x01" * 300)
        + client_frame(1, b"plain")
        + compressed_client_frame(1, big)
    )
    assert conn.ws is None, "a compressed message left the fast path"
    _, raw, frames = server_frames(bytes(transport.out))
    assert [b0 for b0, _ in raw] == [0x81, 0xC2, 0x81, 0xC1]
    assert [f.data for f in frames] == [b"hi", b"\x00\x01" * 300, b"plain", big]
    assert worker.connections.messages()[0] == 4


def test_a_corrupt_compressed_message_is_left_to_the_protocol() -> None:
    """Data that does not inflate leaves the fast path; the protocol fails the connection
    (1002, as websockets' extension reports a decompression failure)."""
    worker, transport, conn = open_session()
    conn.data_received(client_frame(1, b"\xff\xff\xff\xff", rsv=4))
    out = bytes(transport.out).partition(b"\r\n\r\n")[2]
    assert out[0] == 0x88 and int.from_bytes(out[2:4], "big") == 1002
    assert worker.connections.messages()[0] == 0
