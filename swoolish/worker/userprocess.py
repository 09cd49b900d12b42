"""A user process: a long-running process of the app (``server.add_process``).

Swoole's ``addProcess`` (docs/lifecycle.md, "User processes"): a queue consumer, a
scheduler, anything that is neither an event worker nor a task worker. It is a
:class:`~swoolish.worker.process.Worker` that never accepts a client and runs none of
the app's event handlers (Swoole's user processes run no worker hooks); its loop keeps
the master's channel, so it is stopped, polled for figures and reached by
``send_message`` like any worker.

* The app is imported fresh after the fork and the target is found again by its name:
  a reload runs the new code. A name the new code no longer registers is a failed boot.
* It reports ``Ready`` once the target is found, and runs it only when the master says
  ``Serve``: at once for a first start or a restart, and on a reload only after the
  process it replaces has exited, so two generations of one process never run together.
* ``target(process)`` gets a :class:`UserProcess`. A plain function runs in a thread of
  its own (it may block); an ``async def`` runs on the process's uvloop loop.
* On ``Stop`` the handle says ``stopping``, ``recv``/``receive`` return None and
  ``messages()`` ends; the target gets ``max_wait_time`` to return, then an async one is
  cancelled and the process exits. A target that returns or raises ends the process;
  the master restarts it (with back-off when that happens soon after its start).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..core.errors import SwoolishError
from ..core.messages import Exiting, WorkerFigures
from ..core.processes import ProcessSpec
from ..shared.setup import EXIT_BOOT_ERROR, WorkerSetup
from . import timers
from .process import App, Worker

__all__ = ["UserProcess", "UserProcessWorker"]

EXIT_TARGET_FAILED = 1  # the target raised: the master restarts the process
SEND_TIMEOUT = 5.0  # seconds send_message from the target's thread waits for the loop

_STOP = object()  # wakes a receiver of a stopping process


class UserProcess:
    """What a user process's target gets: who it is, and messages in and out."""

    def __init__(self, worker: UserProcessWorker, is_async: bool) -> None:
        self.id = worker.worker_id  # its worker id: send_message(msg, id) reaches it
        self.index = worker.index  # its place among user processes (add_process's value)
        self.name = worker.name
        self.generation = worker.generation
        self._worker = worker
        self._async = is_async
        self._stopping = threading.Event()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # a plain target's
        self._aqueue: asyncio.Queue[Any] = asyncio.Queue()  # an async target's

    @property
    def worker_pid(self) -> int:
        return os.getpid()

    @property
    def master_pid(self) -> int:
        return self._worker.master_pid

    @property
    def stopping(self) -> bool:
        """True once the master told this process to stop: return soon."""
        return self._stopping.is_set()

    def send_message(self, message: Any, worker_id: int) -> bool:
        """``message`` to worker ``worker_id`` (an event worker, a task worker or a user
        process), whose ``pipe_message`` gets ``(server, this process's id, message)``.
        Safe from a plain target's thread. False when the master is not keeping up, or
        the process is gone; a ValueError names the valid ids."""
        worker = self._worker
        if threading.get_ident() == worker.loop_thread:
            return worker.send_pipe(message, worker_id)
        result: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def send() -> None:
            try:
                result.set_result(worker.send_pipe(message, worker_id))
            except BaseException as exc:
                result.set_exception(exc)

        try:
            worker.loop.call_soon_threadsafe(send)
        except RuntimeError:
            return False  # the loop is closed: the process is exiting
        try:
            return result.result(SEND_TIMEOUT)
        except concurrent.futures.TimeoutError:
            return False

    def recv(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next ``(src_worker_id, message)`` for a plain-function target, blocking;
        None after ``timeout`` seconds or once the process is stopping."""
        if self._async:
            raise RuntimeError("an async target receives with await process.receive()")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._queue.put(_STOP)  # every later call returns None too
            return None
        return item  # type: ignore[no-any-return]

    async def receive(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next ``(src_worker_id, message)`` for an ``async def`` target; None after
        ``timeout`` seconds or once the process is stopping."""
        if not self._async:
            raise RuntimeError("a plain-function target receives with process.recv()")
        try:
            item = await asyncio.wait_for(self._aqueue.get(), timeout)
        except TimeoutError:
            return None
        if item is _STOP:
            self._aqueue.put_nowait(_STOP)
            return None
        return item  # type: ignore[no-any-return]

    async def messages(self) -> AsyncIterator[tuple[int, Any]]:
        """``async for src, message in process.messages()``: until the process stops."""
        while True:
            item = await self.receive()
            if item is None:
                return
            yield item

    # -- from the process's loop

    def _deliver(self, server: Any, src: int, message: Any) -> None:
        """The ``pipe_message`` of this process: queued for the target."""
        if self._async:
            self._aqueue.put_nowait((src, message))
        else:
            self._queue.put((src, message))

    def _stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            if self._async:
                self._aqueue.put_nowait(_STOP)
            else:
                self._queue.put(_STOP)

    def __repr__(self) -> str:
        return f"UserProcess(id={self.id}, name={self.name!r}, pid={os.getpid()})"


class UserProcessWorker(Worker):
    """A worker that runs one user process's target instead of serving clients."""

    def __init__(self, server: App, setup: WorkerSetup) -> None:
        super().__init__(server, setup)
        self.index = setup.process_index if setup.process_index is not None else -1
        self.name = setup.process_name
        self.loop_thread = threading.get_ident()
        self.spec = _find_target(server, self.name)
        is_async = self.spec is not None and inspect.iscoroutinefunction(self.spec.target)
        self.process = UserProcess(self, is_async)

    def _handler_lookup(self) -> Callable[[str], Callable[..., Any] | None]:
        """Only ``pipe_message`` is handled here, by the target's inbox: the app's event
        handlers belong to event and task workers."""
        return self._pipe_message_only

    def _pipe_message_only(self, event: str) -> Callable[..., Any] | None:
        return self.process._deliver if event == "pipe_message" else None

    def snapshot(self) -> dict[str, Any]:
        figures = super().snapshot()
        figures.update(kind="process", name=self.name)
        return figures

    def _describe(self) -> str:
        return f"user process {self.index} {self.name!r} gen {self.generation} (pid {os.getpid()})"

    # -- the lifecycle

    async def serve(self) -> int:
        """Find the target, report ready, run it once the master says so; the exit code."""
        self._stop_requested = self.loop.create_future()
        self._serve_allowed = self.loop.create_future()
        if self.spec is None:
            self.log.error("%s: the app registers no such process now", self._describe())
            await self._boot_failed(
                SwoolishError(f"the app no longer registers a user process named {self.name!r}")
            )
            return EXIT_BOOT_ERROR
        timers.install(self.timers)
        self._ready_without_clients()
        if self.channel is None:
            self._serve_allowed.set_result(None)
        await asyncio.wait(
            (self._serve_allowed, self._stop_requested), return_when=asyncio.FIRST_COMPLETED
        )
        runner: asyncio.Future[Any] | None = None
        code = 0
        if not self._stop_requested.done():
            self.log.info("%s running %s", self._describe(), _callable_name(self.spec.target))
            runner = self._start(self.spec)
            await asyncio.wait((runner, self._stop_requested), return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                code = self._outcome(runner)
        await self.shutdown_target(runner)
        return code

    def _start(self, spec: ProcessSpec) -> asyncio.Future[Any]:
        """The target as a future of this loop: a task, or a thread's outcome."""
        if self.process._async:
            return self.loop.create_task(spec.target(self.process))
        done: asyncio.Future[Any] = self.loop.create_future()

        def settle(outcome: BaseException | None, value: Any) -> None:
            if done.done():
                return
            if outcome is None:
                done.set_result(value)
            else:
                done.set_exception(outcome)

        def run() -> None:
            try:
                value = spec.target(self.process)
            except BaseException as exc:
                outcome: BaseException | None = exc
                value = None
            else:
                outcome = None
            with contextlib.suppress(RuntimeError):  # the loop closed: the process exits
                self.loop.call_soon_threadsafe(settle, outcome, value)

        threading.Thread(target=run, name=f"swoolish-process-{self.name}", daemon=True).start()
        return done

    def _outcome(self, runner: asyncio.Future[Any]) -> int:
        """The exit code for a target that ended on its own (logged either way)."""
        if runner.cancelled():
            return 0
        exc = runner.exception()
        if exc is not None:
            self.log.error("%s: the target raised", self._describe(), exc_info=exc)
            return EXIT_TARGET_FAILED
        if self._stop_requested is None or not self._stop_requested.done():
            self.log.warning("%s: the target returned; the master restarts it", self._describe())
        return 0

    async def shutdown_target(self, runner: asyncio.Future[Any] | None) -> None:
        """Tell the target to stop, give it max_wait_time, then report and exit."""
        started = self.loop.time()
        self.draining = True
        self.process._stop()
        if runner is not None and not runner.done():
            await asyncio.wait((runner,), timeout=self.settings.max_wait_time)
            if not runner.done():
                self.log.warning(
                    "%s: the target did not return within max_wait_time (%gs)%s",
                    self._describe(),
                    self.settings.max_wait_time,
                    "; cancelled" if self.process._async else "; exiting anyway",
                )
                runner.cancel()
                await asyncio.sleep(0)  # the cancellation reaches an async target
            elif not runner.cancelled() and runner.exception() is not None:
                self.log.error(
                    "%s: the target raised while stopping",
                    self._describe(),
                    exc_info=runner.exception(),
                )
        leftover = self.timers.clear_all()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.sleep(0)
        self.router.flush()
        self.report(WorkerFigures(self.snapshot()))
        self.report(Exiting(leftover, 0, round(self.loop.time() - started, 4), None))
        if self.channel is not None:
            await self.channel.drained(2.0)
        self.log.info("%s exiting", self._describe())
        timers.uninstall()


def _find_target(server: App, name: str) -> ProcessSpec | None:
    """The registration of ``name`` in the app this process imported."""
    return next((spec for spec in server.processes if spec.name == name), None)


def _callable_name(target: Callable[..., Any]) -> str:
    module = getattr(target, "__module__", "")
    name = getattr(target, "__qualname__", repr(target))
    return f"{module}.{name}" if module else name
