"""permessage-deflate (RFC 7692) on a real `swoolish serve`: per-message compression,
compressed messages both ways, and a compressed connection moved by a reload."""

from __future__ import annotations

import random
import signal
import socket
import zlib

from support import (
    masked_frame,
    raw_connect,
    server_has_read_everything,
    serving,
    timeout,
    upgrade_with,
    wait_until,
    write_app,
)

TARGET = "tests/apps/echo_app.py:server"
OFFER = "permessage-deflate; client_max_window_bits"  # what a browser sends
TAIL = b"\x00\x00\xff\xff"  # the end of a compressed message, left off on the wire

APP = """
from swoolish import WebSocketServer

VERSION = {version!r}
server = WebSocketServer()

@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, VERSION + ":" + frame.data)
"""


def deflate_handshake(port: int, offer: str = OFFER) -> tuple[socket.socket, str, bytes]:
    """A raw connection that offered permessage-deflate: socket, extension answer, rest."""
    sock = raw_connect(port)
    head, rest = upgrade_with(sock, headers=f"Sec-WebSocket-Extensions: {offer}\r\n")
    extension = ""
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-extensions":
            extension = value.strip()
    return sock, extension, rest


def compressed_frame(payload: bytes) -> bytes:
    """A compressed text message, a stream of its own, as a browser sends it."""
    comp = zlib.compressobj(wbits=-15)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    frame = bytearray(masked_frame(1, data[:-4]))
    frame[0] |= 0x40  # RSV1: compressed (RFC 7692 §6)
    return bytes(frame)


def read_frames(sock: socket.socket, count: int, buffer: bytes) -> list[tuple[int, bytes]]:
    """``count`` server frames as (first byte, payload inflated if RSV1 is set)."""
    sock.settimeout(timeout(5))
    frames = []
    while len(frames) < count:
        if len(buffer) >= 2:
            n, start = buffer[1] & 0x7F, 2
            if n == 126 and len(buffer) >= 4:
                n, start = int.from_bytes(buffer[2:4], "big"), 4
            if n != 126 and len(buffer) >= start + n:
                b0, payload = buffer[0], buffer[start : start + n]
                buffer = buffer[start + n :]
                if b0 & 0x40:
                    payload = zlib.decompressobj(wbits=-15).decompress(
                        payload + b"\x00\x00\xff\xff"
                    )
                frames.append((b0, payload))
                continue
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk
    return frames


def test_small_messages_plain_large_ones_compressed_on_the_wire(tmp_path):
    """1. a browser-like client negotiates permessage-deflate and sends compressed
    messages, small and large  2. echoes under the 512-byte default threshold come back
    with RSV1 clear, larger ones with RSV1 set, each inflating to what was sent."""
    with serving(TARGET, tmp_path) as server:
        sock, extension, rest = deflate_handshake(server.port)
        with sock:
            assert "server_no_context_takeover" in extension
            assert "client_no_context_takeover" in extension
            small, large = b"hello", b"0123456789" * 100
            sock.sendall(compressed_frame(small) + compressed_frame(large) + masked_frame(1, small))
            frames = read_frames(sock, 3, rest)
    assert frames == [(0x81, small), (0xC1, large), (0x81, small)]


def test_websockets_client_with_compression_both_ways(tmp_path):
    """1. websockets' client with compression="deflate" (it compresses every message)
    2. small and large, text and binary messages come back unchanged."""
    with serving(TARGET, tmp_path) as server, server.connect(compression="deflate") as ws:
        for message in ("hi", "é" * 3000, b"\x00" * 10, bytes(range(256)) * 40):
            ws.send(message)
            assert ws.recv(timeout=timeout(5)) == message


def test_a_client_that_keeps_its_compression_context_is_understood_message_after_message(
    tmp_path,
):
    """1. without hand-off the server lets a browser keep its compression context: the
    client compresses every message with one stream, each referring back to earlier
    ones  2. it sends messages small and large, whole and in fragments, one per write
    and several in one, with pings between them  3. every echo is what was sent: the
    session's decompressor follows the client's stream from message to message."""
    block = random.Random(7).randbytes(2000).hex()  # 4,000 characters, incompressible alone
    messages = [block, "hi", block, block[:100] + "é" * 50, block * 20, "x" * 70_000, block]
    stream = zlib.compressobj(wbits=-15)

    def frames(message: str, fragments: int = 1) -> bytes:
        data = stream.compress(message.encode()) + stream.flush(zlib.Z_SYNC_FLUSH)
        data = data[:-4]
        cut = [
            data[i * len(data) // fragments : (i + 1) * len(data) // fragments]
            for i in range(fragments)
        ]
        wire = bytearray()
        for i, part in enumerate(cut):
            frame = bytearray(masked_frame(0 if i else 1, part, fin=i == fragments - 1))
            if i == 0:
                frame[0] |= 0x40  # RSV1 on the first frame of the message (RFC 7692 §6.1)
            wire += frame + (masked_frame(9, b"ping") if i < fragments - 1 else b"")
        return bytes(wire)

    with serving(TARGET, tmp_path, "--no-reload-handoff") as server:
        sock, extension, rest = deflate_handshake(server.port)
        with sock:
            assert extension and "client_no_context_takeover" not in extension, extension
            first = frames(messages[0])
            again = frames(messages[0])  # the same block: only a reference back
            assert len(again) < len(first) // 10
            sock.sendall(first + again)
            sent = [messages[0], messages[0]]
            for i, message in enumerate(messages):
                sock.sendall(frames(message, fragments=1 + i % 3) + masked_frame(9, b"p"))
                sent.append(message)
            sock.sendall(b"".join(frames(message) for message in messages))
            sent += messages
            echoed = []
            while len(echoed) < len(sent):
                b0, payload, rest = raw_frame(sock, rest)
                if b0 & 0x40:
                    payload = zlib.decompressobj(wbits=-15).decompress(payload + TAIL)
                if b0 & 0x0F == 1:
                    echoed.append(payload.decode())
            assert echoed == sent


def test_compressed_connection_survives_a_reload(tmp_path):
    """1. a compressed connection exchanges small and large messages  2. new code on
    disk; SIGUSR1  3. the same connection carries on with the new code, both sizes."""
    target = write_app(tmp_path, APP.format(version="v1"), "deflate_app.py")
    with serving(f"{target}:server", tmp_path) as server:
        with server.connect(compression="deflate") as ws:
            large = "x" * 4000
            for message in ("a", large):
                ws.send(message)
                assert ws.recv(timeout=timeout(5)) == "v1:" + message
            write_app(tmp_path, APP.format(version="v2"), "deflate_app.py")
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            server.wait_for_log(r"moved to the new worker", 20)
            for message in ("b", large):
                ws.send(message)
                assert ws.recv(timeout=timeout(5)) == "v2:" + message


def test_a_compressed_message_in_fragments_is_never_corrupted_by_a_reload(tmp_path):
    """1. two clients that keep no compression context (what the server asks for with
    hand-off on): one has sent the first fragment of a compressed message, the other
    has exchanged compressed messages both ways and is between messages  2. SIGUSR1
    3. the first sends the last fragment: it gets its message back intact or the 1012
    of a reload, never a 1007 or a corrupted message (the decompressor is in the middle
    of the message's stream, which cannot move); the second moves and carries on with
    the new code, compressed both ways."""
    target = write_app(tmp_path, APP.format(version="v1"), "deflate_app.py")
    offer = "permessage-deflate; client_no_context_takeover"
    head, tail = "compressed " * 100, "tail"
    stream = zlib.compressobj(wbits=-15)
    first = stream.compress(head.encode()) + stream.flush(zlib.Z_SYNC_FLUSH)
    last = (stream.compress(tail.encode()) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4]
    opening = bytearray(masked_frame(1, first, fin=False))
    opening[0] |= 0x40  # RSV1 on the first fragment only (RFC 7692 §6.1)
    with serving(f"{target}:server", tmp_path) as server:
        midway, extension, midway_rest = deflate_handshake(server.port, offer)
        idle, _, idle_rest = deflate_handshake(server.port, offer)
        with midway, idle:
            assert "client_no_context_takeover" in extension
            idle.sendall(compressed_frame(head.encode()))
            assert read_frames(idle, 1, idle_rest) == [(0xC1, f"v1:{head}".encode())]
            midway.sendall(bytes(opening))
            wait_until(lambda: server_has_read_everything(server.port, midway), 10)
            write_app(tmp_path, APP.format(version="v2"), "deflate_app.py")
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            server.wait_for_log(r"moved to the new worker", 20)
            midway.sendall(masked_frame(0, last))
            [(b0, payload)] = read_frames(midway, 1, midway_rest)
            if b0 & 0x0F == 8:
                assert int.from_bytes(payload[:2], "big") == 1012, payload
                server.wait_for_log(r"fell back to a 1012 close .*receiving a compressed", 10)
            else:
                assert payload.partition(b":")[2] == (head + tail).encode()
            idle.sendall(compressed_frame(tail.encode() + head.encode()))
            assert read_frames(idle, 1, b"") == [(0xC1, f"v2:{tail}{head}".encode())]


BROADCAST_APP = """
import random
from swoolish import WebSocketServer

server = WebSocketServer()
BLOCK = random.Random(5).randbytes(1500).hex()  # 3,000 characters: matches 3 KB apart

@server.on("message")
def on_message(server, frame):
    if frame.data == "cmd:broadcast":
        server.broadcast(BLOCK * 3)
"""


def raw_frame(sock: socket.socket, buffer: bytes) -> tuple[int, bytes, bytes]:
    """One server frame as (first byte, payload as sent, the bytes after it)."""
    sock.settimeout(timeout(5))
    while True:
        if len(buffer) >= 2:
            n, start = buffer[1] & 0x7F, 2
            if n == 126 and len(buffer) >= 4:
                n, start = int.from_bytes(buffer[2:4], "big"), 4
            if n != 126 and len(buffer) >= start + n:
                return buffer[0], buffer[start : start + n], buffer[start + n :]
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk


def test_a_broadcast_reaches_each_session_as_it_negotiated(tmp_path):
    """1. three clients: one asks for a compression window of 2^10 bytes
    (server_max_window_bits=10), one makes a browser's offer (2^15), one offers nothing
    2. one asks for a broadcast of 9,000 characters that repeat 3,000 apart  3. each
    gets it: the first compressed within its window (inflating with 2^10 works), the
    second compressed, the third plain; the message compressed once per window size
    serves every session of that size."""
    app = write_app(tmp_path, BROADCAST_APP)
    offers = {
        10: "permessage-deflate; client_max_window_bits; server_max_window_bits=10",
        15: OFFER,
    }
    with serving(f"{app}:server", tmp_path) as server:
        clients = {}
        for bits, offer in offers.items():
            sock = raw_connect(server.port)
            head, rest = upgrade_with(sock, headers=f"Sec-WebSocket-Extensions: {offer}\r\n")
            assert b"permessage-deflate" in head
            clients[bits] = (sock, rest)
        plain = raw_connect(server.port)
        clients[0] = (plain, upgrade_with(plain)[1])
        try:
            plain.sendall(masked_frame(1, b"cmd:broadcast"))
            expected = (random.Random(5).randbytes(1500).hex() * 3).encode()
            for bits, (sock, rest) in clients.items():
                b0, payload, _ = raw_frame(sock, rest)
                if bits == 0:
                    assert b0 == 0x81 and payload == expected
                    continue
                assert b0 == 0xC1, hex(b0)  # FIN, RSV1, text
                inflate = zlib.decompressobj(wbits=-bits)
                assert inflate.decompress(payload + b"\x00\x00\xff\xff") == expected
                if bits == 15:  # only a window past 3,000 bytes sees the repeats
                    assert len(payload) < len(expected) // 3, len(payload)
        finally:
            for sock, _ in clients.values():
                sock.close()
