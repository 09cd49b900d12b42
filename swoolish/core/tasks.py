"""Task workers, the pure parts: which task worker takes a task, and the master's book of
who holds which task (docs/tasks.md).

* :func:`choose_slot` is the dispatcher every event worker runs on the shared task load
  (swoolish.shared.taskload): the least busy task worker with room (Swoole's default
  dispatch), or the one asked for; None when none has room, so ``task()`` can say False
  at once instead of queueing without bound.
* :class:`TaskBook` is the master's record of the relay: which task worker of each slot
  takes new tasks, which tasks each task worker holds, and which wait for a slot whose
  task worker is not up yet. Events in (a task submitted, a task worker ready, a task
  answered, a task worker gone), actions out (:class:`Deliver`, :class:`Fail`,
  :class:`Retire`); every task submitted ends exactly once, as an answer or a
  :class:`Fail`, so the sender always hears back and no task runs twice.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence

from .errors import TaskError
from .messages import Task, TaskResult

__all__ = [
    "Deliver",
    "Fail",
    "Retire",
    "TaskAction",
    "TaskBook",
    "TaskKey",
    "choose_slot",
    "no_result",
]

#: A task's identity at the master: (sender pid, the sender's task id).
TaskKey = tuple[int, int]


def choose_slot(
    loads: Sequence[int],
    bound: int,
    dst: int = -1,
    start: int = 0,
    live: Sequence[bool] = (),
) -> int | None:
    """The task worker slot to take a task, or None when it (``dst`` ≥ 0) or every one
    holds ``bound`` tasks already.

    The least loaded slot wins; among equals the first from ``start`` on, so a sender
    that rotates ``start`` spreads tasks that finish at once over every task worker.
    A slot ``live`` says has no task worker up (crashed, its replacement not ready) is
    chosen only when no slot with one has room: a task waits there for the replacement.
    """
    if dst >= 0:
        return dst if dst < len(loads) and loads[dst] < bound else None
    if any(live):
        best = _least_loaded(loads, bound, start, live)
        if best is not None:
            return best
    return _least_loaded(loads, bound, start, ())


def _least_loaded(loads: Sequence[int], bound: int, start: int, live: Sequence[bool]) -> int | None:
    """The least loaded slot with room (among the ``live`` ones, when given)."""
    best: int | None = None
    count = len(loads)
    for step in range(count):
        slot = (start + step) % count
        if live and not live[slot]:
            continue
        if loads[slot] < bound and (best is None or loads[slot] < loads[best]):
            best = slot
    return best


def task_key(task: Task) -> TaskKey:
    return (task.src_pid, task.task_id)


@dataclasses.dataclass(frozen=True)
class Deliver:
    """Send ``task`` to task worker ``pid``."""

    pid: int
    task: Task


@dataclasses.dataclass(frozen=True)
class Fail:
    """Answer ``task``'s sender with a TaskError saying ``reason``; the task is over."""

    task: Task
    reason: str


@dataclasses.dataclass(frozen=True)
class Retire:
    """Stop task worker ``pid``: a successor takes its slot's new tasks; it finishes the
    tasks it holds first."""

    pid: int


TaskAction = Deliver | Fail | Retire


class TaskBook:
    """The master's book of the task relay; holds no process and reads no clock."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.accepting: dict[int, int] = {}  # slot -> pid of the task worker taking new tasks
        self.held: dict[int, dict[TaskKey, Task]] = {}  # pid -> tasks sent, unanswered (no data)
        self.pending: dict[int, list[Task]] = {slot: [] for slot in range(slots)}
        self.closed = False  # shutting down: no task worker will take new tasks

    def holding(self, pid: int) -> int:
        """How many tasks task worker ``pid`` holds (running and queued)."""
        return len(self.held.get(pid, ()))

    def submit(self, task: Task) -> list[TaskAction]:
        """A sender's task reached the master."""
        if not 0 <= task.slot < self.slots:
            return [Fail(task, f"no task worker {task.slot}")]
        if self.closed:
            return [Fail(task, "the server is shutting down")]
        pid = self.accepting.get(task.slot)
        if pid is None:
            self.pending[task.slot].append(task)  # bounded by the senders' task load
            return []
        # Held to answer for it if its task worker dies: who sent it, not its data (up to
        # task_queue_size payloads of 1 MiB per task worker otherwise)
        self.held.setdefault(pid, {})[task_key(task)] = task._replace(payload=b"")
        return [Deliver(pid, task)]

    def empty_slots(self) -> list[int]:
        """The slots no task worker takes new tasks for (crashed, not ready yet)."""
        return [slot for slot in range(self.slots) if slot not in self.accepting]

    def expire(self, slot: int, reason: str) -> list[TaskAction]:
        """The tasks waiting for ``slot``'s task worker fail: it did not come back in time."""
        waiting, self.pending[slot] = self.pending[slot], []
        return [Fail(task, reason) for task in waiting]

    def undeliverable(self, pid: int, task: Task, reason: str) -> list[TaskAction]:
        """The master could not queue ``task`` for ``pid`` (its channel is full)."""
        self.held.get(pid, {}).pop(task_key(task), None)
        return [Fail(task, reason)]

    def ready(self, slot: int, pid: int) -> list[TaskAction]:
        """Task worker ``pid`` of ``slot`` is up: it takes the slot's new tasks from now
        on, the ones waiting for the slot first; the one it replaces is retired."""
        if self.closed or not 0 <= slot < self.slots:
            return []
        old = self.accepting.get(slot)
        self.accepting[slot] = pid
        self.held.setdefault(pid, {})
        actions: list[TaskAction] = [Retire(old)] if old is not None and old != pid else []
        waiting, self.pending[slot] = self.pending[slot], []
        for task in waiting:
            actions += self.submit(task)
        return actions

    def answered(self, pid: int, src_pid: int, task_id: int) -> Task | None:
        """Task worker ``pid`` answered a task: the task, or None for one it did not hold
        (already failed: never answered twice)."""
        return self.held.get(pid, {}).pop((src_pid, task_id), None)

    def stopped(self, pid: int) -> None:
        """Task worker ``pid`` was told to stop: it takes no new task from now on."""
        for slot, accepting in list(self.accepting.items()):
            if accepting == pid:
                del self.accepting[slot]

    def gone(self, pid: int, reason: str) -> list[TaskAction]:
        """Task worker ``pid`` exited: every task it still held fails with ``reason``."""
        self.stopped(pid)
        held = self.held.pop(pid, {})
        return [Fail(task, reason) for task in held.values()]

    def close(self) -> list[TaskAction]:
        """Shutting down: the tasks waiting for a task worker fail; new ones fail at once.
        Tasks already held are finished by their task workers as they stop."""
        self.closed = True
        actions: list[TaskAction] = []
        for slot, waiting in self.pending.items():
            actions += [Fail(task, "the server is shutting down") for task in waiting]
            self.pending[slot] = []
        return actions


def no_result(task_id: int, src_pid: int, index: int, reason: str) -> TaskResult:
    """The answer of a task that got no result, for its sender to raise: what the master
    sends when a task worker died or a sender's channel refused the result, and what a
    task worker sends when its own channel refused the answer."""
    error = TaskError(f"task {task_id} got no result: {reason}")
    payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    return TaskResult(task_id, src_pid, index, False, payload)
