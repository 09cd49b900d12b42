"""Remote clients that misbehave, against real ``swoolish serve`` processes.

Clients that never read, pipeline thousands of requests, vanish without a FIN, send
huge messages or come from another site's page; and apps that hand ``push`` or a
response values the wire cannot carry. Each test serves ``tests/apps/remote_clients_app.py``
through a small wrapper with the settings it needs, talks to it over loopback sockets
(hand-built bytes where they matter), and checks both the bad client's outcome and that
everyone else is still served (docs/quickstart.md, "Bad input").
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import threading
import time
import zlib

import psutil
import pytest
from support import (
    masked_frame,
    raw_connect,
    raw_handshake,
    read_close_code,
    read_to_eof,
    server_has_read_everything,
    serving,
    tcp_row,
    timeout,
    upgrade,
    upgrade_with,
    wait_until,
    write_app,
)
from websockets.sync.client import ClientConnection

KiB, MiB = 1024, 1024 * 1024


# -------------------------------------------------- helpers


def app_target(tmp_path, **settings) -> str:
    """A wrapper serving ``remote_clients_app.build(**settings)``; returns its TARGET."""
    source = f"from tests.apps.remote_clients_app import build\n\nserver = build(**{settings!r})\n"
    return f"{write_app(tmp_path, source)}:server"


def ask(ws: ClientConnection, command: str):
    ws.send(command)
    return json.loads(ws.recv(timeout=timeout(5)))


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame with an all-zero masking key: the payload goes on the wire as is
    (RFC 6455 §5.3), so a test can place exact bytes, and large frames cost no masking."""
    return masked_frame(opcode, payload, fin, mask=b"\0\0\0\0")


class Frames:
    """Server frames (unmasked, RFC 6455 §5.2) read from a raw socket."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(leftover)

    def next(self, seconds: float = 5.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout(seconds))
        while True:
            buf = self.buffer
            length, head = (buf[1] & 0x7F, 2) if len(buf) >= 2 else (0, 99)
            if length == 126:
                length, head = (int.from_bytes(buf[2:4], "big"), 4) if len(buf) >= 4 else (0, 99)
            elif length == 127:
                length, head = (int.from_bytes(buf[2:10], "big"), 10) if len(buf) >= 10 else (0, 99)
            if len(buf) >= head + length:
                opcode, payload = buf[0] & 0x0F, bytes(buf[head : head + length])
                del buf[: head + length]
                return opcode, payload
            chunk = self.sock.recv(262144)
            assert chunk, "the server closed the connection before a whole frame arrived"
            self.buffer += chunk

    def text(self, seconds: float = 5.0) -> str:
        """The next text message, answering pings on the way."""
        while True:
            opcode, payload = self.next(seconds)
            if opcode == 0x9:
                self.sock.sendall(masked_frame(0xA, payload))
            elif opcode == 0x1:
                return payload.decode()
            else:
                raise AssertionError(f"unexpected frame {opcode}: {payload[:40]!r}")


def worker_pid(server) -> int:
    workers = wait_until(server.workers, what="a worker")
    return workers[0].pid


# -------------------------------------------------- item 1: clients that do not read


class Flood(threading.Thread):
    """Clients that write without ever reading: ``http`` pipeline GETs of 64 KiB answers,
    ``ws`` flood pings at the app's async message handler. A client the server closes is
    replaced, so the pressure lasts until ``stop``."""

    HTTP = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    WS = masked_frame(0x9, b"p" * 125) * 200

    def __init__(self, port: int, http: int, ws: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.kinds = ["http"] * http + ["ws"] * ws
        self.replaced = 0
        self.errors: list[str] = []

    def open(self, kind: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout(5))
        sock.connect(("127.0.0.1", self.port))
        if kind == "ws":
            upgrade(sock)
        sock.setblocking(False)
        return sock

    def run(self) -> None:
        socks = [self.open(kind) for kind in self.kinds]
        try:
            while not self.stop.is_set():
                for i, kind in enumerate(self.kinds):
                    try:
                        socks[i].send(self.HTTP if kind == "http" else self.WS)
                    except BlockingIOError:
                        pass
                    except OSError:  # closed by the server: a new one takes its place
                        socks[i].close()
                        self.replaced += 1
                        try:
                            socks[i] = self.open(kind)
                        except (OSError, AssertionError) as exc:
                            self.errors.append(repr(exc))
                            socks[i] = self.open(kind)
                self.stop.wait(0.005)
        finally:
            for sock in socks:
                sock.close()


class Bystander(threading.Thread):
    """A well-behaved client: an HTTP request and a WebSocket echo, over and over."""

    def __init__(self, server, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.stop = server, stop
        self.http_answers = self.ws_answers = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with self.server.connect() as ws:
            n = 0
            while not self.stop.is_set():
                n += 1
                conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
                try:
                    conn.request("GET", f"/n/{n}")
                    answer = conn.getresponse()
                    if (answer.status, answer.read()) == (200, str(n).encode()):
                        self.http_answers += 1
                    else:
                        self.failures.append(f"HTTP {answer.status}")
                    ws.send(f"echo {n}")
                    if ws.recv(timeout=timeout(5)) == f"echo {n}":
                        self.ws_answers += 1
                except Exception as exc:
                    self.failures.append(
                        f"{exc!r} after {self.http_answers} answers, {self.ws_answers} echoes"
                    )
                finally:
                    conn.close()
                self.stop.wait(0.05)


def test_clients_that_do_not_read_cannot_grow_the_worker_and_others_keep_being_answered(
    tmp_path,
):
    """1. serve buffer_output_size=256 KiB  2. 50 HTTP clients pipeline GETs of 64 KiB
    answers and 50 WebSocket clients flood pings at an async handler, none of them
    reading, for 10 s (replaced when closed)  3. meanwhile a bystander keeps getting its
    HTTP answers and echoes  4. the worker's RSS never grew by more than 100 x
    buffer_output_size + 8 MiB."""
    limit = 256 * KiB
    with serving(app_target(tmp_path, buffer_output_size=limit), tmp_path) as server:
        worker = psutil.Process(worker_pid(server))
        with server.connect() as ws:
            ws.send("warm up")
            assert ws.recv(timeout=timeout(5)) == "warm up"
        rss_before = peak = worker.memory_info().rss
        stop = threading.Event()
        flood = Flood(server.port, http=50, ws=50, stop=stop)
        bystander = Bystander(server, stop)
        flood.start()
        bystander.start()
        try:
            end = time.monotonic() + 10  # how long the attack lasts, not a wait
            while time.monotonic() < end and flood.is_alive():
                peak = max(peak, worker.memory_info().rss)
                time.sleep(0.05)
        finally:
            stop.set()
            flood.join(timeout(10))
            bystander.join(timeout(10))
        growth = peak - rss_before
        assert growth <= 100 * limit + 8 * MiB, f"the worker grew by {growth / MiB:.1f} MiB"
        assert flood.errors == []
        assert bystander.failures == []
        assert bystander.http_answers >= 20 and bystander.ws_answers >= 20
        assert "RecursionError" not in server.log()


FILL_APP = """
    from tests.apps.remote_clients_app import build

    server = build(buffer_output_size=64 * 1024)

    @server.on("message")
    def fill(server, frame):  # plain function: runs inline, before the next frame
        while server.push(frame.fd, b"x" * 16384):
            pass
"""


def test_a_websocket_owed_a_pong_past_its_budget_is_closed_1008_and_logged_once(tmp_path):
    """1. serve buffer_output_size=64 KiB, a handler that pushes until push() says False
    2. a raw client with a 4 KiB receive buffer sends, in one write, a message and a
    ping, and reads nothing  3. the pong would go past the budget: the worker closes the
    session with 1008 instead, counted in closed_over_buffer  4. the client, reading now,
    gets the pushed messages and then the 1008 close  5. one log line says so  6. another
    client is served."""
    target = f"{write_app(tmp_path, FILL_APP)}:server"
    with serving(target, tmp_path) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout(5))
        sock.connect(("127.0.0.1", server.port))
        with sock:
            upgrade(sock)
            sock.sendall(masked_frame(0x1, b"fill") + masked_frame(0x9, b"are you there"))
            server.wait_for_log(r"does not read: \d+ bytes wait unsent")
            assert read_close_code(sock) == 1008
        assert len(re.findall(r"does not read: \d+ bytes wait unsent", server.log())) == 1
        assert http_answer(server.port, "/n/3").endswith(b"\r\n\r\n3")


# -------------------------------------------------- item 2: pipelining


def test_ten_thousand_pipelined_requests_are_all_answered_in_order(tmp_path):
    """1. one connection writes 10,000 GETs in 4 writes while a thread reads  2. 10,000
    answers come back, 200 each, in order  3. nothing was logged as the app's fault."""
    count = 10_000
    requests = [f"GET /n/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(count)]
    with serving(app_target(tmp_path), tmp_path) as server:
        with raw_connect(server.port) as sock:
            quarter = count // 4
            writer = threading.Thread(
                target=lambda: [
                    sock.sendall(b"".join(requests[i : i + quarter]))
                    for i in range(0, count, quarter)
                ],
                daemon=True,
            )
            writer.start()
            sock.settimeout(timeout(10))
            answers: list[tuple[int, bytes]] = []
            buffer = b""
            while len(answers) < count:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].decode("latin-1")
                    length = int(re.search(r"Content-Length: (\d+)", head).group(1))
                    body_end = head_end + 4 + length
                    if len(buffer) >= body_end:
                        answers.append(
                            (int(head.split(" ", 2)[1]), buffer[head_end + 4 : body_end])
                        )
                        buffer = buffer[body_end:]
                        continue
                chunk = sock.recv(262144)
                if not chunk:
                    break
                buffer += chunk
            writer.join(timeout(10))
        assert len(answers) == count
        assert [status for status, _ in answers] == [200] * count
        assert [body for _, body in answers] == [str(i).encode() for i in range(count)]
        log = server.log()
        assert "RecursionError" not in log and "raised" not in log


def _send_until_stopped(sock: socket.socket, head: bytes, limit: int) -> int:
    """Write ``head`` and then one endless field value, up to ``limit`` bytes, until the
    server stops taking them; returns how many bytes went."""
    sent = 0
    with contextlib.suppress(OSError):
        sock.sendall(head)
        chunk = b"a" * (64 * KiB)
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    return sent


ENDLESS_HEADS = {
    "request": b"GET /n/1 HTTP/1.1\r\nHost: x\r\nX-Endless: ",
    "handshake": (
        b"GET /n/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"X-Endless: "
    ),
    # a chunked body's trailer field (RFC 9112 §7.1.2), after its last chunk
    "trailer": (
        b"POST /n/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Endless: "
    ),
}


@pytest.mark.parametrize("kind", ENDLESS_HEADS)
def test_a_field_line_that_never_ends_gets_431_long_before_the_request_timeout(tmp_path, kind):
    """1. serve with a 60 s handshake_timeout  2. a client writes a request (a plain GET,
    a WebSocket upgrade, or a chunked POST up to its trailer) whose last field value never
    ends, 64 MiB of it  3. it is answered 431 and closed while it writes, not 408 at the
    timeout: the parser keeps an unfinished field itself, so the head (and the trailer) is
    counted by the bytes fed to it  4. the worker's memory did not take the bytes in
    5. everyone else is still served."""
    head = ENDLESS_HEADS[kind]
    with serving(app_target(tmp_path, handshake_timeout=60.0), tmp_path) as server:
        (worker,) = server.workers()
        rss_before = worker.memory_info().rss
        with raw_connect(server.port) as sock:
            sock.settimeout(timeout(10))  # the writer's too
            writer_sent: list[int] = []
            writer = threading.Thread(
                target=lambda: writer_sent.append(_send_until_stopped(sock, head, 64 * MiB)),
                daemon=True,
            )
            writer.start()
            answer = read_to_eof(sock, 10)
            writer.join(timeout(10))
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert writer_sent and writer_sent[0] < 64 * MiB  # stopped while it wrote
        assert worker.memory_info().rss - rss_before < 16 * MiB
        assert http_answer(server.port, "/n/2").endswith(b"\r\n\r\n2")


def test_a_head_of_64_kib_is_served_even_after_a_pipelined_request_in_the_same_write(
    tmp_path,
):
    """1. one write carries a small GET and then a GET whose head is 64 KiB in all  2. both
    are answered 200, in order: the head limit refuses past 64 KiB, never at it."""
    first = b"GET /n/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    second_start = b"GET /n/2 HTTP/1.1\r\nHost: x\r\nX-Pad: "
    end = b"\r\nConnection: close\r\n\r\n"
    second = second_start + b"p" * (64 * KiB - len(second_start) - len(end)) + end
    assert len(second) == 64 * KiB
    with serving(app_target(tmp_path), tmp_path) as server:
        with raw_connect(server.port) as sock:
            sock.sendall(first + second)
            answer = read_to_eof(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:400]
    assert answer.endswith(b"\r\n\r\n2") and b"\r\n\r\n1HTTP/1.1 200 " in answer


def _with_fields(head: bytes, count: int) -> bytes:
    """``head`` with ``count`` more fields, then the blank line that ends it."""
    return head + b"".join(b"X-F%d: v\r\n" % i for i in range(count)) + b"\r\n"


# a head that ends before its blank line, and how many fields it holds already
FIELD_HEADS = {
    "request": (b"GET /n/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", 2),
    "trailer": (
        b"POST /n/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: x\r\n",  # two header fields, then the trailer's
        3,
    ),
}


@pytest.mark.parametrize("kind", FIELD_HEADS)
def test_a_request_of_101_fields_gets_431_and_one_of_100_is_served(tmp_path, kind):
    """1. a request with 101 header fields (or, chunked, with the trailer's fields making
    101 with its head's)  2. it gets 431, naming the limit  3. the same request with 100
    fields in all is answered 200."""
    head, own = FIELD_HEADS[kind]
    with serving(app_target(tmp_path), tmp_path) as server:
        with raw_connect(server.port) as sock:
            sock.sendall(_with_fields(head, 101 - own))
            refused = read_to_eof(sock)
        with raw_connect(server.port) as sock:
            sock.sendall(_with_fields(head, 100 - own))
            served = read_to_eof(sock)
    assert refused.startswith(b"HTTP/1.1 431 ") and b"100 fields at most" in refused, refused
    assert served.startswith(b"HTTP/1.1 200 ") and served.endswith(b"\r\n\r\n1"), served[:300]


def test_heads_of_thousands_of_tiny_fields_get_431_and_do_not_grow_the_worker(tmp_path):
    """1. 40 clients each send a head of 8,000 four-to-eight-byte fields (62 KiB: under
    the 64 KiB head limit) and never end it  2. each gets 431 at once, not 408 at the
    handshake timeout  3. the worker did not grow by the fields' objects (some 150
    bytes each however short: 1 MB per such head, before the field limit)  4. others
    are still served."""
    head = b"GET /n/1 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"h%d:\r\n" % i for i in range(8000))
    assert 60 * KiB < len(head) < 64 * KiB
    with serving(app_target(tmp_path, handshake_timeout=60.0), tmp_path) as server:
        (worker,) = server.workers()
        rss_before = worker.memory_info().rss
        socks = [raw_connect(server.port) for _ in range(40)]
        try:
            for sock in socks:
                sock.sendall(head)
            answers = [read_to_eof(sock, 10) for sock in socks]
            grown = worker.memory_info().rss - rss_before
        finally:
            for sock in socks:
                sock.close()
        assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), {a[:40] for a in answers}
        assert grown < 12 * MiB, f"worker grew {grown / MiB:.1f} MiB"
        assert http_answer(server.port, "/n/2").endswith(b"\r\n\r\n2")


def test_a_chunked_body_of_large_chunks_with_a_trailer_is_served(tmp_path):
    """1. a chunked POST of three 300 KiB chunks and a trailer field  2. it is answered
    200: a chunk's data is counted against max_request_size, only a trailer as a head."""
    chunk = b"%x\r\n%s\r\n" % (300 * KiB, b"c" * (300 * KiB))
    request = (
        b"POST /n/3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunk * 3 + b"0\r\nX-Checksum: 42\r\n\r\n"
    )
    with serving(app_target(tmp_path, max_request_size=MiB), tmp_path) as server:
        with raw_connect(server.port) as sock:
            sock.sendall(request)
            answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n3"), answer[:300]


# -------------------------------------------------- item 3: heartbeat, keepalive

FAST_HEARTBEAT = {"heartbeat_check_interval": 0.2, "heartbeat_idle_time": 1.0}


def test_a_websocket_that_stops_answering_pings_is_pinged_then_closed_1001(tmp_path):
    """1. serve heartbeat_check_interval=0.2, heartbeat_idle_time=1  2. a raw client
    opens a WebSocket and then sends nothing  3. it gets a ping  4. then a 1001 close."""
    with serving(app_target(tmp_path, **FAST_HEARTBEAT), tmp_path) as server:
        sock, rest = raw_handshake(server.port)
        with sock:
            frames = Frames(sock, rest)
            assert frames.next() == (0x9, b"")
            opcode, payload = frames.next()
            while opcode == 0x9:
                opcode, payload = frames.next()
            assert opcode == 0x8
            assert int.from_bytes(payload[:2], "big") == 1001


def test_a_websocket_that_only_answers_pings_is_kept_past_several_idle_times(tmp_path):
    """1. serve heartbeat_idle_time=1  2. a raw client answers each ping with a pong and
    sends nothing else  3. it gets six pings (more than three idle times) and no close
    4. it still gets its echo."""
    with serving(app_target(tmp_path, **FAST_HEARTBEAT), tmp_path) as server:
        sock, rest = raw_handshake(server.port)
        with sock:
            frames = Frames(sock, rest)
            for _ in range(6):
                opcode, payload = frames.next()
                assert opcode == 0x9, (opcode, payload)
                sock.sendall(masked_frame(0xA, payload))
            sock.sendall(masked_frame(0x1, b"still here"))
            assert frames.text() == "still here"


def test_an_http_client_that_takes_none_of_its_answers_is_reset_after_the_idle_time(tmp_path):
    """1. serve heartbeat_idle_time=1, buffer_output_size=256 KiB  2. a raw client with a
    4 KiB receive buffer pipelines GETs of 64 KiB and reads nothing  3. the worker counts
    it in closed_idle  4. the client's connection ends."""
    settings = dict(FAST_HEARTBEAT, buffer_output_size=256 * KiB)
    with serving(app_target(tmp_path, **settings), tmp_path) as server:
        with server.connect() as observer:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            with sock:
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
                wait_until(
                    lambda: ask(observer, "cmd:stats").get("closed_idle", 0) >= 1,
                    seconds=20,
                    what="the stuck HTTP client to be reset",
                )
                sock.settimeout(timeout(5))
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(262144):
                        pass


def test_accepted_sockets_have_tcp_keepalive_of_about_a_minute(tmp_path):
    """1. a client opens a WebSocket and goes quiet  2. the kernel runs the keepalive
    timer on the server's side of it (/proc/net/tcp timer 2), due within 30 s."""
    with serving(app_target(tmp_path), tmp_path) as server:
        sock, _ = raw_handshake(server.port)
        with sock:
            mine = sock.getsockname()[1]

            def keepalive_timer() -> int | None:
                row = tcp_row(server.port, mine)
                if row is None:
                    return None
                kind, when = (int(x, 16) for x in row[5].split(":"))
                return when if kind == 2 and when else None

            when = wait_until(keepalive_timer, what="a keepalive timer")
            assert 0 < when <= 30 * os.sysconf("SC_CLK_TCK")


# -------------------------------------------------- item 4: bad values from the app


def two_sessions_on_two_workers(server) -> tuple[ClientConnection, dict, ClientConnection, dict]:
    """Open WebSockets until two are served by different workers; close the others."""
    spare: list[ClientConnection] = []
    try:
        for _ in range(40):
            ws = server.connect(legacy=True)  # closed below, or by the caller's with
            me = ask(ws, "cmd:whoami")
            other = next(((w, m) for w, m in spare if m["pid"] != me["pid"]), None)
            if other is not None:
                spare.remove(other)
                return other[0], other[1], ws, me
            spare.append((ws, me))
        raise AssertionError("forty clients, all on one worker")
    finally:
        for ws, _ in spare:
            ws.close()


def test_push_refuses_opcodes_other_than_text_and_binary_at_the_call(tmp_path):
    """1. serve 2 workers  2. A and B are sessions on different workers  3. from A's
    handler, push to A itself (local) and to B (routed) a 200-byte payload with opcodes
    0, 3, 8, 9, 10, 11: each raises ValueError naming TEXT and BINARY  4. so does TEXT
    with bytes that are not UTF-8  5. TEXT and BINARY are sent  6. both still echo."""
    with serving(app_target(tmp_path), tmp_path, workers=2) as server:
        a, a_me, b, b_me = two_sessions_on_two_workers(server)
        with a, b:
            for target in (a_me["fd"], b_me["fd"]):
                for opcode in (0, 3, 8, 9, 10, 11):
                    a.send(f"cmd:push:{target}:{opcode}:big")
                    answer = a.recv(timeout=timeout(5))
                    assert str(answer).startswith("ValueError: "), (target, opcode, answer)
                    assert "TEXT (1) or BINARY (2)" in answer
                a.send(f"cmd:push:{target}:1:bad-utf8")
                assert str(a.recv(timeout=timeout(5))).startswith("ValueError: ")
            a.send(f"cmd:push:{a_me['fd']}:2:big")
            assert a.recv(timeout=timeout(5)) == b"p" * 200
            assert a.recv(timeout=timeout(5)) == "ok True"
            a.send(f"cmd:push:{b_me['fd']}:1:text")
            assert a.recv(timeout=timeout(5)) == "ok True"
            assert b.recv(timeout=timeout(5)) == "hi"
            for ws in (a, b):
                ws.send("still here")
                assert ws.recv(timeout=timeout(5)) == "still here"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("remote_clients")
    with serving(app_target(tmp_path), tmp_path) as server:
        yield server


def http_answer(port: int, path: str) -> bytes:
    with raw_connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_to_eof(sock)


@pytest.mark.parametrize("path", ["/bad-header", "/bad-reason", "/bad-name"])
def test_response_values_http_cannot_carry_get_a_500_and_one_log_record(app_server, path):
    """1. a request handler sets a header value outside latin-1 and leaves the response
    open (its automatic end() used to fail: no answer, "Fatal error on transport"), or a
    reason phrase with CR/LF, or a header name with a space  2. the client gets a 500,
    nothing injected  3. one log record names the handler  4. the server still answers."""
    failures = app_server.log().count("handler on_request raised")
    answer = http_answer(app_server.port, path)
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:200]
    assert b"X-Injected" not in answer
    app_server.wait_for_log(r"handler on_request raised", count=failures + 1)
    log = app_server.log()
    assert log.count("handler on_request raised") == failures + 1
    assert "ValueError: invalid" in log
    assert "Fatal error" not in log
    assert http_answer(app_server.port, "/n/7").endswith(b"\r\n\r\n7")


# -------------------------------------------------- item 5: large messages


def send_and_digest(sock: socket.socket, frames: Frames, payload: bytes) -> str:
    sock.sendall(client_frame(0x2, payload))
    return frames.text(seconds=60)


@pytest.mark.parametrize("handoff", [True, False], ids=["handoff", "no-handoff"])
def test_a_32_mib_message_arrives_intact(tmp_path, handoff):
    """1. serve max_message_size=64 MiB (reload_handoff on or off)  2. a client sends one
    32 MiB binary message  3. the app got exactly those bytes (length and SHA-256)."""
    payload = random.Random(5).randbytes(32 * MiB)
    target = app_target(tmp_path, max_message_size=64 * MiB, reload_handoff=handoff)
    with serving(target, tmp_path) as server:
        sock, rest = raw_handshake(server.port)
        with sock:
            frames = Frames(sock, rest)
            expected = f"{len(payload)}:{hashlib.sha256(payload).hexdigest()}"
            assert send_and_digest(sock, frames, payload) == expected


@pytest.mark.parametrize("handoff", [True, False], ids=["handoff", "no-handoff"])
def test_a_frame_cut_between_two_reads_is_not_taken_for_frames(tmp_path, handoff):
    """1. a 100 KiB binary frame whose payload, at the cut, looks exactly like a small
    masked binary frame  2. the first part is sent and read by the worker, then the rest
    3. the app gets the one 100 KiB message (the continuation was not parsed as frames)."""
    payload = b"a" * 51200 + bytes([0x82, 0x86, 0, 0, 0, 0]) + b"zzzzzz" + b"b" * 51188
    wire = client_frame(0x2, payload)
    cut = 14 + 51200
    with serving(app_target(tmp_path, reload_handoff=handoff), tmp_path) as server:
        sock, rest = raw_handshake(server.port)
        with sock:
            frames = Frames(sock, rest)
            sock.sendall(wire[:cut])
            wait_until(lambda: server_has_read_everything(server.port, sock), what="a read")
            sock.sendall(wire[cut:])
            assert frames.text() == f"{len(payload)}:{hashlib.sha256(payload).hexdigest()}"


def test_a_message_cut_by_a_reload_arrives_intact_or_closes_1012(tmp_path):
    """1. serve with live hand-off  2. client S has sent half of a 100 KiB message, client
    L 600 KiB of a 1 MiB one, both read by the worker  3. a reload  4. S sends the rest:
    the new worker answers with the right length and digest  5. L, whose frame in
    progress is too large to move, gets a 1012 close (its message is not delivered
    corrupted)."""
    small = random.Random(1).randbytes(100 * KiB)
    large = random.Random(2).randbytes(1 * MiB)
    with serving(app_target(tmp_path, max_message_size=4 * MiB), tmp_path) as server:
        old_pid = worker_pid(server)
        s_sock, s_rest = raw_handshake(server.port)
        l_sock, _ = raw_handshake(server.port)
        with s_sock, l_sock:
            s_wire, l_wire = client_frame(0x2, small), client_frame(0x2, large)
            s_sock.sendall(s_wire[: len(s_wire) // 2])
            l_sock.sendall(l_wire[: 600 * KiB])
            for sock in (s_sock, l_sock):
                wait_until(lambda s=sock: server_has_read_everything(server.port, s))
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            assert read_close_code(l_sock) == 1012
            s_sock.sendall(s_wire[len(s_wire) // 2 :])
            frames = Frames(s_sock, s_rest)
            assert frames.text() == f"{len(small)}:{hashlib.sha256(small).hexdigest()}"
            s_sock.sendall(masked_frame(0x1, b"cmd:whoami"))
            assert json.loads(frames.text())["pid"] != old_pid


def test_fragmented_messages_in_progress_move_with_their_sessions_in_a_reload(tmp_path):
    """1. serve with live hand-off  2. client T has sent two fragments of a text message,
    the second ending inside a two-byte character; client B two fragments of a binary
    one; both read by the worker  3. a reload  4. each sends its last fragment: the new
    worker delivers both messages whole (T's echoed, B's length and digest)."""
    blob = random.Random(3).randbytes(3000)
    with serving(app_target(tmp_path), tmp_path) as server:
        old_pid = worker_pid(server)
        t_sock, t_rest = raw_handshake(server.port)
        b_sock, b_rest = raw_handshake(server.port)
        with t_sock, b_sock:
            t_sock.sendall(
                client_frame(0x1, "déjà ".encode(), fin=False)
                + client_frame(0x0, b"vu, caf\xc3", fin=False)
            )
            b_sock.sendall(
                client_frame(0x2, blob[:1000], fin=False)
                + client_frame(0x0, blob[1000:2000], False)
            )
            for sock in (t_sock, b_sock):
                wait_until(lambda s=sock: server_has_read_everything(server.port, s))
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            t_sock.sendall(client_frame(0x0, b"\xa9 !"))
            b_sock.sendall(client_frame(0x0, blob[2000:]))
            t_frames, b_frames = Frames(t_sock, t_rest), Frames(b_sock, b_rest)
            assert t_frames.text() == "déjà vu, café !"
            assert b_frames.text() == f"{len(blob)}:{hashlib.sha256(blob).hexdigest()}"
            t_sock.sendall(masked_frame(0x1, b"cmd:whoami"))
            assert json.loads(t_frames.text())["pid"] != old_pid


def test_sessions_in_the_middle_of_large_messages_cannot_sink_a_reload_for_the_others(
    tmp_path,
):
    """1. serve with max_message_size 16 MiB  2. 6 clients each send 12 MiB of a
    fragmented message and not its end; then 3 bystanders send a message each (so all
    nine are the most recently active, moved in one batch)  3. a reload  4. the
    bystanders moved to the new worker; the 6 get 1012 (their messages are too large
    to carry). Before, the fragments were not counted against the batch's cap, the batch
    came to 72 MiB, over what a channel message may carry, and every session in it fell
    back to 1012, the bystanders too."""
    piece = client_frame(0x0, bytes(512 * KiB), fin=False)
    message = client_frame(0x2, bytes(512 * KiB), fin=False) + piece * 23  # 12 MiB
    with serving(app_target(tmp_path, max_message_size=16 * MiB), tmp_path) as server:
        old_pid = worker_pid(server)
        senders = [raw_handshake(server.port)[0] for _ in range(6)]
        bystanders = [raw_handshake(server.port) for _ in range(3)]
        try:
            for sock in senders:
                sock.sendall(message)
            for sock in senders:
                wait_until(lambda s=sock: server_has_read_everything(server.port, s), 30)
            frames = []
            for sock, rest in bystanders:
                sock.sendall(masked_frame(0x1, b"cmd:whoami"))
                frames.append(Frames(sock, rest))
                assert json.loads(frames[-1].text())["pid"] == old_pid
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 30)
            for (sock, _), reader in zip(bystanders, frames, strict=True):
                sock.sendall(masked_frame(0x1, b"cmd:whoami"))
                assert json.loads(reader.text())["pid"] != old_pid
            assert [read_close_code(sock, 10) for sock in senders] == [1012] * 6
        finally:
            for sock in senders + [sock for sock, _ in bystanders]:
                sock.close()


def test_a_message_of_tiny_fragments_costs_the_worker_about_its_size(tmp_path):
    """1. 8 clients each send 1 MiB, the most max_message_size allows, as a text message
    of 64-byte fragments, the shortest that count no more than their size (shorter ones
    count 64 bytes each: FRAGMENT_CHARGE), and never its last fragment  2. the worker has
    read it all and holds each message in one buffer: it grew by far less than one object
    per fragment would take  3. one more fragment past max_message_size closes 1009
    4. others are still served."""
    first = client_frame(0x1, b"ab" * 32, fin=False)
    fragments = first + client_frame(0x0, b"ab" * 32, fin=False) * (MiB // 64 - 1)
    with serving(app_target(tmp_path), tmp_path) as server:
        (worker,) = server.workers()
        rss_before = worker.memory_info().rss
        socks = [raw_handshake(server.port)[0] for _ in range(8)]
        try:
            for sock in socks:
                sock.sendall(fragments)
            for sock in socks:
                wait_until(lambda s=sock: server_has_read_everything(server.port, s), 30)
            grown = worker.memory_info().rss - rss_before
            socks[0].sendall(client_frame(0x0, b"ab", fin=False))
            assert read_close_code(socks[0]) == 1009
        finally:
            for sock in socks:
                sock.close()
        assert grown < 40 * MiB, f"worker grew {grown / MiB:.1f} MiB"
        assert http_answer(server.port, "/n/2").endswith(b"\r\n\r\n2")


def deflate_bomb(fragmented: bool = False) -> bytes:
    """A binary message of about 1 KiB that inflates to 1 MiB of zeros, compressed as a
    stream of its own (RFC 7692 §7.2.1: the final empty block's four bytes left off),
    RSV1 set: one frame, or two fragments (which websockets' protocol object parses)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert payload.endswith(b"\x00\x00\xff\xff")
    payload = payload[:-4]
    if not fragmented:
        return client_frame(0x40 | 0x2, payload)
    half = len(payload) // 2
    return client_frame(0x40 | 0x2, payload[:half], fin=False) + client_frame(0x0, payload[half:])


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"


def peak_rss(proc: psutil.Process) -> int:
    """The process's peak resident memory so far (VmHWM, /proc/PID/status), in bytes."""
    status = open(f"/proc/{proc.pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * KiB


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
def test_compressed_messages_queued_for_a_busy_coroutine_handler_are_bounded(tmp_path, fragmented):
    """1. 5 clients negotiate permessage-deflate; each sends a message whose coroutine
    handler sleeps, then 100 messages of about 1 KiB that inflate to 1 MiB each (whole:
    the fast path; in two fragments: websockets' protocol object)  2. the
    worker's peak memory grew by a few MiB per client, not by what the messages inflate
    to (100 MiB per client before: queued events were bounded by count only, and a whole
    read was parsed at once)  3. once the handler wakes, every message is handled, in
    order: nothing read was lost."""
    bomb = deflate_bomb(fragmented)
    expected = f"{MiB}:{hashlib.sha256(bytes(MiB)).hexdigest()}"
    with serving(app_target(tmp_path), tmp_path) as server:
        (worker,) = server.workers()
        rss_before = worker.memory_info().rss
        clients = []
        for _ in range(5):
            sock = raw_connect(server.port)
            head, rest = upgrade_with(sock, headers=DEFLATE_OFFER)
            assert b"permessage-deflate" in head
            clients.append((sock, rest))
        try:
            for sock, _ in clients:
                sock.sendall(masked_frame(0x1, b"cmd:sleep:2") + bomb * 100)
            for sock, _ in clients:
                wait_until(lambda s=sock: server_has_read_everything(server.port, s))
            for sock, rest in clients:
                frames = Frames(sock, rest)
                assert frames.text(10) == "slept"
                assert [frames.text(10) for _ in range(100)] == [expected] * 100
            grown = peak_rss(worker) - rss_before
        finally:
            for sock, _ in clients:
                sock.close()
    assert grown < 40 * MiB, f"the worker's peak grew {grown / MiB:.0f} MiB"


def test_a_closed_session_whose_handlers_still_work_counts_against_max_connections(tmp_path):
    """1. serve with max_connections 2  2. client A sends a message whose coroutine handler
    sleeps and one more message, and closes; the worker sees it close  3. while A's
    handlers still work through what it sent, one more client is served and the next
    gets 503: a client that closes and connects again cannot make the worker hold
    queued messages for more connections than max_connections  4. once they are done,
    A's slot is free again."""
    with serving(app_target(tmp_path, max_connections=2), tmp_path) as server:
        with raw_connect(server.port) as a:
            upgrade(a)
            a.sendall(masked_frame(0x1, b"cmd:sleep:3") + masked_frame(0x1, b"queued"))
            wait_until(lambda: server_has_read_everything(server.port, a))
            a_port = a.getsockname()[1]

        def a_closed_here() -> bool:
            row = tcp_row(server.port, a_port)
            return row is None or row[3] not in ("01", "08")  # ESTABLISHED, CLOSE_WAIT

        wait_until(a_closed_here, what="the worker closing its side of A")
        with raw_connect(server.port) as b:
            upgrade(b)
            assert http_answer(server.port, "/n/1").startswith(b"HTTP/1.1 503 ")
            wait_until(lambda: http_answer(server.port, "/n/2").endswith(b"\r\n\r\n2"), 10)


def test_frame_cursor_agrees_with_a_full_rescan_at_every_cut():
    """The linear cursor (core/frames.FrameCursor) finds the same frame in progress as
    rescanning everything read so far (unparsed_tail), over random frames and cuts."""
    from swoolish.core.frames import FrameCursor, unparsed_tail

    rng = random.Random(7)
    for _ in range(200):
        stream = b"".join(
            client_frame(
                rng.choice((1, 2, 9)), rng.randbytes(rng.choice((0, 5, 125, 126, 300, 70000)))
            )
            for _ in range(rng.randint(1, 6))
        )
        keep = rng.choice((0, 14, 200, 1 << 20))
        cursor, pos = FrameCursor(keep), 0
        while pos < len(stream):
            step = rng.choice((1, 2, 3, 7, 13, 100, 5000, 70000))
            cursor.feed(stream[pos : pos + step])
            pos += step
            tail = unparsed_tail(stream[:pos])
            assert cursor.at_boundary == (not tail)
            assert cursor.unparsed == (tail if len(tail) <= keep else None)


# -------------------------------------------------- item 6: Origin


def handshake_status(port: int, origins: list[str]) -> int:
    lines = "".join(f"Origin: {origin}\r\n" for origin in origins)
    with raw_connect(port) as sock:
        sock.sendall(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\n{lines}\r\n"
            ).encode()
        )
        sock.settimeout(timeout(5))
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        return int(head.split(b" ", 2)[1])


def test_websocket_origins_refuse_other_origins_with_403_before_the_handshake_handler(tmp_path):
    """1. serve --websocket-origins 'https://good.example, http://localhost:8080'  2. those
    origins (in any case, with the default port written out) get 101  3. another origin,
    another port, "null", no Origin and two Origin headers get 403  4. the handshake
    handler ran only for the accepted ones; origin_refused counts the others."""
    origins = "https://good.example, http://localhost:8080"
    with serving(app_target(tmp_path), tmp_path, "--websocket-origins", origins) as server:
        accepted = [
            ["https://good.example"],
            ["HTTPS://Good.Example:443"],
            ["http://localhost:8080"],
        ]
        refused = [
            ["https://evil.example"],
            ["http://localhost:8081"],
            ["null"],
            [],
            ["https://good.example", "https://evil.example"],
        ]
        for origin in accepted:
            assert handshake_status(server.port, origin) == 101, origin
        for origin in refused:
            assert handshake_status(server.port, origin) == 403, origin
        assert http_answer(server.port, "/handshakes").endswith(b"\r\n\r\n3")
        with server.connect(origin="https://good.example") as ws:
            assert ask(ws, "cmd:stats")["origin_refused"] == len(refused)
