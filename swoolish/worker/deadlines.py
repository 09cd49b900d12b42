"""Every connection's deadline in coarse buckets, with one loop timer for them all.

A connection has at most one deadline at a time: its request's, its keep-alive idle
time, the bound of its close (``Connection._arm_timer``). Each used to be a loop timer
of its own, and a handle of uvloop's costs about 2.5 µs to make and cancel, once per
connection (its handshake's deadline, cancelled when the handshake is answered): a
twentieth of what a reconnect storm's handshake costs the worker
(docs/performance.md, "Reconnect storm"). Here a deadline is an entry in the set of
its RESOLUTION-long bucket, a set ``add`` and a ``discard``; one loop timer waits for
the earliest bucket. These deadlines are seconds long (the shortest is
``handshake_timeout``'s order), so a bucket's coarseness costs nothing a client can
see: a deadline fires up to RESOLUTION after its time, never before.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Protocol

__all__ = ["RESOLUTION", "Deadlines"]

#: seconds: a deadline fires at the end of its bucket, at most this much after its time
RESOLUTION = 0.05
#: uvloop's clock counts milliseconds, and may call a timer up to one early: a bucket is
#: due from _SLACK before its end, and a deadline is filed in a bucket ending at least
#: _SLACK after it
_SLACK = 0.001


class Due(Protocol):
    def deadline_passed(self) -> None:
        """Its bucket's time came (it may file itself again, for a later deadline)."""


class Deadlines:
    """A worker's connection deadlines (one per connection at most)."""

    __slots__ = ("_buckets", "_firing", "_handle", "_handle_tick", "_loop", "_ticks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, set[Due]] = {}  # tick -> what is due at its end
        self._ticks: list[int] = []  # the buckets' ticks, a heap
        self._handle: asyncio.TimerHandle | None = None  # the loop's, for _handle_tick
        self._handle_tick = 0
        self._firing = 0  # the last tick being fired now (_fire), 0 outside

    def __len__(self) -> int:
        """Deadlines filed (the tests look)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def file(self, due: Due, when: float) -> int:
        """Have ``due.deadline_passed()`` called at ``when`` (the loop's time) or up to
        RESOLUTION after; returns the tick to give ``withdraw``."""
        tick = int((when + _SLACK) / RESOLUTION) + 1
        if tick <= self._firing:
            tick = self._firing + 1  # filed by what is being called: see _fire
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
            self._wait_for(tick)
        bucket.add(due)
        return tick

    def withdraw(self, due: Due, tick: int) -> None:
        """``due`` is not due at ``tick`` any more (an empty bucket goes at its time)."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.discard(due)

    def _wait_for(self, tick: int) -> None:
        """Have the loop call _fire at ``tick``'s end, unless it will by then anyway."""
        if self._handle is not None:
            if self._handle_tick <= tick:
                return
            self._handle.cancel()
        self._handle_tick = tick
        self._handle = self._loop.call_at(tick * RESOLUTION, self._fire)

    def _fire(self) -> None:
        """Call what is due in every bucket whose time came, then wait for the next.

        A bucket stays where ``withdraw`` finds it until it is done, so what one call
        withdraws (closing another connection, say) is not called after it. What a call
        files goes to a later bucket, even if already due: a deadline filed again and
        again at once cannot hold the loop here."""
        self._handle = None
        now = self._loop.time() + _SLACK
        ticks = self._ticks
        due: list[int] = []
        while ticks and ticks[0] * RESOLUTION <= now:
            due.append(heapq.heappop(ticks))
        if due:
            self._firing = due[-1]
            try:
                for tick in due:
                    self._call_all(self._buckets[tick])
                    del self._buckets[tick]
            finally:
                self._firing = 0
        if ticks:
            self._wait_for(ticks[0])

    def _call_all(self, bucket: set[Due]) -> None:
        while bucket:
            item = bucket.pop()
            try:
                item.deadline_passed()
            except Exception as exc:  # one connection's failure is not the others'
                self._loop.call_exception_handler(
                    {"message": "a connection's deadline failed", "exception": exc}
                )
