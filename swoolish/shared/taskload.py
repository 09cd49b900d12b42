"""The task load: how many tasks each task worker slot holds, in shared memory.

``server.task()`` must say False at once when every task worker is full, without asking
the master (docs/tasks.md). So the master creates, before the first fork, two counters
per task worker slot in an anonymous shared mapping (a memfd, as swoolish.shared.ids):

* ``submitted``: the event workers add one per task they send, under a POSIX record
  lock (``fcntl.lockf``, released by the kernel if its holder dies), after checking the
  bound in the same critical section, so the bound holds across every event worker;
* ``completed``: the master alone adds one per task that ended (answered, or failed
  back to its sender). One writer per word and aligned 8-byte stores: readers never see
  half a value (the x86-64 ordering docs/design.md relies on for the session table);
* ``live``: the master alone sets it while a task worker of the slot takes new tasks, so
  senders pass over a slot whose task worker crashed and is not back (docs/tasks.md).

A slot's load is ``submitted - completed``: tasks sent and not yet over, in transit
included. During a reload it counts what the slot's old and new task workers hold.

A task in transit is lost with its sender when the sender dies before its channel took
it (SIGKILL while its queue to the master was backed up): the master never gets it, so
never completes it. For that, each event worker also counts its claims in a row of its
own (``claimed``, one per slot; the master gives a row to each event worker it forks and
takes it back when it reaps it). At the reap the master knows how many tasks of each
slot it received from that worker; the difference never will arrive, and the master
completes it then, so the load is again what the task workers hold (docs/tasks.md,
"Faults").
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Sequence

from ..core.tasks import choose_slot
from .ids import exclusive

__all__ = ["TaskLoad"]

_WORD = 8


class TaskLoad:
    """Per task worker slot, tasks submitted (event workers) and completed (master); per
    sender row, the tasks its event worker claimed."""

    def __init__(self, slots: int, senders: int = 0) -> None:
        """``senders``: how many event workers may be alive at once (rows of claims); an
        event worker forked when every row is taken claims untracked."""
        if slots < 1:
            raise ValueError("a task load needs at least one slot")
        self.slots = slots
        size = (3 + senders) * slots * _WORD
        # Inherited across fork (not across exec: workers are forked, never exec'd).
        self._fd = os.memfd_create("swoolish-task-load", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._memory = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        # [submitted..., completed..., live..., claimed of row 0..., of row 1..., ...]
        self._words = memoryview(self._memory).cast("q")
        self._thread_lock = threading.Lock()
        self._cursor = 0  # where this process's next tie-break starts
        self._free_rows = list(range(senders))  # the master's: rows no live sender has
        self.row: int | None = None  # this event worker's row (set once forked)

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
            slot = choose_slot(self.loads(), bound, dst, self._cursor, self.live())
            if slot is not None:
                self._count(slot, 1)
                self._cursor = slot + 1
        return slot

    def unclaim(self, slot: int) -> None:
        """The task counted for ``slot`` never left its sender."""
        with self._locked():
            self._count(slot, -1)

    def _count(self, slot: int, step: int) -> None:
        """Under the lock. The row never counts more than ``submitted`` (raised after
        it, lowered before it): a sender killed between the two stores leaves at worst
        one task counted too many, never the bound exceeded."""
        mine = None if self.row is None else self._claimed(self.row) + slot
        if mine is not None and step < 0:
            self._words[mine] += step
        self._words[slot] += step
        if mine is not None and step > 0:
            self._words[mine] += step

    def _claimed(self, row: int) -> int:
        return (3 + row) * self.slots

    def live(self) -> list[bool]:
        """Which slots have a task worker taking new tasks, as the master last said."""
        words, slots = self._words, self.slots
        return [words[2 * slots + slot] != 0 for slot in range(slots)]

    # -- the master's

    def set_live(self, slot: int, up: bool) -> None:
        """Whether ``slot`` has a task worker taking new tasks now."""
        self._words[2 * self.slots + slot] = int(up)

    def take_row(self) -> int | None:
        """A row for an event worker about to be forked (cleared); None if all taken."""
        if not self._free_rows:
            return None
        row = self._free_rows.pop(0)
        start = self._claimed(row)
        self._words[start : start + self.slots] = memoryview(bytes(self.slots * _WORD)).cast("q")
        return row

    def sender_gone(self, row: int, received: Sequence[int]) -> list[int]:
        """The event worker of ``row`` was reaped, and ``received[slot]`` tasks of each
        slot from it reached the master: the ones it claimed beyond that were lost in
        its channel and complete now. How many per slot; the row is free again."""
        start = self._claimed(row)
        lost = [max(0, self._words[start + s] - received[s]) for s in range(self.slots)]
        for slot, count in enumerate(lost):
            self._words[self.slots + slot] += count
        if row not in self._free_rows:
            self._free_rows.append(row)
        return lost

    def complete(self, slot: int) -> None:
        """A task of ``slot`` is over (answered or failed); the master's alone to call."""
        if 0 <= slot < self.slots:
            self._words[self.slots + slot] += 1
