"""Live hand-off: a stopping worker moves its open WebSockets to its successor.

Instead of closing each client with 1012 on a reload, the old worker passes the socket
itself (SCM_RIGHTS) with the connection's protocol state to the new worker of its slot,
and the client never notices. docs/reload.md ("Live hand-off") describes the sequence;
each rule below exists because breaking it lost or duplicated bytes:

* **One writer per connection.** A connection moves only when it is quiescent: reading
  paused and no handler of it in flight (bounded wait). From the detach on, the old
  worker never writes to it (``push`` returns False there).
* **abort(), never close().** The old worker keeps a dup of the descriptor and aborts the
  transport: no FIN, no RST, no flush racing the new writer. Bytes still in the
  transport move verbatim (``unsent``, a suffix of what was written) and the new worker
  writes them first; bytes read but not yet a complete frame move as ``unparsed`` and
  are parsed first.
* **Two phases.** The old worker keeps its dup until the new one acknowledges the batch;
  on a refusal, a timeout, a truncated message or state over its cap, it re-adopts its
  own dup through the same resume path, sends what it owed, then closes with 1012.
  The worst case is the 1012 close of a reload without hand-off, never a lost client.
  A batch carries a deadline the new worker checks before it acknowledges; the old
  worker gives up only ACK_GRACE after it, so the two never both own a socket.
* **Plain data only.** The state is versioned plain data (a reload's new code may not
  unpickle old classes); bound timers move by callback name; callables never move.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..core.frames import SERVICE_RESTART
from ..core.messages import (
    HANDOFF_VERSION,
    HandoffAck,
    HandoffBatch,
    MovingSession,
)
from ..shared import ipc, priority
from .host import WorkerHost
from .websocket import WsConnection

__all__ = ["Adopter", "HandoffReport", "hand_off"]

log = logging.getLogger("swoolish.handoff")

QUIESCE_TIMEOUT = 1.0  # seconds a busy connection gets to finish its handlers
ACK_TIMEOUT = 3.0  # seconds the new worker gets to acknowledge a batch
ACK_GRACE = 1.0  # seconds more the old worker waits: a batch is accepted before its deadline
SETTLE_TIMEOUT = 1.0  # seconds a connection accepted just before the stop gets to upgrade
LATE_ROUNDS = 3  # hand-off rounds for sessions whose handshake completed meanwhile
MAX_MOVED_BYTES = 256 * 1024  # unsent, unparsed and message-so-far bytes one connection may carry
MAX_BATCH_BYTES = 2 * 1024 * 1024  # one message (ipc cuts it into packets that fit)
FIRST_SLICE = 16  # connections in the first batch: the most recently active ones
QUIET_SECONDS = 0.1  # a session without a message for this long is quiet
FIRST_RELEASE_WAIT = 0.25  # seconds the rest waits for the first batch's release round trip
ADOPT_SLICE = 64  # sessions of a batch the new worker adopts side by side (Adopter._adopt)


class HandoffReport:
    """What one worker's hand-off did, for the reload log."""

    def __init__(self) -> None:
        self.moved = 0
        self.batches = 0
        self.fell_back: Counter[str] = Counter()
        self.seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "moved": self.moved,
            "fell_back": sum(self.fell_back.values()),
            "fallback_reasons": dict(self.fell_back),
            "handoff_seconds": round(self.seconds, 4),
        }


# ---------------------------------------------------------------------------- old worker


async def hand_off(
    worker: WorkerHost,
    sock: socket.socket,
    conns: list[WsConnection],
    master: ipc.Channel | None = None,
) -> HandoffReport:
    """Move ``conns`` to the worker at the other end of ``sock``, then the sessions
    whose handshake completed meanwhile (accepted just before we stopped accepting);
    what cannot move gets the 1012 close of a reload. ``master`` is this worker's
    channel to the master: what we routed for a batch's clients reaches the master
    before the batch leaves (see ``_send_batch``)."""
    report = HandoffReport()
    started = time.monotonic()
    channel = ipc.Channel(sock, name="the hand-off channel")
    channel.use_loop(worker.loop)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a GC pass walks every connection object: not while clients wait
    try:
        for _ in range(LATE_ROUNDS):
            if conns:
                await _move(worker, channel, conns, report, master)
            await _settle_handshakes(worker)
            conns = worker.take_late_movers(final=False)
            for conn in conns:
                conn.prepare_move()
            if not conns:
                break
        for conn in worker.take_late_movers(final=True):
            _fall_back_attached(conn, "handshake after the hand-off", report)
    finally:
        if gc_was_enabled:
            gc.enable()
        report.seconds = time.monotonic() - started
    return report


async def _move(
    worker: WorkerHost,
    channel: ipc.Channel,
    conns: list[WsConnection],
    report: HandoffReport,
    master: ipc.Channel | None,
) -> None:
    acks = _AckReader(worker.loop, channel)
    try:
        # Most recently active first: the busiest clients see the shortest pause. Each
        # batch is checked just before it moves, so the first one leaves at once.
        conns = sorted(conns, key=lambda c: c.last_time, reverse=True)
        quiet_from = _first_quiet(conns)
        for conn in conns:
            conn.freeze()
        await _quiesce(worker, conns)
        for start, end in _slices(len(conns)):
            if start and start >= quiet_from:
                priority.step_back()  # for good: what is left of this process is background
            batch: list[WsConnection] = []
            for conn in conns[start:end]:
                reason = conn.unmovable_reason()
                if reason is None:
                    batch.append(conn)
                else:
                    _fall_back_attached(conn, reason, report)
            if batch:
                report.batches += 1  # numbers stay unique over every round: acks match
                await _send_batch(worker, channel, acks, report.batches, batch, report, master)
                if start == 0:
                    await _let_first_batch_go(worker, report.batches)
    finally:
        acks.close()


async def _let_first_batch_go(worker: WorkerHost, number: int) -> None:
    """Let the busiest clients' batch complete its release before the next batch is
    prepared.

    The new worker holds its own pushes to an adopted session until the master's
    ``Arrived`` marker (swoolish.worker.router), which comes only after this worker
    answered the master's ``Released``. Preparing the next batch (detaching, exporting
    and pickling up to ``ipc.MAX_FDS`` sessions) keeps this loop from reading that
    answer for milliseconds: the busiest clients would wait for the second batch too
    (docs/performance.md, "Live hand-off"). One round trip through the master, bounded."""
    if not await worker.router.answered(number, FIRST_RELEASE_WAIT):
        log.debug("hand-off: no answer to release %d in %gs", number, FIRST_RELEASE_WAIT)


def _first_quiet(conns: list[WsConnection]) -> int:
    """The index (in ``conns``, busiest first) of the first session quiet for QUIET_SECONDS.

    From there on only quiet sessions are left to move: their clients cannot tell a
    slower move, while those adopted already share the CPU with this worker. So this
    worker, which exits after the hand-off, steps back to a lower priority
    (swoolish.shared.priority) and leaves the CPU to the new worker serving them
    (docs/performance.md, "Live hand-off")."""
    cutoff = time.time() - QUIET_SECONDS
    return next((i for i, conn in enumerate(conns) if conn.last_time < cutoff), len(conns))


def _slices(count: int) -> list[tuple[int, int]]:
    """The batches of ``count`` connections sorted busiest first: a small first one,
    then as many descriptors as one packet carries.

    A client's pause is its batch's move plus that batch's adoption and release
    (docs/performance.md, "Live hand-off"); the new worker adopts a batch as a whole
    before it announces it, so the busiest clients get a batch small enough to be
    adopted at once, and the rest move in full packets (fewer round trips)."""
    slices: list[tuple[int, int]] = []
    start, size = 0, FIRST_SLICE
    while start < count:
        slices.append((start, min(count, start + size)))
        start, size = start + size, ipc.MAX_FDS
    return slices


async def _settle_handshakes(worker: WorkerHost) -> None:
    """Wait (bounded) for connections accepted just before this worker stopped accepting
    to send their first request: a WebSocket handshake among them then joins the
    hand-off instead of getting a 1012."""
    loop = worker.loop
    deadline = loop.time() + min(SETTLE_TIMEOUT, worker.settings.handshake_timeout)
    while loop.time() < deadline and any(c.awaiting_first_request() for c in worker.live):
        await asyncio.sleep(0.005)


async def _quiesce(worker: WorkerHost, conns: list[WsConnection]) -> None:
    """Wait (bounded) until no handler of these connections is in flight."""
    deadline = worker.loop.time() + min(QUIESCE_TIMEOUT, worker.settings.max_wait_time)
    while worker.loop.time() < deadline and not all(c.quiescent() for c in conns):
        await asyncio.sleep(0.005)


def _fall_back_attached(conn: WsConnection, reason: str, report: HandoffReport) -> None:
    """A connection that cannot move stays here and gets the 1012 close of a reload."""
    report.fell_back[reason] += 1
    conn.thaw()
    conn.drain(SERVICE_RESTART, "server restarting")


def _message_bytes(state: MovingSession) -> int:
    """The size of the fragmented message a session is receiving (up to max_message_size
    each): counted with what else it carries, so that sessions in the middle of large
    messages cannot make their batch too large to send, and the others in it fall back
    to a 1012 with them."""
    return sum(len(p.encode() if isinstance(p, str) else p) for p in state.fragments)


async def _send_batch(
    worker: WorkerHost,
    channel: ipc.Channel,
    acks: _AckReader,
    number: int,
    batch: list[WsConnection],
    report: HandoffReport,
    master: ipc.Channel | None,
) -> None:
    """Detach ``batch`` and move it in as many messages as its state needs: a session
    that carries more than MAX_MOVED_BYTES stays (1012), the others all move. Clients
    slow to read a large broadcast each carry up to 256 KiB; 16 of them fill more than
    one message, and the ones past it got a 1012 instead of a later message."""
    detached = [(conn, conn.begin_move()) for conn in batch]
    # Taken in the same step as the detach: no bus message is read in between, so the
    # new worker applies exactly those we did not (swoolish.worker.cluster, "Reloads").
    # Detached sessions apply nothing more here, so the marks hold for every part.
    bus_marks = worker.bus_marks()
    # uvloop delivers connection_lost (and only then knows how much was left unsent)
    # on the next loop iteration after abort().
    await asyncio.gather(*(conn.moved_out for conn, _ in detached if conn.moved_out))
    parts: list[list[tuple[MovingSession, int]]] = [[]]
    size = 0
    for conn, descriptor in detached:
        state = conn.export_state()
        moved_bytes = len(state.unsent) + len(state.unparsed) + _message_bytes(state)
        cost = moved_bytes + (len(pickle.dumps(state.app)) if state.app is not None else 0)
        if moved_bytes > MAX_MOVED_BYTES or cost > MAX_BATCH_BYTES:
            await _readopt(worker, descriptor, state, "state over its cap", report)
            continue
        if size + cost > MAX_BATCH_BYTES:
            parts.append([])  # the next message of this batch
            size = 0
        size += cost
        parts[-1].append((state, descriptor))
    for index, part in enumerate(p for p in parts if p):
        if index:
            report.batches += 1  # each message acknowledged on its own
            number = report.batches
        await _send_part(worker, channel, acks, number, part, bus_marks, report, master)


async def _send_part(
    worker: WorkerHost,
    channel: ipc.Channel,
    acks: _AckReader,
    number: int,
    part: list[tuple[MovingSession, int]],
    bus_marks: dict[tuple[int, int], int] | None,
    report: HandoffReport,
    master: ipc.Channel | None,
) -> None:
    """Send one message of detached sessions (at most MAX_BATCH_BYTES of state), wait
    for its acknowledgement, and take back what the new worker did not accept."""
    states = [state for state, _ in part]
    fds = [descriptor for _, descriptor in part]
    # What these clients' messages made us route leaves before they do: the new worker
    # has the master read our channel before anything it routes for them
    # (swoolish.worker.router), so it must be in the kernel, not in our queue.
    worker.router.flush()
    await _master_took_all(master)
    await worker.settle_bus()  # what these clients published is ahead of what they will
    message = HandoffBatch(
        HANDOFF_VERSION,
        number,
        os.getpid(),
        # CLOCK_MONOTONIC is one clock for every process: the new worker refuses the
        # batch after this, so it never adopts what we took back (one writer per socket).
        time.monotonic() + ACK_TIMEOUT,
        states,
        bus_marks,
    )
    waiter = acks.expect(number)
    try:
        sent = channel.send(message, fds, essential=True)
        failure = "the new worker is gone or not reading"
    except (pickle.PicklingError, TypeError) as exc:
        sent, failure = False, exc.__class__.__name__
    if not sent:
        acks.forget(number)
        reason = f"send failed ({failure})"
        for state, descriptor in part:
            await _readopt(worker, descriptor, state, reason, report)
        return
    no_answer = HandoffAck(number, [], "no answer from the new worker")
    try:
        ack = await asyncio.wait_for(waiter, ACK_TIMEOUT + ACK_GRACE)
    except TimeoutError:
        ack = acks.last_look(number) or no_answer  # an answer sent in time is read now
    except (EOFError, ConnectionError):
        ack = no_answer
    accepted = set(ack.accepted)
    moved = []
    for state, descriptor in part:
        if state.sid in accepted:
            os.close(descriptor)  # the new worker owns it now; ours was the second reference
            moved.append(state.sid)
        else:
            await _readopt(worker, descriptor, state, ack.reason or "refused", report)
    if moved:
        report.moved += len(moved)
        # Operations routed to these sessions through us go to their new owner now.
        worker.router.release(number, moved)


async def _master_took_all(master: ipc.Channel | None) -> None:
    """Wait until our queue to the master is empty (bounded: a stalled master costs the
    order of these clients' routed operations, never the hand-off)."""
    if master is not None:
        await master.drained(ACK_TIMEOUT)


async def _readopt(
    worker: WorkerHost, descriptor: int, state: MovingSession, reason: str, report: HandoffReport
) -> None:
    """Take a detached connection back, deliver what it owed, then close it with 1012."""
    report.fell_back[reason] += 1
    try:
        sock = socket.socket(fileno=descriptor)
        conn = WsConnection.adopting(worker, state, SERVICE_RESTART)
        await worker.loop.connect_accepted_socket(lambda: conn, sock)
    except OSError:
        log.exception("session %d could not be taken back after a failed hand-off", state.sid)
        with contextlib.suppress(OSError):
            os.close(descriptor)


class _AckReader:
    """Reads the new worker's acknowledgements from the hand-off channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: ipc.Channel) -> None:
        self.loop = loop
        self.channel = channel
        self.waiters: dict[int, asyncio.Future[HandoffAck]] = {}
        self.unclaimed: dict[int, HandoffAck] = {}  # acks nobody was waiting for
        loop.add_reader(channel.fileno(), self._readable)

    def expect(self, number: int) -> asyncio.Future[HandoffAck]:
        future = self.loop.create_future()
        self.waiters[number] = future
        return future

    def forget(self, number: int) -> None:
        self.waiters.pop(number, None)

    def last_look(self, number: int) -> HandoffAck | None:
        """After giving up on batch ``number``: its ack, if it is on the channel by now."""
        self.waiters.pop(number, None)
        self._readable()
        return self.unclaimed.pop(number, None)

    def _readable(self) -> None:
        try:
            messages = self.channel.receive()
        except (EOFError, OSError):
            self.loop.remove_reader(self.channel.fileno())
            for future in self.waiters.values():
                if not future.done():
                    future.set_exception(EOFError("hand-off channel closed"))
            return
        for message, fds in messages:
            ipc.close_fds(fds)
            if type(message) is HandoffAck:
                waiter = self.waiters.pop(message.batch, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
                else:
                    self.unclaimed[message.batch] = message

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.channel.fileno())


# ---------------------------------------------------------------------------- new worker


class Adopter:
    """Receives connections on this worker's inbox and adopts them."""

    def __init__(self, worker: WorkerHost, inbox: socket.socket) -> None:
        self.worker = worker
        self.inbox = ipc.Channel(inbox, name="the adoption inbox")
        self.inbox.use_loop(worker.loop)
        self.adopted = 0
        self._adopting: asyncio.Task[None] | None = None  # the batch adopted last
        worker.loop.add_reader(inbox.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.worker.loop.remove_reader(self.inbox.fileno())

    def _readable(self) -> None:
        # A batch the kernel truncated (descriptors or bytes dropped) is dropped by the
        # channel, its descriptors closed: never acknowledged, so the old worker, which
        # still holds every socket, falls back after the deadline.
        try:
            messages = self.inbox.receive()
        except (EOFError, OSError):
            self.close()
            return
        for message, fds in messages:
            if type(message) is HandoffBatch:
                self._on_batch(message, fds)
            else:
                ipc.close_fds(fds)

    def _on_batch(self, message: HandoffBatch, fds: list[int]) -> None:
        states = message.sessions
        reason = self._refusal(message, fds)
        if reason:
            log.warning(
                "hand-off batch %s (%d connections) refused: %s",
                message.batch,
                len(states),
                reason,
            )
        accepted = [] if reason else [state.sid for state in states]
        room = self.worker.settings.max_connections - len(self.worker.connections)
        if len(accepted) > room:
            # Take what fits; the old worker closes the rest with 1012.
            accepted, reason = accepted[: max(0, room)], "the new worker is at max_connections"
        # Acknowledge before any I/O: from here on these connections are ours.
        if not self.inbox.send(HandoffAck(message.batch, accepted, reason or ""), essential=True):
            accepted = []
        keep = set(accepted)
        # Refused (a descriptor count that does not match included): none is ours, and
        # every descriptor received is closed here, or the sockets would leak.
        pairs = list(zip(states, fds, strict=True)) if keep else []
        taken = [(state, descriptor) for state, descriptor in pairs if state.sid in keep]
        adopting = {descriptor for _, descriptor in taken}
        ipc.close_fds([descriptor for descriptor in fds if descriptor not in adopting])
        if taken:
            self.worker.router.adopting(message.sender_pid)
            self._adopting = self.worker.track(
                self._adopt(taken, message.bus_marks, self._adopting)
            )

    def _refusal(self, message: HandoffBatch, fds: list[int]) -> str | None:
        if message.version != HANDOFF_VERSION:
            return f"unknown hand-off version {message.version!r}"
        if len(message.sessions) != len(fds):
            return "descriptor count does not match the batch"
        if self.worker.draining:
            return "the new worker is stopping"
        if time.monotonic() > message.deadline:
            # The old worker has taken these connections back (or is about to).
            return "the batch came after its deadline"
        return None

    async def _adopt(
        self,
        taken: list[tuple[MovingSession, int]],
        bus_marks: dict[tuple[int, int], int] | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Adopt one batch, after the batch before it: batches adopted side by side
        would each be announced (and their clients released) only when the last is done,
        so the first batch, the busiest clients, would wait for all of them.

        The sessions of a batch are adopted side by side, in their order, ADOPT_SLICE
        at a time: a slice takes a few turns of the loop, not two per session. Every
        turn also gives each busy client its share (up to SHARE_SECONDS,
        worker/websocket.py): with one client flooding the worker, one at a time, the
        first batch of 16 took 160 ms, and its clients' answers waited for it
        (docs/reload.md, "Live hand-off"). A slice's sessions are all made in one turn
        (some 30 µs each): slices keep that turn short for the clients adopted before."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        worker = self.worker
        # Python's cyclic GC walking every live connection is a third of adoption time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for start in range(0, len(taken), ADOPT_SLICE):
                await asyncio.gather(
                    *(
                        self._adopt_one(state, descriptor, bus_marks)
                        for state, descriptor in taken[start : start + ADOPT_SLICE]
                    )
                )
        finally:
            worker.router.announce()
            if gc_was_enabled:
                gc.enable()

    async def _adopt_one(
        self, state: MovingSession, descriptor: int, bus_marks: dict[tuple[int, int], int] | None
    ) -> None:
        """One session of a batch on its socket; one that cannot be adopted is lost."""
        worker = self.worker
        try:
            sock = socket.socket(fileno=descriptor)
            conn = WsConnection.adopting(worker, state)
            worker.bus_adopting(state.sid, bus_marks)
            await worker.loop.connect_accepted_socket(_factory(conn), sock)
            self.adopted += 1
        except OSError:
            log.exception("could not adopt session %d", state.sid)
            with contextlib.suppress(OSError):
                os.close(descriptor)
            worker.router.lost(state.sid)


def _factory(conn: WsConnection) -> Callable[[], WsConnection]:
    """The protocol factory of an adopted socket: the connection already built for it."""
    return lambda: conn
