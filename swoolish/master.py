"""The master process: bind once, fork workers, supervise them, never serve a client.

The listening socket is bound before the first fork and stays open in the master for
its whole life, so the kernel keeps queuing connections while workers come and go.

Signal handlers only wake the main loop (``signal.set_wakeup_fd``); the loop does the
work, one method per duty, as gunicorn's arbiter does:

* ``_handle_signals`` -- SIGTERM/SIGINT graceful, a second one forces; SIGQUIT immediate
* ``_reap``           -- collect exited workers, fire ``worker_error`` for crashes
* ``_spawn_missing``  -- replace dead workers, with back-off for crash loops
* ``_read_channels``  -- messages from workers (ready, shutdown requests, stats)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from setproctitle import setproctitle

from . import ipc, loader
from .errors import SettingError
from .sessions import SharedIdSource
from .worker import EXIT_BOOT_ERROR, run_worker

if TYPE_CHECKING:
    from .server import WebSocketServer

__all__ = ["Master", "run_script"]

log = logging.getLogger("swoolish.master")

SHUTDOWN_GRACE = 1.5  # seconds past max_wait_time before a stopping worker is killed
BACKOFF_START, BACKOFF_MAX = 0.1, 10.0  # seconds between restarts of a crash-looping slot
LOOP_TICK = 0.5


@dataclasses.dataclass
class WorkerProcess:
    """The master's view of one worker process."""

    pid: int
    slot: int
    generation: int
    channel: socket.socket
    started: float
    state: str = "booting"  # booting -> serving -> stopping
    stop_deadline: float | None = None


class Master:
    """Supervises ``worker_num`` workers over one listening socket."""

    def __init__(self, server: WebSocketServer, spec: loader.AppSpec, overrides: dict[str, Any]):
        self.server = server
        self.settings = server.settings
        self.spec = spec
        self.overrides = overrides
        self.generation = 1
        self.workers: dict[int, WorkerProcess] = {}  # by pid
        self.failures: dict[int, int] = {}  # slot -> consecutive boot failures
        self.respawn_at: dict[int, float] = {}  # slot -> when to fork it again
        self.stopping = False
        self.listen_sock: socket.socket | None = None
        self.ids = SharedIdSource()
        self.selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._pid_file_written = False

    # ------------------------------------------------------------------ startup

    def run(self) -> int:
        """Serve until stopped; returns the master's exit code."""
        self.listen_sock = bind(self.settings.host, self.settings.port)
        host, port = self.listen_sock.getsockname()[:2]
        self._write_pid_file()
        setproctitle(f"swoolish: master {self.spec} [{host}:{port}]")
        self._install_signal_handlers()
        log.info(
            "master (pid %d) listening on %s:%d with %d workers",
            os.getpid(),
            host,
            port,
            self.settings.worker_num,
        )
        self._fire("start")
        try:
            for slot in range(self.settings.worker_num):
                self._spawn(slot)
            return self._loop()
        finally:
            self._fire("shutdown")
            self._remove_pid_file()
            self.listen_sock.close()

    def _write_pid_file(self) -> None:
        path = self.settings.pid_file
        if not path:
            return
        try:
            with open(path, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise SettingError(
                f"cannot write pid_file {path}: {exc.strerror}; choose a writable path"
            ) from None
        self._pid_file_written = True

    def _remove_pid_file(self) -> None:
        if self._pid_file_written:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.pid_file)

    def _install_signal_handlers(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            # The handler does nothing: the wakeup fd carries the signal number to the loop.
            signal.signal(sig, _noop_handler)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, "signals")

    # ------------------------------------------------------------------ the main loop

    def _loop(self) -> int:
        while True:
            for key, _ in self.selector.select(LOOP_TICK):
                if key.data == "signals":
                    self._handle_signals()
                else:
                    self._read_channel(key.data)
            self._reap()
            if self.stopping:
                self._kill_overdue()
                if not self.workers:
                    log.info("master (pid %d): all workers gone, exiting", os.getpid())
                    return 0
            else:
                self._spawn_missing()

    def _handle_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second %s: forcing shutdown", signal.Signals(signum).name)
                    self._kill_all()
                else:
                    log.info("%s: graceful shutdown", signal.Signals(signum).name)
                    self.shutdown()
            elif signum == signal.SIGQUIT:
                log.info("SIGQUIT: immediate shutdown")
                self.stopping = True
                self._kill_all()

    def shutdown(self) -> None:
        """Every worker runs worker_stop and worker_exit, then drains with 1001."""
        self.stopping = True
        deadline = time.monotonic() + self.settings.max_wait_time + SHUTDOWN_GRACE
        for proc in self.workers.values():
            self._stop_worker(proc, 1001, deadline)

    def _stop_worker(self, proc: WorkerProcess, code: int, deadline: float) -> None:
        if proc.state == "stopping":
            return
        proc.state = "stopping"
        proc.stop_deadline = deadline
        try:
            ipc.send(proc.channel, {"type": "stop", "code": code})
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for proc in self.workers.values():
            if proc.stop_deadline is not None and now > proc.stop_deadline:
                log.warning(
                    "worker %d gen %d (pid %d) did not exit within max_wait_time; killed",
                    proc.slot,
                    proc.generation,
                    proc.pid,
                )
                proc.stop_deadline = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for proc in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int) -> WorkerProcess:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        master_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            parent.close()
            self._become_worker(slot, child, master_pid)
        child.close()
        parent.setblocking(False)
        proc = WorkerProcess(pid, slot, self.generation, parent, time.monotonic())
        self.workers[pid] = proc
        self.selector.register(parent, selectors.EVENT_READ, proc)
        return proc

    def _become_worker(self, slot: int, channel: socket.socket, master_pid: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self.selector.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            for proc in self.workers.values():
                proc.channel.close()
            setproctitle(f"swoolish: worker {slot} gen {self.generation}")
            assert self.listen_sock is not None
            code = run_worker(
                self._load_fresh_app,
                slot,
                self.generation,
                self.listen_sock,
                self.ids,
                channel,
                master_pid,
            )
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()
            os._exit(code)

    def _load_fresh_app(self) -> WebSocketServer:
        loader.purge_user_modules()
        server = loader.load(self.spec)
        server.settings.update(self.overrides)
        return server

    def _read_channel(self, proc: WorkerProcess) -> None:
        try:
            messages = ipc.receive(proc.channel)
        except (EOFError, OSError):
            self.selector.unregister(proc.channel)
            return
        for message in messages:
            kind = message.get("type")
            if kind == "ready":
                proc.state = "serving" if proc.state == "booting" else proc.state
                self.failures.pop(proc.slot, None)
            elif kind == "shutdown" and not self.stopping:
                log.info("worker %d asked for shutdown", proc.slot)
                self.shutdown()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(proc.channel)
            ipc.forget(proc.channel)
            proc.channel.close()
            self._on_worker_exit(proc, status)

    def _on_worker_exit(self, proc: WorkerProcess, status: int) -> None:
        if proc.state == "stopping":
            return  # an exit we asked for
        how = describe_status(status)
        log.error("worker %d gen %d (pid %d) died: %s", proc.slot, proc.generation, proc.pid, how)
        exit_code = os.waitstatus_to_exitcode(status)
        self._fire("worker_error", proc.slot, proc.pid, exit_code, max(0, -exit_code))
        booting = proc.state == "booting" or exit_code == EXIT_BOOT_ERROR
        failures = self.failures.get(proc.slot, 0) + 1 if booting else 0
        self.failures[proc.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1)) if failures else 0.0
        if delay:
            log.warning(
                "worker %d failed to boot %d times; next try in %.1fs", proc.slot, failures, delay
            )
        self.respawn_at[proc.slot] = time.monotonic() + delay

    def _spawn_missing(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.respawn_at.items()):
            if now >= when:
                del self.respawn_at[slot]
                self._spawn(slot)

    def _fire(self, event: str, *args: Any) -> None:
        handler = self.server._handlers.get(event)
        if handler is None:
            return
        try:
            handler(self.server, *args)
        except Exception:
            log.exception("master hook %s raised", event)


def _noop_handler(signum: int, frame: Any) -> None:
    """Signal handlers only wake the loop (through the wakeup fd)."""


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def bind(host: str, port: int) -> socket.socket:
    """Bind the one listening socket (SO_REUSEADDR), before anything is forked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "choose another --port" if exc.errno == errno.EADDRINUSE else "check --host"
        raise SettingError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(server: WebSocketServer, spec: loader.AppSpec, overrides: dict[str, Any]) -> int:
    """Run a master for ``server`` in this process; returns the exit code."""
    return Master(server, spec, overrides).run()


def run_script(server: WebSocketServer) -> None:
    """``server.start()``: the calling script becomes the app the workers re-import."""
    from .cli import configure_logging

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        raise RuntimeError("server.start() must be called from a script file")
    attr = next((k for k, v in vars(main).items() if v is server), loader.ANY_SERVER)
    configure_logging(server.settings.log_level)
    try:
        code = serve(server, loader.AppSpec("path", os.path.abspath(path), attr), {})
    except SettingError as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
