"""``WebSocketServer``: what the application holds (Swoole's ``WebSocket\\Server``).

The same object is built in the master (to read settings and master hooks) and again
in every worker (after the fork, from fresh code). Methods that act on sessions work
only inside a worker, where the object is attached to the running :class:`Worker`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from .core.bus import CLOSE_CODE
from .core.events import Handlers, canonical_event_name
from .core.frames import BINARY, GOING_AWAY, TEXT, check_close, check_push
from .core.loading import loading_in_worker, note_server_created
from .core.messages import (
    Close,
    Disconnect,
    Push,
    PushMany,
    ReloadRequest,
    ShutdownRequest,
    ToRegion,
)
from .core.processes import ProcessSpec
from .core.settings import Settings
from .shared.ids import NODE_SHIFT
from .shared.table import ESTABLISHED, peer_from_word
from .worker.cluster import Cluster
from .worker.process import Worker
from .worker.router import MAX_ROUTED_PAYLOAD, data_size, routable_payload

__all__ = ["BINARY", "TEXT", "WebSocketServer"]

F = TypeVar("F", bound=Callable[..., Any])


def _elsewhere(worker: Worker, fd: object) -> Cluster | None:
    """The worker's cluster when ``fd`` is a session of another node (cluster mode):
    operations on it go over the bus, never to this node's session table."""
    cluster = worker.cluster
    if cluster is not None and type(fd) is int and fd >> NODE_SHIFT != cluster.node:
        return cluster
    return None


def _wire(data: str | bytes, opcode: int | None) -> tuple[bytes, int]:
    """A message as the cluster bus carries it: bytes and the opcode they go out with."""
    if isinstance(data, str):
        return data.encode(), opcode or TEXT
    return bytes(data), opcode or BINARY


class WebSocketServer:
    """A WebSocket + HTTP server run by a master and its prefork workers.

    ``WebSocketServer("127.0.0.1", 9501, worker_num=4, max_wait_time=3.0)``; every
    keyword is a setting from :mod:`swoolish.core.settings`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9501, **settings: Any) -> None:
        self.settings = Settings({"host": host, "port": port, **settings})
        self._handlers = Handlers()
        self._worker: Worker | None = None
        self._processes: list[ProcessSpec] = []  # server.add_process, in order
        note_server_created(self)

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
    #
    # Every method below works for a session of any worker. This worker's sessions are
    # in ``worker.connections`` (checked first: the local path never touches shared
    # memory); another worker's are found in the shared session table and the
    # operation is routed to their owner through the master (swoolish.worker.router).

    def push(self, fd: int, data: str | bytes, opcode: int | None = None) -> bool:
        """Send a message to session ``fd``; ``False`` if it is gone, closing or backed up.

        For another worker's session, True means the message was handed to its owner
        (which then applies the same rules); False also when too much waits for the
        master already (``routed_refused``: it is not keeping up, see docs/design.md,
        "Channels"). Never raises for a gone session and never logs per push: failures
        are counted in ``stats()`` (``push_to_closed``, ``push_over_buffer``). A bad
        ``opcode`` (only TEXT and BINARY) or ``data`` raises ``ValueError`` here, at the
        call, for any session.
        """
        worker = self._worker
        if worker is None:
            worker = self._require_worker("push")  # raises
        connections = worker.connections
        conn = connections.get(fd) if type(fd) is int else None
        if conn is not None:
            if fd not in connections.arriving:
                return conn.push(data, opcode)  # checks data and opcode as check_push does
            check_push(data, opcode)
            return worker.router.hold(conn, fd, data, opcode)
        check_push(data, opcode)
        cluster = _elsewhere(worker, fd)
        if cluster is not None:
            return cluster.push(fd, *_wire(data, opcode))
        found = worker.router.lookup(fd)
        if found is None or found[1] < ESTABLISHED:
            worker.stats["push_to_closed"] += 1
            return False
        if data_size(data) > MAX_ROUTED_PAYLOAD:
            worker.stats["push_too_large"] += 1
            return False
        if not worker.router.send(ToRegion(found[0]), Push(fd, data, opcode)):
            return False  # counted in routed_refused
        worker.stats["routed_out"] += 1
        return True

    def exists(self, fd: int) -> bool:
        """True from accept until a close begins (either side), then False forever.

        For a session of another node (cluster mode) it reads this worker's replica:
        true from when its open reaches this node until its close does, its node is
        down, or this worker loses Redis (docs/cluster.md, "exists"); exact, at the cost
        of a round trip: ``await exists_remote(fd)``.
        """
        worker = self._require_worker("exists")
        cluster = _elsewhere(worker, fd)
        if cluster is not None:
            return cluster.reachable(fd)
        return fd in worker.connections or worker.router.lookup(fd) is not None

    async def exists_remote(self, fd: int, timeout: float = 0.5) -> bool:
        """Whether session ``fd`` is open, asked of the node that owns it (cluster mode);
        waits for that one node only, up to ``timeout`` seconds (then False). For this
        node's sessions it is :meth:`exists`."""
        cluster = _elsewhere(self._require_worker("exists_remote"), fd)
        if cluster is None:
            return self.exists(fd)
        return await cluster.exists_remote(fd, timeout)

    def node_of(self, fd: int) -> int:
        """The number of the node that owns session ``fd`` (0 without cluster mode)."""
        return fd >> NODE_SHIFT

    def is_local(self, fd: int) -> bool:
        """Whether session ``fd`` belongs to this node (any of its workers)."""
        return fd >> NODE_SHIFT == self.node

    @property
    def node(self) -> int:
        """This node's number in its cluster (0 without cluster mode)."""
        worker = self._worker
        return worker.cluster.node if worker is not None and worker.cluster is not None else 0

    def is_established(self, fd: int) -> bool:
        """True for a session whose WebSocket handshake is done and not closing."""
        worker = self._require_worker("is_established")
        conn = worker.connections.get(fd)
        if conn is not None:
            return conn.established and not conn.closing
        cluster = _elsewhere(worker, fd)
        if cluster is not None:
            return cluster.reachable(fd)  # the replica lists WebSocket sessions only
        found = worker.router.lookup(fd)
        return found is not None and found[1] >= ESTABLISHED

    def disconnect(self, fd: int, code: int = 1000, reason: str = "") -> bool:
        """Close a WebSocket session with ``code``/``reason``; False if it is not open."""
        worker = self._require_worker("disconnect")
        connections = worker.connections
        conn = connections.get(fd)
        if conn is not None:
            if connections.arriving and fd in connections.arriving:
                return worker.router.hold_disconnect(conn, fd, code, reason)
            return conn.disconnect(code, reason)
        cluster = _elsewhere(worker, fd)
        if cluster is not None:
            return cluster.disconnect(fd, code, reason)
        found = worker.router.lookup(fd)
        if found is None or found[1] < ESTABLISHED:
            return False
        check_close(code, reason)  # raise here, at the call, as for a local session
        return worker.router.send(ToRegion(found[0]), Disconnect(fd, code, reason))

    def close(self, fd: int) -> bool:
        """Close session ``fd`` (a WebSocket gets a 1000 close frame first)."""
        worker = self._require_worker("close")
        conn = worker.connections.get(fd)
        if conn is None:
            cluster = _elsewhere(worker, fd)
            if cluster is not None:
                return cluster.disconnect(fd, CLOSE_CODE, "")
            found = worker.router.lookup(fd)
            if found is None:
                return False
            return worker.router.send(ToRegion(found[0]), Close(fd))
        if conn.established:
            return self.disconnect(fd, 1000, "")
        conn.abort()
        return True

    def broadcast(self, data: str | bytes, fds: list[int] | None = None) -> int:
        """Push ``data`` to every established session of the server, or to ``fds``.

        One routed message per other worker, not per session. Returns how many sessions
        it was handed to: this worker's that accepted it, plus, for each other worker,
        the sessions its table lists (all of them), or the ``fds`` found in it. The
        other workers push when the message reaches them, to the sessions they have
        then. In cluster mode the other nodes get one message on the bus first (one
        per node with ``fds``), and their sessions as this worker's replica lists them
        are counted (docs/cluster.md). The other workers' messages leave before this
        worker writes to its own sessions, so that all workers write at once.
        """
        worker = self._require_worker("broadcast")
        if data_size(data) > MAX_ROUTED_PAYLOAD:
            raise ValueError(f"broadcast data over {MAX_ROUTED_PAYLOAD} bytes")
        router = worker.router
        cluster = worker.cluster
        handed = 0
        if fds is None:
            remote = cluster.broadcast(*_wire(data, None)) if cluster is not None else 0
            handed, routed = router.broadcast(data, None)
            handed += remote
            table = router.table
            if table is not None and routed:
                for region, _ in table.active_regions():
                    if region != router.region:
                        handed += table.established_count(region)
            return handed
        by_region: dict[int, list[int]] = {}
        remote_fds: list[int] = []
        local = []
        for fd in fds:
            conn = worker.connections.get(fd) if type(fd) is int else None
            if conn is not None:
                local.append(conn)
                continue
            if _elsewhere(worker, fd) is not None:
                remote_fds.append(fd)
                continue
            found = router.lookup(fd)
            if found is None or found[1] < ESTABLISHED:
                worker.stats["push_to_closed"] += 1
                continue
            by_region.setdefault(found[0], []).append(fd)
        for region, sids in by_region.items():
            if router.send_now(ToRegion(region), PushMany(sids, data, None)):
                handed += len(sids)  # pushed there while this worker pushes to its own
        if remote_fds and cluster is not None:
            handed += cluster.push_many(remote_fds, *_wire(data, None))
        for conn in local:
            handed += conn.push(data, None)
        return handed

    @property
    def connections(self) -> list[int]:
        """Ids of the established sessions of every worker (read from the shared table).

        Costs a scan of every active region (O(max_connections) each); for this worker's
        own sessions use ``local_connections``.
        """
        worker = self._require_worker("connections")
        table = worker.router.table
        ids = set(table.established()) if table is not None else set()
        ids.update(self.local_connections)
        if worker.cluster is not None:
            ids.update(worker.cluster.connections())  # other nodes', as the replica lists
        return sorted(ids)

    @property
    def local_connections(self) -> list[int]:
        """Ids of this worker's established sessions."""
        worker = self._require_worker("local_connections")
        return [sid for sid, conn in worker.connections.items() if conn.established]

    def get_client_info(self, fd: int) -> dict[str, Any] | None:
        """Peer address, connect and last-activity times, counters; None if gone.

        For another worker's session the answer comes from the shared table and has
        only ``fd``, ``worker_id``, ``remote_ip``, ``remote_port`` (IPv4; empty for
        IPv6), ``websocket_status`` and ``remote: True``.
        """
        worker = self._require_worker("get_client_info")
        conn = worker.connections.get(fd)
        if conn is not None:
            return conn.client_info()
        found = worker.router.lookup(fd)
        if found is None or worker.router.table is None:
            return None
        region, state, peer = found
        ip, port = peer_from_word(peer)
        return {
            "fd": fd,
            "worker_id": worker.router.table.region_slot(region),
            "remote_ip": ip,
            "remote_port": port,
            "websocket_status": 3 if state >= ESTABLISHED else 1,
            "remote": True,
        }

    def stats(self, server_wide: bool = False) -> Any:
        """This worker's counters (connections, messages, failed pushes, timers …).

        ``stats(server_wide=True)`` returns the coroutine of ``server_stats()``.
        """
        if server_wide:
            return self.server_stats()
        return self._require_worker("stats").snapshot()

    async def server_stats(self) -> dict[str, Any]:
        """Every worker's counters and their totals: ``await server.server_stats()``.

        Gathered through the master like ``swoolish status`` (each worker answers
        within a second or is reported with its last figures).
        """
        return await self._require_worker("server_stats").server_stats()

    # ------------------------------------------------------------------ worker messages

    def send_message(self, message: Any, worker_id: int, node: int | None = None) -> bool:
        """Deliver ``message`` (anything picklable) to worker ``worker_id``.

        Its ``pipe_message`` handler gets ``(server, src_worker_id, message)``; the
        current worker of that slot gets it (the new one once a reload made it serve).
        ``worker_id`` may name an event worker, a task worker or a user process
        (``process_id()``); an unknown one is a ValueError listing the valid ids.
        In cluster mode ``node`` (see :meth:`node_of`) sends it to event worker
        ``worker_id`` of another node, over the bus: False when that node is not live.
        """
        worker = self._require_worker("send_message")
        cluster = worker.cluster
        if node is None or cluster is None or node == cluster.node:
            return worker.send_pipe(message, worker_id)
        if type(worker_id) is not int or not 0 <= worker_id < self.settings.worker_num:
            raise ValueError(
                f"another node's worker_id is an event worker, 0 to "
                f"{self.settings.worker_num - 1}; got {worker_id!r}"
            )
        payload = routable_payload(
            message,
            "send_message needs a picklable message",
            f"message over {MAX_ROUTED_PAYLOAD} bytes once pickled",
        )
        return cluster.send_pipe(node, worker_id, payload)

    # ------------------------------------------------------------------ user processes

    def add_process(self, target: Callable[..., Any], name: str | None = None) -> int:
        """Register a long-running process of the app (Swoole's ``addProcess``); returns
        its index (0, 1, …). Call it at module level, before the server starts.

        The master starts it after the workers, restarts it with back-off when it dies,
        replaces it on a reload (with the new code) and stops it on shutdown
        (docs/lifecycle.md, "User processes"). ``target(process)`` gets a
        ``UserProcess``; a plain function runs in a thread of its own, an ``async def``
        on the process's loop. ``name`` (default: the target's name) finds the target
        again in the app each new process imports; names are unique.
        """
        if not callable(target):
            raise TypeError(f"add_process needs a callable target, got {target!r}")
        chosen = name if name is not None else getattr(target, "__name__", "process")
        if not isinstance(chosen, str) or not chosen:
            raise ValueError(f"a user process needs a non-empty name, got {name!r}")
        if any(spec.name == chosen for spec in self._processes):
            raise ValueError(f"a user process named {chosen!r} is registered already")
        self._processes.append(ProcessSpec(chosen, target))
        return len(self._processes) - 1

    @property
    def processes(self) -> list[ProcessSpec]:
        """The user processes registered with :meth:`add_process`, in order."""
        return list(self._processes)

    def process_id(self, process: int | str) -> int:
        """The worker id of user process ``process`` (its index or name), for
        ``send_message``: it comes after the event workers' and the task workers'."""
        for index, spec in enumerate(self._processes):
            if process == index or process == spec.name:
                return self.settings.worker_num + self.settings.task_worker_num + index
        names = ", ".join(repr(spec.name) for spec in self._processes) or "none"
        raise ValueError(f"unknown user process {process!r}; registered: {names}")

    # ------------------------------------------------------------------ tasks (docs/tasks.md)

    def task(
        self,
        data: Any,
        dst_worker_id: int = -1,
        callback: Callable[..., Any] | None = None,
    ) -> int | bool:
        """Hand ``data`` (anything picklable) to a task worker; returns the task id at once.

        The least busy task worker takes it (``dst_worker_id`` ≥ 0: that one, counted
        from 0 as in Swoole). Its result comes back to ``callback(server, task_id,
        result)``, else to the ``finish`` handler, in this worker's loop; a task whose
        handler raised brings the exception as the result. ``False`` when the task
        workers it may go to hold ``task_queue_size`` tasks each: nothing was sent.
        """
        worker = self._require_worker("task")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        task_id = worker.task_client.submit(data, dst_worker_id, callback)
        return False if task_id is None else task_id

    async def taskwait(self, data: Any, timeout: float = 0.5, dst_worker_id: int = -1) -> Any:
        """Run ``data`` in a task worker and return its result (``await``).

        Raises the handler's exception (same type and message), ``TaskQueueFull`` when
        the task workers are full, ``TaskError`` when its task worker died or stopped
        before finishing it, and ``TimeoutError`` after ``timeout`` seconds (a result
        arriving later is dropped and counted in ``task_results_late``).
        """
        worker = self._require_worker("taskwait")
        return await worker.task_client.wait(data, timeout, dst_worker_id)

    async def task_gather(
        self, items: list[Any], timeout: float = 0.5, dst_worker_id: int = -1
    ) -> list[Any]:
        """Run each item as a task, at once, and return their results in order
        (Swoole's ``taskWaitMulti``/``taskCo``); an item that failed, was refused or
        got no result within ``timeout`` has its exception as its entry."""
        worker = self._require_worker("task_gather")
        return await worker.task_client.gather(list(items), timeout, dst_worker_id)

    # ------------------------------------------------------------------ process control

    def reload(self) -> bool:
        """Ask the master for a rolling reload (Swoole's ``$server->reload()``).

        Returns True when the request was handed to the master; the reload itself runs
        after this handler returns, and this worker is among those it replaces.
        """
        worker = self._require_worker("reload")
        if worker.channel is None:
            return False
        worker.report(ReloadRequest())
        return True

    def shutdown(self) -> None:
        """Gracefully stop the whole server (every worker drains with 1001)."""
        worker = self._require_worker("shutdown")
        if worker.channel is not None:
            worker.report(ShutdownRequest())
        else:
            worker.request_stop(GOING_AWAY)

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
        if loading_in_worker():
            return
        from .launch import run_script

        run_script(self)

    # ------------------------------------------------------------------ internals

    @property
    def handlers(self) -> Handlers:
        """The handlers registered with :meth:`on`."""
        return self._handlers

    def attach_worker(self, worker: Worker) -> None:
        """Bind this object to the worker running it (done once, after the fork)."""
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
    sendMessage = send_message
    addProcess = add_process
    taskWait = taskwait
    taskWaitMulti = task_gather
    taskCo = task_gather
