"""How the fast path hands a message to the app's ``message`` handler.

The frame loop calls a plain handler itself (what ``Connection._dispatch`` does when
nothing is queued) and goes through ``_dispatch`` once a coroutine handler is in flight,
so that a session's messages still reach the app one at a time and in order. Driven as
the event loop drives a connection, with the fuzz test's fake transport and worker
double; the worker's ``track`` keeps the tasks, which the test steps by hand. Both
fast paths, compiled and Python (the fuzz test's ``fast_path`` fixture).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Generator
from typing import Any

from unit.test_connection_fuzz import (  # fast_path: both fast paths, compiled and Python
    MAX_MESSAGE,
    FakeTransport,
    StubWorker,
    client_frame,
    fast_path,  # noqa: F401
    handshake,
)

from swoolish.core.settings import Settings
from swoolish.worker.flow import Reason
from swoolish.worker.http import HttpConnection
from swoolish.worker.websocket import LARGE_READ, SHARE_BYTES, SHARE_SECONDS


class Gate:
    """An awaitable that suspends its coroutine once: the test resumes it."""

    def __await__(self) -> Generator[None, None, None]:
        yield


class TrackingWorker(StubWorker):
    """The worker double, keeping the tasks of coroutine handlers instead of refusing."""

    def __init__(self) -> None:
        super().__init__(compression=False)
        self.tasks: list[Coroutine[Any, Any, Any]] = []

    def track(self, coro: Any) -> None:  # type: ignore[override]
        self.tasks.append(coro)


def open_session(worker: StubWorker) -> FakeTransport:
    transport = FakeTransport()
    transport.protocol = HttpConnection(worker)
    transport.protocol.connection_made(transport)
    transport.protocol.data_received(handshake(False))
    assert bytes(transport.out).startswith(b"HTTP/1.1 101 ")
    transport.out.clear()
    return transport


def step(task: Coroutine[Any, Any, Any]) -> bool:
    """Run ``task`` to its next suspension; False once it has finished."""
    try:
        task.send(None)
    except StopIteration:
        return False
    return True


def test_messages_after_a_coroutine_handler_wait_for_it_in_order() -> None:
    worker = TrackingWorker()
    seen: list[tuple[str, str]] = []

    async def on_message(server: Any, frame: Any) -> None:
        seen.append(("start", frame.data))
        if frame.data == "slow":
            await Gate()
        seen.append(("end", frame.data))
        server.push(frame.fd, frame.data)

    worker._handlers["message"] = on_message
    transport = open_session(worker)
    # one read: a message whose handler suspends, then two more behind it
    transport.protocol.data_received(
        client_frame(1, b"slow") + client_frame(1, b"next") + client_frame(1, b"last")
    )
    [task] = worker.tasks  # one task works the session's queue
    assert seen == [] and bytes(transport.out) == b""
    assert step(task)  # the first handler runs up to its await
    assert seen == [("start", "slow")]
    assert not step(task)  # it ends, then the queued ones run, in order
    assert seen == [
        ("start", "slow"),
        ("end", "slow"),
        ("start", "next"),
        ("end", "next"),
        ("start", "last"),
        ("end", "last"),
    ]
    assert bytes(transport.out) == b"\x81\x04slow\x81\x04next\x81\x04last"
    # the queue is done with: the next message's coroutine is a task of its own
    transport.protocol.data_received(client_frame(1, b"more"))
    assert len(worker.tasks) == 2 and not step(worker.tasks[1])
    assert seen[-2:] == [("start", "more"), ("end", "more")]


def test_a_handler_that_raises_closes_its_session_with_1011_and_is_counted() -> None:
    worker = TrackingWorker()
    handled: list[str] = []

    def on_message(server: Any, frame: Any) -> str:
        handled.append(frame.data)
        if frame.data == "bad":
            raise RuntimeError("the app failed on purpose")
        return "a value that is no awaitable: ignored"

    worker._handlers["message"] = on_message
    transport = open_session(worker)
    transport.protocol.data_received(
        client_frame(1, b"ok") + client_frame(1, b"bad") + client_frame(1, b"after")
    )
    assert handled == ["ok", "bad"]  # nothing of that session is handled after the error
    assert worker.stats["handler_errors"] == 1 and worker.tasks == []
    out = bytes(transport.out)
    assert out[0] == 0x88 and out[2:4] == (1011).to_bytes(2, "big")  # a close, 1011


def slow_session(**settings: Any) -> tuple[StubWorker, FakeTransport, list[str]]:
    """A session whose message handler takes a millisecond, and the messages it saw;
    ``settings`` over the worker double's."""
    worker = StubWorker(compression=False)
    if settings:
        worker.settings = Settings({"max_message_size": MAX_MESSAGE, **settings})
    seen: list[str] = []

    def on_message(server: Any, frame: Any) -> None:
        time.sleep(0.001)
        seen.append(frame.data)

    worker._handlers["message"] = on_message
    return worker, open_session(worker), seen


def test_a_long_read_of_slow_messages_is_handled_a_share_at_a_time() -> None:
    """1. one read brings 400 tiny messages whose handler takes a millisecond each
    2. the read's data_received returns once its frames have held the loop for
    SHARE_SECONDS and the share under way: the rest waits, reading paused, for the next
    loop iteration (the worker's other clients get theirs in between; before, all 400
    went in one go)
    3. the next iterations handle the rest, in order."""
    worker, transport, seen = slow_session()
    sent = [str(n % 10) for n in range(400)]
    frame_size = len(client_frame(1, b"0"))
    assert 400 * frame_size > 4 * SHARE_BYTES  # several shares
    transport.protocol.data_received(b"".join(client_frame(1, m.encode()) for m in sent))
    # the clock is looked at after each share: SHARE_SECONDS, and the share it ran out in
    assert len(seen) <= SHARE_SECONDS / 0.001 + SHARE_BYTES // frame_size + 1
    assert transport.paused and transport.protocol.flow.holds(Reason.SHARE)
    worker.loop.fire_all()
    while worker.loop.pending():
        worker.loop.fire_all()
    assert seen == sent
    assert not transport.paused


def test_reads_in_one_turn_of_the_loop_are_timed_together() -> None:
    """1. the loop hands a session two reads in a row, as libuv does (up to 32 reads of a
    stream per turn while it has data), each of four 200-byte messages whose handler
    takes a millisecond: one read alone stays within SHARE_SECONDS
    2. the second read stops once the two together have held the loop for
    SHARE_SECONDS: the rest waits, reading paused (before, each read was timed from its
    own start, so every read of the turn was handled whole: a client sending faster than
    the worker answered kept the worker's other clients waiting 120-200 ms)
    3. the next turns handle the rest, in order, each timed afresh."""
    worker, transport, seen = slow_session()
    sent = [str(n) * 200 for n in range(8)]
    reads = [b"".join(client_frame(1, m.encode()) for m in sent[i : i + 4]) for i in (0, 4)]
    assert all(len(read) > SHARE_BYTES for read in reads)  # each read is checked
    assert 4 * 0.001 < SHARE_SECONDS < 8 * 0.001
    for read in reads:
        if transport.paused:
            break  # libuv reads no more of a paused stream
        transport.protocol.data_received(read)
    assert transport.paused and transport.protocol.flow.holds(Reason.SHARE)
    assert len(seen) < len(sent)
    while worker.loop.pending():
        worker.loop.fire_all()
    assert seen == sent
    assert not transport.paused


def test_a_large_read_waits_for_the_next_turn_once_the_turn_is_spent() -> None:
    """1. the pieces of one 64 KiB message come in reads of 16 KiB, as uvloop hands over
    what it decrypted from a TLS client's 1-byte records, each read costing it
    milliseconds first  2. the first read opens the turn's count; a read that comes
    once SHARE_SECONDS have passed in the same turn waits, whole, for the next turn,
    reading paused (before: no frame ended in those reads, nothing was timed, and one
    such client stalled the worker's other clients 250 ms per turn)  3. the next turn
    takes it, the rest follows, and the message arrives whole."""
    worker, transport, seen = slow_session(max_message_size=1 << 20)
    frame = client_frame(2, bytes(64 * 1024))
    pieces = [frame[i : i + 16 * 1024] for i in range(0, len(frame), 16 * 1024)]
    assert all(len(piece) >= LARGE_READ for piece in pieces[:2])
    transport.protocol.data_received(pieces[0])
    assert not transport.paused
    time.sleep(SHARE_SECONDS * 1.2)  # what uvloop spent on the next read
    transport.protocol.data_received(pieces[1])
    assert transport.paused and transport.protocol.flow.holds(Reason.SHARE)
    while worker.loop.pending():
        worker.loop.fire_all()
    assert not transport.paused
    for piece in pieces[2:]:
        transport.protocol.data_received(piece)
    assert seen == [bytes(64 * 1024)]
