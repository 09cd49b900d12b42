"""The event worker's side of task workers: send a task, route its one answer.

``server.task()``, ``taskwait()`` and ``task_gather()`` (docs/tasks.md) come here. A task
is pickled, checked against the routed-payload cap, counted in the shared task load
(swoolish.shared.taskload: the least busy task worker with room, decided here, at once)
and sent to the master, which relays it to the task worker of the chosen slot. Its answer
(:class:`~swoolish.core.messages.TaskResult`) comes back through the master and goes to
what waits for it: a ``taskwait`` future, the ``callback`` given to ``task()``, or the
``finish`` handler, in this worker's loop. An answer nobody waits for any more (a
``taskwait`` that timed out) is dropped and counted in ``task_results_late``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
from collections.abc import Callable
from typing import Any

from ..core.errors import TaskError, TaskQueueFull
from ..core.messages import Message, Task, TaskResult
from ..shared.ipc import QUEUE_LIMIT
from ..shared.taskload import TaskLoad
from .host import WorkerHost
from .router import MAX_ROUTED_PAYLOAD, routable_payload

__all__ = ["MAX_TASK_PAYLOAD", "TaskClient"]

MAX_TASK_PAYLOAD = MAX_ROUTED_PAYLOAD  # a task's data and a result, once pickled

#: What waits for a task's answer: None (the ``finish`` handler), a callback, a future.
Waiter = Callable[..., Any] | asyncio.Future[Any] | None


class TaskClient:
    """Sends this event worker's tasks and routes their answers."""

    def __init__(
        self,
        worker: WorkerHost,
        load: TaskLoad | None,
        send: Callable[[Message], bool],
        backlog: Callable[[], int | None] = lambda: 0,
    ) -> None:
        """``load`` is the shared task load (None without task workers); ``send`` queues
        a message for the master and says whether it was taken; ``backlog`` is how many
        bytes wait in this worker's channel to the master (None: the channel is closed),
        for the refusal's message."""
        self.worker = worker
        self.load = load
        self._send = send
        self._backlog = backlog
        self._ids = 0
        self.waiting: dict[int, Waiter] = {}  # task id -> what waits for its answer
        self._channel_refused = False  # why the last submit() gave None: channel or load

    # -- sending

    def submit(self, data: Any, dst_worker_id: int, waiter: Waiter) -> int | None:
        """Send a task; its id, or None when the task worker(s) it may go to are full.
        Bad arguments raise here, at the call."""
        load = self._check(dst_worker_id, "task")
        payload = routable_payload(
            data,
            "a task's data must be picklable",
            f"task data over {MAX_TASK_PAYLOAD} bytes once pickled",
        )
        worker = self.worker
        self._channel_refused = False
        slot = load.claim(worker.settings.task_queue_size, dst_worker_id)
        if slot is None:
            worker.stats["tasks_refused"] += 1
            return None
        self._ids += 1
        task_id = self._ids
        if not self._send(Task(task_id, worker.worker_id, os.getpid(), slot, payload)):
            load.unclaim(slot)  # our channel to the master is over its bound
            worker.stats["tasks_refused"] += 1
            self._channel_refused = True
            return None
        self.waiting[task_id] = waiter
        worker.stats["tasks_sent"] += 1
        return task_id

    def _check(self, dst_worker_id: int, method: str) -> TaskLoad:
        settings = self.worker.settings
        if self.load is None:
            if settings.task_worker_num and self.worker.worker_id >= settings.worker_num:
                raise RuntimeError(f"server.{method}() works in an event worker, not a task worker")
            raise RuntimeError(f"server.{method}() needs task workers: set task_worker_num")
        valid = range(settings.task_worker_num)
        if type(dst_worker_id) is not int or (dst_worker_id != -1 and dst_worker_id not in valid):
            raise ValueError(
                f"unknown task worker {dst_worker_id!r}; use -1 (the least busy) or "
                f"{valid.start} … {valid.stop - 1}"
            )
        return self.load

    def refused(self, dst_worker_id: int) -> TaskQueueFull:
        """What ``taskwait`` raises for the task ``submit()`` just refused. The type is
        the same whichever refused it, but the message says which: the task workers' load,
        or this worker's own channel to the master (docs/tasks.md), since the remedies
        differ (more task workers or a larger queue; smaller or fewer tasks at once)."""
        if self._channel_refused:
            return TaskQueueFull(self._channel_problem() + "; the task was not sent")
        bound = self.worker.settings.task_queue_size
        which = "every task worker" if dst_worker_id < 0 else f"task worker {dst_worker_id}"
        return TaskQueueFull(
            f"{which} holds task_queue_size ({bound}) tasks already; the task was not sent"
        )

    def _channel_problem(self) -> str:
        queued = self._backlog()
        if queued is None:
            return "this worker's channel to the master is closed (the master is gone)"
        return (
            f"this worker's channel to the master holds {queued} bytes not yet taken "
            f"(a task that would take it past {QUEUE_LIMIT} is refused): the master is "
            f"behind, or large tasks are sent faster than it relays them"
        )

    async def wait(self, data: Any, timeout: float, dst_worker_id: int) -> Any:
        """``taskwait``: the result, or the handler's exception raised here."""
        future: asyncio.Future[Any] = self.worker.loop.create_future()
        task_id = self.submit(data, dst_worker_id, future)
        if task_id is None:
            raise self.refused(dst_worker_id)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.waiting.pop(task_id, None)  # its answer, if it comes, is dropped and counted
            raise TimeoutError(f"task {task_id} got no result within {timeout:g}s") from None

    async def gather(self, items: list[Any], timeout: float, dst_worker_id: int) -> list[Any]:
        """``task_gather``: one entry per item, in order; a task that failed, was refused
        or timed out has its exception as its entry (Swoole's taskCo gives false)."""
        futures: list[asyncio.Future[Any]] = []
        ids: list[int | None] = []
        for data in items:
            future: asyncio.Future[Any] = self.worker.loop.create_future()
            task_id = self.submit(data, dst_worker_id, future)
            if task_id is None:
                future.set_result(self.refused(dst_worker_id))
            futures.append(future)
            ids.append(task_id)
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        results: list[Any] = []
        for future, task_id in zip(futures, ids, strict=True):
            if not future.done():
                self.waiting.pop(task_id or 0, None)
                future.cancel()
                results.append(TimeoutError(f"task {task_id} got no result within {timeout:g}s"))
            elif future.exception() is not None:
                results.append(future.exception())
            else:
                results.append(future.result())
        return results

    # -- receiving

    def on_result(self, message: TaskResult) -> None:
        """A task's answer, relayed by the master."""
        worker = self.worker
        if message.task_id not in self.waiting:
            worker.stats["task_results_late"] += 1  # its taskwait gave up: dropped, counted
            return
        waiter = self.waiting.pop(message.task_id)
        ok, value = _unpickle(message)
        if not ok:
            worker.stats["task_errors"] += 1
        if isinstance(waiter, asyncio.Future):
            if waiter.done():
                worker.stats["task_results_late"] += 1
            elif ok:
                waiter.set_result(value)
            else:
                waiter.set_exception(value)
            return
        if ok and not message.notify:
            return  # the handler returned None without finish(): no event, as in Swoole
        handler = waiter or worker.handler("finish")
        if handler is None:
            if not ok:
                worker.log.error(
                    "worker %d: task %d failed and no finish handler or callback was given: %s",
                    worker.worker_id,
                    message.task_id,
                    value,
                )
            return
        self._call(handler, message.task_id, value)

    def _call(self, handler: Callable[..., Any], task_id: int, value: Any) -> None:
        worker = self.worker
        try:
            result = handler(worker.server, task_id, value)
        except Exception:
            worker.stats["handler_errors"] += 1
            worker.log.exception(
                "worker %d: finish handler of task %d raised", worker.worker_id, task_id
            )
            return
        if inspect.isawaitable(result):
            worker.track(_awaited(result))


async def _awaited(awaitable: Any) -> None:
    await awaitable


def _unpickle(message: TaskResult) -> tuple[bool, Any]:
    """(ok, the result or the exception); an answer that does not unpickle here (a class
    this worker's code lacks) is an error of its own, never an exception in the loop."""
    try:
        value = pickle.loads(message.payload)
    except Exception as exc:
        return False, TaskError(
            f"the answer of task {message.task_id} could not be unpickled: {exc!r}"
        )
    if not message.ok and not isinstance(value, BaseException):
        return False, TaskError(str(value))
    return message.ok, value
