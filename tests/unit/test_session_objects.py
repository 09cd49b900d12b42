"""What a session keeps that the garbage collector walks: a worker with 10,000 sessions
has its full collections walk every such object, so a session without fragments or
extensions holds no list of its own for them (swoolish/worker/websocket.py). Both fast
paths (the fuzz test's ``fast_path`` fixture)."""

from __future__ import annotations

import gc

from unit.test_connection_fuzz import (  # fast_path: both fast paths, compiled and Python
    FakeTransport,
    StubWorker,
    client_frame,
    fast_path,  # noqa: F401
    handshake,
)

from swoolish.worker.http import HttpConnection


def open_session(compression: bool) -> tuple[StubWorker, FakeTransport]:
    worker = StubWorker(compression)
    transport = FakeTransport()
    transport.protocol = HttpConnection(worker)
    transport.protocol.connection_made(transport)
    transport.protocol.data_received(handshake(compression))
    assert bytes(transport.out).startswith(b"HTTP/1.1 101 ")
    return worker, transport


def test_a_plain_session_keeps_no_collected_container_for_fragments_or_extensions() -> None:
    _, transport = open_session(compression=False)
    session = transport.protocol
    assert session._fragments is None
    assert session._extensions == ()
    assert not gc.is_tracked(session._extensions)


def test_a_fragmented_message_gets_its_list_and_lets_it_go_once_whole() -> None:
    worker, transport = open_session(compression=False)
    session = transport.protocol
    session.data_received(client_frame(1, b"hel", fin=False))
    assert bytes(session._fragments.data) == b"hel"
    session.data_received(client_frame(0, b"lo", fin=False))
    session.data_received(client_frame(0, b"!"))
    assert worker.server.echoed == [(1, b"hello!")]
    assert session._fragments is None
    session.data_received(client_frame(2, b"\x00", fin=False) + client_frame(0, b"\x01"))
    assert worker.server.echoed[-1] == (2, b"\x00\x01")
    assert session._fragments is None


def test_a_compressed_session_still_has_its_extension() -> None:
    _, transport = open_session(compression=True)
    session = transport.protocol
    assert [type(ext).__name__ for ext in session._extensions] == ["PerMessageDeflate"]
    assert session._deflate is session._extensions[0]


def test_a_lost_http_connection_is_freed_without_the_garbage_collector() -> None:
    """1. an HTTP connection whose client stopped reading (its answers wait), with two
    requests parsed and a chunked body half read  2. the connection is lost, and the
    loop and the transport let go of it, as uvloop's do  3. it is freed by reference
    counting alone, what it parsed with it: its parser holds its callbacks, and as a
    cycle they would wait for a full collection (some 1 MiB of body and 16 requests per
    closed connection, for as long as none ran)."""

    def connections() -> int:
        return sum(type(o) is HttpConnection for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = connections()
        worker = StubWorker(False)
        transport = FakeTransport()
        conn = HttpConnection(worker)
        transport.protocol = conn
        conn.connection_made(transport)
        conn.pause_writing()
        conn.data_received(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 2
            + b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"2\r\nab\r\n" * 100
        )
        assert len(conn._requests) == 2 and bytes(conn._body) == b"ab" * 100
        assert connections() == before + 1
        conn.connection_lost(None)
        transport.protocol = conn = None
        worker.loop.handles.clear()  # the fake loop keeps cancelled timers; uvloop does not
        assert connections() == before
    finally:
        gc.enable()
