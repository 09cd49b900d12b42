"""The task load: how many tasks each task worker slot holds, in shared memory.

``server.task()`` must say False at once when every task worker is full, without asking
the master (docs/tasks.md). So the master creates, before the first fork, two counters
per task worker slot in an anonymous shared mapping (a memfd, as swoolish.shared.ids):

* ``submitted``: the event workers add one per task they send, under a POSIX record
  lock (``fcntl.lockf``, released by the kernel if its holder dies), after checking the
  bound in the same critical section, so the bound holds across every event worker;
* ``completed``: the master alone adds one per task that ended (answered, or failed
  back to its sender). One writer per word and aligned 8-byte stores: readers never see
  half a value (the x86-64 ordering docs/design.md relies on for the session table).

A slot's load is ``submitted - completed``: tasks sent and not yet over, in transit
included. During a reload it counts what the slot's old and new task workers hold.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

from ..core.tasks import choose_slot
from .ids import exclusive

__all__ = ["TaskLoad"]

_WORD = 8


class TaskLoad:
    """Per task worker slot, tasks submitted (event workers) and completed (master)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a task load needs at least one slot")
        self.slots = slots
        size = 2 * slots * _WORD
        # Inherited across fork (not across exec: workers are forked, never exec'd).
        self._fd = os.memfd_create("swoolish-task-load", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._memory = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        self._words = memoryview(self._memory).cast("q")  # [submitted..., completed...]
        self._thread_lock = threading.Lock()
        self._cursor = 0  # where this process's next tie-break starts

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive(self._fd, self._thread_lock)

    def loads(self) -> list[int]:
        """Tasks each slot holds now (sent and not over)."""
        words, slots = self._words, self.slots
        return [words[slot] - words[slots + slot] for slot in range(slots)]

    def claim(self, bound: int, dst: int = -1) -> int | None:
        """Count one more task for the least busy slot with room (or ``dst``); its slot,
        or None when none has room (nothing is counted then)."""
        with self._locked():
            slot = choose_slot(self.loads(), bound, dst, self._cursor)
            if slot is not None:
                self._words[slot] += 1
                self._cursor = slot + 1
        return slot

    def unclaim(self, slot: int) -> None:
        """The task counted for ``slot`` never left its sender."""
        with self._locked():
            self._words[slot] -= 1

    def complete(self, slot: int) -> None:
        """A task of ``slot`` is over (answered or failed); the master's alone to call."""
        if 0 <= slot < self.slots:
            self._words[self.slots + slot] += 1
