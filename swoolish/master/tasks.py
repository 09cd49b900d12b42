"""The master's task relay: task workers' slots, the tasks each holds, their answers.

Tasks travel event worker → master → task worker → master → event worker
(docs/tasks.md). The master keeps the book (:class:`swoolish.core.tasks.TaskBook`): which
task worker of each slot takes new tasks, and which tasks each one holds, so when a task
worker dies every sender of a task it held gets a TaskError for it, and a reload rolls
task workers over without losing or repeating a task: the new task worker of a slot
takes the new tasks once it is ready, and the old one is stopped, finishing what it
holds first. Every task that ends here counts in the shared task load
(swoolish.shared.taskload), which is what keeps event workers' dispatch bounded.

An answer goes to its sender as an essential message, which its channel still refuses
past ``ipc.HARD_LIMIT``: the sender is alive but not reading (its loop blocked, or
behind), and the master does not hold results without bound. Such a result is lost, but
not silently: the master owes the sender an error for it (see :class:`TaskRelay`).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable

from ..core.messages import Message, Task, TaskResult
from ..core.tasks import Deliver, Fail, Retire, TaskAction, TaskBook, no_result
from ..shared.ipc import HARD_LIMIT
from ..shared.taskload import TaskLoad

__all__ = ["OWED_LIMIT", "SLOT_WAIT", "TaskRelay"]

log = logging.getLogger("swoolish.master")

Send = Callable[[int, Message, bool], bool]  # (pid, message, essential) -> queued
#: (pid, callback) -> whether ``callback`` will be called once that worker's queue has
#: emptied (or its channel closed); False when nothing waits in it (or it is gone).
WhenDrained = Callable[[int, Callable[[], None]], bool]

#: Refused results one sender is owed an error for, at most, in one episode: 16 bytes
#: each (1 MiB). Tasks in flight are bounded by the shared task load, but a sender whose
#: loop runs while it does not read (its routed operations behind) may send more.
OWED_LIMIT = 65536

#: Seconds a task worker slot may be without a task worker (crashed, its replacement
#: backing off or failing to boot) before the tasks waiting for it fail: a plain crash
#: is replaced well within it (docs/tasks.md, "Faults").
SLOT_WAIT = 5.0


class TaskRelay:
    """Relays tasks and answers; spawning, stopping and sending are the master's.

    A result the sender's channel refuses while the sender lives (over ``HARD_LIMIT``
    waits for it: docs/tasks.md, "Faults") is dropped at once: keeping it would let one
    stalled worker grow the master by every result sent to it. What is kept is who is
    owed an answer: the task's id and task worker, 16 bytes, at most ``OWED_LIMIT`` per
    sender. Once the sender's queue has emptied (it reads again), each of those tasks
    gets a small ``TaskError``, so a ``taskwait`` fails at once instead of at its timeout
    and a ``callback`` or ``finish`` handler hears of it instead of never. Counted apart
    from the results of senders that exited (``results_dropped``), and logged once per
    episode, since a stalled sender is the app's bug to find, not a reload's normal
    course.
    """

    def __init__(
        self,
        first: int,
        count: int,
        send: Send,
        retire: Callable[[int], None],
        when_drained: WhenDrained,
    ) -> None:
        """Task worker ``i`` has worker_id (slot) ``first + i``; ``send`` queues a message
        for a worker; ``retire`` stops a task worker a successor replaced;
        ``when_drained`` calls back once the queue for a worker has emptied."""
        self.first = first
        self.count = count
        # Rows of claims for two generations of event workers plus crash replacements,
        # as the session table's regions (master/supervisor.py).
        self.load = TaskLoad(count, 4 * first) if count else None
        self.book = TaskBook(count)
        self._send = send
        self._retire = retire
        self._when_drained = when_drained
        self.newest: dict[int, int] = {}  # task index -> the newest generation spawned
        self.results_dropped = 0  # answers whose sender had exited
        self.results_refused = 0  # answers a live sender's full queue refused
        self.failed = 0  # tasks the master answered with an error
        self.lost = 0  # tasks their sender died with, in its channel: never reached here
        # sender pid -> tasks received from it, per slot (what its claims are checked against)
        self.received: dict[int, array[int]] = {}
        self.empty_since: dict[int, float] = {}  # task index -> seen without a task worker
        self.expired: set[int] = set()  # task indexes whose waiting tasks failed (logged)
        # sender pid -> (task id, task index) pairs, flat, owed a TaskError once it reads
        self.owed: dict[int, array[int]] = {}

    def slots(self) -> range:
        """The worker_ids of the task workers (after the event workers', as in Swoole)."""
        return range(self.first, self.first + self.count)

    def owns(self, slot: int) -> bool:
        return self.first <= slot < self.first + self.count

    def spawned(self, slot: int, generation: int) -> None:
        index = slot - self.first
        self.newest[index] = max(generation, self.newest.get(index, 0))

    # -- events

    def submitted(self, task: Task) -> None:
        if 0 <= task.slot < self.count:
            received = self.received.get(task.src_pid)
            if received is None:
                received = self.received[task.src_pid] = self._per_slot()
            received[task.slot] += 1
        self._run(self.book.submit(task))

    def sender_gone(self, pid: int, worker_id: int, row: int | None) -> None:
        """Event worker ``pid`` was reaped, its channel read to the end: the tasks it
        claimed in the load (its ``row``) that never reached the master are counted off,
        or every task worker would look that much fuller for the master's life."""
        received = self.received.pop(pid, None) or self._per_slot()
        if self.load is None or row is None:
            return
        lost = sum(self.load.sender_gone(row, received))
        if lost:
            self.lost += lost
            log.warning(
                "worker %d (pid %d) exited with %d tasks it sent still in its channel: they "
                "never reached a task worker (nobody waits for them now)",
                worker_id,
                pid,
                lost,
            )

    def _per_slot(self) -> array[int]:
        """A count per task worker slot, all 0."""
        return array("q", bytes(8 * self.count))

    def answered(self, pid: int, result: TaskResult) -> None:
        task = self.book.answered(pid, result.src_pid, result.task_id)
        if task is None:
            return  # already failed back to its sender: answered once only
        self._complete(task.slot)
        self._reply(task, result)

    def ready(self, pid: int, slot: int, generation: int) -> None:
        """A task worker is up; an older one than its slot's newest is retired at once."""
        index = slot - self.first
        if generation < self.newest.get(index, 0):
            self._retire(pid)
            return
        self._run(self.book.ready(index, pid))
        self._publish_live()

    def stopping(self, pid: int) -> None:
        self.book.stopped(pid)
        self._publish_live()

    def gone(self, pid: int, slot: int, how: str) -> None:
        fails = self.book.gone(pid, f"task worker {slot} (pid {pid}) {how}")
        self._publish_live()
        if fails:
            log.warning(
                "task worker %d (pid %d) %s holding %d tasks; their senders got an error",
                slot,
                pid,
                how,
                len(fails),
            )
        self._run(fails)

    def close(self) -> None:
        """Shutting down: tasks waiting for a task worker fail now."""
        self._run(self.book.close())

    def expire(self, now: float) -> None:
        """The master's tick: a slot without a task worker for SLOT_WAIT fails the tasks
        waiting for it (and, on later ticks, the ones that still come for it): its
        senders hear at once instead of never, should it not come back."""
        empty = self.book.empty_slots()
        for index in list(self.empty_since):
            if index not in empty:
                del self.empty_since[index]
                self.expired.discard(index)
        for index in empty:
            since = self.empty_since.setdefault(index, now)
            if now - since >= SLOT_WAIT and self.book.pending[index]:
                reason = f"task worker {self.first + index} is not up (for {now - since:.1f}s)"
                fails = self.book.expire(index, reason)
                if index not in self.expired:  # once per episode
                    self.expired.add(index)
                    log.warning(
                        "task worker %d has not been up for %.1fs: the %d tasks waiting for "
                        "it failed, and the ones sent to it fail until it is back",
                        self.first + index,
                        now - since,
                        len(fails),
                    )
                self._run(fails)

    def _publish_live(self) -> None:
        """Tell the senders which slots have a task worker taking new tasks."""
        if self.load is None:
            return
        for index in range(self.count):
            self.load.set_live(index, index in self.book.accepting)

    # -- actions

    def _run(self, actions: list[TaskAction]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Deliver):
                if not self._send(action.pid, action.task, False):
                    queue += self.book.undeliverable(
                        action.pid, action.task, "its task worker is not reading its channel"
                    )
            elif isinstance(action, Fail):
                self._fail(action.task, action.reason)
            elif isinstance(action, Retire):
                self._retire(action.pid)

    def _fail(self, task: Task, reason: str) -> None:
        self.failed += 1
        self._complete(task.slot)
        self._reply(task, no_result(task.task_id, task.src_pid, task.slot, reason))

    def _complete(self, index: int) -> None:
        if self.load is not None:
            self.load.complete(index)

    def _reply(self, task: Task, result: TaskResult) -> None:
        pid = task.src_pid
        if self._send(pid, result, True):
            return
        owed = self.owed.get(pid)
        if owed is None:
            owed = self.owed[pid] = array("q")
            if not self._when_drained(pid, lambda: self._settle(pid)):
                del self.owed[pid]
                self.results_dropped += 1  # the sender exited (a reload replaced it)
                return
            log.warning(
                "worker %d (pid %d) is not reading its channel (over %d bytes wait for it): "
                "task results for it are dropped (counted in task_results_refused), each "
                "task failing with a TaskError once it reads again",
                task.src_worker,
                pid,
                HARD_LIMIT,
            )
        self.results_refused += 1
        if len(owed) < 2 * OWED_LIMIT:
            owed.extend((task.task_id, task.slot))
        elif len(owed) == 2 * OWED_LIMIT:
            owed.extend((0, -1))  # marks the overflow: logged once, never delivered
            log.error(
                "worker %d (pid %d): over %d task results refused while it does not read; "
                "the next ones get no error, their taskwait times out",
                task.src_worker,
                pid,
                OWED_LIMIT,
            )

    def _settle(self, pid: int) -> None:
        """The queue for sender ``pid`` emptied (or its channel closed): the errors it is
        owed go now, each small; what its queue refuses again waits for the next drain."""
        owed = self.owed.pop(pid, None)
        if owed is None:
            return
        reason = (
            f"this worker did not read its channel from the master, where over {HARD_LIMIT} "
            "bytes waited for it; the result was dropped"
        )
        for at in range(0, len(owed), 2):
            task_id, index = owed[at], owed[at + 1]
            if index < 0:
                continue
            if not self._send(pid, no_result(task_id, pid, index, reason), True):
                self.owed[pid] = owed[at:]
                if not self._when_drained(pid, lambda: self._settle(pid)):
                    del self.owed[pid]  # the sender is gone: nobody waits any more
                return
