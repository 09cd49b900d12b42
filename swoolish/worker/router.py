"""Operations on another worker's sessions, routed through the master.

A worker that pushes to (disconnects, closes) a session it does not own finds the
owner's region in the shared :mod:`swoolish.shared.table` and queues the operation; once per
loop iteration it sends one message per target to the master (``Route``), which
forwards it to the worker owning that region (``Routed``). Channels are FIFO, so the
operations of one sender on one session are applied in the order they were made.

**A session that moves (live hand-off)** is marked MOVING in the old worker's region
and stays there until the old worker lets go; lookups prefer that entry, so every
operation on the session still goes to the old worker, which keeps them, in order.
Batch by batch, once the new worker acknowledged it, the old worker sends ``Release``
(the batch's ids and the operations it kept for them); the master *parks* every
operation on those ids and answers ``Released``; the old worker drops its MOVING
entries and sends ``ReleaseDone`` with what reached it meanwhile (everything the
master forwarded before ``Released``). The master then delivers kept, late and parked
operations, in that order, to the new owner, followed by an ``Arrived`` marker (the
new owner's own pushes to the session wait for it), and for a while sends operations
still addressed to the old region for those ids to the new owner. Nothing is
reordered and nothing is lost unless the session really went away; a busy client
waits one batch's round trip, not the whole hand-off.

Two causal barriers keep one client's order when *its* worker changes (both travel on
FIFO channels, so no clock is needed):

* The new worker announces what it adopted (``Adopted``) only after sending everything
  it routed before; the master lets the old worker go only once every moved session was
  announced, so an operation the new owner routed towards the old worker is always
  among the kept or late ones, ahead of the new owner's own held pushes.
* Before it handles anything of an adopted batch, the new worker sends ``Adopting``
  naming the old one; the master then reads what the old worker had sent (it routed
  its operations before the batch left), so a client's messages handled by the old
  worker are routed before those the new worker handles for it.

**Broadcasts** go to the master as one operation it fans out to every other worker, and
to every session it parks. A moving session gets each broadcast once: from its old
worker while attached or not yet let go of (kept), from the master while parked, from
the new owner after ``Arrived``. So the new owner skips another worker's broadcast for
a session still arriving, holds its own behind what was routed before, and drops a
second copy (same broadcast id) of one the session already had or holds.

**A fair share of the loop.** One read of the master's channel may bring 64 packets of
some 4,000 small operations each (a ``send_message`` relay of a client's tiny messages),
and each ``pipe_message`` is a call of the app's. Applied in one go, they held a worker's
loop for seconds (a client on it waited 10 s). So :meth:`Router.apply` works for
APPLY_SLICE at a time, and while fewer than MAX_PIPE_TASKS coroutine ``pipe_message``
handlers run (each one a task, and nothing else bounded how many: a flood grew a worker
by 300 MiB); the rest waits in order, and the worker reads nothing more from the master
until it is applied (``when_caught_up``). What waits meanwhile waits in the master, whose
bound on it applies (docs/design.md, "Channels").
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

from ..core.frames import BINARY, NORMAL_CLOSURE, TEXT, check_close, encode_frame
from ..core.messages import (
    Adopted,
    Adopting,
    Arrived,
    Broadcast,
    Close,
    Disconnect,
    Operation,
    Pipe,
    Push,
    PushMany,
    Release,
    ReleaseDone,
    Route,
    Target,
    ToAll,
)
from ..core.switchboard import PARK_TIMEOUT
from ..shared.ipc import Channel
from ..shared.table import SessionTable
from .host import WorkerHost
from .websocket import WsConnection, fan_out

__all__ = ["MAX_ROUTED_PAYLOAD", "Router", "data_size", "operation_size", "routable_payload"]

log = logging.getLogger("swoolish.routing")

CHUNK_BYTES = 256 * 1024  # one routed message: a bounded unit of work for the master
MAX_ROUTED_PAYLOAD = 1024 * 1024  # a bigger push to another worker's session is refused
APPLY_SLICE = 0.005  # seconds of routed operations applied before the loop serves others
ARRIVAL_SHARE = 1024  # held operations sent per turn to an arriving session: some 4 ms
MAX_PIPE_TASKS = 1024  # coroutine pipe_message handlers running at once
#: The resting value of what is left to apply (never mutated).
_NO_OPS: list[Operation] = []


def routable_payload(value: Any, not_picklable: str, too_large: str) -> bytes:
    """``value`` pickled for a trip through the master (send_message, a task), refused
    at the call when it cannot be pickled (TypeError: ``not_picklable: why``) or is over
    MAX_ROUTED_PAYLOAD once pickled (ValueError: ``too_large``)."""
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"{not_picklable}: {exc}") from None
    if len(payload) > MAX_ROUTED_PAYLOAD:
        raise ValueError(too_large)
    return payload


def broadcast_id(worker_pid: int, counter: int) -> int:
    """A broadcast's identity: the same one reaching a moving session twice is applied once."""
    return worker_pid << 32 | (counter & 0xFFFFFFFF)


def data_size(data: Any) -> int:
    """The bytes ``data`` takes on the wire: text in UTF-8 (up to 4 bytes a character).
    Counted in characters, text could pass the 1 MiB bound of a routed push or
    broadcast at up to 4 MiB, and the 8 MiB bound of what waits for the master at up to
    32 MiB. ASCII text (``str.isascii`` is a flag) is known at once."""
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


def operation_size(op: Operation) -> int:
    """About how many bytes ``op`` takes in a routed message (for chunking)."""
    if type(op) is Push or type(op) is Broadcast:
        return data_size(op.data) + 64
    if type(op) is PushMany:
        return data_size(op.data) + 16 * len(op.sids) + 64
    if type(op) is Pipe:
        return len(op.payload) + 64
    return 64


class Router:
    """The worker's side: queue operations for other workers, apply theirs."""

    def __init__(
        self,
        worker: WorkerHost,
        table: SessionTable | None,
        region: int | None,
        channel: Channel | None = None,
    ) -> None:
        """``channel`` is the worker's channel to the master: what waits in it and in the
        outbox is bounded by its ``limit`` (see :meth:`send`)."""
        self.worker = worker
        self.table = table
        self.region = region
        self.channel = channel
        self.outbox: dict[Target, list[Operation]] = {}
        self._pending = 0  # bytes (about) in the outbox
        self._refusing = False  # an episode of refusals is going on (logged once)
        self._flush_scheduled = False
        # operations on sessions we handed off, by session, until the master takes them
        self.kept: dict[int, list[Operation]] = {}
        self.releasing: dict[int, list[int]] = {}  # release (batch) number -> its sids
        self.released: asyncio.Future[None] | None = None  # every release answered
        self._answers: dict[int, asyncio.Future[None]] = {}  # release number -> answered
        self._news: list[int] = []  # adopted sids not yet announced to the master
        # adopted sids, until they arrived -> broadcasts they got or hold (applied once)
        self.seen: dict[int, set[int]] = {}
        self._broadcasts = 0
        self._overdue = 0  # arrivals overdue since the last log line
        self._held_bytes: dict[int, int] = {}  # arriving sid -> bytes of the pushes held
        self._draining: set[int] = set()  # arrived sids whose held operations still go
        self._pid = os.getpid()
        # what apply() was given and has not applied yet, from _next on
        self._ops: list[Operation] = _NO_OPS
        self._next = 0
        self._pipe_tasks = 0  # coroutine pipe_message handlers running
        self._waiting_for_room = False  # applying waits for a pipe_message handler's end
        #: called once what apply() left waiting is applied (the worker reads again)
        self.when_caught_up: Callable[[], None] = _nothing
        self._appliers: dict[type, Callable[[Any], None]] = {
            Push: self._apply_push,
            PushMany: self._apply_push_many,
            Broadcast: self._apply_broadcast,
            Disconnect: self._apply_disconnect,
            Close: self._apply_disconnect,
            Pipe: self._apply_pipe,
            Arrived: self._apply_arrived,
        }

    # -- sending

    def lookup(self, sid: int) -> tuple[int, int, int] | None:
        if self.table is None or type(sid) is not int:
            return None
        return self.table.lookup(sid)

    def send(self, target: Target, op: Operation) -> bool:
        """Queue ``op`` for the master; False (counted ``routed_refused``) if what waits
        for the master is over the channel's bound already: the master is not reading
        us fast enough, and the operation fails now instead of stalling this worker."""
        size = operation_size(op)
        channel = self.channel
        if channel is not None:
            waiting = self._pending + channel.queued
            if waiting and waiting + size > channel.limit:
                self._refuse(waiting)
                return False
            if self._refusing and waiting <= channel.limit // 2:
                # the episode ends once the master has taken half: under a sustained
                # overload, one line, not one each time a small operation fits again
                self._refusing = False
                log.debug("worker %d: routing again", self.worker.worker_id)
        self._pending += size
        self.outbox.setdefault(target, []).append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.worker.loop.call_soon(self.flush)
        return True

    def send_now(self, target: Target, op: Operation) -> bool:
        """:meth:`send`, then flush at once rather than at the end of the callback: for
        a broadcast, whose other workers then write to their sessions while this one
        writes to its own, instead of after it (docs/performance.md, "Broadcast").
        Nothing queued is reordered: the flush sends what was queued before, in order,
        and a flush may run at any time."""
        if not self.send(target, op):
            return False
        self.flush()
        return True

    def _refuse(self, waiting: int) -> None:
        self.worker.stats["routed_refused"] += 1
        if not self._refusing:
            self._refusing = True  # one line per episode, never one per operation
            log.warning(
                "worker %d: %d bytes wait for the master; operations on other workers' "
                "sessions are refused (counted in routed_refused) until they drain",
                self.worker.worker_id,
                waiting,
            )

    def flush(self) -> None:
        self._flush_scheduled = False
        self._pending = 0
        outbox, self.outbox = self.outbox, {}
        for target, ops in outbox.items():
            chunk: list[Operation] = []
            size = 0
            for op in ops:
                n = operation_size(op)
                if chunk and size + n > CHUNK_BYTES:
                    self.worker.report(Route(target, chunk))
                    chunk, size = [], 0
                chunk.append(op)
                size += n
            if chunk:
                self.worker.report(Route(target, chunk))

    # -- receiving

    def apply(self, ops: list[Operation]) -> None:
        """Apply operations other workers routed to this worker's sessions, in order:
        for APPLY_SLICE, then what is left in later loop iterations (``behind``)."""
        self._ops, self._next = ops, 0
        self._apply_some()

    def behind(self) -> bool:
        """Operations given to :meth:`apply` wait: read nothing more until
        ``when_caught_up`` is called."""
        return self._next < len(self._ops)

    def _apply_some(self) -> None:
        """Apply what waits, for APPLY_SLICE at most and while the pipe_message handlers
        running are fewer than MAX_PIPE_TASKS; arrange to go on with the rest."""
        ops, at, end = self._ops, self._next, len(self._ops)
        appliers = self._appliers
        clock = time.perf_counter
        deadline = clock() + APPLY_SLICE
        while at < end and self._pipe_tasks < MAX_PIPE_TASKS:
            op = ops[at]
            at += 1
            appliers[type(op)](op)
            if clock() > deadline:
                break
        if at == end:
            self._ops, self._next = _NO_OPS, 0
        elif self._pipe_tasks >= MAX_PIPE_TASKS:
            self._next, self._waiting_for_room = at, True  # _pipe_done goes on
        else:
            self._next = at
            self.worker.loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        self._apply_some()
        if not self.behind():
            self.when_caught_up()

    def _apply_push(self, op: Push) -> None:
        conn = self.worker.connections.get(op.sid)
        if conn is not None:
            if op.broadcast is None or self._first_time(op.sid, op.broadcast):
                conn.push(op.data, op.opcode)
        elif not self._keep(op):
            self.worker.stats["routed_to_closed"] += 1

    def _apply_push_many(self, op: PushMany) -> None:
        connections = self.worker.connections
        for sid in op.sids:
            conn = connections.get(sid)
            if conn is not None:
                conn.push(op.data, op.opcode)
            elif not self._keep(Push(sid, op.data, op.opcode)):
                self.worker.stats["routed_to_closed"] += 1

    def _apply_broadcast(self, op: Broadcast) -> None:
        self.apply_broadcast(op.data, op.opcode, op.broadcast, local=False)

    def _apply_disconnect(self, op: Disconnect | Close) -> None:
        conn = self.worker.connections.get(op.sid)
        if conn is None:
            if not self._keep(op):
                self.worker.stats["routed_to_closed"] += 1
            return
        with contextlib.suppress(ValueError):  # checked by the sender already
            if type(op) is Disconnect:
                conn.disconnect(op.code, op.reason)
            elif conn.established:
                conn.disconnect(NORMAL_CLOSURE, "")
            else:
                conn.abort()

    def _apply_pipe(self, op: Pipe) -> None:
        self._pipe_message(op.src_worker, op.payload)

    def _apply_arrived(self, op: Arrived) -> None:
        self.arrived(op.sid)

    def broadcast(self, data: Any, opcode: Any) -> tuple[int, bool]:
        """This worker's broadcast: the others' sessions through the master (one
        operation it fans out), then its own. Returns how many of ours it was handed
        to, and whether it went to the others (False: no table, or refused, see
        :meth:`send`).

        The operation leaves before this worker writes to its own sessions
        (:meth:`send_now`)."""
        self._broadcasts += 1
        bid = broadcast_id(self._pid, self._broadcasts)
        routed = False
        if self.table is not None:
            origin = -1 if self.region is None else self.region
            routed = self.send_now(ToAll(origin), Broadcast(data, opcode, bid))
        handed = self.apply_broadcast(data, opcode, bid, local=True)
        return handed, routed

    def apply_broadcast(self, data: Any, opcode: Any, bid: int, local: bool) -> int:
        """Push a broadcast to every session this worker owns.

        A session just adopted gets it in order behind what was routed to it before the
        move when the broadcast is ours (held); another worker's reaches it through its
        old worker or the master instead (see the module docstring). A session we handed
        off and not yet let go of gets it through the release."""
        connections = self.worker.connections
        arriving = connections.arriving
        handed = 0
        if isinstance(data, str):
            payload, kind = data.encode(), opcode or TEXT
        else:
            payload, kind = bytes(data), opcode or BINARY
        direct = []
        for sid, conn in list(connections.items()):
            if not conn.established or conn.closing:
                continue
            if arriving and sid in arriving:
                if local:
                    arriving[sid].append(Push(sid, data, opcode, bid))
                    self._first_time(sid, bid)  # noted: a second copy is dropped
                    handed += 1
            else:
                direct.append(conn)
        # the frame encoded once, for every session that takes it as is
        handed += fan_out(direct, encode_frame(kind, payload), payload, kind, self.worker)
        for sid in connections.moved:
            self._keep(Push(sid, data, opcode, bid))
        return handed

    def _first_time(self, sid: int, bid: int) -> bool:
        """Whether a just-adopted session has not had broadcast ``bid`` yet (it can come
        both through the old worker and from the master)."""
        if sid not in self.worker.connections.arriving:
            return True  # settled: nothing reaches it twice any more
        seen = self.seen.setdefault(sid, set())
        if bid in seen:
            return False
        seen.add(bid)
        return True

    def hold(self, conn: WsConnection, sid: int, data: Any, opcode: Any) -> bool:
        """A push to a session that just arrived waits for what was routed to it before.

        As ``push`` would (``server.push`` checked ``data`` and ``opcode``): past
        ``buffer_output_size``, what waits here and what the transport holds, it is
        refused, ``False`` and counted. The wait lasts until the arrival marker, up to
        PARK_TIMEOUT, and an app pushing meanwhile grew this list without a bound."""
        if conn.closing or not conn.established:
            return conn.push(data, opcode)  # False, counted
        held = self._held_bytes.get(sid, 0) + len(data)
        transport = conn.transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if held + unsent > self.worker.settings.buffer_output_size:
            self.worker.stats["push_over_buffer"] += 1
            return False
        self._held_bytes[sid] = held
        self.worker.connections.arriving[sid].append(Push(sid, data, opcode))
        return True

    def hold_disconnect(self, conn: WsConnection, sid: int, code: int, reason: str) -> bool:
        """A close of a session that just arrived goes after the pushes routed to it
        before, and after our own held pushes: it ends the session, so it comes last."""
        if conn.closing or not conn.established:
            return conn.disconnect(code, reason)  # False
        check_close(code, reason)  # raise here, at the call, as for any session
        self.worker.connections.arriving[sid].append(Disconnect(sid, code, reason))
        return True

    def adopting(self, predecessor: int | None) -> None:
        """Before handling anything of connections handed over by ``predecessor``: have
        the master take in what the predecessor routed for them first (see above)."""
        self.flush()
        self.worker.report(Adopting(predecessor))

    def adopted(self, sid: int) -> None:
        """Deliver our own pushes to an adopted session at the latest after PARK_TIMEOUT."""
        self.worker.loop.call_later(PARK_TIMEOUT, self._arrival_overdue, sid)
        self._news.append(sid)

    def _arrival_overdue(self, sid: int) -> None:
        """No ``Arrived`` within PARK_TIMEOUT (a stalled worker or master): our own held
        operations go now, perhaps ahead of ones routed before the move. Counted, and
        logged once per batch of overdue sessions, never silently."""
        if sid not in self.worker.connections.arriving or sid in self._draining:
            return  # arrived in time
        self.worker.stats["handoff_arrivals_overdue"] += 1
        self._overdue += 1
        if self._overdue == 1:
            self.worker.loop.call_soon(self._log_overdue)
        self.arrived(sid)

    def _log_overdue(self) -> None:
        log.warning(
            "hand-off: %d adopted sessions got no arrival marker within %gs; operations "
            "held for them were sent, possibly ahead of ones routed before they moved",
            self._overdue,
            PARK_TIMEOUT,
        )
        self._overdue = 0

    def lost(self, sid: int) -> None:
        """A session of a batch could not be adopted: nobody need wait for it."""
        self._news.append(sid)

    def announce(self) -> None:
        """After a batch: tell the master which sessions are settled here, once what we
        routed before adopting them has gone (see above)."""
        if self._news:
            self.flush()
            news, self._news = self._news, []
            self.worker.report(Adopted(news))

    def arrived(self, sid: int) -> None:
        """Everything routed to this session before it moved was applied: our own pushes
        to it, held meanwhile, go out now, in order, ARRIVAL_SHARE at a time."""
        if sid not in self._draining:
            self._send_held(sid)

    def _send_held(self, sid: int) -> None:
        """Send ARRIVAL_SHARE of the operations held for ``sid``; with more held, the rest
        goes in the next turns of the loop, the session still counted as arriving, so
        that what the app pushes meanwhile queues behind them. In one go, the 32,768
        pushes held for a client flooding the worker during its hand-off (its echoes,
        up to buffer_output_size) held the loop for 100-150 ms."""
        arriving = self.worker.connections.arriving
        waiting = arriving.get(sid)
        if waiting is None:
            self._draining.discard(sid)
            return
        if len(waiting) > ARRIVAL_SHARE:
            share, arriving[sid] = waiting[:ARRIVAL_SHARE], waiting[ARRIVAL_SHARE:]
            self._draining.add(sid)
            self.worker.loop.call_soon(self._send_held, sid)
            self._unhold(sid, share)
        else:
            del arriving[sid]
            self._draining.discard(sid)
            self.seen.pop(sid, None)
            self._held_bytes.pop(sid, None)
            share = waiting
        conn = self.worker.connections.get(sid)
        for op in share:
            if conn is None:
                if type(op) is Push:
                    self.worker.stats["push_to_closed"] += 1
            elif isinstance(op, Push):
                conn.push(op.data, op.opcode)
            else:
                conn.disconnect(op.code, op.reason)

    def _unhold(self, sid: int, ops: list[Push | Disconnect]) -> None:
        """The pushes of ``ops`` that ``hold`` counted are held no more."""
        sent = sum(len(op.data) for op in ops if type(op) is Push and op.broadcast is None)
        if sent:
            self._held_bytes[sid] = max(0, self._held_bytes.get(sid, 0) - sent)

    def _keep(self, op: Push | Disconnect | Close) -> bool:
        """An operation on a session we handed off waits for the release (see above)."""
        if op.sid in self.worker.connections.moved:
            self.kept.setdefault(op.sid, []).append(op)
            return True
        return False

    def _take_kept(self, sids: list[int]) -> list[Operation]:
        kept = self.kept
        return [op for sid in sids if sid in kept for op in kept.pop(sid)]

    def _pipe_message(self, src: int, payload: bytes) -> None:
        worker = self.worker
        handler: Callable[..., Any] | None = worker.handler("pipe_message")
        if handler is None:
            return
        try:
            result = handler(worker.server, src, pickle.loads(payload))
            if inspect.isawaitable(result):
                self._pipe_tasks += 1
                worker.track(result).add_done_callback(self._pipe_done)  # type: ignore[arg-type]
        except Exception:
            worker.stats["handler_errors"] += 1
            worker.log.exception("pipe_message handler raised")

    def _pipe_done(self, task: asyncio.Task[Any]) -> None:
        """A coroutine pipe_message handler ended: applying goes on if it waited for one."""
        self._pipe_tasks -= 1
        if self._waiting_for_room:
            self._waiting_for_room = False
            self.worker.loop.call_soon(self._go_on)

    # -- letting go of handed-off sessions

    def release(self, number: int, sids: list[int]) -> None:
        """The new worker acknowledged batch ``number``: ask the master to let us go of
        its sessions, giving it what we kept for them."""
        self.flush()
        self.releasing[number] = sids
        ops = self._take_kept(sids)
        self.worker.report(Release(number, sids, ops))

    async def answered(self, number: int, timeout: float) -> bool:
        """Wait (bounded) until the master answered release ``number``; False if it did
        not in ``timeout`` (the release still completes later, or is given up)."""
        if number not in self.releasing:
            return True
        answer = self._answers.setdefault(number, self.worker.loop.create_future())
        try:
            await asyncio.wait_for(asyncio.shield(answer), timeout)
        except TimeoutError:
            return False
        return True

    def on_released(self, number: int) -> None:
        """The master parks operations on these sessions now: give it what reached us
        meanwhile, and stop listing them (lookups find the new owner)."""
        answer = self._answers.pop(number, None)
        if answer is not None and not answer.done():
            answer.set_result(None)
        sids = self.releasing.pop(number, [])
        late = self._take_kept(sids)
        self.worker.connections.let_go(sids)
        self.worker.report(ReleaseDone(number, late))
        self._check_released()

    def give_up_releases(self) -> None:
        """The master did not answer a release in time (a stalled process): let go of
        those sessions anyway and hand it what was kept for them; nothing is dropped
        here (the master counts the release as forced)."""
        for number in list(self.releasing):
            self.on_released(number)

    def handoff_over(self) -> asyncio.Future[None]:
        """No more batches: resolved once the master answered every release."""
        moved = self.worker.connections.moved
        for sid in [sid for sid in self.kept if sid not in moved]:
            # taken back by a failed hand-off and closing with 1012: nobody to tell
            self.worker.stats["routed_to_closed"] += len(self.kept.pop(sid))
        self.released = self.worker.loop.create_future()
        self._check_released()
        return self.released

    def _check_released(self) -> None:
        if self.released is not None and not self.releasing and not self.released.done():
            self.released.set_result(None)


def _nothing() -> None:
    """``when_caught_up`` until the worker sets its own."""
