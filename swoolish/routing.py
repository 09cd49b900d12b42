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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .connection import check_close
from .table import ESTABLISHED, MOVING, OPEN, RegionWriter, SessionTable, peer_word

if TYPE_CHECKING:
    from .connection import Connection
    from .worker import Worker

__all__ = ["PARK_TIMEOUT", "Router", "SessionMap", "Switchboard"]

log = logging.getLogger("swoolish.routing")

CHUNK_BYTES = 256 * 1024  # one routed message stays well under the channel buffer
MAX_ROUTED_PAYLOAD = 1024 * 1024  # a bigger push to another worker's session is refused
PARK_TIMEOUT = 3.0  # seconds the master keeps operations for a session being adopted
FORWARD_TIME = 3.0  # seconds the master redirects a stale route to a moved session


def op_sid(op: tuple[Any, ...]) -> int | None:
    """The session an operation is for (None for broadcast / pipe / push_many)."""
    return op[1] if op[0] in ("push", "disconnect", "close") else None


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
                    self.worker._report({"type": "route", "target": target, "ops": chunk})
                    chunk, size = [], 0
                chunk.append(op)
                size += n
            if chunk:
                self.worker._report({"type": "route", "target": target, "ops": chunk})

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
        self.worker._report({"type": "adopting", "from": predecessor})

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
            self.worker._report({"type": "adopted", "sids": news})

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
        self.worker._report({"type": "release", "id": number, "moved": sids, "ops": ops})

    def on_released(self, number: int) -> None:
        """The master parks operations on these sessions now: give it what reached us
        meanwhile, and stop listing them (lookups find the new owner)."""
        sids = self.releasing.pop(number, [])
        late = self._take_kept(sids)
        self.worker.connections.let_go(sids)
        self.worker._report({"type": "release_done", "id": number, "ops": late})
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


ReleaseKey = tuple[int, int]  # (old worker pid, batch number)


class _Expiring(dict):  # type: ignore[type-arg]
    """key -> until when it counts; kept in expiry order, so expiring is cheap."""

    def stamp(self, keys: Any, until: float) -> None:
        for key in keys:
            self.pop(key, None)  # re-inserted at the end: the dict stays oldest first
            self[key] = until

    def expire(self, now: float) -> None:
        while self:
            oldest = next(iter(self))
            if self[oldest] > now:
                return
            del self[oldest]


class _Release:
    __slots__ = ("deadline", "kept", "moved", "remaining")

    def __init__(self, moved: list[int], kept: list[tuple[Any, ...]], deadline: float) -> None:
        self.moved = moved
        self.kept = kept
        self.remaining = set(moved)
        self.deadline = deadline


class _Parked:
    __slots__ = ("deadline", "front", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.front = 0  # ops that came through the old worker: they go first
        self.deadline: float | None = None  # None: until the old worker's release_done


class Switchboard:
    """The master's side: forward by region, keep sessions in hand-over in order."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        self.region_pid: dict[int, int] = {}
        self.parked: dict[int, _Parked] = {}
        self.releasing: dict[ReleaseKey, set[int]] = {}  # granted, until release_done
        # release requests waiting until the new owner announced every moved session
        self.waiting: dict[ReleaseKey, _Release] = {}
        # moved sid -> until when a route naming its old region goes to its new owner
        self.forwarding = _Expiring()
        # sid announced by its new owner (after routing what it had before) -> until when
        # a release may still ask for it (the old worker may have died first)
        self.announced = _Expiring()
        self.dropped = 0

    def route(
        self, target: tuple[str, int], ops: list[tuple[Any, ...]], slot_pid: Callable[[int], int]
    ) -> list[tuple[int, list[tuple[Any, ...]]]]:
        """Where ``ops`` go: ``[(pid, ops), …]`` (parked ones are kept here)."""
        kind, number = target
        if kind == "a":
            return self._fan_out(number, ops)
        if kind == "s":
            pid = slot_pid(number)
            if pid:
                return [(pid, ops)]
            self.dropped += len(ops)
            return []
        if self.parked:
            ops = self._park(ops)
        redirected: list[tuple[int, list[tuple[Any, ...]]]] = []
        if self.forwarding:
            ops, moved = self._split_moved(ops)
            if moved:
                redirected = self._reroute(moved)
        pid = self.region_pid.get(number)
        if pid is not None:
            return ([(pid, ops)] if ops else []) + redirected
        # The owner is gone: find each session again.
        return self._reroute(ops) + redirected

    def _split_moved(
        self, ops: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Operations on sessions that moved away from the region (a lookup made just
        before the old worker let go) are found again, as a unit per session."""
        forwarding = self.forwarding
        forwarding.expire(time.monotonic())
        rest: list[tuple[Any, ...]] = []
        moved: list[tuple[Any, ...]] = []
        for op in ops:
            if op[0] == "push_many":
                keep = [sid for sid in op[1] if sid not in forwarding]
                moved.extend(("push", sid, op[2], op[3]) for sid in op[1] if sid in forwarding)
                if keep:
                    rest.append(("push_many", keep, op[2], op[3]))
                continue
            sid = op_sid(op)
            (moved if sid is not None and sid in forwarding else rest).append(op)
        return rest, moved

    def _fan_out(
        self, origin: int, ops: list[tuple[Any, ...]]
    ) -> list[tuple[int, list[tuple[Any, ...]]]]:
        """Broadcasts of the worker owning region ``origin``: to every other worker, and
        to every session in hand-over here, which no worker owns at this moment."""
        for sid, entry in self.parked.items():
            for _, data, opcode, bid in ops:
                entry.ops.append(("push", sid, data, opcode, bid))
        return [(pid, ops) for region, pid in self.region_pid.items() if region != origin]

    def _park(self, ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        rest: list[tuple[Any, ...]] = []
        parked = self.parked
        for op in ops:
            if op[0] == "push_many":
                keep = [sid for sid in op[1] if sid not in parked]
                for sid in op[1]:
                    if sid in parked:
                        parked[sid].ops.append(("push", sid, op[2], op[3]))
                if keep:
                    rest.append(("push_many", keep, op[2], op[3]))
                continue
            sid = op_sid(op)
            if sid is not None and sid in parked:
                parked[sid].ops.append(op)
            else:
                rest.append(op)
        return rest

    def _reroute(self, ops: list[tuple[Any, ...]]) -> list[tuple[int, list[tuple[Any, ...]]]]:
        out: dict[int, list[tuple[Any, ...]]] = {}
        for op in ops:
            sids = op[1] if op[0] == "push_many" else [op_sid(op)]
            for sid in sids:
                if sid is None:
                    self.dropped += 1  # a broadcast to a region that has no owner now
                    continue
                pid = self._owner(sid)
                if pid is None:
                    self.dropped += 1
                    continue
                out.setdefault(pid, []).append(
                    ("push", sid, op[2], op[3]) if op[0] == "push_many" else op
                )
        return list(out.items())

    def _owner(self, sid: int) -> int | None:
        found = self.table.lookup(sid)
        return self.region_pid.get(found[0]) if found is not None else None

    # -- hand-over of sessions between two workers

    def request_release(
        self,
        key: ReleaseKey,
        moved: list[int],
        kept: list[tuple[Any, ...]],
        now: float,
    ) -> None:
        """The old worker asks to let go of one batch; granted once the new owner
        announced every session of it, or after PARK_TIMEOUT. Until then operations
        keep going to the old worker, which keeps them: no moment where a moved session
        looks gone."""
        self.waiting[key] = _Release(moved, kept, now + PARK_TIMEOUT)

    def note_adopted(self, sids: list[int], now: float) -> None:
        """The new owner announced these sessions (see the module docstring)."""
        self.announced.stamp(sids, now + 4 * PARK_TIMEOUT)
        self.announced.expire(now)  # announcements no release asked for do not pile up

    def ready_releases(self, now: float) -> list[ReleaseKey]:
        """Grant the release requests that can be granted now.

        A request waits until the new owner announced every moved session: it lists
        them in its region by then, and what it routed before adopting them has reached
        us, so nothing it routed towards the old worker can come after its own pushes."""
        granted = []
        for key, request in list(self.waiting.items()):
            request.remaining.difference_update(self.announced)
            if request.remaining and now < request.deadline:
                continue
            del self.waiting[key]
            for sid in request.moved:
                self.announced.pop(sid, None)
            self.begin_release(key, request.moved, request.kept)
            granted.append(key)
        return granted

    def begin_release(self, key: ReleaseKey, moved: list[int], kept: list[tuple[Any, ...]]) -> None:
        """Park operations on the batch's ids, the kept ones first."""
        self.releasing[key] = set(moved)
        for sid in moved:
            self.parked.setdefault(sid, _Parked())
        self._put_front(kept)

    def _put_front(self, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            entry = self.parked.setdefault(op[1], _Parked())
            entry.ops.insert(entry.front, op)
            entry.front += 1

    def finish_release(self, key: ReleaseKey, late: list[tuple[Any, ...]], now: float) -> None:
        """Kept, then late (forwarded to the old worker before ``released``), then
        parked (arrived after): for every sender, the order it made them in."""
        moved = self.releasing.pop(key, set())
        self._put_front(late)
        for sid in moved | {op[1] for op in late}:
            self.parked[sid].deadline = now + PARK_TIMEOUT
        self.forwarding.stamp(moved, now + FORWARD_TIME)

    def deliver_parked(self, now: float) -> list[tuple[int, list[tuple[Any, ...]]]]:
        out: dict[int, list[tuple[Any, ...]]] = {}
        for sid in list(self.parked):
            entry = self.parked[sid]
            if entry.deadline is None:
                continue
            pid = self._owner(sid)
            if pid is not None:
                out.setdefault(pid, []).extend(entry.ops)
                out[pid].append(("arrived", sid))  # the new owner's own pushes may go now
                del self.parked[sid]
            elif now >= entry.deadline:
                self.dropped += len(entry.ops)
                del self.parked[sid]
        return list(out.items())

    def has_waiting(self) -> bool:
        return bool(self.waiting) or any(e.deadline is not None for e in self.parked.values())

    def worker_gone(self, pid: int, region: int | None, now: float) -> None:
        for key in [key for key in self.waiting if key[0] == pid]:
            request = self.waiting.pop(key)
            self.begin_release(key, request.moved, request.kept)
        for key in [key for key in self.releasing if key[0] == pid]:
            self.finish_release(key, [], now)
        if region is not None and self.region_pid.get(region) == pid:
            del self.region_pid[region]
