"""Connections the server has closed while their client still has output to take.

A client that makes the server close (a close frame after a request for a burst of
pushes, an HTTP request with ``Connection: close`` or in HTTP/1.0) and then never reads
leaves the closed transport holding what it owes. Such a connection is reset after a
bounded time, and until then it counts against ``max_connections``
(docs/quickstart.md, "Bad input"): otherwise each one held its output, megabytes, for
ever, and nothing bounded how many a client kept. Real ``swoolish serve`` processes,
raw loopback sockets with a small receive buffer, and the worker's sockets as psutil
sees them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import psutil
import pytest
from support import (
    masked_frame,
    raw_connect,
    read_to_eof,
    serving,
    tcp_row,
    timeout,
    upgrade,
    wait_until,
    write_app,
)

MB = 1_000_000
BIG = 4 * MB  # an answer much larger than what the kernel's buffers take for the client

APP = f"""
    import json

    from swoolish import WebSocketServer

    server = WebSocketServer()
    MEG = b"m" * {MB}

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "dump":  # "send me the history": as much as push() takes
            n = 0
            while n < 20 and server.push(frame.fd, MEG):
                n += 1
        elif frame.data == "stats":
            server.push(frame.fd, json.dumps(server.stats()))
        else:
            server.push(frame.fd, frame.data)

    @server.on("request")
    def on_request(request, response):
        response.end(b"b" * {BIG} if request.path == "/big" else b"ok")
"""

CLOSE_1000 = masked_frame(0x8, (1000).to_bytes(2, "big"))


def app(tmp_path) -> str:
    return f"{write_app(tmp_path, APP)}:server"


def non_reader(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer (set before the connect, so that the
    window it offers stays small): what it is sent piles up in the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout(5))
    sock.connect(("127.0.0.1", port))
    return sock


def answer_arriving(port: int, sock: socket.socket) -> bool:
    """Bytes of the server's answer wait in ``sock``'s receive queue: it was written,
    and the server closed in the same turn of its loop."""
    row = tcp_row(sock.getsockname()[1], port)
    return row is not None and int(row[4].split(":")[1], 16) > 0


def stalled_clients(
    server, stack: contextlib.ExitStack, requests: list[bytes], websocket: bool = False
) -> list[socket.socket]:
    """One non-reader per request (a WebSocket first, with ``websocket``), each having
    sent its request, returned once the server's answers have reached them all."""
    socks = []
    for request in requests:
        sock = stack.enter_context(non_reader(server.port))
        if websocket:
            upgrade(sock)
        sock.sendall(request)
        socks.append(sock)
    wait_until(
        lambda: all(answer_arriving(server.port, s) for s in socks),
        what="the answers to reach the clients",
    )
    return socks


def held_by(worker: psutil.Process, socks: list[socket.socket]) -> int:
    """How many of ``socks`` the worker still has a socket for."""
    ports = {s.getsockname()[1] for s in socks}
    return sum(1 for c in worker.net_connections(kind="tcp") if c.raddr and c.raddr[1] in ports)


def only_worker(server) -> psutil.Process:
    (worker,) = server.workers()
    return worker


def test_websocket_that_closes_after_a_burst_and_never_reads_is_reset(tmp_path):
    """1. five clients each send, in one write, a request for about 2 MB of pushes and a
    close frame, then never read  2. the server echoes each close and closes with the
    pushes unsent  3. the worker lets go of all five within the closing handshake's
    bound (CLOSE_TIMEOUT), with the heartbeat off, and counts them in closed_idle
    4. a client that sends the same and reads gets every push, then the echo of its
    close."""
    with (
        serving(app(tmp_path), tmp_path, "--heartbeat-check-interval", "0") as server,
        contextlib.ExitStack() as stack,
    ):
        worker = only_worker(server)
        dump = masked_frame(0x1, b"dump") + CLOSE_1000
        socks = stalled_clients(server, stack, [dump] * 5, websocket=True)

        wait_until(lambda: held_by(worker, socks) == 0, what="the non-readers to be reset")
        with server.connect() as ws:
            ws.send("stats")
            assert json.loads(ws.recv(timeout=timeout(5)))["closed_idle"] == 5

        with raw_connect(server.port) as reader:
            rest = upgrade(reader)
            reader.sendall(masked_frame(0x1, b"dump") + CLOSE_1000)
            received = rest + read_to_eof(reader, 10)
        # every frame of 1 MB (head: 0x82, 127, 8-byte length), then the close echoed
        pushes = received.count(b"\x82\x7f" + MB.to_bytes(8, "big"))
        assert pushes >= 2
        assert len(received) == pushes * (10 + MB) + 4
        assert received.endswith(b"\x88\x02" + (1000).to_bytes(2, "big"))


def test_http_answer_never_taken_after_connection_close_is_reset(tmp_path):
    """1. heartbeat_idle_time 2 s: clients ask for a 4 MB answer with ``Connection:
    close`` (or in HTTP/1.0, which closes too) and never read  2. all are reset once
    heartbeat_idle_time passed in which they took nothing  3. a client that takes the
    same answer slowly, a quarter MB at a time over longer than heartbeat_idle_time,
    gets all of it."""
    requests = [
        b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /big HTTP/1.0\r\n\r\n",
    ]
    with (
        serving(app(tmp_path), tmp_path, "--heartbeat-idle-time", "2") as server,
        contextlib.ExitStack() as stack,
    ):
        worker = only_worker(server)
        socks = stalled_clients(server, stack, requests * 3)

        wait_until(lambda: held_by(worker, socks) == 0, what="the non-readers to be reset")

        with non_reader(server.port) as slow:
            slow.sendall(requests[0])
            received = b""
            while chunk := slow.recv(65536):
                received += chunk
                if len(received) % (256 * 1024) < len(chunk):
                    time.sleep(0.2)  # the client's pace: 4 MB in more than 3 s
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:100]
        assert body == b"b" * BIG


def test_closed_connections_owing_output_hold_their_max_connections_slots(tmp_path):
    """1. max_connections 3, heartbeat_idle_time 4 s  2. three clients ask for a 4 MB
    answer with ``Connection: close`` and never read  3. a new client gets 503: the
    three closed ones still hold the worker's slots  4. once they are reset, a new
    client is served again."""
    with (
        serving(
            app(tmp_path), tmp_path, "--max-connections", "3", "--heartbeat-idle-time", "4"
        ) as server,
        contextlib.ExitStack() as stack,
    ):
        worker = only_worker(server)
        wait_until(
            lambda: not [c for c in worker.net_connections(kind="tcp") if c.raddr],
            what="the readiness probe gone",
        )
        big = b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        socks = stalled_clients(server, stack, [big] * 3)
        for sock in socks:
            assert sock.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"

        def newcomer(request: bytes) -> bytes:
            with raw_connect(server.port) as sock:
                sock.sendall(request)
                return read_to_eof(sock)

        # The 503 is written as the connection is accepted: sent nothing, the newcomer
        # reads it whole (a request it sent, unread, could have the refusal reset).
        assert newcomer(b"").startswith(b"HTTP/1.1 503 ")

        wait_until(lambda: held_by(worker, socks) == 0, what="the non-readers to be reset")
        request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert newcomer(request).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("kind", ["websocket", "http"])
def test_client_that_half_closes_after_asking_and_never_reads_is_reset(tmp_path, kind):
    """A client that asks for a burst of pushes (or a 4 MB keep-alive answer), then
    half-closes without a close frame (shutdown(SHUT_WR), as ``printf ... | nc`` does)
    and never reads: the server reads its EOF and closes with the output unsent, and
    lets go of it within the same bounds (buffer_output_size 100 MB, so that the
    worker still reads, and the heartbeat off)."""
    with (
        serving(
            app(tmp_path),
            tmp_path,
            "--heartbeat-check-interval",
            "0",
            "--heartbeat-idle-time",
            "2",
            "--buffer-output-size",
            "100000000",
        ) as server,
        non_reader(server.port) as sock,
    ):
        worker = only_worker(server)
        if kind == "websocket":
            upgrade(sock)
            sock.sendall(masked_frame(0x1, b"dump"))
        else:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: answer_arriving(server.port, sock), what="the answer arriving")
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: held_by(worker, [sock]) == 0, what="the non-reader to be reset")
