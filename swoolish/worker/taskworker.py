"""A task worker process: runs ``task`` handlers, serves no client (docs/tasks.md).

It is a :class:`~swoolish.worker.process.Worker` (the app imported fresh after the fork,
``worker_start``/``worker_stop``/``worker_exit``, timers, logging, the master's channel,
``server.push`` to any session through the master) that never accepts: it closes its
copy of the listening socket and takes :class:`~swoolish.core.messages.Task` messages
from the master instead.

* A plain-function handler runs in the task worker's one handler thread, one task at a
  time (Swoole's model): it may block (that is what task workers are for) while the
  loop keeps reading the channel, firing timers and answering the master, so a
  ``Stop`` is honoured once the running task ends. ``task.finish()`` may be called
  from that thread; other server methods (``push``, ``Timer``) belong to the loop: use
  an ``async def`` handler for them.
* An ``async def`` handler runs on the loop; several run at once, at most
  ``task_queue_size`` (the master never hands a slot more).
* Every task gets exactly one answer: the first ``task.finish(result)``, else what the
  handler returned, else the exception it raised (the same type and message reach the
  sender). The answer goes back through the master.
* Answers are produced no faster than the master takes them: while more than
  ``ANSWERS_AHEAD`` bytes wait in the channel to the master, no next task starts (the
  tasks received wait, in order, as the bytes they came in), so every answer of a
  plain-function handler fits the channel's bound (``ipc.HARD_LIMIT``). An answer the
  channel still refuses (``async def`` handlers finishing together) is dropped, and
  its sender gets a small ``TaskError`` once the channel has drained: never silence,
  never a task left held in the master's book (docs/tasks.md, "Faults").
* On ``Stop`` (a reload retired it, or shutdown) it finishes the tasks it holds, for at
  most ``max_wait_time``, answers the unfinished ones with a TaskError, then runs
  ``worker_stop`` and ``worker_exit`` and exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import os
import pickle
import threading
from collections import deque
from typing import Any

from ..core.errors import TaskError
from ..core.messages import Exiting, Task, TaskResult, WorkerFigures
from ..core.tasks import no_result
from ..shared import ipc
from ..shared.setup import EXIT_BOOT_ERROR, WorkerSetup
from . import timers
from .process import App, Worker
from .tasks import MAX_TASK_PAYLOAD

__all__ = ["TaskRequest", "TaskWorker"]

DRAIN_POLL = 0.01  # seconds between two looks at the tasks a stopping task worker holds
EXIT_FLUSH_TIMEOUT = 2.0  # seconds an exiting task worker waits for the master to read it
MAX_ERROR_MESSAGE = 64 * 1024  # characters of an error message a TaskError carries
#: Bytes waiting in the channel to the master past which no next task starts until they
#: have gone. One answer is at most MAX_TASK_PAYLOAD, so a plain-function handler's
#: answer always fits under ipc.HARD_LIMIT, the bound of essential messages. Without
#: it, 48 answers of 1000 KiB from one task worker outran the master on 208 KiB socket
#: buffers, and the 14 refused past HARD_LIMIT were lost.
ANSWERS_AHEAD = ipc.QUEUE_LIMIT
#: Plain-function tasks handed to the handler thread at once: their answers, at most
#: MAX_TASK_PAYLOAD each (and their framing), fit between ANSWERS_AHEAD and
#: ipc.HARD_LIMIT. Handed one at a
#: time, each task waited for a turn of the loop: 64 no-op tasks in flight made 6,800
#: round trips a second instead of 13,900.
THREAD_AHEAD = max(1, (ipc.HARD_LIMIT - ANSWERS_AHEAD) // MAX_TASK_PAYLOAD - 1)
#: A task worker's own counters (docs/tasks.md): tasks_held_back counts the times a task
#: waited for the channel to the master to drain before it started; task_answers_refused
#: the answers that channel still refused, their senders answered with a TaskError.
TASK_COUNTERS = (
    "tasks_received",
    "tasks_done",
    "task_errors",
    "tasks_held_back",
    "task_answers_refused",
)


class TaskRequest:
    """What a ``task`` handler gets: ``id``, ``worker_id`` (the sender's) and ``data``."""

    __slots__ = ("_answered", "_lock", "_worker", "data", "id", "src_pid", "worker_id")

    def __init__(self, worker: TaskWorker, message: Task) -> None:
        self.id = message.task_id
        self.worker_id = message.src_worker
        self.src_pid = message.src_pid
        self.data: Any = None
        self._worker = worker
        self._answered = False
        self._lock = threading.Lock()  # finish() may come from the handler thread

    def finish(self, result: Any = None) -> bool:
        """Send ``result`` to the sender now (Swoole's ``$server->finish()``); False if
        this task was answered already. Safe from the handler thread."""
        return self._answer(True, result, notify=True)

    def _returned(self, result: Any) -> None:
        self._answer(True, result, notify=result is not None)

    def _failed(self, error: BaseException) -> None:
        self._answer(False, error, notify=True)

    def _answer(self, ok: bool, value: Any, notify: bool) -> bool:
        with self._lock:
            if self._answered:
                return False
            self._answered = True
        self._worker.answer(self, ok, value, notify)
        return True

    def __repr__(self) -> str:
        return f"TaskRequest(id={self.id}, worker_id={self.worker_id}, data={self.data!r})"


class TaskWorker(Worker):
    """A worker that runs tasks instead of serving clients."""

    def __init__(self, server: App, setup: WorkerSetup) -> None:
        super().__init__(server, setup)
        self.task_index = setup.worker_id - self.settings.worker_num
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "swoolish-task")
        self.held: dict[tuple[int, int], TaskRequest] = {}  # received, not answered yet
        # received, not started: (handler, task, its data as it came), in order
        self._ready: deque[tuple[Any, TaskRequest, bytes]] = deque()
        self._in_thread = 0  # plain-function tasks handed to the handler thread, not done
        self._handlers_closed = False  # stopped: the executor takes nothing more
        self._waiting_room = False  # called back once the channel to the master drains
        self._owed: deque[TaskResult] = deque()  # errors for answers the channel refused
        self._refusing = False  # an episode of refused answers is on (logged once)
        self._loop_thread = threading.get_ident()
        self._duties[Task] = self._on_task
        for name in TASK_COUNTERS:  # stats() reports each one, zero included
            self.stats[name] = 0

    def snapshot(self) -> dict[str, Any]:
        figures = super().snapshot()
        figures.update(kind="task", tasks_held=len(self.held))
        return figures

    # -- the lifecycle

    async def serve(self) -> int:
        """worker_start, then run tasks until told to stop; returns the exit code."""
        self._stop_requested = self.loop.create_future()
        timers.install(self.timers)
        try:
            await self._call_hook("worker_start")
        except Exception as exc:
            self.log.exception(
                "task worker %d gen %d: worker_start raised; this task worker will not run",
                self.worker_id,
                self.generation,
            )
            await self._boot_failed(exc)
            return EXIT_BOOT_ERROR
        self._ready_without_clients()
        self.log.info(
            "task worker %d gen %d (pid %d) taking tasks",
            self.worker_id,
            self.generation,
            os.getpid(),
        )
        close_code = await self._stop_requested
        await self.shutdown(close_code)
        return 0

    async def shutdown(self, close_code: int) -> None:
        """Finish the held tasks (up to max_wait_time), then the hooks, then exit."""
        started = self.loop.time()
        self.draining = True
        deadline = started + self.settings.max_wait_time
        while self.held and self.loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        unfinished = list(self.held.values())
        for task in unfinished:
            task._failed(
                TaskError(
                    f"task worker {self.worker_id} (pid {os.getpid()}) stopped before "
                    f"task {task.id} finished (max_wait_time {self.settings.max_wait_time:g}s)"
                )
            )
        if unfinished:
            self.log.warning(
                "task worker %d gen %d: %d tasks unfinished after max_wait_time; their "
                "senders got an error",
                self.worker_id,
                self.generation,
                len(unfinished),
            )
        await self._call_hook_logged("worker_stop")
        await self._call_hook_logged("worker_exit")
        leftover = self.timers.clear_all()
        for running in list(self.tasks):
            running.cancel()
        await asyncio.sleep(0)
        self._handlers_closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.router.flush()
        self.report(WorkerFigures(self.snapshot()))
        self.report(Exiting(leftover, 0, round(self.loop.time() - started, 4), None))
        await self._flush_answers(self.loop.time() + EXIT_FLUSH_TIMEOUT)
        self.log.info(
            "task worker %d gen %d (pid %d) exiting: %d tasks done, %d timers cleared",
            self.worker_id,
            self.generation,
            os.getpid(),
            self.stats["tasks_done"],
            leftover,
        )
        timers.uninstall()

    async def _flush_answers(self, deadline: float) -> None:
        """Until ``deadline``: wait for what waits for the master to go, the errors owed
        for refused answers included, so their senders hear of them before the master
        sees this process exit."""
        channel = self.channel
        while channel is not None and not channel.closed and not channel.broken:
            self._settle()
            left = deadline - self.loop.time()
            if not (channel.queued or self._owed) or left <= 0:
                return
            await channel.drained(left)

    # -- tasks

    def _on_task(self, message: Task) -> None:
        task = TaskRequest(self, message)
        self.held[(message.src_pid, message.task_id)] = task
        self.stats["tasks_received"] += 1
        handler = self.handler("task")
        if handler is None:
            task._failed(TaskError("no task handler: register one with server.on('task')"))
            return
        self._ready.append((handler, task, message.payload))
        self._start_tasks()

    def _start_tasks(self) -> None:
        """Start the tasks received, in order, while their answers have room.

        A plain-function handler runs one task at a time in the handler thread, which
        is handed up to THREAD_AHEAD at once; an ``async def`` one starts at once on
        the loop. Either waits while more than
        ANSWERS_AHEAD bytes wait for the master, until they have gone: a task worker
        that answers faster than the master reads would otherwise fill its channel past
        the bound of essential messages, and the answers refused there were lost.
        """
        ready = self._ready
        while ready and not self._handlers_closed:
            handler, task, payload = ready[0]
            if task._answered:  # failed while it waited (the task worker stopped)
                ready.popleft()
                continue
            in_loop = inspect.iscoroutinefunction(handler)
            if (not in_loop and self._in_thread >= THREAD_AHEAD) or not self._room_for_answers():
                return  # again when the running task ends, or the channel drains
            ready.popleft()
            if in_loop:
                if _unpickled(task, payload):
                    self.track(self._run_async(handler, task))
                continue
            self._in_thread += 1
            run = functools.partial(self._run_in_thread, handler, task, payload)
            future = self.loop.run_in_executor(self.executor, run)
            future.add_done_callback(functools.partial(self._sync_done, task))

    def _room_for_answers(self) -> bool:
        """Whether the channel to the master has room for another task's answer; if
        not, :meth:`_room_again` runs once it has drained."""
        channel = self.channel
        if channel is None or channel.closed or channel.broken or channel.queued <= ANSWERS_AHEAD:
            return True
        if not self._waiting_room:
            self.stats["tasks_held_back"] += 1
        self._wait_for_room()
        return False

    def _wait_for_room(self) -> None:
        if self._waiting_room or self.channel is None:
            return
        self._waiting_room = True
        self.channel.when_drained(self._room_again)

    def _room_again(self) -> None:
        """The channel to the master has drained (or closed): the errors owed go first,
        then the tasks that waited start."""
        self._waiting_room = False
        self._settle()
        self._start_tasks()

    def _run_in_thread(self, handler: Any, task: TaskRequest, payload: bytes) -> Any:
        """In the handler thread: the task's data is unpickled only now, so the tasks
        queued behind a running one wait as the bytes they came in. Unpickled on
        arrival, they took up to four times that: a text of characters beyond U+FFFF is
        4 bytes per character in Python, and 572 MiB of them queued behind a blocking
        handler held 1,650 MiB of a task worker."""
        if not _unpickled(task, payload):
            return _NOT_RUN
        return handler(self.server, task)

    def _sync_done(self, task: TaskRequest, future: asyncio.Future[Any]) -> None:
        """The handler thread is done with ``task``: answer it, then hand it the next
        (after the answer, so the room left for answers counts it)."""
        self._in_thread -= 1
        self._answer_from_thread(task, future)
        if self._in_thread <= THREAD_AHEAD // 2:
            self._start_tasks()  # in batches: handed one by one, 64 no-op tasks lost 7%

    def _answer_from_thread(self, task: TaskRequest, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and future.result() is _NOT_RUN:
            return  # answered already: its data could not be unpickled
        if future.cancelled():
            task._failed(TaskError(f"task {task.id} was cancelled: the task worker stopped"))
        elif future.exception() is not None:
            self._raised(task, future.exception())
        elif inspect.isawaitable(future.result()):
            self.track(self._await_result(task, future.result()))
        else:
            task._returned(future.result())

    async def _run_async(self, handler: Any, task: TaskRequest) -> None:
        await self._await_result(task, handler(self.server, task))

    async def _await_result(self, task: TaskRequest, awaitable: Any) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            task._failed(TaskError(f"task {task.id} was cancelled: the task worker stopped"))
            raise
        except Exception as exc:
            self._raised(task, exc)
        else:
            task._returned(result)

    def _raised(self, task: TaskRequest, exc: BaseException | None) -> None:
        assert exc is not None
        self.stats["handler_errors"] += 1
        self.log.error(
            "task worker %d: task %d from worker %d raised",
            self.worker_id,
            task.id,
            task.worker_id,
            exc_info=exc,
        )
        task._failed(exc)

    def answer(self, task: TaskRequest, ok: bool, value: Any, notify: bool) -> None:
        """Send a task's one answer; from the handler thread, through the loop."""
        if threading.get_ident() != self._loop_thread:
            self.loop.call_soon_threadsafe(self._send_answer, task, ok, value, notify)
        else:
            self._send_answer(task, ok, value, notify)

    def _send_answer(self, task: TaskRequest, ok: bool, value: Any, notify: bool) -> None:
        self.held.pop((task.src_pid, task.id), None)
        payload = _encode_answer(ok, value, task.id)
        if payload is None:
            ok = False
            payload = _encode_error(
                ValueError(
                    f"the result of task {task.id} is over {MAX_TASK_PAYLOAD} bytes once "
                    "pickled, or cannot be pickled"
                )
            )
        self.stats["tasks_done" if ok else "task_errors"] += 1
        result = TaskResult(task.id, task.src_pid, self.task_index, ok, payload, notify)
        if self.channel is not None and not self.channel.send(result, essential=True):
            self._refused(task)

    def _refused(self, task: TaskRequest) -> None:
        """The channel to the master refused the answer of ``task``: over HARD_LIMIT
        waits in it (``async def`` handlers that finished together), or the master is
        gone. The answer is dropped, since holding it would grow this process by up to
        task_queue_size answers of 1 MiB; its sender is owed a small TaskError, sent once
        the channel has drained, so the master's book does not keep the task as held
        and its ``taskwait`` or ``callback`` hears of it. Logged once per episode."""
        assert self.channel is not None
        channel = self.channel
        self.stats["task_answers_refused"] += 1
        if channel.closed or channel.broken:
            if not self._refusing:
                self._refusing = True
                self.log.error(
                    "task worker %d: the master's channel is closed; the answers of the "
                    "tasks that end from now on cannot reach their senders",
                    self.worker_id,
                )
            return
        if not self._refusing:
            self._refusing = True
            self.log.warning(
                "task worker %d: over %d bytes of answers wait for the master; the answers "
                "it refuses are dropped (counted in task_answers_refused), each task "
                "failing with a TaskError once it has drained",
                self.worker_id,
                ipc.HARD_LIMIT,
            )
        reason = (
            f"task worker {self.worker_id} (pid {os.getpid()}) could not queue it for the "
            f"master, where over {ipc.HARD_LIMIT} bytes waited; the result was dropped"
        )
        self._owed.append(no_result(task.id, task.src_pid, self.task_index, reason))
        self._wait_for_room()

    def _settle(self) -> None:
        """Send the errors owed for refused answers, each small; what the channel
        refuses again waits for its next drain."""
        channel, owed = self.channel, self._owed
        while owed:
            if channel is None or channel.closed or channel.broken:
                owed.clear()  # the master is gone: nobody holds these tasks any more
                return
            if channel.send(owed[0], essential=True):
                owed.popleft()
            elif channel.queued:
                self._wait_for_room()
                return
            else:
                owed.popleft()  # refused with nothing queued: it cannot go (the channel logged why)
        if self._refusing and channel is not None and not (channel.closed or channel.broken):
            self._refusing = False  # the episode is over: the next refusal is logged


def _encode_answer(ok: bool, value: Any, task_id: int) -> bytes | None:
    """The pickled result (None if it cannot be sent), or the pickled error."""
    if not ok:
        return _encode_error(value)
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    return payload if len(payload) <= MAX_TASK_PAYLOAD else None


def _encode_error(error: BaseException) -> bytes:
    """The exception itself when it survives pickling (the sender gets its type and
    message), else a TaskError naming it."""
    with contextlib.suppress(Exception):
        payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(payload)
        if len(payload) <= MAX_TASK_PAYLOAD:
            return payload
    return pickle.dumps(TaskError(f"{type(error).__name__}: {_message_of(error)}"))


def _message_of(error: BaseException) -> str:
    """``str(error)``, which the app's exception may fail to give: the task must still
    be answered. Before, such an error (neither picklable nor printable) was never
    answered: its sender's taskwait waited for its timeout, and its place in the task
    worker's queue stayed taken for as long as the task worker lived."""
    try:
        return str(error)[:MAX_ERROR_MESSAGE]
    except Exception as exc:
        return f"(its message could not be read: {type(exc).__name__})"


#: What the handler thread returns for a task it did not run (see _unpickled).
_NOT_RUN = object()


def _unpickled(task: TaskRequest, payload: bytes) -> bool:
    """Give ``task`` its data; False, with the task answered with a TaskError, if it
    cannot be unpickled."""
    try:
        task.data = pickle.loads(payload)
    except Exception as exc:
        task._failed(TaskError(f"the data of task {task.id} could not be unpickled: {exc!r}"))
        return False
    return True
