"""Operations on another worker's sessions, routed through the master.

A worker that pushes to (disconnects, closes) a session it does not own finds the
owner's region in the shared :mod:`swoolish.table` and queues the operation; once per
loop iteration it sends one message per target to the master (``route``), which
forwards it to the worker owning that region (``routed``). Channels are FIFO, so the
operations of one sender on one session are applied in the order they were made.

**A session that moves (live hand-off)** is marked MOVING in the old worker's region
and stays there until the old worker lets go; lookups prefer that entry, so every
operation on the session still goes to the old worker, which keeps them, in order.
Batch by batch, once the new worker acknowledged it, the old worker sends ``release``
(the batch's ids and the operations it kept for them); the master *parks* every
operation on those ids and answers ``released``; the old worker drops its MOVING
entries and sends ``release_done`` with what reached it meanwhile (everything the
master forwarded before ``released``). The master then delivers kept, late and parked
operations, in that order, to the new owner, followed by an ``arrived`` marker (the
new owner's own pushes to the session wait for it), and for a while sends operations
still addressed to the old region for those ids to the new owner. Nothing is
reordered and nothing is lost unless the session really went away; a busy client
waits one batch's round trip, not the whole hand-off.

Two causal barriers keep one client's order when *its* worker changes (both travel on
FIFO channels, so no clock is needed):

* The new worker announces what it adopted (``adopted``) only after sending everything
  it routed before; the master lets the old worker go only once every moved session was
  announced, so an operation the new owner routed towards the old worker is always
  among the kept or late ones, ahead of the new owner's own held pushes.
* Before it handles anything of an adopted batch, the new worker sends ``adopting``
  naming the old one; the master then reads what the old worker had sent (it routed
  its operations before the batch left), so a client's messages handled by the old
  worker are routed before those the new worker handles for it.

**Broadcasts** go to the master as one operation it fans out to every other worker, and
to every session it parks. A moving session gets each broadcast once: from its old
worker while attached or not yet let go of (kept), from the master while parked, from
the new owner after ``arrived``. So the new owner skips another worker's broadcast for
a session still arriving, holds its own behind what was routed before, and drops a
second copy (same broadcast id) of one the session already had or holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.frames import check_close
from ..core.switchboard import PARK_TIMEOUT
from ..shared.table import ESTABLISHED, MOVING, OPEN, RegionWriter, SessionTable, peer_word

if TYPE_CHECKING:
    from .connection import Connection
    from .process import Worker

__all__ = ["Router", "SessionMap"]

log = logging.getLogger("swoolish.routing")

CHUNK_BYTES = 256 * 1024  # one routed message stays well under the channel buffer
MAX_ROUTED_PAYLOAD = 1024 * 1024  # a bigger push to another worker's session is refused


def broadcast_id(worker_pid: int, counter: int) -> int:
    """A broadcast's identity: the same one reaching a moving session twice is applied once."""
    return worker_pid << 32 | (counter & 0xFFFFFFFF)


def op_size(op: tuple[Any, ...]) -> int:
    if op[0] in ("push", "broadcast"):
        data = op[2] if op[0] == "push" else op[1]
        return len(data) + 64
    if op[0] == "push_many":
        return len(op[2]) + 16 * len(op[1]) + 64
    if op[0] == "pipe":
        return len(op[2]) + 64
    return 64


class SessionMap(dict):  # type: ignore[type-arg]
    """``Worker.connections``: sid -> Connection, mirrored into this worker's region.

    Connections insert and remove themselves (``connections[sid] = self``,
    ``connections.pop(sid, None)``); reads are plain dict reads, so the local push path
    does not touch the shared table.
    """

    __slots__ = ("arriving", "moved", "on_adopt", "writer")

    def __init__(self, writer: RegionWriter | None = None) -> None:
        super().__init__()
        self.writer = writer
        self.moved: set[int] = set()  # sids handed to our successor (live hand-off)
        # sids adopted from our predecessor whose routed operations are still on their
        # way (through the master) -> this worker's own operations on them, held behind
        # those: ("push", data, opcode) or ("disconnect", code, reason)
        self.arriving: dict[int, list[tuple[Any, ...]]] = {}
        self.on_adopt: Callable[[int], None] | None = None

    def __setitem__(self, sid: int, conn: Connection) -> None:
        dict.__setitem__(self, sid, conn)
        if self.writer is not None:
            self.writer.insert(sid, ESTABLISHED if conn.established else OPEN, peer_word(conn.peer))
        if self.moved:
            self.moved.discard(sid)  # a failed hand-off took it back
        elif conn.established and getattr(conn, "_closing_code", None) is None:
            # adopted (live hand-off): operations routed to the old worker come first
            if self.writer is not None:
                self.arriving[sid] = []
                if self.on_adopt is not None:
                    self.on_adopt(sid)

    def pop(self, sid: int, *default: Any) -> Any:
        conn = dict.pop(self, sid, *default)
        if conn is not None:
            self._forget(sid, conn)
        return conn

    def __delitem__(self, sid: int) -> None:
        conn = dict.pop(self, sid)
        self._forget(sid, conn)

    def _forget(self, sid: int, conn: Connection) -> None:
        if getattr(conn, "_moving", False):
            self.moved.add(sid)
            if self.writer is not None:
                self.writer.set_state(sid, MOVING)
        elif self.writer is not None:
            self.writer.delete(sid)

    def established(self, sid: int) -> None:
        if self.writer is not None and sid in self:
            self.writer.set_state(sid, ESTABLISHED)

    def let_go(self, sids: list[int]) -> None:
        """Sessions our successor owns now: no longer ours to keep operations for."""
        for sid in sids:
            self.moved.discard(sid)
            if self.writer is not None and sid not in self:
                self.writer.delete(sid)


class Router:
    """The worker's side: queue operations for other workers, apply theirs."""

    def __init__(self, worker: Worker, table: SessionTable | None, region: int | None) -> None:
        self.worker = worker
        self.table = table
        self.region = region
        self.outbox: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        self._flush_scheduled = False
        # operations on sessions we handed off, by session, until the master takes them
        self.kept: dict[int, list[tuple[Any, ...]]] = {}
        self.releasing: dict[int, list[int]] = {}  # release (batch) number -> its sids
        self.released: asyncio.Future[None] | None = None  # every release answered
        self._news: list[int] = []  # adopted sids not yet announced to the master
        # adopted sids, until they arrived -> broadcasts they got or hold (applied once)
        self.seen: dict[int, set[int]] = {}
        self._broadcasts = 0
        self._pid = os.getpid()

    # -- sending

    def lookup(self, sid: int) -> tuple[int, int, int] | None:
        if self.table is None or type(sid) is not int:
            return None
        return self.table.lookup(sid)

    def send(self, target: tuple[str, int], op: tuple[Any, ...]) -> None:
        self.outbox.setdefault(target, []).append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.worker.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        outbox, self.outbox = self.outbox, {}
        for target, ops in outbox.items():
            chunk: list[tuple[Any, ...]] = []
            size = 0
            for op in ops:
                n = op_size(op)
                if chunk and size + n > CHUNK_BYTES:
                    self.worker.report({"type": "route", "target": target, "ops": chunk})
                    chunk, size = [], 0
                chunk.append(op)
                size += n
            if chunk:
                self.worker.report({"type": "route", "target": target, "ops": chunk})

    # -- receiving

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        worker = self.worker
        connections = worker.connections
        stats = worker.stats
        for op in ops:
            kind = op[0]
            if kind == "push":
                conn = connections.get(op[1])
                if conn is not None:
                    if len(op) < 5 or self._first_time(op[1], op[4]):
                        conn.push(op[2], op[3])
                elif not self._keep(op):
                    stats["routed_to_closed"] += 1
            elif kind == "broadcast":
                self.apply_broadcast(op[1], op[2], op[3], local=False)
            elif kind == "push_many":
                for sid in op[1]:
                    conn = connections.get(sid)
                    if conn is not None:
                        conn.push(op[2], op[3])
                    elif not self._keep(("push", sid, op[2], op[3])):
                        stats["routed_to_closed"] += 1
            elif kind in ("disconnect", "close"):
                conn = connections.get(op[1])
                if conn is None:
                    if not self._keep(op):
                        stats["routed_to_closed"] += 1
                    continue
                with contextlib.suppress(ValueError):  # checked by the sender already
                    if kind == "disconnect":
                        conn.disconnect(op[2], op[3])
                    elif conn.established:
                        conn.disconnect(1000, "")
                    else:
                        conn.abort()
            elif kind == "pipe":
                self._pipe_message(op[1], op[2])
            elif kind == "arrived":
                self.arrived(op[1])

    def broadcast(self, data: Any, opcode: Any) -> int:
        """This worker's broadcast: its own sessions now, the others' through the master
        (one operation it fans out). Returns how many of ours it was handed to."""
        self._broadcasts += 1
        bid = broadcast_id(self._pid, self._broadcasts)
        handed = self.apply_broadcast(data, opcode, bid, local=True)
        if self.table is not None:
            origin = -1 if self.region is None else self.region
            self.send(("a", origin), ("broadcast", data, opcode, bid))
        return handed

    def apply_broadcast(self, data: Any, opcode: Any, bid: int, local: bool) -> int:
        """Push a broadcast to every session this worker owns.

        A session just adopted gets it in order behind what was routed to it before the
        move when the broadcast is ours (held); another worker's reaches it through its
        old worker or the master instead (see the module docstring). A session we handed
        off and not yet let go of gets it through the release."""
        connections = self.worker.connections
        arriving = connections.arriving
        handed = 0
        for sid, conn in list(connections.items()):
            if not conn.established or conn.closing:
                continue
            if arriving and sid in arriving:
                if local:
                    arriving[sid].append(("push", data, opcode, bid))
                    self._first_time(sid, bid)  # noted: a second copy is dropped
                    handed += 1
            elif conn.push(data, opcode):
                handed += 1
        for sid in connections.moved:
            self._keep(("push", sid, data, opcode, bid))
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

    def hold(self, conn: Connection, sid: int, data: Any, opcode: Any) -> bool:
        """A push to a session that just arrived waits for what was routed to it before."""
        if conn.closing or not conn.established:
            return conn.push(data, opcode)  # False, counted
        self.worker.connections.arriving[sid].append(("push", data, opcode))
        return True

    def hold_disconnect(self, conn: Connection, sid: int, code: int, reason: str) -> bool:
        """A close of a session that just arrived goes after the pushes routed to it
        before, and after our own held pushes: it ends the session, so it comes last."""
        if conn.closing or not conn.established:
            return conn.disconnect(code, reason)  # False
        check_close(code, reason)  # raise here, at the call, as for any session
        self.worker.connections.arriving[sid].append(("disconnect", code, reason))
        return True

    def adopting(self, predecessor: int | None) -> None:
        """Before handling anything of connections handed over by ``predecessor``: have
        the master take in what the predecessor routed for them first (see above)."""
        self.flush()
        self.worker.report({"type": "adopting", "from": predecessor})

    def adopted(self, sid: int) -> None:
        """Deliver our own pushes to an adopted session at the latest after PARK_TIMEOUT."""
        self.worker.loop.call_later(PARK_TIMEOUT, self.arrived, sid)
        self._news.append(sid)

    def lost(self, sid: int) -> None:
        """A session of a batch could not be adopted: nobody need wait for it."""
        self._news.append(sid)

    def announce(self) -> None:
        """After a batch: tell the master which sessions are settled here, once what we
        routed before adopting them has gone (see above)."""
        if self._news:
            self.flush()
            news, self._news = self._news, []
            self.worker.report({"type": "adopted", "sids": news})

    def arrived(self, sid: int) -> None:
        """Everything routed to this session before it moved was applied: our own pushes
        to it, held meanwhile, go out now, in order."""
        waiting = self.worker.connections.arriving.pop(sid, None)
        self.seen.pop(sid, None)
        if not waiting:
            return
        conn = self.worker.connections.get(sid)
        for kind, *args in waiting:
            if conn is None:
                if kind == "push":
                    self.worker.stats["push_to_closed"] += 1
            elif kind == "push":
                conn.push(args[0], args[1])
            else:
                conn.disconnect(*args)

    def _keep(self, op: tuple[Any, ...]) -> bool:
        """An operation on a session we handed off waits for the release (see above)."""
        if op[1] in self.worker.connections.moved:
            self.kept.setdefault(op[1], []).append(op)
            return True
        return False

    def _take_kept(self, sids: list[int]) -> list[tuple[Any, ...]]:
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
                worker.track(result)  # type: ignore[arg-type]
        except Exception:
            worker.stats["handler_errors"] += 1
            worker.log.exception("pipe_message handler raised")

    # -- letting go of handed-off sessions

    def release(self, number: int, sids: list[int]) -> None:
        """The new worker acknowledged batch ``number``: ask the master to let us go of
        its sessions, giving it what we kept for them."""
        self.flush()
        self.releasing[number] = sids
        ops = self._take_kept(sids)
        self.worker.report({"type": "release", "id": number, "moved": sids, "ops": ops})

    def on_released(self, number: int) -> None:
        """The master parks operations on these sessions now: give it what reached us
        meanwhile, and stop listing them (lookups find the new owner)."""
        sids = self.releasing.pop(number, [])
        late = self._take_kept(sids)
        self.worker.connections.let_go(sids)
        self.worker.report({"type": "release_done", "id": number, "ops": late})
        self._check_released()

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
