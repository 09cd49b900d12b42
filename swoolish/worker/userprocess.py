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
* What the target has not taken yet waits in a bounded inbox (``INBOX_MESSAGES``,
  ``INBOX_BYTES``). Once it is full, what comes waits here, and past the worker's
  read-ahead (``HELD_BYTES``) the process stops reading the master's channel, so
  further messages wait in the master, whose bound on what waits for a worker applies
  (docs/design.md, "Channels"; past it the master drops them, counted in
  ``routed_dropped``, one log line per episode). Reading resumes once the target has
  taken half of the inbox. Before this bound a slow target's queue grew with whatever
  was sent: a consumer taking 1 ms per message grew from 29 to 202 MiB under 1.2 million
  one-byte messages (docs/lifecycle.md, "User processes").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import pickle
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..core.errors import SwoolishError
from ..core.messages import Exiting, Pipe, Routed, WorkerFigures
from ..core.processes import ProcessSpec
from ..shared.setup import EXIT_BOOT_ERROR, WorkerSetup
from . import timers
from .process import App, Worker
from .router import operation_size

__all__ = ["INBOX_BYTES", "INBOX_MESSAGES", "Inbox", "UserProcess", "UserProcessWorker"]

EXIT_TARGET_FAILED = 1  # the target raised: the master restarts the process
SEND_TIMEOUT = 5.0  # seconds send_message from the target's thread waits for the loop
# The inbox: messages the target has not taken, at most this many, or this many bytes
# (pickled, as sent; one message larger than that still fits an empty inbox). The
# same bounds as a worker's events queued for coroutine handlers (docs/security.md).
INBOX_MESSAGES = 1024
INBOX_BYTES = 1024 * 1024

_STOP = object()  # wakes a receiver of a stopping process


class Inbox:
    """The messages a target has not taken yet, in order, bounded.

    The process's loop puts (after asking :meth:`has_room`), the target takes, from its
    own thread for a plain function. A put the bound refused is remembered, and
    ``on_room`` is called once (from the taker's thread) when the target has taken the
    inbox down to half of both bounds: the loop then reads the master's channel again.
    """

    def __init__(
        self,
        is_async: bool,
        on_room: Callable[[], None],
        max_messages: int = INBOX_MESSAGES,
        max_bytes: int = INBOX_BYTES,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_room = on_room
        self._async = is_async
        self._lock = threading.Lock()  # the counts: the loop and a target's thread
        self.count = 0  # messages waiting (the stop marker is none)
        self.size = 0  # their pickled bytes
        self._room_wanted = False
        self._queue: queue.SimpleQueue[tuple[Any, int]] = queue.SimpleQueue()  # plain
        self._aqueue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()  # async def

    def has_room(self) -> bool:
        """Whether one more message may go in; if not, ``on_room`` follows once it may."""
        with self._lock:
            if self.count < self.max_messages and self.size < self.max_bytes:
                return True
            self._room_wanted = True
            return False

    def put(self, item: Any, size: int) -> None:
        """``item`` for the target (the stop marker takes no room). Never blocks."""
        if item is not _STOP:
            with self._lock:
                self.count += 1
                self.size += size
        if self._async:
            self._aqueue.put_nowait((item, size))
        else:
            self._queue.put((item, size))

    def get(self, timeout: float | None) -> Any:
        """The next item for a plain target, blocking; queue.Empty after ``timeout``."""
        item, size = self._queue.get(timeout=timeout)
        self._taken(item, size)
        return item

    async def aget(self, timeout: float | None) -> Any:
        """The next item for an async target; TimeoutError after ``timeout``."""
        item, size = await asyncio.wait_for(self._aqueue.get(), timeout)
        self._taken(item, size)
        return item

    def _taken(self, item: Any, size: int) -> None:
        if item is _STOP:
            return
        with self._lock:
            self.count -= 1
            self.size -= size
            room = (
                self._room_wanted
                and self.count <= self.max_messages // 2
                and self.size <= self.max_bytes // 2
            )
            if room:
                self._room_wanted = False
        if room:
            self._on_room()


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
        self._inbox = Inbox(is_async, worker.room_in_inbox)

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
            item = self._inbox.get(timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._inbox.put(_STOP, 0)  # every later call returns None too
            return None
        return item  # type: ignore[no-any-return]

    async def receive(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next ``(src_worker_id, message)`` for an ``async def`` target; None after
        ``timeout`` seconds or once the process is stopping."""
        if not self._async:
            raise RuntimeError("a plain-function target receives with process.recv()")
        try:
            item = await self._inbox.aget(timeout)
        except TimeoutError:
            return None
        if item is _STOP:
            self._inbox.put(_STOP, 0)
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
        """The ``pipe_message`` of this process: queued for the target. Messages from
        the master come through ``UserProcessWorker._on_routed`` instead, which minds
        the inbox's bound."""
        self._inbox.put((src, message), 0)

    def _stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._worker.hold(_STOP)  # behind what came before the Stop

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
        # Read from the master and not in the inbox yet, in order; their size is the
        # worker's _held_bytes, which bounds how far it reads ahead (Worker._room_ahead).
        self._held: deque[Any] = deque()
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

    # -- the inbox and the master's channel

    def _on_routed(self, message: Routed) -> None:
        """Messages for the target (``send_message``) go to its inbox while it has room;
        the rest wait here, and past the read-ahead the master's channel is not read
        until they are in."""
        self.hold(*message.ops)

    def hold(self, *items: Any) -> None:
        """Queue ``items`` behind what is held (``_STOP``: the target's stop marker)."""
        self._held.extend(items)
        self._held_bytes += sum(map(operation_size, items))
        self._fill_inbox()

    def room_in_inbox(self) -> None:
        """The target made room (called from its thread for a plain function)."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the process exits
            self.loop.call_soon_threadsafe(self._fill_inbox)

    def _fill_inbox(self) -> None:
        """Move held items into the inbox, in order, while it has room; read the master's
        channel while what is held is within the read-ahead (``Worker._room_ahead``)."""
        held, inbox = self._held, self.process._inbox
        while held:
            item = held[0]
            if type(item) is Pipe:
                if not inbox.has_room():
                    break
                held.popleft()
                self._held_bytes -= operation_size(item)
                self._to_inbox(item)
            else:
                held.popleft()
                self._held_bytes -= operation_size(item)
                if item is _STOP:
                    inbox.put(_STOP, 0)
                else:
                    self.router.apply([item])  # only Pipe comes, in practice
        # read ahead of what waits (bounded), so that a Stop is heard even while the
        # target takes nothing: the process then exits at max_wait_time, not killed
        self._read_channel(self._room_ahead())

    def _to_inbox(self, op: Pipe) -> None:
        try:
            message = pickle.loads(op.payload)
        except Exception:
            self.stats["handler_errors"] += 1
            self.log.exception("%s: a message could not be unpickled", self._describe())
            return
        self.process._inbox.put((op.src_worker, message), len(op.payload))

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
