"""The master's switchboard: operations on another worker's sessions, kept in order.

Pure bookkeeping with the clock injected (every method that needs the time takes
``now``): the master feeds it what workers route and what they report of a hand-off,
and sends what it returns. The protocol it implements is described in
:mod:`swoolish.worker.router` and docs/design.md. Its one side effect is a log line at
the start of each episode of drops for a worker id no process serves (below).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .messages import (
    Arrived,
    Broadcast,
    Operation,
    Push,
    PushMany,
    Target,
    ToAll,
    ToSlot,
    operation_session,
)

__all__ = ["FORWARD_TIME", "PARK_TIMEOUT", "Switchboard"]

log = logging.getLogger("swoolish.master")

PARK_TIMEOUT = 3.0  # seconds the master keeps operations for a session being adopted
FORWARD_TIME = 3.0  # seconds the master redirects a stale route to a moved session


ReleaseKey = tuple[int, int]  # (old worker pid, batch number)


Sends = list[tuple[int, list[Operation]]]  # (worker pid, operations for it), in order


class _Expiring(dict[int, float]):
    """key -> until when it counts; kept in expiry order, so expiring is cheap."""

    def stamp(self, keys: Iterable[int], until: float) -> None:
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

    def __init__(self, moved: list[int], kept: list[Operation], deadline: float) -> None:
        self.moved = moved
        self.kept = kept
        self.remaining = set(moved)
        self.deadline = deadline


class _Parked:
    __slots__ = ("deadline", "front", "ops")

    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.front = 0  # ops that came through the old worker: they go first
        self.deadline: float | None = None  # None: until the old worker's ReleaseDone


class Switchboard:
    """The master's side: forward by region, keep sessions in hand-over in order."""

    def __init__(self, locate: Callable[[int], int | None]) -> None:
        """``locate(sid)``: the region that lists the session now, or None."""
        self.locate = locate
        self.region_pid: dict[int, int] = {}
        self.parked: dict[int, _Parked] = {}
        self.releasing: dict[ReleaseKey, set[int]] = {}  # granted, until ReleaseDone
        # release requests waiting until the new owner announced every moved session
        self.waiting: dict[ReleaseKey, _Release] = {}
        # moved sid -> until when a route naming its old region goes to its new owner
        self.forwarding = _Expiring()
        # sid announced by its new owner (after routing what it had before) -> until when
        # a release may still ask for it (the old worker may have died first)
        self.announced = _Expiring()
        self.dropped = 0
        # worker ids whose operations are being dropped (no process serves them): one
        # log line per episode, never one per operation
        self.unserved: set[int] = set()
        # Every wall-clock expiry that can break the order or lose an operation is
        # counted here (and logged by the master, once per episode): a release granted
        # before the new owner announced its sessions, and operations parked for a
        # session whose new owner never appeared.
        self.forced_releases = 0
        self.expired_parked = 0

    def route(
        self,
        target: Target,
        ops: list[Operation],
        slot_pid: Callable[[int], int],
        now: float,
    ) -> Sends:
        """Where ``ops`` go: ``[(pid, ops), …]`` (parked ones are kept here)."""
        if isinstance(target, ToAll):
            return self._fan_out(target.origin, ops)
        if isinstance(target, ToSlot):
            slot_owner = slot_pid(target.slot)
            if slot_owner:
                self.unserved.discard(target.slot)
                return [(slot_owner, ops)]
            self._unserved(target.slot, len(ops))
            return []
        if self.parked:
            ops = self._park(ops)
        redirected: Sends = []
        if self.forwarding:
            ops, moved = self._split_moved(ops, now)
            if moved:
                redirected = self._reroute(moved)
        pid = self.region_pid.get(target.region)
        if pid is not None:
            return ([(pid, ops)] if ops else []) + redirected
        # The owner is gone: find each session again.
        return self._reroute(ops) + redirected

    def _unserved(self, slot: int, count: int) -> None:
        """``count`` operations for worker ``slot`` (a ``send_message`` to a task worker
        or user process, typically) dropped: no process serves it now, e.g. between a
        crash and its restart, which may wait up to 10 s (docs/lifecycle.md), or once it
        is stopping. Counted in ``dropped`` (``routed_dropped``), and logged once until a
        process serves it again."""
        self.dropped += count
        if slot not in self.unserved:
            self.unserved.add(slot)
            log.warning(
                "worker %d has no process now (it is restarting or stopping): operations "
                "routed to it are dropped (counted in routed_dropped) until one serves it",
                slot,
            )

    def _split_moved(
        self, ops: list[Operation], now: float
    ) -> tuple[list[Operation], list[Operation]]:
        """Operations on sessions that moved away from the region (a lookup made just
        before the old worker let go) are found again, as a unit per session."""
        forwarding = self.forwarding
        forwarding.expire(now)
        rest: list[Operation] = []
        moved: list[Operation] = []
        for op in ops:
            if type(op) is PushMany:
                keep = [sid for sid in op.sids if sid not in forwarding]
                moved.extend(Push(sid, op.data, op.opcode) for sid in op.sids if sid in forwarding)
                if keep:
                    rest.append(op._replace(sids=keep))
                continue
            sid = operation_session(op)
            (moved if sid is not None and sid in forwarding else rest).append(op)
        return rest, moved

    def _fan_out(self, origin: int, ops: list[Operation]) -> Sends:
        """Broadcasts of the worker owning region ``origin``: to every other worker, and
        to every session in hand-over here, which no worker owns at this moment."""
        for sid, entry in self.parked.items():
            for op in ops:
                if type(op) is Broadcast:
                    entry.ops.append(Push(sid, op.data, op.opcode, op.broadcast))
        return [(pid, ops) for region, pid in self.region_pid.items() if region != origin]

    def _park(self, ops: list[Operation]) -> list[Operation]:
        rest: list[Operation] = []
        parked = self.parked
        for op in ops:
            if type(op) is PushMany:
                keep = [sid for sid in op.sids if sid not in parked]
                for sid in op.sids:
                    if sid in parked:
                        parked[sid].ops.append(Push(sid, op.data, op.opcode))
                if keep:
                    rest.append(op._replace(sids=keep))
                continue
            one = operation_session(op)
            if one is not None and one in parked:
                parked[one].ops.append(op)
            else:
                rest.append(op)
        return rest

    def _reroute(self, ops: list[Operation]) -> Sends:
        out: dict[int, list[Operation]] = {}
        for op in ops:
            if type(op) is PushMany:
                for sid in op.sids:
                    self._send_to_owner(out, sid, Push(sid, op.data, op.opcode))
                continue
            one = operation_session(op)
            if one is None:
                self.dropped += 1  # a broadcast to a region that has no owner now
            else:
                self._send_to_owner(out, one, op)
        return list(out.items())

    def _send_to_owner(self, out: dict[int, list[Operation]], sid: int, op: Operation) -> None:
        pid = self._owner(sid)
        if pid is None:
            self.dropped += 1
        else:
            out.setdefault(pid, []).append(op)

    def _owner(self, sid: int) -> int | None:
        region = self.locate(sid)
        return self.region_pid.get(region) if region is not None else None

    # -- hand-over of sessions between two workers

    def request_release(
        self,
        key: ReleaseKey,
        moved: list[int],
        kept: list[Operation],
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
            if request.remaining:
                self.forced_releases += 1  # the order of its sessions is not guaranteed
            del self.waiting[key]
            for sid in request.moved:
                self.announced.pop(sid, None)
            self.begin_release(key, request.moved, request.kept)
            granted.append(key)
        return granted

    def begin_release(self, key: ReleaseKey, moved: list[int], kept: list[Operation]) -> None:
        """Park operations on the batch's ids, the kept ones first."""
        self.releasing[key] = set(moved)
        for sid in moved:
            self.parked.setdefault(sid, _Parked())
        self._put_front(kept)

    def _put_front(self, ops: list[Operation]) -> None:
        for op in ops:
            entry = self.parked.setdefault(_session_of(op), _Parked())
            entry.ops.insert(entry.front, op)
            entry.front += 1

    def finish_release(self, key: ReleaseKey, late: list[Operation], now: float) -> None:
        """Kept, then late (forwarded to the old worker before ``released``), then
        parked (arrived after): for every sender, the order it made them in.

        An old worker that waited for ``Released`` longer than it may (a stall) lets go
        on its own: its batch may still be waiting here, and is granted now."""
        self._grant_now(key)
        moved = self.releasing.pop(key, set())
        self._put_front(late)
        for sid in moved | {_session_of(op) for op in late}:
            self.parked[sid].deadline = now + PARK_TIMEOUT
        self.forwarding.stamp(moved, now + FORWARD_TIME)

    def deliver_parked(self, now: float) -> Sends:
        out: dict[int, list[Operation]] = {}
        for sid in list(self.parked):
            entry = self.parked[sid]
            if entry.deadline is None:
                continue
            pid = self._owner(sid)
            if pid is not None:
                out.setdefault(pid, []).extend(entry.ops)
                out[pid].append(Arrived(sid))  # the new owner's own pushes may go now
                del self.parked[sid]
            elif now >= entry.deadline:
                self.dropped += len(entry.ops)
                self.expired_parked += len(entry.ops)
                del self.parked[sid]
        return list(out.items())

    def _grant_now(self, key: ReleaseKey) -> None:
        """Grant a waiting release without the new owner's announcement (counted)."""
        request = self.waiting.pop(key, None)
        if request is None:
            return
        request.remaining.difference_update(self.announced)
        if request.remaining:
            self.forced_releases += 1  # the order of its sessions is not guaranteed
        self.begin_release(key, request.moved, request.kept)

    def has_waiting(self) -> bool:
        return bool(self.waiting) or any(e.deadline is not None for e in self.parked.values())

    def worker_gone(self, pid: int, region: int | None, now: float) -> None:
        for key in [key for key in self.waiting if key[0] == pid]:
            self._grant_now(key)
        for key in [key for key in self.releasing if key[0] == pid]:
            self.finish_release(key, [], now)
        if region is not None and self.region_pid.get(region) == pid:
            del self.region_pid[region]


def _session_of(op: Operation) -> int:
    """The session of an operation a worker kept for a moving session (always one)."""
    sid = operation_session(op)
    if sid is None:
        raise ValueError(f"{type(op).__name__} is not an operation on one session")
    return sid
