"""What a session costs a worker's memory besides what it is owed, on real processes.

- A client that keeps its compression context (RFC 7692 §7.1.1.1: what browsers offer;
  the server allows it with ``--no-reload-handoff`` and on every TLS connection) sends
  its compressed messages through websockets' protocol object, which the session keeps.
  A message of 1 KiB on the wire may inflate to max_message_size: once handled, it must
  not stay with the idle session.
- A client that reads slowly costs about ``buffer_output_size``, the bytes that may
  wait unsent for it, whether live hand-off (which keeps a record of what is unsent, to
  move it) is on or not.

The worker's Python heap is read with tracemalloc (``PYTHONTRACEMALLOC``), which
glibc's keeping of freed memory does not blur.
"""

from __future__ import annotations

import contextlib
import socket
import zlib
from collections.abc import Iterator

from support import (
    masked_frame,
    raw_connect,
    serving,
    timeout,
    upgrade_with,
    wait_until,
    write_app,
)

KiB, MiB = 1024, 1024 * 1024
OFFER = "permessage-deflate; client_max_window_bits"  # a browser's: it keeps its context
SESSIONS = 20
TRACED = {"PYTHONTRACEMALLOC": "1"}

APP = """
import gc
import socket
import tracemalloc

from swoolish import WebSocketServer

server = WebSocketServer(buffer_output_size={buffer_output_size})
flooded = set()

def fill(fd):  # push until push() says no: the output budget is full
    while server.push(fd, bytes(65536)):  # a new object each time, as an app's messages
        pass

def small_send_buffer(fd):
    # the worker's own socket: a small kernel buffer, so that what the client reads
    # comes out of the transport's (the one buffer_output_size bounds)
    conn = server._require_worker("memory").connections.get(fd)
    conn.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

@server.on("message")
def on_message(server, frame):
    if frame.data == "flood":  # filled from now on, at every HTTP request
        small_send_buffer(frame.fd)
        flooded.add(frame.fd)
        fill(frame.fd)
    elif frame.data == "burst":  # 2 MiB at once, then nothing more is written to it
        small_send_buffer(frame.fd)
        for _ in range(16):
            server.push(frame.fd, bytes(131072))
    else:
        server.push(frame.fd, str(len(frame.data)))

@server.on("close")
def on_close(server, fd):
    flooded.discard(fd)

@server.on("request")
def on_request(request, response):
    for fd in flooded:  # as an app pushing at them as fast as push() takes it
        fill(fd)
    gc.collect()
    response.end(str(tracemalloc.get_traced_memory()[0]))
"""


def app_target(tmp_path, buffer_output_size: int = 2 * MiB) -> str:
    source = APP.format(buffer_output_size=buffer_output_size)
    return f"{write_app(tmp_path, source, 'session_memory_app.py')}:server"


def compressed_message(payload: bytes) -> bytes:
    """A binary message compressed as a stream of its own (RFC 7692 §7.2.1)."""
    stream = zlib.compressobj(wbits=-15)
    frame = bytearray(
        masked_frame(2, (stream.compress(payload) + stream.flush(zlib.Z_SYNC_FLUSH))[:-4])
    )
    frame[0] |= 0x40  # RSV1: compressed (RFC 7692 §6)
    return bytes(frame)


def traced_heap(port: int) -> int:
    """The worker's Python heap in bytes, after a full garbage collection (and after
    the app filled the output budget of the sessions that asked it to flood them)."""
    with raw_connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(timeout(10))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.partition(b"\r\n\r\n")[2])


def answered(sock: socket.socket, rest: bytes) -> bytes:
    """The payload of the server's next frame (a short text one)."""
    sock.settimeout(timeout(10))
    data = rest
    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        data += chunk
    assert data[0] == 0x81, data
    return data[2 : 2 + data[1]]


@contextlib.contextmanager
def sessions(port: int, message: bytes, expected: int) -> Iterator[list[socket.socket]]:
    """SESSIONS clients that keep their compression context, each of which sent
    ``message`` and was answered (its inflated size, ``expected``); closed on the way
    out."""
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(SESSIONS):
            sock = stack.enter_context(raw_connect(port))
            head, rest = upgrade_with(sock, headers=f"Sec-WebSocket-Extensions: {OFFER}\r\n")
            assert b"permessage-deflate" in head and b"client_no_context" not in head, head
            sock.sendall(message)
            assert answered(sock, rest) == str(expected).encode()
            socks.append(sock)
        yield socks


def test_idle_sessions_keep_no_message_they_were_sent(tmp_path):
    """1. 20 sessions that keep their compression context each send one small
    compressed message and sit idle: what an idle such session costs  2. 20 more each
    send one message of 1 KiB on the wire that inflates to 1 MB, handled at once, and
    sit idle  3. they cost the worker about what the first 20 do, not 1 MB each (about
    20 MiB in all before: the parser kept the last message, inflated)."""
    big, small = b"A" * 1_000_000, b"hello"
    with serving(app_target(tmp_path), tmp_path, "--no-reload-handoff", env=TRACED) as server:
        before = traced_heap(server.port)
        with sessions(server.port, compressed_message(small), len(small)):
            idle = traced_heap(server.port) - before
            with sessions(server.port, compressed_message(big), len(big)):
                after_big = traced_heap(server.port) - before - idle
        assert after_big < idle + SESSIONS * 64 * KiB, (
            f"{SESSIONS} sessions that were sent 1 MB each hold {after_big / MiB:.1f} MiB, "
            f"{SESSIONS} idle ones {idle / MiB:.1f} MiB"
        )


def read_bytes(sock: socket.socket, count: int) -> None:
    """Take ``count`` bytes of what the server sent, whatever they are."""
    sock.settimeout(timeout(10))
    while count > 0:
        chunk = sock.recv(min(count, 65536))
        assert chunk, "the server closed the connection"
        count -= len(chunk)


def slow_readers_cost(tmp_path, limit: int, *options: str) -> int:
    """Heap bytes per session of SESSIONS clients that read slowly while the app keeps
    their output budget full: in turns, each reads 64 KiB and the app fills the budgets
    again, until each has read six budgets' worth."""
    with serving(app_target(tmp_path, limit), tmp_path, *options, env=TRACED) as server:
        before = traced_heap(server.port)
        with contextlib.ExitStack() as stack:
            socks = []
            for _ in range(SESSIONS):
                sock = stack.enter_context(raw_connect(server.port))
                upgrade_with(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
                sock.sendall(masked_frame(1, b"flood"))
                socks.append(sock)
            for _ in range(6 * limit // (64 * KiB)):
                for sock in socks:
                    read_bytes(sock, 64 * KiB)
                traced_heap(server.port)  # fills every budget again
            return (traced_heap(server.port) - before) // SESSIONS


def test_a_slow_reader_costs_about_its_output_budget_with_hand_off_as_without(tmp_path):
    """1. buffer_output_size 512 KiB; 20 clients read slowly what the app pushes at them
    as fast as push() takes it, then stop  2. with live hand-off on (the default)
    each costs the worker's heap about what it costs with hand-off off, not one more
    budget (the record of what a move would have to carry kept up to twice the budget
    of what was written, most of it long sent)."""
    limit = 512 * KiB
    with_handoff = slow_readers_cost(tmp_path, limit)
    without = slow_readers_cost(tmp_path, limit, "--no-reload-handoff")
    assert with_handoff < without + limit // 4, (
        f"a slow reader costs {with_handoff / KiB:.0f} KiB with hand-off, "
        f"{without / KiB:.0f} KiB without (buffer_output_size {limit // KiB} KiB)"
    )


def test_a_client_that_caught_up_leaves_no_record_of_what_it_was_sent(tmp_path):
    """1. 20 clients each ask for 2 MiB at once (16 pushes of 128 KiB, more than the
    kernel's buffers take) and read all of it; nothing more is written to them
    2. within a heartbeat sweep (every second here) the worker's heap is back near what
    it was: before, with live hand-off on (the default), each session kept the record
    of those writes that a move would carry, up to buffer_output_size, until its next
    write (the heartbeat's ping, after half of heartbeat_idle_time; never, for a client
    that keeps talking to an app that does not answer)."""
    with serving(
        app_target(tmp_path), tmp_path, "--heartbeat-check-interval", "1", env=TRACED
    ) as server:
        before = traced_heap(server.port)
        with contextlib.ExitStack() as stack:
            for _ in range(SESSIONS):
                sock = stack.enter_context(socket.socket())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
                sock.settimeout(timeout(5))
                sock.connect(("127.0.0.1", server.port))
                rest = upgrade_with(sock)[1]
                assert rest == b""
                sock.sendall(masked_frame(1, b"burst"))
                read_bytes(sock, 16 * (10 + 128 * KiB))  # each frame: a 10-byte head
            wait_until(
                lambda: traced_heap(server.port) - before < SESSIONS * 128 * KiB,
                what="the records of what was sent to be let go",
            )
