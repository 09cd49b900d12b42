"""``WebSocketServer``: what the application holds (Swoole's ``WebSocket\\Server``).

The same object is built in the master (to read settings and master hooks) and again
in every worker (after the fork, from fresh code). Methods that act on sessions work
only inside a worker, where the object is attached to the running :class:`Worker`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import loader
from .connection import BINARY, TEXT
from .events import Handlers, canonical_event_name
from .settings import Settings

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["BINARY", "TEXT", "WebSocketServer"]

F = TypeVar("F", bound=Callable[..., Any])


class WebSocketServer:
    """A WebSocket + HTTP server run by a master and its prefork workers.

    ``WebSocketServer("127.0.0.1", 9501, worker_num=4, max_wait_time=3.0)``; every
    keyword is a setting from :mod:`swoolish.settings`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9501, **settings: Any) -> None:
        self.settings = Settings({"host": host, "port": port, **settings})
        self._handlers = Handlers()
        self._worker: Worker | None = None
        loader.note_server_created(self)

    # ------------------------------------------------------------------ configuration

    def set(self, **settings: Any) -> None:
        """Change settings before start (Swoole's ``$server->set([...])``)."""
        self.settings.update(settings)

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler: ``@server.on("message")`` or ``server.on("message", fn)``.

        Accepts snake_case and Swoole's spellings (``WorkerExit``, ``workerExit``); an
        unknown name raises ``ValueError`` listing the valid ones, here, at the call.
        """
        canonical_event_name(event)
        if handler is not None:
            self._handlers.set(event, handler)
            return handler

        def decorator(fn: F) -> F:
            self._handlers.set(event, fn)
            return fn

        return decorator

    # ------------------------------------------------------------------ sessions

    def push(self, fd: int, data: str | bytes, opcode: int | None = None) -> bool:
        """Send a message to session ``fd``; ``False`` if it is gone, closing or backed up.

        Never raises for a gone session and never logs per push: failures are counted
        in ``stats()`` (``push_to_closed``, ``push_over_buffer``).
        """
        worker = self._require_worker("push")
        conn = worker.connections.get(fd) if type(fd) is int else None
        if conn is None:
            worker.stats["push_to_closed"] += 1
            return False
        return conn.push(data, opcode)

    def exists(self, fd: int) -> bool:
        """True from accept until a close begins (either side), then False forever."""
        return fd in self._require_worker("exists").connections

    def is_established(self, fd: int) -> bool:
        """True for a session whose WebSocket handshake is done and not closing."""
        conn = self._require_worker("is_established").connections.get(fd)
        return conn is not None and conn.established and not conn.closing

    def disconnect(self, fd: int, code: int = 1000, reason: str = "") -> bool:
        """Close a WebSocket session with ``code``/``reason``; False if it is not open."""
        conn = self._require_worker("disconnect").connections.get(fd)
        return conn is not None and conn.disconnect(code, reason)

    def close(self, fd: int) -> bool:
        """Close session ``fd`` (a WebSocket gets a 1000 close frame first)."""
        conn = self._require_worker("close").connections.get(fd)
        if conn is None:
            return False
        if conn.established:
            return conn.disconnect(1000, "")
        conn.abort()
        return True

    @property
    def connections(self) -> list[int]:
        """Ids of this worker's open WebSocket sessions."""
        worker = self._require_worker("connections")
        return [sid for sid, conn in worker.connections.items() if conn.established]

    def get_client_info(self, fd: int) -> dict[str, Any] | None:
        """Peer address, connect and last-activity times, counters; None if gone."""
        conn = self._require_worker("get_client_info").connections.get(fd)
        return conn.client_info() if conn is not None else None

    def stats(self) -> dict[str, Any]:
        """This worker's counters (connections, messages, failed pushes, timers …)."""
        return self._require_worker("stats").snapshot()

    # ------------------------------------------------------------------ process control

    def reload(self) -> bool:
        """Ask the master for a rolling reload (Swoole's ``$server->reload()``).

        Returns True when the request was handed to the master; the reload itself runs
        after this handler returns, and this worker is among those it replaces.
        """
        worker = self._require_worker("reload")
        if worker.channel is None:
            return False
        worker._report({"type": "reload"})
        return True

    def shutdown(self) -> None:
        """Gracefully stop the whole server (every worker drains with 1001)."""
        worker = self._require_worker("shutdown")
        if worker.channel is not None:
            worker._report({"type": "shutdown"})
        else:
            worker.request_stop(1001)

    @property
    def worker_id(self) -> int:
        return self._worker.worker_id if self._worker is not None else -1

    @property
    def worker_pid(self) -> int:
        return os.getpid() if self._worker is not None else -1

    @property
    def master_pid(self) -> int:
        return self._worker.master_pid if self._worker is not None else os.getpid()

    @property
    def generation(self) -> int:
        return self._worker.generation if self._worker is not None else 0

    def start(self) -> None:
        """Run the server in the foreground (master + workers) until it is stopped.

        Called at the bottom of a script. When a worker re-imports that script to get
        fresh code, this call does nothing, so the script needs no ``__main__`` guard.
        """
        if loader.loading_in_worker():
            return
        from .master import run_script

        run_script(self)

    # ------------------------------------------------------------------ internals

    def _attach(self, worker: Worker) -> None:
        self._worker = worker

    def _require_worker(self, method: str) -> Worker:
        worker = self._worker
        if worker is None:
            raise RuntimeError(
                f"server.{method}() works only inside a worker (in a handler or after "
                "worker_start); the master serves no connections"
            )
        return worker

    # Swoole's spellings
    isEstablished = is_established
    getClientInfo = get_client_info
