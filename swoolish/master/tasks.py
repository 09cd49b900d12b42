"""The master's task relay: task workers' slots, the tasks each holds, their answers.

Tasks travel event worker → master → task worker → master → event worker
(docs/tasks.md). The master keeps the book (:class:`swoolish.core.tasks.TaskBook`): which
task worker of each slot takes new tasks, and which tasks each one holds, so when a task
worker dies every sender of a task it held gets a TaskError for it, and a reload rolls
task workers over without losing or repeating a task: the new task worker of a slot
takes the new tasks once it is ready, and the old one is stopped, finishing what it
holds first. Every task that ends here counts in the shared task load
(swoolish.shared.taskload), which is what keeps event workers' dispatch bounded.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable

from ..core.errors import TaskError
from ..core.messages import Message, Task, TaskResult
from ..core.tasks import Deliver, Fail, Retire, TaskAction, TaskBook
from ..shared.taskload import TaskLoad

__all__ = ["TaskRelay"]

log = logging.getLogger("swoolish.master")

Send = Callable[[int, Message, bool], bool]  # (pid, message, essential) -> queued


class TaskRelay:
    """Relays tasks and answers; spawning, stopping and sending are the master's."""

    def __init__(
        self,
        first: int,
        count: int,
        send: Send,
        retire: Callable[[int], None],
    ) -> None:
        """Task worker ``i`` has worker_id (slot) ``first + i``; ``send`` queues a message
        for a worker; ``retire`` stops a task worker a successor replaced."""
        self.first = first
        self.count = count
        self.load = TaskLoad(count) if count else None
        self.book = TaskBook(count)
        self._send = send
        self._retire = retire
        self.newest: dict[int, int] = {}  # task index -> the newest generation spawned
        self.results_dropped = 0  # answers whose sender had exited
        self.failed = 0  # tasks the master answered with an error

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
        self._run(self.book.submit(task))

    def answered(self, pid: int, result: TaskResult) -> None:
        task = self.book.answered(pid, result.src_pid, result.task_id)
        if task is None:
            return  # already failed back to its sender: answered once only
        self._complete(task.slot)
        self._reply(task.src_pid, result)

    def ready(self, pid: int, slot: int, generation: int) -> None:
        """A task worker is up; an older one than its slot's newest is retired at once."""
        index = slot - self.first
        if generation < self.newest.get(index, 0):
            self._retire(pid)
            return
        self._run(self.book.ready(index, pid))

    def stopping(self, pid: int) -> None:
        self.book.stopped(pid)

    def gone(self, pid: int, slot: int, how: str) -> None:
        fails = self.book.gone(pid, f"task worker {slot} (pid {pid}) {how}")
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
        error = TaskError(f"task {task.task_id} got no result: {reason}")
        payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        self._reply(task.src_pid, TaskResult(task.task_id, task.src_pid, task.slot, False, payload))

    def _complete(self, index: int) -> None:
        if self.load is not None:
            self.load.complete(index)

    def _reply(self, pid: int, result: TaskResult) -> None:
        if not self._send(pid, result, True):
            self.results_dropped += 1  # the sender exited (a reload replaced it)
