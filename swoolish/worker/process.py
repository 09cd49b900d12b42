"""A worker process: one uvloop loop serving the shared listening socket.

Lifecycle (docs/lifecycle.md, docs/reload.md), in this order and each step exactly once::

    import the app (fresh, after the fork) -> worker_start -> ready -> serve
    -> stop accepting -> worker_stop -> worker_exit -> timers the app forgot cleared
    -> drain (close frames, in-flight handlers up to max_wait_time) -> exit

``worker_exit`` runs *before* the drain and every timer is gone after it, so no timer
of a stopping worker can push into a connection that is being closed: the Swoole
``session#1 does not exists`` flood cannot happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import uvloop

from ..core.errors import SettingError
from ..core.events import Handlers
from ..core.frames import GOING_AWAY, SERVICE_RESTART
from ..core.messages import (
    Exiting,
    Message,
    Pause,
    Paused,
    Pipe,
    Ready,
    RecycleRequest,
    Released,
    Routed,
    Serve,
    ServerStatsReply,
    ServerStatsRequest,
    StatsPoll,
    Stop,
    TaskResult,
    ToSlot,
    WorkerFigures,
)
from ..core.processes import ProcessSpec, describe_worker_ids
from ..core.reload import recycle_point
from ..core.settings import Settings
from ..core.stats import Counts, totals
from ..shared import ipc, priority, tls
from ..shared.ids import IdAllocator
from ..shared.setup import EXIT_BOOT_ERROR, WorkerSetup
from ..shared.table import RegionWriter
from . import timers
from .boot import BootWatch, boot_failure, stall_delay
from .cluster import Cluster
from .connection import Connection
from .deadlines import Deadlines
from .handoff import Adopter, hand_off
from .heaptrim import HeapTrim
from .http import HttpConnection
from .listener import Listener
from .router import MAX_ROUTED_PAYLOAD, Router, operation_size, routable_payload
from .sessions import SessionMap
from .tasks import TaskClient
from .tlshandshakes import TlsHandshakes
from .websocket import WsConnection

__all__ = ["App", "Worker", "run_worker"]

SERVER_STATS_TIMEOUT = 3.0  # seconds server_stats() waits for the master's answer
MASTER_CHECK_INTERVAL = 0.5  # seconds between checks that the master is still alive
EXIT_FLUSH_TIMEOUT = 2.0  # seconds an exiting worker waits for the master to read it
#: Bytes of messages read ahead while routed operations wait (see _hold_back): more than
#: the master's queue for a worker holds (ipc.QUEUE_LIMIT) and the channel's buffers.
HELD_BYTES = 2 * ipc.QUEUE_LIMIT
_PR_SET_PDEATHSIG = 1


class App(Protocol):
    """What a worker needs of the app's server object (``WebSocketServer``)."""

    settings: Settings

    @property
    def handlers(self) -> Handlers: ...

    @property
    def processes(self) -> Sequence[ProcessSpec]: ...

    def attach_worker(self, worker: Worker) -> None: ...


class Worker:
    """The state of one worker process; ``WebSocketServer`` methods delegate here."""

    def __init__(self, server: App, setup: WorkerSetup) -> None:
        self.server = server
        self.settings = server.settings
        self.worker_id = worker_id = setup.worker_id
        self.generation = setup.generation
        self.master_pid = setup.master_pid
        self.process_num = setup.process_num  # user processes: their ids follow task workers'
        # to and from the master; never blocks (swoolish.shared.ipc)
        channel = setup.channel
        self.channel = ipc.Channel(channel, name="the master's channel") if channel else None
        self.inbox = setup.inbox  # where the previous generation hands us its connections
        self.adopter: Adopter | None = None
        self.handoff_channel: socket.socket | None = None  # where we hand ours on
        self.ids = IdAllocator(setup.id_source, setup.node)
        # sessions: open, not closing; mirrored into our region of the shared table
        table, region = setup.table, setup.region
        writer = RegionWriter(table, region) if table is not None and region is not None else None
        self.connections: SessionMap = SessionMap(writer)
        self.router = Router(self, table, region, self.channel)
        self.router.when_caught_up = self._router_caught_up
        self._held_messages: list[tuple[Message, list[int]]] = []  # behind routed operations
        self._held_bytes = 0  # ... about their size (_message_size; see _room_ahead)
        self._stop_coming = False  # the master said a Stop waits: read on to it
        self._reading_master = False  # the master's channel is watched (add_reader)
        self.connections.on_adopt = self.router.adopted
        # server.task() and its answers (docs/tasks.md); None load: no task workers
        self.task_client = TaskClient(self, setup.task_load, self._send_task, self._master_backlog)
        self._requests: dict[int, asyncio.Future[Any]] = {}  # server_stats() answers
        self._request_ids = 0
        self.live: set[Connection] = set()  # every transport, closing ones included
        self.outliving_handlers = 0  # lost connections whose coroutine handlers still work
        self.closing_with_output = 0  # closed by the server, output still unsent
        self.stats = Counts.zeroed()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.paused = False  # a reload's new worker serves this slot now (Pause)
        self.stop_code = GOING_AWAY  # the close code of the drain, once stopping
        # The whole node stops (the master said so, or it is gone), not only this worker:
        # what the other nodes of a cluster hear as we leave (docs/cluster.md, "Reloads").
        self.node_stopping = False
        self.late_movers: list[WsConnection] | None = None  # see established_while_draining
        # max_request: requests and messages left before this worker asks to be recycled
        # (connections count it down; -1 and below: never). Its grace is drawn once here.
        self.recycle_after = recycle_point(
            self.settings.max_request, self.settings.max_request_grace, random.randint
        )
        self.handled_left = self.recycle_after or -1
        self.log = logging.getLogger(f"swoolish.worker.{worker_id}")
        self.loop = asyncio.get_event_loop()
        if self.channel is not None:
            self.channel.use_loop(self.loop)  # what the master does not take yet waits
        self.deadlines = Deadlines(self.loop)
        self.timers = timers.uvloop_wheel(
            self.loop,
            spawn=self.track,
            session_alive=self.connections.__contains__,
            logger=logging.getLogger("swoolish.timer"),
        )
        # the app's handler of an event, or None (WorkerHost.handler): the registry's
        # dict.get, one C call per lookup; a user process looks up its own instead
        self.handler = self._handler_lookup()
        # cluster mode (docs/cluster.md): event workers reach other nodes over Redis
        self.cluster: Cluster | None = None
        event_worker = not setup.task_worker and setup.process_index is None
        if self.settings.redis_url and setup.node and event_worker:
            self.cluster = Cluster(
                self,
                self.settings.redis_url,
                self.settings.cluster_name,
                setup.node,
                setup.node_token,
            )
            self.connections.observer = self.cluster
        # this worker's copy of the listening socket, and the accept balance
        self.tls_context: ssl.SSLContext | None = None  # built in serve(), after the fork
        self.tls_handshakes = TlsHandshakes()  # accepted, their TLS handshake under way
        self.listener = Listener(
            self.loop,
            setup.listen_sock,
            self._serve_on,
            table,
            writer,
            self.stats,
            at_capacity=(
                self._at_capacity
                if self.settings.ssl_cert_file is not None
                else self._full_with_room_elsewhere
            ),
        )
        self._duties: dict[type, Callable[[Any], None]] = {
            Serve: self._on_serve,
            Pause: self._on_pause,
            Stop: self._on_stop,
            Routed: self._on_routed,
            Released: self._on_released,
            StatsPoll: self._on_stats_poll,
            ServerStatsReply: self._on_server_stats_reply,
            TaskResult: self._on_task_result,
        }
        self._stop_requested: asyncio.Future[int] | None = None
        self._serve_allowed: asyncio.Future[None] = self.loop.create_future()
        self.boot_watch: BootWatch | None = None  # reports where a slow boot is stuck
        # gives back the free heap memory large messages leave (worker/heaptrim.py)
        self.heap_trim = HeapTrim(self.loop, self.settings.memory_trim, self.stats)

    # -- used by connections and the server facade

    def _handler_lookup(self) -> Callable[[str], Callable[..., Any] | None]:
        """What ``self.handler`` is: the app's handlers by event (a user process
        overrides this)."""
        return self.server.handlers.lookup()

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the drain waits for (up to max_wait_time)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task failed", exc_info=task.exception())

    async def server_stats(self) -> dict[str, Any]:
        """Every worker's figures and their totals, gathered by the master."""
        if self.channel is None:
            mine = self.snapshot()
            return {"workers": [mine], "totals": totals([mine])}
        self._request_ids += 1
        request_id = self._request_ids
        future = self.loop.create_future()
        self._requests[request_id] = future
        self.report(ServerStatsRequest(request_id))
        try:
            return await asyncio.wait_for(future, SERVER_STATS_TIMEOUT)
        finally:
            self._requests.pop(request_id, None)

    def send_pipe(self, message: Any, worker_id: int) -> bool:
        """``server.send_message``: ``message`` to the current process of ``worker_id``
        (an event worker, a task worker or a user process), through the master."""
        settings = self.settings
        count = settings.worker_num + settings.task_worker_num + self.process_num
        if type(worker_id) is not int or not 0 <= worker_id < count:
            valid = describe_worker_ids(
                settings.worker_num, settings.task_worker_num, self.process_num
            )
            raise ValueError(f"unknown worker id {worker_id!r}; valid ids are {valid}")
        payload = routable_payload(
            message,
            "send_message needs a picklable message",
            f"message over {MAX_ROUTED_PAYLOAD} bytes once pickled",
        )
        if self.channel is None:
            return False
        return self.router.send(ToSlot(worker_id), Pipe(self.worker_id, payload))

    def serves_slot(self) -> bool:
        """Whether this is the worker of its slot that serves now: told to serve, and
        neither paused by a reload nor stopping (messages for the slot from other
        nodes are this worker's)."""
        return self._serve_allowed.done() and not self.paused and not self.draining

    def bus_marks(self) -> dict[tuple[int, int], int] | None:
        return self.cluster.marks_now() if self.cluster is not None else None

    async def settle_bus(self) -> None:
        if self.cluster is not None:
            await self.cluster.settle()

    def bus_adopting(self, sid: int, marks: dict[tuple[int, int], int] | None) -> None:
        if self.cluster is not None:
            self.cluster.adopting(sid, marks)

    def clear_bound_timers(self, sid: int) -> None:
        cleared = self.timers.clear_bound(sid)
        if cleared:
            self.stats["bound_timers_cleared"] += cleared

    def handled_enough(self) -> None:
        """This worker handled ``max_request`` (plus its grace) requests and messages:
        ask the master, once, to replace it through the rolling machinery, its open
        WebSockets handed to its successor (docs/reload.md, "Recycling")."""
        if self.draining or self.channel is None:
            return
        self.log.info(
            "worker %d gen %d (pid %d) handled %d requests and messages: asking to be recycled",
            self.worker_id,
            self.generation,
            os.getpid(),
            self.recycle_after,
        )
        self.report(RecycleRequest(self.recycle_after))

    def request_stop(self, close_code: int) -> None:
        """Ask the serving loop to stop; the first request's close code wins."""
        if self._stop_requested is not None and not self._stop_requested.done():
            self._stop_requested.set_result(close_code)

    def snapshot(self) -> dict[str, Any]:
        """This worker's figures for ``server.stats()`` and ``swoolish status``."""
        if self.cluster is not None:
            self.cluster.count_refusals()
        figures: dict[str, Any] = dict(self.stats)
        figures["messages_in"], figures["messages_out"] = self.connections.messages()
        figures.update(
            worker_id=self.worker_id,
            worker_pid=os.getpid(),
            generation=self.generation,
            connections=len(self.connections),
            websocket_connections=sum(1 for c in self.connections.values() if c.established),
            timers=len(self.timers.list()),
            tasks=len(self.tasks),
            draining=self.draining,
        )
        if self.cluster is not None:
            figures["cluster"] = self.cluster.describe()
        return figures

    # -- the lifecycle

    async def serve(self) -> int:
        """Boot, serve until told to stop, drain; returns the process exit code."""
        self._stop_requested = self.loop.create_future()
        self._serve_allowed = self.loop.create_future()
        try:
            # From the files on disk now, after the fork: a reload serves a renewed
            # certificate; one that no longer loads fails this boot (the reload rolls back).
            self.tls_context = tls.server_context(self.settings)
        except SettingError as exc:
            self.log.error(
                "worker %d gen %d: %s; this worker will not serve",
                self.worker_id,
                self.generation,
                exc,
            )
            await self._boot_failed(exc)
            return EXIT_BOOT_ERROR
        timers.install(self.timers)
        try:
            await self._call_hook("worker_start")
        except Exception as exc:
            self.log.exception(
                "worker %d gen %d: worker_start raised; this worker will not serve",
                self.worker_id,
                self.generation,
            )
            await self._boot_failed(exc)
            return EXIT_BOOT_ERROR
        self._supervise()
        self._schedule_heartbeat()
        if self.cluster is not None:
            await self.cluster.start()  # before sessions can move here (worker/cluster.py)
        if self.inbox is not None:
            self.adopter = Adopter(self, self.inbox)
        if self.settings.gc_freeze:
            freeze_what_booted()
        self.heap_trim.start()  # from the size the worker booted to
        self._report_ready()
        if self.channel is None:
            self._serve_allowed.set_result(None)
        # Accept only once the master says this worker's whole generation is ready: a
        # reload rolled back meanwhile then has no client of ours to close (docs/reload.md).
        await asyncio.wait(
            (self._serve_allowed, self._stop_requested), return_when=asyncio.FIRST_COMPLETED
        )
        if not self._stop_requested.done():
            await self.listener.open()
            self.log.info(
                "worker %d gen %d (pid %d) serving", self.worker_id, self.generation, os.getpid()
            )
        close_code = await self._stop_requested
        await self.shutdown(close_code)
        return 0

    def _serve_on(self, sock: socket.socket) -> Awaitable[asyncio.AbstractServer]:
        """An asyncio server accepting on ``sock`` (the listener's, swoolish.worker.listener)."""
        return self.loop.create_server(
            self._tls_connection if self.tls_context is not None else lambda: HttpConnection(self),
            sock=sock,  # TCP or a Unix socket alike
            backlog=2048,
            ssl=self.tls_context,
            ssl_handshake_timeout=(
                self.settings.handshake_timeout if self.tls_context is not None else None
            ),
        )

    def _full_with_room_elsewhere(self) -> bool:
        """Plain TCP at max_connections stops accepting while another worker has room:
        the kernel hands each new client to whichever worker runs first, and a full one
        answered 503 to clients the others had room for (12 workers of 150: 235 of 2,000
        refused with 7 workers below their limit). With none left, it accepts and
        answers 503: a clear refusal, not a wait in the kernel's queue."""
        return self._at_capacity() and self.listener.others_have_room(self.settings.max_connections)

    def _tls_connection(self) -> HttpConnection:
        """The protocol of a connection just accepted on a TLS listener: counted while
        its handshake runs (swoolish.worker.tlshandshakes), and the last one before
        max_connections stops the accepting."""
        conn = HttpConnection(self)
        conn.tls_began = self.loop.time()
        self.tls_handshakes.begun(conn)
        if self._at_capacity():
            self.listener.full()
        return conn

    def _at_capacity(self) -> bool:
        """Sessions, lost connections whose handlers still work, closed ones whose output
        is still unsent, and TLS handshakes under way fill max_connections."""
        held = (
            len(self.connections)
            + self.outliving_handlers
            + self.closing_with_output
            + len(self.tls_handshakes)
        )
        return held >= self.settings.max_connections

    async def _boot_failed(self, exc: BaseException) -> None:
        """Tell the master why this worker will not serve, before it exits: a reload
        rolled back for it says so (worker/boot.py)."""
        if self.boot_watch is not None:
            self.boot_watch.cancel()
        self.report(boot_failure(exc))
        if self.channel is not None:
            await self.channel.drained(EXIT_FLUSH_TIMEOUT)

    def stop_accepting(self) -> None:
        """Close this process's copy of the listening socket.

        The socket itself stays open in the master and in the other workers, so
        connections the kernel queues from now on go to them, never to this worker.
        """
        self.listener.close()

    async def shutdown(self, close_code: int) -> None:
        """Stop accepting, run worker_stop then worker_exit, clear timers, then drain."""
        started = self.loop.time()
        self.draining = True
        self.stop_code = close_code
        self.stop_accepting()
        self.heap_trim.stop()
        if self.adopter is not None:
            self.adopter.close()
        handing_off = self.handoff_channel is not None and close_code == SERVICE_RESTART
        if handing_off:
            self.late_movers = []  # sessions whose handshake completes meanwhile move too
        moving = self._connections_to_move() if handing_off else []
        for conn in moving:
            # Bound timers move with their session as data; taking them out now, before
            # worker_exit, is what keeps them from firing here and again over there.
            conn.prepare_move()
        if self.stats["timers_not_movable"]:
            self.log.warning(
                "worker %d gen %d: %d timers bound to moving sessions have a lambda or "
                "closure callback and cannot move with them (use a module-level function "
                "with plain-data arguments); cleared",
                self.worker_id,
                self.generation,
                self.stats["timers_not_movable"],
            )
        await self._call_hook_logged("worker_stop")
        await self._call_hook_logged("worker_exit")
        for conn in moving:
            conn.prepare_move()  # timers those hooks bound to a moving session move too
        leftover = self.timers.clear_all()
        if leftover:
            # Logged once per worker, never once per timer or per push (docs/reload.md).
            self.log.warning(
                "worker %d gen %d: %d timers still active after worker_exit, cleared",
                self.worker_id,
                self.generation,
                leftover,
            )
        handoff: dict[str, Any] | None = None
        if handing_off:
            assert self.handoff_channel is not None
            report = await hand_off(self, self.handoff_channel, moving, self.channel)
            handoff = report.as_dict()
            # Timers an open handler of a late session set up unbound (after worker_exit).
            leftover += self.timers.clear_all()
            # Operations other workers sent to the sessions that moved went, batch by
            # batch, to the master, which delivers them to the new owner in order
            # (swoolish.worker.router); the last answers may still be on their way.
            released = self.router.handoff_over()
        closed = await self._drain(close_code)
        if handing_off:
            try:
                await asyncio.wait_for(released, self.settings.max_wait_time)
            except TimeoutError:
                self.router.give_up_releases()  # hand over what we kept, never drop it
        self.router.flush()
        if self.cluster is not None:
            # The other nodes hear at once: a stop takes the node away; a reload, a
            # recycle or a signal to this worker alone (the master replaces it) only us.
            # (A master killed sends us SIGTERM, see _watch_master: it is gone too.)
            gone = os.getppid() != self.master_pid
            await self.cluster.leave(node_leaving=self.node_stopping or gone)
        # Our final counters: the master keeps them once we are gone, so server-wide
        # totals (its metrics) never go down when a worker exits (docs/deployment.md).
        self.report(WorkerFigures(self.snapshot()))
        self.report(Exiting(leftover, closed, round(self.loop.time() - started, 4), handoff))
        if self.channel is not None:
            await self.channel.drained(EXIT_FLUSH_TIMEOUT)  # our last words, before we exit
        self.log.info(
            "worker %d gen %d (pid %d) exiting: %d timers cleared, %d connections closed",
            self.worker_id,
            self.generation,
            os.getpid(),
            leftover,
            closed,
        )
        timers.uninstall()

    def _connections_to_move(self) -> list[WsConnection]:
        """The open WebSockets a reload hands to the new worker."""
        return [c for c in self.connections.values() if c.established and not c.closing]

    def established_while_draining(self, conn: WsConnection) -> None:
        """A client accepted just before this worker stopped accepting completed its
        handshake: during a hand-off it moves too; otherwise it is closed so that it
        reconnects to a worker that is staying (1012) or learns the server is going."""
        if self.late_movers is not None:
            self.late_movers.append(conn)
        else:
            conn.drain(self.stop_code, "server restarting")

    def take_late_movers(self, final: bool) -> list[WsConnection]:
        """The sessions established since the hand-off began (``final``: and no more)."""
        late, self.late_movers = self.late_movers or [], None if final else []
        return [c for c in late if c.established and not c.closing and c.transport is not None]

    async def _drain(self, close_code: int) -> int:
        """Close every connection (WebSockets with ``close_code``), wait, then force."""
        conns = list(self.connections.values())
        reason = "server restarting" if close_code != GOING_AWAY else ""
        for conn in conns:
            # A WebSocket's handler in flight finishes first (up to max_wait_time): its
            # reply is owed to the client and goes out before the close frame. An HTTP
            # connection finishes the request in flight, answered with Connection: close.
            conn.drain(close_code, reason)
        deadline = self.loop.time() + self.settings.max_wait_time
        # Closing connections are no longer sessions but may still owe bytes (a close
        # frame, an answer, what a hand-off gave back): wait for every transport.
        # Answers of tasks this worker sent are awaited too: their finish handlers and
        # callbacks still run here, and push to sessions that moved (docs/tasks.md).
        while self.loop.time() < deadline and (self.tasks or self.live or self.task_client.waiting):
            await asyncio.sleep(0.01)
        for conn in list(self.live):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.sleep(0)  # let aborted transports call connection_lost
        return len(conns)

    async def _call_hook(self, event: str) -> None:
        handler = self.handler(event)
        if handler is None:
            return
        result = handler(self.server, self.worker_id)
        if inspect.isawaitable(result):
            await result

    async def _call_hook_logged(self, event: str) -> None:
        try:
            await asyncio.wait_for(self._call_hook(event), self.settings.max_wait_time)
        except Exception:
            self.log.exception("worker %d: %s handler raised", self.worker_id, event)

    # -- signals, the master, the control channel

    def _supervise(self) -> None:
        """Signals, and the check that exits this process if the master dies."""
        self._install_signal_handlers()
        self._watch_master()

    def _report_ready(self) -> None:
        """Booted: the boot watch is over, and the master learns it (``Ready``)."""
        if self.boot_watch is not None:
            self.boot_watch.cancel()
        priority.restore_after_boot()  # lowered after the fork, beside serving workers
        self.report(Ready(os.getpid()))

    def _ready_without_clients(self) -> None:
        """Ready, for a process that never accepts a client (task workers, user
        processes): it gives up its copy of the listening socket first."""
        self.listener.close()
        self._supervise()
        self._report_ready()

    def _install_signal_handlers(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.request_stop, GOING_AWAY)
        self.loop.add_signal_handler(signal.SIGINT, self.request_stop, GOING_AWAY)
        self.loop.add_signal_handler(signal.SIGQUIT, os._exit, 0)
        self.loop.add_signal_handler(signal.SIGUSR2, self._stop_waits)

    def _watch_master(self) -> None:
        """Stop within about a second if the master dies (even by SIGKILL): no orphans."""
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

        def check() -> None:
            if os.getppid() != self.master_pid:
                self.log.warning("worker %d: master is gone, shutting down", self.worker_id)
                self.node_stopping = True
                self.request_stop(GOING_AWAY)
            else:
                self.loop.call_later(MASTER_CHECK_INTERVAL, check)

        check()
        self._read_channel(True)

    def _schedule_heartbeat(self) -> None:
        """One sweep per worker checks every session (not a timer per connection)."""
        interval = self.settings.heartbeat_check_interval
        if interval > 0 and not self.draining:
            self.loop.call_later(interval, self._check_heartbeats)

    def _check_heartbeats(self) -> None:
        """Ping quiet WebSockets, close silent ones (docs/quickstart.md, "Bad input")."""
        now, idle_time = time.time(), self.settings.heartbeat_idle_time
        for conn in list(self.connections.values()):
            conn.heartbeat(now, idle_time)
        self._schedule_heartbeat()

    def _on_channel_readable(self) -> None:
        assert self.channel is not None
        try:
            messages = self.channel.receive()
        except (OSError, EOFError):
            self.loop.remove_reader(self.channel.fileno())
            self.node_stopping = True  # the master is gone: so is the node
            self.request_stop(GOING_AWAY)
            return
        self._handle_messages(messages)

    def _handle_messages(self, messages: list[tuple[Message, list[int]]]) -> None:
        """Do what the master's messages ask, in order. Routed operations the router
        could not apply in its share of the loop (swoolish.worker.router, "A fair share
        of the loop") hold the later messages back until they are applied
        (``_router_caught_up``)."""
        for at, (message, fds) in enumerate(messages):
            if self._held_messages or self.router.behind():
                self._hold_back(messages[at:])
                return
            self._do(message, fds)
        self._read_channel(self._room_ahead())

    def _do(self, message: Message, fds: list[int]) -> None:
        if type(message) is Stop and message.handoff and len(fds) == 1:
            self.handoff_channel = socket.socket(fileno=fds.pop())
        ipc.close_fds(fds)  # the master sends no other descriptors
        duty = self._duties.get(type(message))
        if duty is None:
            self.log.error("unexpected %s from the master; ignored", type(message).__name__)
        else:
            duty(message)

    def _hold_back(self, messages: list[tuple[Message, list[int]]]) -> None:
        """Keep ``messages`` until the router has caught up, but a ``Stop``: it is done
        at once, so that a worker whose relayed operations wait (behind app handlers
        that never end, say) still stops, runs worker_exit and drains, not killed at the
        deadline. The channel is read ahead for it, up to HELD_BYTES (the master's queue
        for us is bounded at half that); past that, what comes waits in the master."""
        held = self._held_messages
        for message, fds in messages:
            if type(message) is Stop:
                self._do(message, fds)
            else:
                held.append((message, fds))
                self._held_bytes += _message_size(message)
        self._read_channel(self._room_ahead())

    def _room_ahead(self) -> bool:
        """Whether to read on from the master: less than HELD_BYTES read and waiting
        here (a user process's held messages count too), or a Stop is on its way."""
        return self._held_bytes < HELD_BYTES or self._stop_coming

    def _read_channel(self, reading: bool) -> None:
        """Watch the master's channel, or stop watching it (what the master sends
        meanwhile waits in its queue for us, under its bound)."""
        channel = self.channel
        if channel is None or channel.closed or reading == self._reading_master:
            return
        self._reading_master = reading
        if reading:
            self.loop.add_reader(channel.fileno(), self._on_channel_readable)
        else:
            self.loop.remove_reader(channel.fileno())

    def _stop_waits(self) -> None:
        """The master's nudge (SIGUSR2): a Stop waits in our channel behind more than
        the read-ahead takes. Read on until it comes (what the master queues for us is
        bounded, so this is too), then back to the bounded read-ahead."""
        self._stop_coming = True
        self._read_channel(True)

    def _router_caught_up(self) -> None:
        held, self._held_messages = self._held_messages, []
        self._held_bytes = 0
        self._handle_messages(held)

    # -- one method per message from the master (swoolish.core.messages)

    def _on_serve(self, message: Serve) -> None:
        if not self._serve_allowed.done():
            self._serve_allowed.set_result(None)

    def _on_pause(self, message: Pause) -> None:
        self.paused = True
        self.stop_accepting()
        self.report(Paused())

    def _on_stop(self, message: Stop) -> None:
        self._stop_coming = False
        # (also when this worker was already stopping, on a SIGINT to its process group)
        self.node_stopping = self.node_stopping or message.node_stopping
        self.request_stop(message.code)

    def _on_routed(self, message: Routed) -> None:
        self.router.apply(message.ops)

    def _on_released(self, message: Released) -> None:
        self.router.on_released(message.batch)

    def _on_stats_poll(self, message: StatsPoll) -> None:
        self.report(WorkerFigures(self.snapshot()))

    def _on_server_stats_reply(self, message: ServerStatsReply) -> None:
        future = self._requests.pop(message.request_id, None)
        if future is not None and not future.done():
            future.set_result(message.status)

    def _on_task_result(self, message: TaskResult) -> None:
        self.task_client.on_result(message)

    def _send_task(self, message: Message) -> bool:
        """Queue a task for the master; False (the task is refused) once the channel's
        queue is over its bound: tasks are not essential, the sender hears False."""
        return self.channel is not None and self.channel.send(message)

    def _master_backlog(self) -> int | None:
        """Bytes waiting in the channel to the master, not yet taken by the kernel; None
        once it is closed or broken (what a refused task's message says)."""
        channel = self.channel
        if channel is None or channel.closed or channel.broken:
            return None
        return channel.queued

    def report(self, message: Message) -> None:
        """Send ``message`` to the master (nothing without one: a test's bare worker).

        Never blocks: what the kernel does not take now waits in the channel's queue.
        Reports are essential (lifecycle, figures, hand-off bookkeeping, and routes the
        router already bounded, see ``Router.send``), so only ipc.HARD_LIMIT refuses them.
        """
        if self.channel is not None and not self.channel.send(message, essential=True):
            self.log.debug("worker %d: master channel closed or full", self.worker_id)


def run_worker(
    load_server: Callable[[], App],
    setup: WorkerSetup,
    worker_type: Callable[[App, WorkerSetup], Worker] = Worker,
) -> int:
    """The body of a forked worker process; returns its exit code. ``worker_type`` is
    ``TaskWorker`` for a task worker (swoolish.worker.taskworker)."""
    log = logging.getLogger(f"swoolish.worker.{setup.worker_id}")
    watch = _watch_boot(setup)
    try:
        server = load_server()
    except BaseException as exc:
        log.exception("worker %d gen %d: the app failed to load", setup.worker_id, setup.generation)
        if watch is not None:
            watch.cancel()
        if setup.channel is not None:  # nothing else uses the channel yet: one packet
            ipc.send_packet(setup.channel, boot_failure(exc))
        return EXIT_BOOT_ERROR
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = worker_type(server, setup)
        worker.boot_watch = watch
        server.attach_worker(worker)
        return loop.run_until_complete(worker.serve())
    finally:
        with contextlib.suppress(Exception):
            loop.close()
        sys.stdout.flush()


def _watch_boot(setup: WorkerSetup) -> BootWatch | None:
    """Start the watch that reports where a boot is stuck (worker/boot.py), when there
    is a master to tell and a deadline it enforces."""
    if setup.channel is None or not setup.start_timeout:
        return None
    watch = BootWatch(setup.channel, stall_delay(setup.start_timeout))
    watch.start()
    return watch


def freeze_what_booted() -> None:
    """Leave what the worker booted with (modules, the app, settings: some 30,000
    objects) out of every later garbage collection (the ``gc_freeze`` setting, on by
    default).

    A full collection walks every object the collector tracks. A worker adds about
    seven per session, all long-lived, so a reconnect storm of 10,000 clients triggers
    full collections that walk the boot's objects each time as well, for nothing: they
    live as long as the worker. ``gc.freeze()`` moves them to a generation no collection
    visits (docs/performance.md, "Reconnect storm"); ``gc.collect()`` first, so that no
    garbage of the boot is kept for ever. Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def _message_size(message: Message) -> int:
    """About the bytes a message from the master took on the channel."""
    if type(message) is Routed:
        return sum(operation_size(op) for op in message.ops) + 64
    return 64
