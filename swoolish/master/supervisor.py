"""The master process: bind once, fork workers, supervise them, never serve a client.

The listening socket is bound before the first fork and stays open in the master for
its whole life, so the kernel keeps queuing connections while workers come and go: a
reload never refuses a connection.

Signal handlers only wake the main loop (``signal.set_wakeup_fd``); the loop does the
work, one method per duty, as gunicorn's arbiter does:

* ``_handle_signals`` -- USR1/HUP reload; TERM/INT graceful (a second one forces);
  QUIT immediate
* ``_read_channel``   -- worker messages (swoolish.core.messages), one method each
* ``_reap``           -- collect exited workers, fire ``worker_error`` for crashes
* ``_kill_overdue``   -- SIGKILL stopping workers past max_wait_time + grace
* ``_spawn_missing``  -- keep every slot filled, with back-off for crash loops

What a reload does is decided by :class:`swoolish.core.reload.ReloadPlan`; the master only
executes its actions (``_execute``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from setproctitle import setproctitle

from ..core import messages as msg
from ..core.errors import SettingError
from ..core.events import Handlers
from ..core.frames import SERVICE_RESTART
from ..core.messages import Message
from ..core.processes import ProcessSpec, process_index
from ..core.reload import (
    Action,
    Finished,
    Kill,
    Pause,
    Recycled,
    ReloadPlan,
    RequestAgain,
    Serve,
    Spawn,
    Stop,
)
from ..core.settings import Settings
from ..core.stats import cluster_summary, totals
from ..core.switchboard import PARK_TIMEOUT, Switchboard
from ..core.words import plural
from ..shared import ipc, priority, tls
from ..shared.ids import SharedIdSource
from ..shared.setup import WorkerSetup
from ..shared.table import SessionTable, table_bytes
from .cluster import claim_node, new_token
from .control import ControlClient, ControlServer
from .listeners import bind, bind_unix, unlink_unix
from .metrics import MetricsServer, Snapshot, Tally, WorkerSample
from .notify import Notifier
from .pidfile import PidFile
from .tasks import TaskRelay
from .watch import SUFFIXES, Watcher
from .watch import parse as parse_watcher_line

__all__ = ["Master", "MasterApp", "WorkerMain"]

log = logging.getLogger("swoolish.master")

SHUTDOWN_GRACE = 1.5  # seconds past max_wait_time before a stopping worker is killed
BACKOFF_START, BACKOFF_MAX = 0.1, 10.0  # seconds between restarts of a crash-looping slot
PROCESS_STABLE = 5.0  # seconds a user process runs before its death is no failed start
PAUSE_TIMEOUT = 1.0  # seconds old workers get to confirm they stopped accepting
STATS_TIMEOUT = 1.0  # seconds workers get to answer a status request
PROGRESS_INTERVAL = 1.0  # seconds between two progress reports of a stopping worker
LOOP_TICK = 0.5
#: Seconds the master waits before it calls an exit it did not ask for a death. A stop
#: signal sent to the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``,
#: systemd's default KillMode=control-group) reaches the workers too, and on a busy
#: machine a worker with nothing to drain had exited before the master's own signal
#: arrived: the master logged it as died and forked a replacement, only to stop it.
EXIT_GRACE = 0.25
_T = TypeVar("_T")
CHANNEL_BUFFER = 8 * 1024 * 1024  # asked for; the kernel caps it (wmem_max), ipc fragments
RELOAD_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*RELOAD_SIGNALS, *STOP_SIGNALS, signal.SIGQUIT, signal.SIGCHLD)
STOP_NUDGE = signal.SIGUSR2  # to a worker: a Stop waits in your channel, read on to it


@dataclasses.dataclass
class WorkerProcess:
    """The master's view of one worker process."""

    pid: int
    slot: int
    generation: int
    channel: ipc.Channel  # never blocks: what the worker does not read waits, bounded
    started: float
    state: str = "booting"  # booting -> serving -> paused -> stopping | killed
    ready_at: float | None = None
    stop_deadline: float | None = None
    stopped_at: float | None = None  # when it was told to stop
    boot_error: str = ""  # why it could not boot, as it said (BootFailed)
    drained: bool = False  # it sent its last words (Exiting); only its exit is to come
    inbox: socket.socket | None = None  # our end of its adoption inbox (live hand-off)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    region: int | None = None  # its region of the shared session table
    dropped: int = 0  # routed operations dropped because its queue was full
    congested: bool = False  # its queue is full now (logged once per episode)
    kind: str = "event"  # "event", "task" (master/tasks.py) or "process" (add_process)
    task_row: int | None = None  # an event worker's row of claims in the task load


@dataclasses.dataclass
class StatusRequest:
    client: ControlClient | None  # None: a worker's server.server_stats()
    waiting: set[int]
    deadline: float
    reply_to: int = 0  # the asking worker's pid
    request_id: int = 0
    on_done: Callable[[], None] | None = None  # a metrics scrape: called instead of a reply


class MasterApp(Protocol):
    """What the master needs of the app's server object: its settings and master hooks."""

    settings: Settings

    @property
    def handlers(self) -> Handlers: ...

    @property
    def processes(self) -> Sequence[ProcessSpec]: ...


#: The body of a forked worker process: loads the app afresh and serves; its exit code.
WorkerMain = Callable[[WorkerSetup], int]


class Master:
    """Supervises ``worker_num`` workers over one listening socket."""

    def __init__(
        self,
        app: MasterApp,
        target: str,
        worker_main: WorkerMain,
        watch_dirs: Sequence[str] = (),
    ) -> None:
        """``app`` is the server the master loaded (for settings and master hooks);
        ``target`` names the app in titles and status; ``worker_main`` runs in each
        forked worker; ``watch_dirs``, with ``reload_on_change``, are watched for
        changes that start a reload (master/watch.py)."""
        self.app = app
        self.watch_dirs = tuple(watch_dirs)
        self.watcher: Watcher | None = None  # serve --reload (master/watch.py)
        self.settings = app.settings
        self.target = target
        self.worker_main = worker_main
        self.plan = ReloadPlan(
            generation=1,
            slots=self.settings.worker_num,
            batch=self.settings.reload_batch_size,
            start_timeout=self.settings.worker_start_timeout,
            pause_timeout=PAUSE_TIMEOUT,
        )
        self.workers: dict[int, WorkerProcess] = {}  # by pid
        self.failures: dict[int, int] = {}  # slot -> consecutive boot failures
        self.respawn_at: dict[int, float] = {}  # slot -> when to fork it again
        # exits not asked for, judged once EXIT_GRACE passed: (when, process, status)
        self._exits_to_judge: list[tuple[float, WorkerProcess, int]] = []
        self.stopping = False
        self.started = time.time()
        self.listen_sock: socket.socket | None = None
        self._uds_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self.ids = SharedIdSource()
        self.node = 0  # cluster mode: this node's number (master/cluster.py)
        self.node_token = 0  # and this start's token
        self.table = _session_table(self.settings)
        self.switchboard = Switchboard(self.table.region_of)
        self._logged_forced = self._logged_expired = 0  # expiries already logged
        self.selector = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None  # with metrics_port (master/metrics.py)
        self.tally = Tally()  # the master's own counters, for the metrics
        self.notifier = Notifier(None)  # systemd's NOTIFY_SOCKET, read in run()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self.pid_file: PidFile | None = None  # held (locked) for the master's life
        self._reload_waiters: list[ControlClient] = []  # get this reload's progress
        self._next_reload_waiters: list[ControlClient] = []  # wait for the coalesced one
        # After a reload completes, its waiters keep getting each old worker's drain
        # figures (moved, fell back, closed) until every old worker has exited.
        self._drain_watches: list[tuple[list[ControlClient], set[int]]] = []
        self._stop_waiters: list[ControlClient] = []  # swoolish stop: progress to exit
        self._progress_at = 0.0  # when stopping workers are next asked for progress
        self._progress_polled: set[int] = set()  # pids asked, not answered yet
        self._status_requests: list[StatusRequest] = []
        self.reload_history: list[dict[str, Any]] = []
        # Task workers take the worker_ids after the event workers' (docs/tasks.md).
        self.relay = _refused_as_setting(
            "the task load",
            "--task-workers (task_worker_num) or --workers (worker_num)",
            lambda: TaskRelay(
                self.settings.worker_num,
                self.settings.task_worker_num,
                lambda pid, message, essential: self._send(pid, message, essential=essential),
                self._retire_task_worker,
                self._when_drained,
            ),
        )
        # User processes (server.add_process) take the worker_ids after the task workers';
        # their number and names are the master's load of the app: fixed until a restart.
        self.process_names = [spec.name for spec in app.processes]
        self._held: set[int] = set()  # ready user processes waiting for their Serve
        self._duties: dict[type, Callable[[WorkerProcess, Any, float], None]] = {
            msg.Ready: self._on_ready,
            msg.Paused: self._on_paused,
            msg.Exiting: self._on_exiting,
            msg.BootFailed: self._on_boot_failed,
            msg.BootStalled: self._on_boot_stalled,
            msg.WorkerFigures: self._on_figures,
            msg.Route: self._on_route,
            msg.Adopting: self._on_adopting,
            msg.Adopted: self._on_adopted,
            msg.Release: self._on_release,
            msg.ReleaseDone: self._on_release_done,
            msg.ServerStatsRequest: self._on_server_stats_request,
            msg.ReloadRequest: self._on_reload_request,
            msg.ShutdownRequest: self._on_shutdown_request,
            msg.Task: lambda proc, message, now: self.relay.submitted(message),
            msg.TaskResult: lambda proc, message, now: self.relay.answered(proc.pid, message),
            msg.RecycleRequest: self._on_recycle_request,
        }

    @property
    def generation(self) -> int:
        return self.plan.generation

    # ------------------------------------------------------------------ startup

    def run(self) -> int:
        """Serve until stopped; returns the master's exit code."""
        # Certificates that do not load refuse the start here, before any worker fails
        # on them; each worker loads them again after the fork (swoolish.shared.tls).
        tls.server_context(self.settings)
        # The pid file first: a running master's refuses us before anything is bound.
        self._write_pid_file()
        try:
            self.listen_sock = self._bind()
            if self.settings.redis_url:  # cluster mode: a fresh node number (docs/cluster.md)
                self.node_token = new_token()
                self.node = claim_node(
                    self.settings.redis_url, self.settings.cluster_name, self.node_token
                )
            self.metrics = self._start_metrics()
            self.control = ControlServer(self._on_control_request, self.selector.unregister)
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            self._remove_pid_file()
            self._close_listener()
            raise
        where = self.listen_address()
        setproctitle(f"swoolish: master {self.target} [{where}]")
        self._install_signal_handlers()
        self.notifier = Notifier.from_environ(os.environ)  # before any fork: workers lack it
        self.selector.register(self.control.sock, selectors.EVENT_READ, "control")
        log.info(
            "master (pid %d) listening on %s%s with %s",
            os.getpid(),
            where,
            " (TLS)" if self.settings.ssl_cert_file else "",
            plural(self.settings.worker_num, "worker"),
        )
        self._fire("start")
        try:
            self._start_watcher()
            for slot in range(self.settings.worker_num):
                self._spawn(slot, self.generation)
            for slot in self.relay.slots():
                self._spawn(slot, self.generation)
            for slot in self._process_slots():
                self._spawn(slot, self.generation)
            return self._loop()
        finally:
            self._stop_watcher()
            self._fire("shutdown")
            self._remove_pid_file()
            self.control.close()
            if self.metrics is not None:
                self.metrics.close()
            self.notifier.close()
            self._close_listener()

    def _bind(self) -> socket.socket:
        """The one listening socket: a Unix socket at ``uds``, else TCP host:port."""
        if self.settings.uds:
            sock, self._uds_identity = bind_unix(self.settings.uds)
            return sock
        return bind(self.settings.host, self.settings.port)

    def _close_listener(self) -> None:
        """Close the listening socket; a Unix socket's file goes too, if still ours."""
        if self.listen_sock is not None:
            self.listen_sock.close()
        if self._uds_identity is not None:
            unlink_unix(self.settings.uds, self._uds_identity)
            self._uds_identity = None

    def listen_address(self) -> str:
        """Where clients connect, as logs and status show it: host:port or unix:PATH."""
        if self.settings.uds:
            return f"unix:{self.settings.uds}"
        assert self.listen_sock is not None
        host, port = self.listen_sock.getsockname()[:2]
        return f"{host}:{port}"

    def _start_metrics(self) -> MetricsServer | None:
        """The metrics endpoint on (host, metrics_port), bound before anything forks: a
        port that cannot be bound is one line and exit 2, like the listening socket's."""
        if self.settings.metrics_port is None:
            return None
        server = MetricsServer(
            self.settings.host,
            self.settings.metrics_port,
            self.selector,
            healthy=self._healthy,
            poll=lambda done: self._request_stats(None, on_done=done),
            snapshot=self._metrics_snapshot,
        )
        log.info("metrics on http://%s:%d/metrics and /healthz", *server.address)
        return server

    def _healthy(self) -> bool:
        """/healthz: a generation serves (at least one worker serving), not shutting down."""
        return not self.stopping and any(p.state == "serving" for p in self.workers.values())

    def _metrics_snapshot(self) -> Snapshot:
        workers = tuple(
            WorkerSample(p.slot, p.pid, p.generation, p.state, p.stats)
            for p in self.workers.values()
        )
        return Snapshot(self.generation, workers, self.tally, self.switchboard.dropped)

    def _write_pid_file(self) -> None:
        """Create and lock the pid file (master/pidfile.py): exclusive, never through a
        symlink, refused while a running master holds it, a stale one replaced."""
        if self.settings.pid_file:
            self.pid_file = PidFile.create(self.settings.pid_file)

    def _remove_pid_file(self) -> None:
        """Remove the pid file only if it is still ours (same file, our pid)."""
        if self.pid_file is not None:
            self.pid_file.release()

    def _install_signal_handlers(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for sig in HANDLED_SIGNALS:
            # The handler does nothing: the wakeup fd carries the signal number to the loop.
            signal.signal(sig, _noop_handler)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, "signals")

    # ------------------------------------------------------------------ the main loop

    def _loop(self) -> int:
        while True:
            for key, events in self.selector.select(self._select_timeout()):
                if key.data == "signals":
                    self._handle_signals()
                elif key.data == "control":
                    self._accept_control()
                elif isinstance(key.data, ControlClient):
                    self._read_control(key.data)
                elif key.data == "watcher":
                    self._read_watcher()
                elif self.metrics is not None and self.metrics.owns(key.data):
                    self.metrics.handle(key.data, events, time.monotonic())
                else:
                    if events & selectors.EVENT_WRITE:
                        self._write_channel(key.data)
                    if events & selectors.EVENT_READ:
                        self._read_channel(key.data)
            self._reap()
            now = time.monotonic()
            if self._exits_to_judge:
                self._judge_exits(now)
            self._resume_control(now)
            if self.metrics is not None:
                self.metrics.expire(now)
            self._execute(self.plan.tick(now))
            self.relay.expire(now)
            self._answer_status_requests(now)
            self._poll_progress(now)
            if self.switchboard.waiting:
                self._grant_releases(now)
            if self.switchboard.parked:
                self._deliver_parked(now)
            self._log_handoff_expiries()
            self._kill_overdue(now)
            if self.stopping:
                if not self.workers:
                    log.info("master (pid %d): all workers gone, exiting", os.getpid())
                    self._release_stop_waiters()
                    return 0
            elif not self.plan.active:
                self._spawn_missing(now)

    def _select_timeout(self) -> float:
        deadline = self.plan.next_deadline()
        timeout = LOOP_TICK
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        if self._status_requests:
            timeout = min(timeout, 0.05)
        if self.switchboard.has_waiting():
            timeout = min(timeout, 0.01)
        if self._exits_to_judge:
            first = min(when for when, _, _ in self._exits_to_judge)
            timeout = min(timeout, max(0.0, first - time.monotonic()))
        return timeout

    def _handle_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name
            if signum in RELOAD_SIGNALS:
                self.request_reload(name)
            elif signum in STOP_SIGNALS:
                if self.stopping:
                    log.warning("second %s: forcing shutdown", name)
                    self._kill_all()
                else:
                    log.info("%s: graceful shutdown", name)
                    self.shutdown()
            elif signum == signal.SIGQUIT:
                log.info("SIGQUIT: immediate shutdown")
                self.stopping = True
                self.notifier.stopping("stopping now (SIGQUIT)")
                self._execute(self.plan.abort())
                self._kill_all()

    # ------------------------------------------------------------------ serve --reload

    def _start_watcher(self) -> None:
        """With ``reload_on_change``: start the watcher process (master/watch.py); the
        selector hands its lines to ``_read_watcher``."""
        if not self.settings.reload_on_change or not self.watch_dirs:
            return
        self.watcher = Watcher(self.watch_dirs)
        self.selector.register(self.watcher.fileno(), selectors.EVENT_READ, "watcher")

    def _read_watcher(self) -> None:
        """A saved file starts the same rolling reload as SIGUSR1: the open WebSockets
        move to the new code, and a broken save is rolled back (docs/reload.md)."""
        assert self.watcher is not None
        lines = self.watcher.read()
        if lines is None:
            self._watcher_gone()
            return
        for line in lines:
            kind, paths = parse_watcher_line(line)
            if kind == "ready":
                log.info(
                    "watching %s for changes (%s files)",
                    ", ".join(self.watch_dirs),
                    ", ".join(f"*{suffix}" for suffix in SUFFIXES),
                )
            elif kind == "changed" and paths:
                self.request_reload(f"{_names(paths)} changed")

    def _watcher_gone(self) -> None:
        assert self.watcher is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(self.watcher.fileno())
        self.watcher.forget()
        if not self.stopping:
            log.error(
                "the file watcher (pid %d) exited: files are no longer watched; "
                "restart swoolish serve --reload",
                self.watcher.pid,
            )

    def _stop_watcher(self) -> None:
        """Stop the watcher by its pid as the master exits (it would die with the
        master anyway, PR_SET_PDEATHSIG)."""
        if self.watcher is None or self.watcher.closed:
            return  # none, or gone already (_watcher_gone)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(self.watcher.fileno())
        self.watcher.stop()

    # ------------------------------------------------------------------ reload

    def request_reload(self, source: str) -> bool:
        """Start a rolling reload, or queue one after the reload in progress."""
        if self.stopping:
            return False
        if self.plan.active:
            rolling = "a recycle" if self.plan.recycling is not None else "a reload"
            log.info("%s: reload requested during %s; one more will follow it", source, rolling)
        else:
            upcoming = self.plan.latest + 1  # a rolled-back generation's number is not reused
            log.info(
                "%s: reload to generation %d started (%s)",
                source,
                upcoming,
                plural(self.settings.worker_num, "worker"),
            )
            self._fire("before_reload")
            self._reload_waiters.extend(self._next_reload_waiters)
            self._next_reload_waiters.clear()
            self._notify_waiters({"event": "started", "generation": upcoming})
            self.notifier.reloading(f"reloading to generation {upcoming}")
        self._execute(self.plan.request(time.monotonic(), self._serving()))
        return True

    def _serving(self) -> dict[int, int]:
        """pid -> slot of the workers of the serving generation that are not stopping."""
        return {
            proc.pid: proc.slot
            for proc in self.workers.values()
            if proc.state in ("booting", "serving")
            and not self.plan.owns(proc.pid)
            and proc.kind == "event"
        }

    def _execute(self, actions: list[Action]) -> None:
        """Carry out the plan's actions; some of them produce more (spawned -> …)."""
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Spawn):
                proc = self._spawn(action.slot, action.generation)
                queue.extend(self.plan.spawned(action.slot, proc.pid, time.monotonic()))
            elif isinstance(action, Serve):
                self._send(action.pid, msg.Serve())
            elif isinstance(action, Pause):
                self._send(action.pid, msg.Pause())
            elif isinstance(action, Stop):
                stopping = self.workers.get(action.pid)
                if stopping is not None:
                    successor = self._successor(stopping)
                    self._stop_worker(stopping, action.code, self._stop_deadline(), successor)
            elif isinstance(action, Kill):
                self._kill(action.pid, action.reason)
            elif isinstance(action, Finished):
                self._reload_finished(action)
            elif isinstance(action, RequestAgain):
                self.request_reload("coalesced request")
            elif isinstance(action, Recycled):
                self._recycle_finished(action)

    def _reload_finished(self, result: Finished) -> None:
        seconds = result.ended_at - result.started_at
        if result.ok:
            new = ", ".join(
                f"worker {self.workers[pid].slot} pid {pid}"
                for pid in result.new_pids
                if pid in self.workers
            )
            log.info(
                "reload to generation %d complete in %.3fs: new %s; %s draining",
                result.generation,
                seconds,
                new,
                plural(len(result.old_pids), "old worker"),
            )
        else:
            log.error(
                "reload to generation %d rolled back after %.3fs: %s; generation %d keeps serving",
                result.attempted,
                seconds,
                result.reason,
                self.generation,
            )
        self.reload_history.append(
            {
                "generation": result.generation,
                "ok": result.ok,
                "reason": result.reason,
                "seconds": round(seconds, 4),
            }
        )
        del self.reload_history[:-20]
        self.tally.reloads["ok" if result.ok else "rolled_back"] += 1
        self._notify_reloaded(result)
        self._fire("after_reload")
        finished = {
            "event": "finished",
            "ok": result.ok,
            "generation": result.generation,
            "attempted": result.attempted,
            "reason": result.reason,
            "seconds": round(seconds, 4),
        }
        old = {pid for pid in result.old_pids if pid in self.workers}
        if result.ok:
            old |= self._roll_task_workers()
            old |= self._roll_processes()
        if result.ok and old:
            for client in self._reload_waiters:
                client.send(finished)
            self._drain_watches.append((self._reload_waiters, old))
            self._reload_waiters = []
        else:
            self._notify_waiters(finished, final=True)

    def _notify_first_ready(self) -> None:
        """READY=1 for systemd once every slot's worker of the first generation serves."""
        if self.notifier.ready_sent or self.plan.active or self.stopping:
            return
        serving = {
            p.slot
            for p in self.workers.values()
            if p.generation == self.generation and p.state == "serving" and p.kind == "event"
        }
        if len(serving) >= self.settings.worker_num:
            self.notifier.ready(self._serving_status())

    def _notify_reloaded(self, result: Finished) -> None:
        """READY=1 after a reload, saying whether it completed or was rolled back."""
        if self.stopping:
            return
        if result.ok:
            how = f"reload to generation {result.generation} complete"
        else:
            how = f"reload to generation {result.attempted} rolled back ({result.reason})"
        self.notifier.ready(f"{self._serving_status()}; {how}")

    def _serving_status(self) -> str:
        workers = plural(self.settings.worker_num, "worker")
        return f"serving generation {self.generation} ({workers})"

    def _watch_drain(self, pid: int, message: dict[str, Any] | None) -> None:
        """Tell the waiters of the reload that retired ``pid`` how it drained (message)
        or that it is gone (None); hang up on them once all its old workers are."""
        for clients, pids in list(self._drain_watches):
            if pid not in pids:
                continue
            if message is not None:
                for client in clients:
                    client.send(message)
                continue
            pids.discard(pid)
            if not pids:
                self._drain_watches.remove((clients, pids))
                for client in clients:
                    client.close()

    def _notify_waiters(self, message: dict[str, Any], final: bool = False) -> None:
        for client in self._reload_waiters:
            client.send(message)
            if final:
                client.close()
        if final:
            self._reload_waiters = []

    # ------------------------------------------------------------------ drain progress

    def _progress_watchers(self, pid: int) -> list[ControlClient]:
        """Who follows worker ``pid``'s drain: the ``reload --wait`` clients of the reload
        that retired it, and every ``swoolish stop`` client."""
        clients = [c for watchers, pids in self._drain_watches if pid in pids for c in watchers]
        return clients + self._stop_waiters

    def _poll_progress(self, now: float) -> None:
        """Every PROGRESS_INTERVAL, ask each stopping worker someone follows how its drain
        goes (its WorkerFigures answer is reported by ``_report_progress``), so the CLI
        shows what it waits for instead of going silent (docs/cli.md). A worker that did
        not answer the last poll (a blocking hook) is reported as not answering."""
        if now < self._progress_at:
            return
        self._progress_at = now + PROGRESS_INTERVAL
        for proc in list(self.workers.values()):
            if proc.state != "stopping" or proc.stopped_at is None:
                continue
            if now - proc.stopped_at < PROGRESS_INTERVAL or not self._progress_watchers(proc.pid):
                continue
            if proc.pid in self._progress_polled:
                self._report_progress(proc, None, now)
            self._progress_polled.add(proc.pid)
            self._send(proc.pid, msg.StatsPoll())

    def _report_progress(
        self, proc: WorkerProcess, figures: dict[str, Any] | None, now: float
    ) -> None:
        """One ``waiting`` event: the connections and handlers the worker still has
        (None: it did not answer), and the seconds to its max_wait_time and to its kill."""
        if proc.stop_deadline is None:
            return
        event = {
            "event": "waiting",
            "slot": proc.slot,
            "pid": proc.pid,
            "generation": proc.generation,
            "connections": None if figures is None else figures.get("connections", 0),
            "handlers": None if figures is None else figures.get("tasks", 0),
            "seconds_left": round(proc.stop_deadline - SHUTDOWN_GRACE - now, 1),
            "kill_in": round(proc.stop_deadline - now, 1),
            "workers_left": self._workers_left(),
        }
        for client in self._progress_watchers(proc.pid):
            client.send(event)

    def _workers_left(self) -> int:
        """Workers that have not drained yet: what a stop still waits for."""
        return sum(1 for proc in self.workers.values() if not proc.drained)

    def _tell_stop_waiters(self, event: dict[str, Any]) -> None:
        for client in self._stop_waiters:
            client.send(event)

    def _release_stop_waiters(self) -> None:
        """Every worker is gone: say so to the ``swoolish stop`` clients and hang up; the
        CLI then waits for the master's process to end."""
        self._tell_stop_waiters({"event": "exiting", "pid": os.getpid()})
        for client in self._stop_waiters:
            client.close()
        self._stop_waiters = []

    # ------------------------------------------------------------------ stopping

    def shutdown(self) -> None:
        """Every worker runs worker_stop and worker_exit, then drains with 1001."""
        self.stopping = True
        self.notifier.stopping(f"stopping: {plural(len(self.workers), 'worker')} draining")
        self._execute(self.plan.abort())
        for client in self._reload_waiters + self._next_reload_waiters:
            client.send({"event": "finished", "ok": False, "reason": "server shutting down"})
            client.close()
        self._reload_waiters, self._next_reload_waiters = [], []
        self.relay.close()
        deadline = self._stop_deadline()
        for proc in list(self.workers.values()):
            self._stop_worker(proc, 1001, deadline, node_stopping=True)

    def _stop_deadline(self) -> float:
        return time.monotonic() + self.settings.max_wait_time + SHUTDOWN_GRACE

    def _successor(self, proc: WorkerProcess) -> WorkerProcess | None:
        """The new worker of ``proc``'s slot, if it can adopt ``proc``'s connections: the
        newest one serving. A recycle's successor has ``proc``'s generation, and ``proc``
        may still count as serving (its pause unconfirmed), so it is left out by name."""
        candidates = [
            p
            for p in self.workers.values()
            if p is not proc
            and p.slot == proc.slot
            and p.generation == self.generation
            and p.state == "serving"
            and p.inbox is not None
        ]
        return max(candidates, key=lambda p: p.started, default=None)

    def _stop_worker(
        self,
        proc: WorkerProcess,
        code: int,
        deadline: float,
        successor: WorkerProcess | None = None,
        node_stopping: bool = False,
    ) -> None:
        if proc.state in ("stopping", "killed"):
            return
        proc.state = "stopping"
        proc.stop_deadline = deadline
        proc.stopped_at = time.monotonic()
        fds: tuple[int, ...] = ()
        if successor is not None and successor.inbox is not None:
            fds = (successor.inbox.fileno(),)
        sent = self._send(proc.pid, msg.Stop(code, bool(fds), node_stopping), fds)
        if sent and proc.channel.queued:
            # The worker does not keep up with its channel (its relays wait behind
            # handlers that never end, say): tell it a Stop is there, so that it reads
            # on until it finds it, not only a bounded way ahead (worker/process.py).
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, STOP_NUDGE)
        if fds and successor is not None and successor.inbox is not None:
            # One hand-off per inbox: the old worker now holds the only other end.
            successor.inbox.close()
            successor.inbox = None
        if not sent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    def _kill_overdue(self, now: float) -> None:
        for proc in self.workers.values():
            if proc.stop_deadline is not None and now > proc.stop_deadline:
                log.warning(
                    "worker %d gen %d (pid %d) did not exit within max_wait_time; killed",
                    proc.slot,
                    proc.generation,
                    proc.pid,
                )
                proc.stop_deadline = None
                self._kill(proc.pid, "")

    def _kill(self, pid: int, reason: str) -> None:
        proc = self.workers.get(pid)
        if proc is not None:
            proc.state = "killed"
            if reason:
                log.warning(
                    "killing worker %d gen %d (pid %d): %s", proc.slot, proc.generation, pid, reason
                )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for pid in list(self.workers):
            self._kill(pid, "")

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int, generation: int) -> WorkerProcess:
        parent, child = ipc.channel_pair(CHANNEL_BUFFER)  # routed batches can be large
        # A task worker or a user process serves no client: no adoption inbox, no
        # session-table region.
        index = self._process_index(slot)
        task = self.relay.owns(slot) or index is not None
        # The adoption inbox: the old worker of this slot will get our end of it in
        # its stop message, and move its connections through it (live hand-off).
        inbox, inbox_child = (
            ipc.channel_pair(CHANNEL_BUFFER)
            if self.settings.reload_handoff and not task
            else (None, None)
        )
        master_pid = os.getpid()
        region = None if task else self.table.claim(slot)
        if region is None and not task:
            log.warning(
                "worker %d gen %d: no free session-table region; other workers will not "
                "see its sessions",
                slot,
                generation,
            )
        task_row = self._task_row(slot, generation, task)
        others_serving = self._healthy()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            if others_serving:
                # Beside serving workers (a reload, a replacement), boot with what they
                # leave of the CPU (shared/priority.py); Ready takes the priority back.
                priority.lower_while_booting()
            parent.close()
            if inbox is not None:
                inbox.close()
            if self.relay.load is not None:
                self.relay.load.row = task_row
            self._become_worker(slot, generation, child, inbox_child, master_pid, region)
        if region is not None:
            self.table.set_pid(region, pid)
            self.switchboard.region_pid[region] = pid
        child.close()
        if inbox_child is not None:
            inbox_child.close()
        channel = ipc.Channel(parent, name=f"the channel of worker {slot} (pid {pid})")
        proc = WorkerProcess(
            pid,
            slot,
            generation,
            channel,
            time.monotonic(),
            inbox=inbox,
            region=region,
            task_row=task_row,
        )
        if index is not None:
            proc.kind = "process"
            log.info("%s started", self._describe_process(proc))
        elif task:
            proc.kind = "task"
            self.relay.spawned(slot, generation)
        channel.on_backlog = lambda waiting: self._want_write(proc, waiting)
        self.workers[pid] = proc
        self.selector.register(channel, selectors.EVENT_READ, proc)
        return proc

    def _task_row(self, slot: int, generation: int, task: bool) -> int | None:
        """An event worker's row of claims in the task load, so what it sent and the
        master never got is counted off when it dies (docs/tasks.md, "Faults")."""
        load = self.relay.load
        if task or load is None:
            return None
        row = load.take_row()
        if row is None:
            log.warning(
                "worker %d gen %d: no free row in the task load; tasks it loses in its "
                "channel if it dies stay counted until a restart",
                slot,
                generation,
            )
        return row

    def _become_worker(
        self,
        slot: int,
        generation: int,
        channel: socket.socket,
        inbox: socket.socket | None,
        master_pid: int,
        region: int | None,
    ) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # STOP_NUDGE tells a worker that a Stop waits in its channel: never fatal,
            # even before the worker's loop takes it (_stop_worker)
            signal.signal(STOP_NUDGE, signal.SIG_IGN)
            # A CLI connected to the master must see EOF when the master hangs up, so
            # no worker may keep a copy of its socket (ControlServer.forget).
            if self.control is not None:
                self.control.forget()
            self.selector.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            if self.metrics is not None:
                self.metrics.forget()
            self.notifier.close()  # only the master notifies (NotifyAccess=main)
            if self.watcher is not None:
                self.watcher.forget()  # the master's to read (master/watch.py)
            if self.pid_file is not None:
                self.pid_file.close()  # the master alone holds its lock (master/pidfile.py)
            for proc in self.workers.values():
                proc.channel.close()
                if proc.inbox is not None:
                    proc.inbox.close()
            task = self.relay.owns(slot)
            index = self._process_index(slot)
            setproctitle(f"swoolish: {self._title(slot, index)} gen {generation}")
            assert self.listen_sock is not None
            setup = WorkerSetup(
                slot,
                generation,
                self.listen_sock,
                self.ids,
                channel,
                master_pid,
                inbox,
                self.table,
                region,
                start_timeout=self.settings.worker_start_timeout,
                task_load=None if task or index is not None else self.relay.load,
                task_worker=task,
                process_num=len(self.process_names),
                process_index=index,
                process_name=self.process_names[index] if index is not None else "",
                node=self.node,
                node_token=self.node_token,
            )
            code = self.worker_main(setup)
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()
            os._exit(code)

    def _send(
        self, pid: int, message: Message, fds: tuple[int, ...] = (), essential: bool = True
    ) -> bool:
        """Queue ``message`` for worker ``pid``; never blocks (docs/design.md, "Channels").

        Only routed operations are not ``essential``: they are refused once the worker's
        queue is over ipc.QUEUE_LIMIT; the rest (lifecycle, releases) only past
        ipc.HARD_LIMIT."""
        proc = self.workers.get(pid)
        if proc is None:
            return False
        return proc.channel.send(message, fds, essential=essential)

    def _when_drained(self, pid: int, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once nothing waits in the queue for worker ``pid`` (or its
        channel closes: it exited); False, and no call, when nothing waits now or the
        channel is gone, so no drain is to come."""
        proc = self.workers.get(pid)
        if proc is None or proc.channel.closed or proc.channel.broken or not proc.channel.queued:
            return False
        proc.channel.when_drained(callback)
        return True

    def _want_write(self, proc: WorkerProcess, waiting: bool) -> None:
        """Watch the channel for room while packets wait in its queue."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(proc.channel, events, proc)

    def _write_channel(self, proc: WorkerProcess) -> None:
        proc.channel.flush()
        if proc.congested and proc.channel.queued <= proc.channel.limit // 2:
            proc.congested = False
            log.debug("worker %d (pid %d) reads its channel again", proc.slot, proc.pid)

    def _read_channel(self, proc: WorkerProcess, everything: bool = False) -> None:
        """Handle what ``proc`` sent: a batch of packets (the selector calls again while
        more wait, so one busy worker cannot starve the others), or ``everything``
        waiting now (a causal barrier, a worker's last words)."""
        try:
            messages = proc.channel.receive(None if everything else ipc.READ_BATCH)
        except (EOFError, OSError):
            # The worker is gone: _reap collects it. A damaged message never gets here
            # (the channel drops it alone and reading goes on).
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(proc.channel)
            return
        for message, fds in messages:
            ipc.close_fds(fds)  # workers send the master no descriptors
            self._on_worker_message(proc, message)

    def _on_worker_message(self, proc: WorkerProcess, message: Message) -> None:
        duty = self._duties.get(type(message))
        if duty is None:
            log.error("unexpected %s from worker %d; ignored", type(message).__name__, proc.slot)
        else:
            duty(proc, message, time.monotonic())

    # -- one method per message from a worker (swoolish.core.messages)

    def _on_ready(self, proc: WorkerProcess, message: msg.Ready, now: float) -> None:
        proc.ready_at = now
        if proc.state == "booting":
            proc.state = "serving"
        if proc.kind == "process":
            self._process_ready(proc, now)
            return
        self.failures.pop(proc.slot, None)
        if proc.kind == "task":
            self._task_worker_ready(proc, now)
            return
        if self.plan.owns(proc.pid):
            log.info(
                "worker %d gen %d (pid %d) ready in %.3fs",
                proc.slot,
                proc.generation,
                proc.pid,
                now - proc.started,
            )
            self._notify_waiters(
                {
                    "event": "ready",
                    "slot": proc.slot,
                    "pid": proc.pid,
                    "generation": proc.generation,
                    "seconds": round(now - proc.started, 4),
                }
            )
        else:
            # Not part of a reload (the first generation, a replacement): serve at once.
            self._send(proc.pid, msg.Serve())
            self._notify_first_ready()
        self._execute(self.plan.ready(proc.pid, now))

    def _task_worker_ready(self, proc: WorkerProcess, now: float) -> None:
        """A task worker is up: it takes its slot's new tasks; the one it replaces (a
        reload's) is retired, and the reload's ``--wait`` clients hear of both."""
        replaced = self.relay.book.accepting.get(proc.slot - self.relay.first)
        log.info(
            "task worker %d gen %d (pid %d) ready in %.3fs",
            proc.slot,
            proc.generation,
            proc.pid,
            now - proc.started,
        )
        if replaced is not None:
            ready = {
                "event": "ready",
                "kind": "task",
                "slot": proc.slot,
                "pid": proc.pid,
                "generation": proc.generation,
                "seconds": round(now - proc.started, 4),
            }
            self._watch_drain(replaced, ready)
        self.relay.ready(proc.pid, proc.slot, proc.generation)

    def _retire_task_worker(self, pid: int) -> None:
        """Stop a task worker whose slot a newer one serves: it finishes the tasks it
        holds (up to max_wait_time), then exits; new tasks go to its successor."""
        proc = self.workers.get(pid)
        self.relay.stopping(pid)
        if proc is not None:
            self._stop_worker(proc, SERVICE_RESTART, self._stop_deadline())

    def _roll_task_workers(self) -> set[int]:
        """A reload completed: fork each task slot's worker of the new generation. The
        old ones keep taking tasks until their successors are ready; returned, so the
        reload's ``--wait`` clients follow them to their exit."""
        old = {p.pid for p in self.workers.values() if p.kind == "task" and p.state == "serving"}
        for slot in self.relay.slots():
            self._spawn(slot, self.generation)
        return old

    def _release_retiring(self, proc: WorkerProcess) -> None:
        """A new task worker died before it was ready: the old one of its slot keeps
        taking tasks, and the reload's ``--wait`` clients stop waiting for it."""
        if proc.ready_at is not None:
            return
        for other in self.workers.values():
            if other.kind == "task" and other.slot == proc.slot and other.state == "serving":
                self._watch_drain(other.pid, None)

    # -- user processes (server.add_process; docs/lifecycle.md, "User processes")

    @property
    def _first_process(self) -> int:
        return self.settings.worker_num + self.settings.task_worker_num

    def _process_slots(self) -> range:
        """The worker_ids of the user processes (after the task workers', as in Swoole)."""
        return range(self._first_process, self._first_process + len(self.process_names))

    def _process_index(self, slot: int) -> int | None:
        settings = self.settings
        return process_index(
            slot, settings.worker_num, settings.task_worker_num, len(self.process_names)
        )

    def _process_name(self, proc: WorkerProcess) -> str | None:
        index = self._process_index(proc.slot) if proc.kind == "process" else None
        return self.process_names[index] if index is not None else None

    def _title(self, slot: int, index: int | None) -> str:
        if index is not None:
            return f"process {index} {self.process_names[index]}"
        return f"task worker {slot}" if self.relay.owns(slot) else f"worker {slot}"

    def _describe_process(self, proc: WorkerProcess) -> str:
        index = proc.slot - self._first_process
        return (
            f"user process {index} {self.process_names[index]!r} gen {proc.generation} "
            f"(pid {proc.pid})"
        )

    def _slot_processes(self, slot: int, besides: WorkerProcess) -> list[WorkerProcess]:
        return [p for p in self.workers.values() if p.slot == slot and p is not besides]

    def _process_ready(self, proc: WorkerProcess, now: float) -> None:
        """A user process found its target. It replaces the older ones of its slot (a
        reload's), which are stopped now, and runs its target once they have exited:
        two generations of one process never run at once. A process a newer one
        already replaces is stopped instead."""
        others = [
            p for p in self._slot_processes(proc.slot, proc) if p.state in ("booting", "serving")
        ]
        if any(p.generation > proc.generation for p in others):
            self._stop_worker(proc, SERVICE_RESTART, self._stop_deadline())
            return
        for old in others:
            ready = {
                "event": "ready",
                "kind": "process",
                "slot": proc.slot,
                "pid": proc.pid,
                "generation": proc.generation,
                "seconds": round(now - proc.started, 4),
            }
            self._watch_drain(old.pid, ready)
            self._stop_worker(old, SERVICE_RESTART, self._stop_deadline())
        self._held.add(proc.pid)
        self._serve_held(proc.slot)

    def _serve_held(self, slot: int) -> None:
        """Tell a ready user process to run its target once it is alone in its slot."""
        for pid in list(self._held):
            proc = self.workers.get(pid)
            if proc is None or proc.slot != slot:
                continue
            if self._slot_processes(slot, proc) or self.stopping:
                continue
            self._held.discard(pid)
            self._send(pid, msg.Serve())

    def _roll_processes(self) -> set[int]:
        """A reload completed: fork each user process of the new generation. The old
        ones run until their successors are ready; returned, so the reload's ``--wait``
        clients follow them to their exit."""
        old = {p.pid for p in self.workers.values() if p.kind == "process" and p.state == "serving"}
        for slot in self._process_slots():
            self._spawn(slot, self.generation)
        return old

    def _process_exited(self, proc: WorkerProcess, status: int, now: float) -> None:
        """A user process exited: stopped (its successor may run now), replaced before
        it was ready (the old one keeps running), or died: restarted, with back-off
        when it died within PROCESS_STABLE of its start."""
        self._held.discard(proc.pid)
        how = describe_status(status)
        if proc.state in ("stopping", "killed") or self.stopping:
            self._serve_held(proc.slot)
            return
        cause = f", failed to start: {proc.boot_error}" if proc.boot_error else ""
        survivors = [p for p in self._slot_processes(proc.slot, proc) if p.state == "serving"]
        if survivors and proc.ready_at is None:
            keeps = survivors[0]
            log.error(
                "%s died before it was ready: %s%s; gen %d (pid %d) keeps running",
                self._describe_process(proc),
                how,
                cause,
                keeps.generation,
                keeps.pid,
            )
            self._watch_drain(keeps.pid, None)
            return
        # Not the exit status: the target may exit with any, EXIT_BOOT_ERROR's 3 included.
        quick = proc.ready_at is None or now - proc.started < PROCESS_STABLE
        failures = self.failures.get(proc.slot, 0) + 1 if quick else 0
        self.failures[proc.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1)) if failures else 0.0
        log.error(
            "%s died: %s%s; restarting %s",
            self._describe_process(proc),
            how,
            cause,
            f"in {delay:.1f}s ({plural(failures, 'quick death')} in a row)" if delay else "now",
        )
        self.tally.worker_restarts += 1
        self.respawn_at[proc.slot] = now + delay
        self._serve_held(proc.slot)

    def _on_paused(self, proc: WorkerProcess, message: msg.Paused, now: float) -> None:
        if proc.state == "serving":
            proc.state = "paused"
        self._execute(self.plan.paused(proc.pid, now))

    def _on_exiting(self, proc: WorkerProcess, message: msg.Exiting, now: float) -> None:
        figures: dict[str, Any] = {
            "timers_cleared": message.timers_cleared,
            "connections_closed": message.connections_closed,
            "seconds": message.seconds,
            **(message.handoff or {}),
        }
        if proc.kind == "task":
            figures.update(kind="task", tasks_done=proc.stats.get("tasks_done", 0))
        elif proc.kind == "process":
            figures.update(kind="process", name=self.process_names[proc.slot - self._first_process])
        self.tally.handed_off(message.handoff)
        proc.drained = True
        self._log_drained(proc, figures)

    def _on_figures(self, proc: WorkerProcess, message: msg.WorkerFigures, now: float) -> None:
        proc.stats = message.figures
        for request in self._status_requests:
            request.waiting.discard(proc.pid)
        if proc.pid in self._progress_polled:
            self._progress_polled.discard(proc.pid)
            self._report_progress(proc, message.figures, now)

    def _on_boot_failed(self, proc: WorkerProcess, message: msg.BootFailed, now: float) -> None:
        # Kept for the log line of its exit, and given to the plan: a reload it rolls
        # back says why (docs/reload.md).
        proc.boot_error = f"{message.error} ({message.where})" if message.where else message.error
        self.plan.boot_failed(proc.pid, proc.boot_error)

    def _on_boot_stalled(self, proc: WorkerProcess, message: msg.BootStalled, now: float) -> None:
        where = f"{message.where}: {message.line}" if message.line else message.where
        self.plan.boot_stalled(proc.pid, where)

    def _on_route(self, proc: WorkerProcess, message: msg.Route, now: float) -> None:
        self._forward(self.switchboard.route(message.target, message.ops, self._slot_pid, now))

    def _on_adopting(self, proc: WorkerProcess, message: msg.Adopting, now: float) -> None:
        # Its predecessor routed what it handled for these clients before they moved:
        # take that in before anything this worker routes for them (docs/design.md).
        predecessor = self.workers.get(message.predecessor or 0)
        if predecessor is not None and predecessor is not proc:
            self._read_channel(predecessor, everything=True)

    def _on_adopted(self, proc: WorkerProcess, message: msg.Adopted, now: float) -> None:
        self.switchboard.note_adopted(message.sids, now)
        if self.switchboard.waiting:
            self._grant_releases(now)

    def _on_release(self, proc: WorkerProcess, message: msg.Release, now: float) -> None:
        key = (proc.pid, message.batch)
        self.switchboard.request_release(key, message.moved, message.kept, now)
        self._grant_releases(now)
        log.debug(
            "worker %d gen %d (pid %d): lets go of %s (batch %d), with %s it kept for them",
            proc.slot,
            proc.generation,
            proc.pid,
            plural(len(message.moved), "moved session"),
            message.batch,
            plural(len(message.kept), "operation"),
        )

    def _on_release_done(self, proc: WorkerProcess, message: msg.ReleaseDone, now: float) -> None:
        self.switchboard.finish_release((proc.pid, message.batch), message.late, now)
        self._deliver_parked(now)

    def _on_server_stats_request(
        self, proc: WorkerProcess, message: msg.ServerStatsRequest, now: float
    ) -> None:
        self._request_stats(None, reply_to=proc.pid, request_id=message.request_id)

    def _on_reload_request(
        self, proc: WorkerProcess, message: msg.ReloadRequest, now: float
    ) -> None:
        self.request_reload(f"worker {proc.slot} (server.reload())")

    def _on_recycle_request(
        self, proc: WorkerProcess, message: msg.RecycleRequest, now: float
    ) -> None:
        """max_request: replace this one worker through the rolling machinery (its
        WebSockets move to its successor), one recycle at a time, never during a
        reload (docs/reload.md, "Recycling")."""
        serving = self._serving()
        if self.stopping or proc.pid not in serving:
            return  # stopping already: its replacement, if any, is under way
        busy = self.plan.active
        log.info(
            "worker %d (pid %d) handled %d requests: recycling%s",
            proc.slot,
            proc.pid,
            message.handled,
            " after the reload or recycle in progress" if busy else "",
        )
        self._execute(self.plan.recycle(proc.pid, now, serving))

    def _recycle_finished(self, result: Recycled) -> None:
        seconds = result.ended_at - result.started_at
        if result.ok:
            log.info(
                "worker %d recycled in %.3fs: pid %d replaced by pid %d",
                result.slot,
                seconds,
                result.old_pid,
                result.new_pid or 0,
            )
        else:
            retry = ""
            if result.retry_at is not None:
                retry = f"; next try in {max(0.0, result.retry_at - result.ended_at):.1f}s"
            log.error(
                "recycle of worker %d (pid %d) rolled back after %.3fs: %s; it keeps serving%s",
                result.slot,
                result.old_pid,
                seconds,
                result.reason,
                retry,
            )
        self.tally.recycles["ok" if result.ok else "rolled_back"] += 1

    def _on_shutdown_request(
        self, proc: WorkerProcess, message: msg.ShutdownRequest, now: float
    ) -> None:
        if not self.stopping:
            log.info("worker %d asked for shutdown (server.shutdown())", proc.slot)
            self.shutdown()

    def _log_drained(self, proc: WorkerProcess, figures: dict[str, Any]) -> None:
        if proc.kind == "process":
            log.info("%s stopped in %.3fs", self._describe_process(proc), figures["seconds"])
            return
        moved = ""
        if "moved" in figures:
            moved = (
                f", {figures['moved']} moved to the new worker in "
                f"{figures.get('handoff_seconds', 0.0):.3f}s, "
                f"{figures.get('fell_back', 0)} fell back to a 1012 close"
            )
            if figures.get("fallback_reasons"):
                moved += f" {figures['fallback_reasons']}"
        log.info(
            "worker %d gen %d (pid %d) drained in %.3fs: %s cleared, %s closed%s",
            proc.slot,
            proc.generation,
            proc.pid,
            figures.get("seconds", 0.0),
            plural(figures.get("timers_cleared", 0), "timer"),
            plural(figures.get("connections_closed", 0), "connection"),
            moved,
        )
        drained = {"event": "drained", "slot": proc.slot, "pid": proc.pid, **figures}
        self._watch_drain(proc.pid, drained)
        self._tell_stop_waiters({**drained, "workers_left": self._workers_left()})

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.workers.get(pid)
            if proc is None:
                continue
            self._read_channel(proc, everything=True)  # its last words may still be unread
            del self.workers[pid]
            self.tally.retire(proc.stats)  # its final counters, so totals never go down
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(proc.channel)
            proc.channel.close()
            if proc.inbox is not None:
                proc.inbox.close()
            for request in self._status_requests:
                request.waiting.discard(pid)
            self.switchboard.worker_gone(pid, proc.region, time.monotonic())
            if proc.region is not None:
                self.table.release(proc.region)
            self._on_worker_exit(proc, status)

    def _on_worker_exit(self, proc: WorkerProcess, status: int) -> None:
        self._watch_drain(proc.pid, None)
        self._progress_polled.discard(proc.pid)
        now = time.monotonic()
        how = describe_status(status)
        if proc.kind == "task":
            self.relay.gone(proc.pid, proc.slot, f"exited ({how})")
            self._release_retiring(proc)
        elif proc.kind == "event":
            self.relay.sender_gone(proc.pid, proc.slot, proc.task_row)
        self._tell_stop_waiters(
            {
                "event": "exited",
                "slot": proc.slot,
                "pid": proc.pid,
                "how": how,
                "workers_left": self._workers_left(),
            }
        )
        if (
            proc.state not in ("stopping", "killed")
            and not self.stopping
            and not self.plan.owns(proc.pid)
        ):
            # Not asked for: perhaps the stop signal of the whole group, which the master
            # has not received yet (EXIT_GRACE). No fork for the slot meanwhile; a
            # reload or recycle under way learns of it now.
            if proc.kind != "process":
                self._execute(self.plan.exited(proc.pid, now, describe_status(status)))
            self._exits_to_judge.append((now + EXIT_GRACE, proc, status))
            self.respawn_at[proc.slot] = now + EXIT_GRACE
            return
        self._judge_exit(proc, status, now)

    def _judge_exits(self, now: float) -> None:
        """Judge the exits not asked for whose EXIT_GRACE is over, or all of them once
        the master is stopping (its own stop signal came after theirs)."""
        due: list[tuple[float, WorkerProcess, int]] = []
        waiting: list[tuple[float, WorkerProcess, int]] = []
        for entry in self._exits_to_judge:
            (due if self.stopping or entry[0] <= now else waiting).append(entry)
        self._exits_to_judge = waiting
        for _, proc, status in due:
            self._judge_exit(proc, status, now, planned=True)

    def _judge_exit(
        self, proc: WorkerProcess, status: int, now: float, planned: bool = False
    ) -> None:
        """What an exit means: the end of a stop, a failed boot of a reload, or a death
        (logged, the slot forked again with back-off). ``planned``: the reload plan
        already learnt of it."""
        how = describe_status(status)
        if proc.kind == "process":
            self._process_exited(proc, status, now)
            return
        expected = proc.state in ("stopping", "killed")
        if not expected and self.stopping and not self.plan.owns(proc.pid):
            log.info(
                "worker %d gen %d (pid %d) exited (%s) as the server stopped: the stop "
                "signal reached it before the master",
                proc.slot,
                proc.generation,
                proc.pid,
                how,
            )
            return
        if not expected:
            cause = f", failed to boot: {proc.boot_error}" if proc.boot_error else ""
            log.error(
                "worker %d gen %d (pid %d) died: %s%s",
                proc.slot,
                proc.generation,
                proc.pid,
                how,
                cause,
            )
            exit_code = os.waitstatus_to_exitcode(status)
            self._fire("worker_error", proc.slot, proc.pid, exit_code, max(0, -exit_code))
            self.tally.worker_restarts += 1
        in_reload = self.plan.owns(proc.pid)
        if not planned:
            self._execute(self.plan.exited(proc.pid, now, how))
        if expected or in_reload or self.stopping:
            return
        # Whether it had reported ready, not its exit status: the app's own code (a task
        # handler's os._exit(3)) may exit with EXIT_BOOT_ERROR's 3 after the boot.
        booting = proc.ready_at is None
        failures = self.failures.get(proc.slot, 0) + 1 if booting else 0
        self.failures[proc.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1)) if failures else 0.0
        if delay:
            log.warning(
                "worker %d failed to boot %s in a row; next try in %.1fs",
                proc.slot,
                plural(failures, "time"),
                delay,
            )
        self.respawn_at[proc.slot] = now + delay

    def _spawn_missing(self, now: float) -> None:
        """Keep one live worker per slot (after crashes, and after a rollback)."""
        filled = {p.slot for p in self.workers.values() if p.state in ("booting", "serving")}
        for slot in [*range(self.settings.worker_num), *self.relay.slots(), *self._process_slots()]:
            if slot in filled:
                self.respawn_at.pop(slot, None)
                continue
            when = self.respawn_at.setdefault(slot, now)
            if now >= when:
                del self.respawn_at[slot]
                self._spawn(slot, self.generation)

    def _fire(self, event: str, *args: Any) -> None:
        handler = self.app.handlers.get(event)
        if handler is None:
            return
        try:
            handler(self.app, *args)
        except Exception:
            log.exception("master hook %s raised", event)

    # ------------------------------------------------------------------ control socket

    def _accept_control(self) -> None:
        assert self.control is not None
        client = self.control.accept()
        if client is not None:
            self.selector.register(client.sock, selectors.EVENT_READ, client)
        elif self.control.paused_until is not None:
            # accept keeps failing (out of descriptors, nothing idle to drop): stop
            # polling the listening socket for a moment instead of spinning on it.
            self.selector.unregister(self.control.sock)

    def _resume_control(self, now: float) -> None:
        control = self.control
        if control is not None and control.paused_until is not None:
            if now >= control.paused_until:
                control.paused_until = None
                self.selector.register(control.sock, selectors.EVENT_READ, "control")

    def _read_control(self, client: ControlClient) -> None:
        """Read from a control client and act on its request. Whatever that raises is
        this client's fault: it is hung up on and the master serves on, since the
        master's end is every worker's (docs/security.md)."""
        assert self.control is not None
        try:
            keep = self.control.readable(client)
        except Exception as exc:
            self.control.faults.failed(exc)
            keep = False
        if not keep:
            client.close()

    def _on_control_request(self, client: ControlClient, request: dict[str, Any]) -> None:
        command = request.get("command")
        if command == "reload":
            waiting = self.plan.active
            (self._next_reload_waiters if waiting else self._reload_waiters).append(client)
            if waiting:
                client.send({"event": "queued", "generation": self.plan.latest + 1})
            if not self.request_reload("swoolish reload"):
                client.send({"event": "finished", "ok": False, "reason": "server shutting down"})
                client.close()
        elif command == "status":
            self._request_stats(client)
        elif command == "stop":
            self._on_stop_request(client)
        else:
            client.send({"error": f"unknown command {command!r}; use reload, stop or status"})
            client.close()

    def _on_stop_request(self, client: ControlClient) -> None:
        """``swoolish stop``: the graceful shutdown of SIGTERM, followed to its end: the
        client gets each worker's progress and drain, and a hang-up when all are gone."""
        if not self.stopping:
            log.info("swoolish stop: graceful shutdown")
            self.shutdown()
        self._stop_waiters.append(client)
        client.send(
            {
                "event": "stopping",
                "pid": os.getpid(),
                "workers": len(self.workers),
                "max_wait_time": self.settings.max_wait_time,
            }
        )

    def _request_stats(
        self,
        client: ControlClient | None,
        reply_to: int = 0,
        request_id: int = 0,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        live = [p for p in self.workers.values() if p.state not in ("killed",)]
        for proc in live:
            self._send(proc.pid, msg.StatsPoll())
        self._status_requests.append(
            StatusRequest(
                client,
                {p.pid for p in live},
                time.monotonic() + STATS_TIMEOUT,
                reply_to,
                request_id,
                on_done,
            )
        )

    def _answer_status_requests(self, now: float) -> None:
        for request in list(self._status_requests):
            if request.waiting and now < request.deadline:
                continue
            self._status_requests.remove(request)
            if request.on_done is not None:
                request.on_done()
                continue
            if request.client is None:
                reply = msg.ServerStatsReply(request.request_id, self.server_stats())
                self._send(request.reply_to, reply)
                continue
            request.client.send(self.status())
            request.client.close()

    def server_stats(self) -> dict[str, Any]:
        """Every worker's own figures and their totals, for ``server.server_stats()``."""
        workers = [
            {**proc.stats, "worker_id": proc.slot, "worker_pid": proc.pid, "state": proc.state}
            for proc in sorted(self.workers.values(), key=lambda p: (p.slot, p.generation))
            if proc.state != "killed"
        ]
        return {
            "generation": self.generation,
            "workers": workers,
            "totals": totals(workers),
            "routed_dropped": self.switchboard.dropped,
            "handoff_forced_releases": self.switchboard.forced_releases,
            "handoff_expired_operations": self.switchboard.expired_parked,
        }

    # ------------------------------------------------------------------ routing

    def _grant_releases(self, now: float) -> None:
        for pid, number in self.switchboard.ready_releases(now):
            self._send(pid, msg.Released(number))

    def _deliver_parked(self, now: float) -> None:
        self._forward(self.switchboard.deliver_parked(now), essential=True)

    def _log_handoff_expiries(self) -> None:
        """Every wall-clock expiry of a hand-off, logged once per loop pass (docs/reload.md)."""
        board = self.switchboard
        forced = board.forced_releases - self._logged_forced
        if forced:
            log.warning(
                "hand-off: %s released after %gs without their new worker's "
                "announcement (a stalled worker?); operations routed to those sessions "
                "may arrive out of order",
                plural(forced, "batch", "batches"),
                PARK_TIMEOUT,
            )
        expired = board.expired_parked - self._logged_expired
        if expired:
            log.warning(
                "hand-off: %s dropped: their sessions had no owner %gs after "
                "the old worker let go of them",
                plural(expired, "operation"),
                PARK_TIMEOUT,
            )
        self._logged_forced, self._logged_expired = board.forced_releases, board.expired_parked

    def _forward(
        self, sends: list[tuple[int, list[msg.Operation]]], essential: bool = False
    ) -> None:
        """Send each worker its operations. A worker whose queue is full (stalled, or
        not reading) loses them, counted: the others never wait for it."""
        for pid, ops in sends:
            if not self._send(pid, msg.Routed(ops), essential=essential):
                self.switchboard.dropped += len(ops)
                proc = self.workers.get(pid)
                if proc is not None:
                    self._dropped_for(proc, len(ops))

    def _dropped_for(self, proc: WorkerProcess, count: int) -> None:
        proc.dropped += count
        if not proc.congested and not proc.channel.broken:
            proc.congested = True  # one line per episode, never one per operation
            log.warning(
                "worker %d gen %d (pid %d) is not reading its channel (%d bytes wait): "
                "operations routed to it are dropped (counted in routed_dropped) until "
                "it catches up",
                proc.slot,
                proc.generation,
                proc.pid,
                proc.channel.queued,
            )

    def _slot_pid(self, slot: int) -> int:
        """The worker serving ``slot`` now (the new one once a reload made it serve)."""
        if slot >= self.settings.worker_num:
            # A task worker or a user process: the newest one ready, else the newest one
            # booting (its channel keeps the message until it reads it).
            live = [
                p
                for p in self.workers.values()
                if p.slot == slot and p.state in ("serving", "booting")
            ]
            newest = max(live, key=lambda p: (p.state == "serving", p.generation), default=None)
            return newest.pid if newest is not None else 0
        serving = self._serving()
        best = 0
        for pid, proc_slot in serving.items():
            if proc_slot == slot and self.workers[pid].state == "serving":
                best = pid
        if best:
            return best
        candidates = [
            p
            for p in self.workers.values()
            if p.slot == slot and p.state in ("serving", "booting", "paused")
        ]
        return max(candidates, key=lambda p: p.generation).pid if candidates else 0

    def status(self) -> dict[str, Any]:
        """The master and its workers, for ``swoolish status``."""
        return {
            "master": {
                "pid": os.getpid(),
                "target": self.target,
                "listen": self.listen_address(),
                "generation": self.generation,
                "reloading": self.plan.active,
                "started": self.started,
                "reloads": self.reload_history,
                "routed_dropped": self.switchboard.dropped,
                "handoff_forced_releases": self.switchboard.forced_releases,
                "handoff_expired_operations": self.switchboard.expired_parked,
                "worker_restarts": self.tally.worker_restarts,
                "task_results_dropped": self.relay.results_dropped,
                "task_results_refused": self.relay.results_refused,
                "tasks_lost_in_transit": self.relay.lost,
                "tasks_failed": self.relay.failed,
                "recycles": self.plan.recycles,
                "recycles_total": dict(self.tally.recycles),
                "recycles_waiting": self.plan.recycles_waiting,
                "reloads_total": dict(self.tally.reloads),
            },
            "cluster": cluster_summary(
                [p.stats for p in self.workers.values() if p.state == "serving"],
                self.settings.cluster_name,
            ),
            "workers": [
                {
                    "pid": proc.pid,
                    "slot": proc.slot,
                    "kind": proc.kind,
                    "name": self._process_name(proc),
                    "tasks": self.relay.book.holding(proc.pid),
                    "generation": proc.generation,
                    "state": proc.state,
                    "connections": proc.stats.get("websocket_connections", 0),
                    "timers": proc.stats.get("timers", 0),
                    "messages": proc.stats.get("messages_in", 0),
                    "requests": proc.stats.get("requests", 0),
                    "accept_pauses": proc.stats.get("accept_pauses", 0),
                    "channel_queued": proc.channel.queued,
                    "routed_dropped": proc.dropped,
                    "cluster": proc.stats.get("cluster"),
                }
                for proc in sorted(self.workers.values(), key=lambda p: (p.slot, p.generation))
            ],
        }


def _session_table(settings: Settings) -> SessionTable:
    """The shared session table: two generations plus crash replacements, 4 regions per
    slot. A size the system refuses is a setting to lower, one line and exit 2 before
    anything is forked (docs/cli.md), not a traceback."""
    regions = 4 * settings.worker_num
    try:
        size = f"{table_bytes(regions, settings.max_connections) / 2**30:.1f} GiB"
    except OverflowError:
        size = "more than any system has"
    return _refused_as_setting(
        f"the session table ({size}: 4 regions per worker x worker_num "
        f"{settings.worker_num}, each for max_connections {settings.max_connections})",
        "--workers (worker_num) or --max-connections (max_connections)",
        lambda: SessionTable(regions, settings.max_connections),
    )


def _refused_as_setting(what: str, settings: str, make: Callable[[], _T]) -> _T:
    """``make()``, its shared memory refused by the system (ENOMEM, a size past what
    mmap takes) turned into a ``SettingError`` naming the ``settings`` that size it."""
    try:
        return make()
    except (OSError, OverflowError, MemoryError) as exc:
        raise SettingError(
            f"cannot allocate {what} in shared memory: {_refusal(exc)}; lower {settings}"
        ) from None


def _refusal(exc: BaseException) -> str:
    """Why the system refused a mapping, in its own words where it has some."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OverflowError):
        return "larger than this system can map"
    return str(exc) or type(exc).__name__


def _noop_handler(signum: int, frame: Any) -> None:
    """Signal handlers only wake the loop (through the wakeup fd)."""


def _names(paths: list[str], shown: int = 3) -> str:
    """The changed files of one save, for the reload's log line."""
    rest = len(paths) - shown
    more = f" and {plural(rest, 'more file')}" if rest > 0 else ""
    return ", ".join(paths[:shown]) + more


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
