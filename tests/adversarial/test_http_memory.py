"""What HTTP requests cost a worker's memory, against real ``swoolish serve`` processes.

A request is held in about the bytes the client sent for it, however it is cut: a chunked
body goes into one buffer, not one object per chunk, and a query string stays text until
the app reads ``request.query``. Each test serves ``tests/apps/http_memory_app.py`` (a
coroutine ``request`` handler, so that pipelined requests wait parsed behind one not yet
answered), sends what once grew a worker many times over, waits until the worker has read
it all, and checks the worker's RSS (psutil); and that the same requests, sent as any
client sends them, still arrive as before (docs/security.md, "Remote clients").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
from support import (
    raw_connect,
    read_to_eof,
    server_has_read_everything,
    serving,
    tcp_row,
    wait_until,
    write_app,
)

KiB, MiB = 1024, 1024 * 1024
LIMIT = 64 * KiB  # max_request_size of the server the behaviour tests share


def app_target(directory, **settings) -> str:
    """A wrapper serving ``http_memory_app.build(**settings)``; returns its TARGET."""
    source = f"from tests.apps.http_memory_app import build\n\nserver = build(**{settings!r})\n"
    return f"{write_app(directory, source)}:server"


def exchange(port: int, request: bytes) -> bytes:
    """Send one request (or several) on a new connection; everything until it closes."""
    with raw_connect(port) as sock:
        sock.sendall(request)
        return read_to_eof(sock, 10)


def body_of(answer: bytes) -> bytes:
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    return answer.partition(b"\r\n\r\n")[2]


def chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    """A chunked body (RFC 9112 §7.1): each piece one chunk, then the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailer + b"\r\n"


def post(length: int | None = None) -> bytes:
    """The head of a POST /body: with Content-Length ``length``, or chunked."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST /body HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + framing + b"\r\n\r\n"


def digest(data: bytes) -> bytes:
    return b"bytes:%d:%s" % (len(data), hashlib.sha256(data).hexdigest().encode())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("http_memory")
    with serving(app_target(directory, max_request_size=LIMIT), directory) as server:
        yield server


def release_and_check_all_held(server, socks) -> None:
    """Let every /hold go on; each client, which pipelined 17 of them, gets 17 answers."""
    release = b"GET /release HTTP/1.1\r\nConnection: close\r\n\r\n"
    assert body_of(exchange(server.port, release)) == b"released"
    for sock in socks:
        answer = read_to_eof(sock, 30)
        assert answer.count(b"HTTP/1.1 200 ") == 17 and answer.endswith(b"held"), answer[:200]


@contextlib.contextmanager
def clients(server, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``server``, closed on the way out, even on failure."""
    socks = [raw_connect(server.port) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def read_all(server, sock) -> bool:
    return server_has_read_everything(server.port, sock)


def worker_rss(server) -> int:
    (worker,) = server.workers()
    return worker.memory_info().rss


# -------------------------------------------------- bodies


BODIES = {
    "empty": (b"", None),
    "one piece": (b"b" * 100, None),
    "many reads": (bytes(range(256)) * (LIMIT // 256), None),  # exactly max_request_size
    "chunks of many sizes": (
        b"",
        [b"a", b"bc", b"d" * 255, b"e" * 256, b"f" * 257, b"g" * 5000, b"h" * 20000],
    ),
    "two-byte chunks up to the limit": (b"", [b"%02d" % (i % 100) for i in range(LIMIT // 2)]),
}


@pytest.mark.parametrize("case", BODIES)
def test_bodies_arrive_intact_however_they_are_cut(server, case):
    """1. a POST whose body is sent whole (Content-Length) or as chunks of 1 byte to
    20 KB, up to max_request_size, a trailer after the chunks  2. the handler gets the
    body as ``bytes``, byte for byte."""
    body, pieces = BODIES[case]
    if pieces is None:
        request = post(len(body)) + body
    else:
        body = b"".join(pieces)
        request = post() + chunked(pieces, b"X-Sum: 1\r\n")
    assert body_of(exchange(server.port, request)) == digest(body)


def test_a_body_past_max_request_size_in_tiny_chunks_gets_413(server):
    """1. max_request_size in two-byte chunks and one byte more  2. 413, naming the
    limit  3. the same body sent whole gets 413 too."""
    pieces = [b"xy"] * (LIMIT // 2) + [b"z"]
    answer = exchange(server.port, post() + chunked(pieces))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"%d bytes at most" % LIMIT in answer, answer
    whole = b"x" * (LIMIT + 1)
    assert exchange(server.port, post(len(whole)) + whole).startswith(b"HTTP/1.1 413 ")


def test_chunked_bodies_of_two_byte_chunks_cost_the_worker_about_their_size(tmp_path):
    """1. 8 clients each send a chunked POST of 1 MiB (the default max_request_size) in
    two-byte chunks, 7 MiB on the wire, and not its last chunk  2. the worker has read
    it all and holds each body in one buffer: it grew by a few MiB per client, not by
    one object per chunk (some 28 MiB per client before)  3. one client ends its body:
    it arrives intact  4. the clients close: the worker lets go of their bodies at once,
    not at some later full garbage collection (its parser held the connection)."""
    pieces = [b"ab"] * ((MiB - 4 * KiB) // 2)
    body = b"".join(pieces)
    wire = chunked(pieces)
    unfinished, end = wire[: -len(b"0\r\n\r\n")], b"0\r\n\r\n"
    target = app_target(tmp_path, handshake_timeout=60.0)
    with serving(target, tmp_path) as server:
        assert body_of(exchange(server.port, post() + chunked([b"warm"])))
        rss_before = worker_rss(server)
        with clients(server, 8) as socks:
            for sock in socks:
                sock.sendall(post() + unfinished)
            for sock in socks:
                wait_until(
                    lambda s=sock: server_has_read_everything(server.port, s), 60, what="all read"
                )
            grown = worker_rss(server) - rss_before
            assert grown < 24 * MiB, f"worker grew {grown / MiB:.1f} MiB for 8 MiB of bodies"
            socks[0].sendall(end)
            assert body_of(read_to_eof(socks[0], 10)) == digest(body)
        wait_until(
            lambda: worker_rss(server) - rss_before < max(grown / 4, 2 * MiB),
            10,
            what="the worker to let go of the closed connections' bodies",
        )


# -------------------------------------------------- query strings


QUERIES = [
    "",
    "x=1",
    "x=1&y=&x2=%20z",
    "a=1&a=2&b=3&a=4",  # a repeated key: the last value, as before
    "plus=a+b&enc=%26%3D%2B&bare&=v&e=",
    "k%C3%A9=caf%C3%A9&sp=%20%20",
    "&&x=1&;y=2",
]


@pytest.mark.parametrize("query", QUERIES)
def test_request_query_is_the_mapping_it_always_was(server, query):
    """1. GET /query with a query string of blank values, repeated keys, escapes
    2. ``request.query`` is ``dict(parse_qsl(query, keep_blank_values=True))``: blank
    values kept, the last of a repeated key, ``+`` a space, UTF-8 escapes decoded."""
    target = f"/query?{query}" if query else "/query"
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    expected = dict(parse_qsl(query, keep_blank_values=True))
    assert json.loads(body_of(exchange(server.port, request))) == expected


def test_long_query_strings_waiting_behind_a_slow_handler_cost_about_their_size(tmp_path):
    """1. 10 clients each pipeline 17 GETs with a 62 KiB query string of 11,000 distinct
    keys to a handler that awaits (one answering, 16 parsed and waiting) and never reads
    ``request.query``  2. the worker has read them all and keeps each query as the text
    it came as: it grew by about what was sent (10 MiB), not by a dict of 11,000 entries
    per request (some 19 MiB per client before)  3. once released, every request is
    answered, in order."""
    keys = "&".join(f"k{i:x}" for i in range(11000))
    assert 60 * KiB < len(keys) < 62 * KiB
    one = f"GET /hold?{keys} HTTP/1.1\r\nHost: x\r\n".encode()
    pipelined = (one + b"\r\n") * 16 + one + b"Connection: close\r\n\r\n"
    with serving(app_target(tmp_path), tmp_path) as server:
        assert body_of(exchange(server.port, b"GET /n HTTP/1.1\r\nConnection: close\r\n\r\n"))
        rss_before = worker_rss(server)
        with clients(server, 10) as socks:
            for sock in socks:
                sock.sendall(pipelined)
            for sock in socks:
                wait_until(
                    lambda s=sock: server_has_read_everything(server.port, s), 30, what="all read"
                )
            grown = worker_rss(server) - rss_before
            release_and_check_all_held(server, socks)
        assert grown < 40 * MiB, f"worker grew {grown / MiB:.1f} MiB for 10 MiB of queries"


def test_a_lost_connection_whose_handler_still_works_counts_against_max_connections(tmp_path):
    """1. serve with max_connections 3  2. client A asks for /hold (its coroutine handler
    waits) and closes; the worker sees it close  3. with two more clients connected, the
    next one gets 503: A's handler still works for it  4. once /release lets A's handler
    finish, its slot is free again."""
    with serving(app_target(tmp_path, max_connections=3), tmp_path) as server:
        with raw_connect(server.port) as a:
            a.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda: read_all(server, a))
            a_port = a.getsockname()[1]

        def a_closed_here() -> bool:
            row = tcp_row(server.port, a_port)
            return row is None or row[3] not in ("01", "08")  # ESTABLISHED, CLOSE_WAIT

        wait_until(a_closed_here, what="the worker closing its side of A")
        with raw_connect(server.port):  # B, connected
            with raw_connect(server.port) as c:
                refused = exchange(server.port, b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n")
                assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
                c.sendall(b"GET /release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert body_of(read_to_eof(c, 10)) == b"released"
            request = b"GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            wait_until(lambda: exchange(server.port, request).startswith(b"HTTP/1.1 200 "))


def test_pipelined_bodies_waiting_behind_a_slow_handler_are_bounded_by_max_request_size(
    tmp_path,
):
    """1. 10 clients each pipeline 17 POSTs of 1 MiB (max_request_size) to a handler that
    awaits (one answering, the rest waiting)  2. the worker stops parsing once bodies of
    max_request_size wait answered, and reading with it: it grew by a few MiB per
    client, not by the 16 bodies that waited parsed before (some 17 MiB per client)
    3. once released, every request is answered, in order."""
    body = bytes(range(256)) * (MiB // 256)
    one = b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    pipelined = (one + b"\r\n" + body) * 16 + one + b"Connection: close\r\n\r\n" + body
    with serving(app_target(tmp_path), tmp_path) as server:
        assert body_of(exchange(server.port, b"GET /n HTTP/1.1\r\nConnection: close\r\n\r\n"))
        rss_before = worker_rss(server)
        with clients(server, 10) as socks:
            senders = [
                threading.Thread(target=sock.sendall, args=(pipelined,), daemon=True)
                for sock in socks
            ]
            for sender in senders:
                sender.start()

            (worker,) = server.workers()
            last_read = [-1]

            def reading_stopped() -> bool:
                # every client's bytes are read or wait in the worker's receive queue,
                # and the worker read none since the last look
                rows = [tcp_row(server.port, s.getsockname()[1]) for s in socks]
                waiting = [r is not None and int(r[4].split(":")[1], 16) > 0 for r in rows]
                done = all(w or not t.is_alive() for w, t in zip(waiting, senders, strict=True))
                read, last_read[0] = last_read[0], worker.io_counters().read_chars
                return done and read == last_read[0]

            wait_until(reading_stopped, 30, interval=0.3, what="the worker to stop reading")
            grown = worker_rss(server) - rss_before
            release_and_check_all_held(server, socks)
        assert grown < 80 * MiB, f"worker grew {grown / MiB:.0f} MiB for 10 clients"
