"""The catalogue of messages between swoolish processes, and their one encoding.

Every message is a small typed class (a ``NamedTuple``: immutable, cheap to build and to
encode); a channel carries nothing else. Messages are encoded with :func:`encode` and
decoded with :func:`decode` at the channel's edge (:mod:`swoolish.shared.ipc`), and each
side dispatches them by type, one method per message. docs/design.md lists them all: who
sends each, who answers, and what it guarantees.

Three conversations use them:

* **worker → master** (the worker's channel): lifecycle (:class:`Ready`, :class:`Paused`,
  :class:`Exiting`, :class:`BootFailed`, :class:`BootStalled`), figures
  (:class:`WorkerFigures`), requests of the app (:class:`ReloadRequest`,
  :class:`ShutdownRequest`, :class:`ServerStatsRequest`), :class:`RecycleRequest`
  (``max_request``), the routing of operations
  on other workers' sessions (:class:`Route`, :class:`Adopting`, :class:`Adopted`,
  :class:`Release`, :class:`ReleaseDone`), and tasks (:class:`Task` from an event worker,
  :class:`TaskResult` from a task worker);
* **master → worker**: :class:`Serve`, :class:`Pause`, :class:`Stop`, :class:`StatsPoll`,
  :class:`ServerStatsReply`, :class:`Routed`, :class:`Released`, and the same
  :class:`Task` (to a task worker) and :class:`TaskResult` (to the task's sender);
* **old worker ↔ new worker** (the hand-off channel of a reload): :class:`HandoffBatch`,
  :class:`HandoffAck`.

Operations on sessions (:data:`Operation`) travel inside :class:`Route` and
:class:`Routed`; a route names its destination with a :data:`Target`.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple, TypeAlias

__all__ = [
    "HANDOFF_VERSION",
    "Adopted",
    "Adopting",
    "Arrived",
    "BootFailed",
    "BootStalled",
    "Broadcast",
    "Close",
    "Disconnect",
    "Exiting",
    "HandoffAck",
    "HandoffBatch",
    "Message",
    "MessageError",
    "MovingSession",
    "Operation",
    "Pause",
    "Paused",
    "Pipe",
    "Push",
    "PushMany",
    "Ready",
    "RecycleRequest",
    "Release",
    "ReleaseDone",
    "Released",
    "ReloadRequest",
    "Route",
    "Routed",
    "Serve",
    "ServerStatsReply",
    "ServerStatsRequest",
    "ShutdownRequest",
    "StatsPoll",
    "Stop",
    "Target",
    "Task",
    "TaskResult",
    "ToAll",
    "ToRegion",
    "ToSlot",
    "WorkerFigures",
    "decode",
    "encode",
    "operation_session",
]

Payload: TypeAlias = str | bytes

# ------------------------------------------------------------------ where a route goes


class ToRegion(NamedTuple):
    """The worker that owns ``region`` of the shared session table (a session's owner)."""

    region: int


class ToSlot(NamedTuple):
    """The worker serving ``slot`` now (the new one, once a reload made it serve)."""

    slot: int


class ToAll(NamedTuple):
    """Every worker but the one owning region ``origin`` (-1: every worker)."""

    origin: int


Target: TypeAlias = ToRegion | ToSlot | ToAll

# ------------------------------------------------------------------ operations on sessions


class Push(NamedTuple):
    """Send one message to session ``sid``; ``broadcast`` identifies a broadcast's copy
    (a moving session gets each broadcast once, see docs/design.md)."""

    sid: int
    data: Payload
    opcode: int | None
    broadcast: int | None = None


class PushMany(NamedTuple):
    """``server.broadcast(data, fds)``: the same message to the listed sessions of one
    worker."""

    sids: list[int]
    data: Payload
    opcode: int | None


class Broadcast(NamedTuple):
    """``server.broadcast(data)``: the same message to every session of every worker."""

    data: Payload
    opcode: int | None
    broadcast: int


class Disconnect(NamedTuple):
    """Close session ``sid`` with ``code`` and ``reason`` (checked by the sender)."""

    sid: int
    code: int
    reason: str


class Close(NamedTuple):
    """``server.close(fd)``: a WebSocket gets a 1000 close, an HTTP connection is cut."""

    sid: int


class Pipe(NamedTuple):
    """``server.send_message()``: a pickled message for the ``pipe_message`` handler."""

    src_worker: int
    payload: bytes


class Arrived(NamedTuple):
    """From the master to a session's new owner: everything routed to it before it moved
    has been delivered; the new owner's own held operations may go now."""

    sid: int


Operation: TypeAlias = Push | PushMany | Broadcast | Disconnect | Close | Pipe | Arrived


def operation_session(op: Operation) -> int | None:
    """The one session an operation is for; None for broadcasts, pipes and ``PushMany``."""
    if type(op) is Push or type(op) is Disconnect or type(op) is Close:
        return op.sid
    return None


# ------------------------------------------------------------------ worker -> master


class Ready(NamedTuple):
    """The worker imported the app, ran ``worker_start`` and accepts connections."""

    pid: int


class Paused(NamedTuple):
    """Answer to :class:`Pause`: the worker no longer accepts new connections."""


class BootFailed(NamedTuple):
    """The worker cannot boot (the app failed to import, ``worker_start`` raised) and
    exits with EXIT_BOOT_ERROR: ``error`` is the exception ("ZeroDivisionError: division
    by zero"), ``where`` the file:line of the innermost frame of the app's code. A rolled
    back reload says so (docs/reload.md)."""

    error: str
    where: str


class BootStalled(NamedTuple):
    """The worker is still booting shortly before ``worker_start_timeout``: ``line`` is
    the source line it is at, ``where`` its file:line, so a reload rolled back for the
    timeout says where the worker was stuck."""

    seconds: float
    line: str
    where: str


class Exiting(NamedTuple):
    """The worker's last words: how its drain went (logged, and shown by ``reload --wait``)."""

    timers_cleared: int
    connections_closed: int
    seconds: float
    handoff: dict[str, Any] | None = None  # moved, fell_back, fallback_reasons, handoff_seconds


class WorkerFigures(NamedTuple):
    """Answer to :class:`StatsPoll`: the worker's counters (``server.stats()``)."""

    figures: dict[str, Any]


class ReloadRequest(NamedTuple):
    """``server.reload()``: the app asks the master for a rolling reload."""


class ShutdownRequest(NamedTuple):
    """``server.shutdown()``: the app asks the master for a graceful shutdown."""


class RecycleRequest(NamedTuple):
    """The worker handled ``handled`` requests and messages (its ``max_request`` plus
    its grace): it asks, once, to be replaced through the rolling machinery."""

    handled: int


class ServerStatsRequest(NamedTuple):
    """``await server.server_stats()``: every worker's figures, answered by
    :class:`ServerStatsReply` with the same ``request_id``."""

    request_id: int


class Route(NamedTuple):
    """Operations on sessions of other workers, for the master to forward in order."""

    target: Target
    ops: list[Operation]


class Adopting(NamedTuple):
    """The new worker is about to handle sessions handed over by ``predecessor``: the
    master reads what the predecessor routed first."""

    predecessor: int | None


class Adopted(NamedTuple):
    """The new worker settled these sessions, after routing what it had before."""

    sids: list[int]


class Release(NamedTuple):
    """The old worker asks to let go of hand-off batch ``batch`` and gives the master the
    operations it kept for its sessions."""

    batch: int
    moved: list[int]
    kept: list[Operation]


class ReleaseDone(NamedTuple):
    """After :class:`Released`: what reached the old worker meanwhile."""

    batch: int
    late: list[Operation]


# ------------------------------------------------------------------ master -> worker


class Serve(NamedTuple):
    """Start accepting connections: this worker's whole generation is ready, so a
    rollback can no longer take the connections it accepts (docs/reload.md)."""


class Pause(NamedTuple):
    """Stop accepting new connections (answered by :class:`Paused`)."""


class Stop(NamedTuple):
    """Run ``worker_stop`` and ``worker_exit``, then drain closing with ``code``; with
    ``handoff`` the message carries the successor's inbox (one descriptor) and the open
    WebSockets move there."""

    code: int
    handoff: bool = False
    node_stopping: bool = False  # the whole node stops, not a reload or recycle of one worker


class StatsPoll(NamedTuple):
    """Send your figures (answered by :class:`WorkerFigures`)."""


class ServerStatsReply(NamedTuple):
    """Answer to :class:`ServerStatsRequest`."""

    request_id: int
    status: dict[str, Any]


class Routed(NamedTuple):
    """Operations on this worker's sessions, from other workers, in order."""

    ops: list[Operation]


class Released(NamedTuple):
    """The master parks operations on batch ``batch``'s sessions now (answered by
    :class:`ReleaseDone`)."""

    batch: int


# ------------------------------------------------------------------ tasks (docs/tasks.md)


class Task(NamedTuple):
    """``server.task()``: pickled ``payload`` for the ``task`` handler of task worker
    ``slot`` (0 … task_worker_num - 1), which the sender chose and counted in the shared
    task load; the master relays it to the task worker serving that slot now."""

    task_id: int  # the sender's own number for it
    src_worker: int  # the sender's worker_id
    src_pid: int
    slot: int
    payload: bytes


class TaskResult(NamedTuple):
    """A task's one answer, relayed by the master to its sender: ``payload`` pickles the
    result (``ok``) or the exception (not ``ok``); ``notify`` is False when the handler
    returned None without ``task.finish()`` (no ``finish`` event, as in Swoole)."""

    task_id: int
    src_pid: int
    slot: int
    ok: bool
    payload: bytes
    notify: bool = True


# ------------------------------------------------------------------ old worker <-> new worker

HANDOFF_VERSION = 2


class MovingSession(NamedTuple):
    """The record of a WebSocket session on its way to another worker: plain data only
    (the new worker runs new code), with the socket itself sent alongside."""

    sid: int
    peer: tuple[str, int]
    connect_time: float
    messages_in: int
    messages_out: int
    extensions: list[dict[str, Any]]  # negotiated permessage-deflate parameters
    subprotocol: str | None
    current_size: int | None  # bytes of the fragmented message in progress
    fragments: list[Payload]
    frag_opcode: int
    decoder: tuple[bytes, int] | None  # UTF-8 decoder state inside a fragmented text
    unparsed: bytes  # read, not yet a complete frame: parsed first over there
    unsent: bytes  # written, not yet sent: written first over there
    app: Any  # what the app's ``handoff`` handler returned (plain data)
    timers: list[dict[str, Any]]  # bound timers, by callback name
    path: str = ""  # the handshake's request path, for the access log's close line


class HandoffBatch(NamedTuple):
    """Up to 253 sessions (their sockets travel with the message); refused after
    ``deadline`` (CLOCK_MONOTONIC), when the old worker has taken them back."""

    version: int
    batch: int
    sender_pid: int
    deadline: float
    sessions: list[MovingSession]
    # cluster mode: how far the old worker had read each bus publisher when these
    # sessions left it, ``(node, pid) -> seq`` (swoolish.worker.cluster, "Reloads")
    bus_marks: dict[tuple[int, int], int] | None = None


class HandoffAck(NamedTuple):
    """The new worker owns the ``accepted`` sessions of ``batch`` from now on."""

    batch: int
    accepted: list[int]
    reason: str


Message: TypeAlias = (
    Ready
    | Paused
    | Exiting
    | BootFailed
    | BootStalled
    | WorkerFigures
    | ReloadRequest
    | ShutdownRequest
    | ServerStatsRequest
    | RecycleRequest
    | Route
    | Adopting
    | Adopted
    | Release
    | ReleaseDone
    | Serve
    | Pause
    | Stop
    | StatsPoll
    | ServerStatsReply
    | Routed
    | Released
    | Task
    | TaskResult
    | HandoffBatch
    | HandoffAck
)

_CATALOGUE: frozenset[type] = frozenset(
    (
        Ready,
        Paused,
        Exiting,
        BootFailed,
        BootStalled,
        WorkerFigures,
        ReloadRequest,
        ShutdownRequest,
        ServerStatsRequest,
        RecycleRequest,
        Route,
        Adopting,
        Adopted,
        Release,
        ReleaseDone,
        Serve,
        Pause,
        Stop,
        StatsPoll,
        ServerStatsReply,
        Routed,
        Released,
        Task,
        TaskResult,
        HandoffBatch,
        HandoffAck,
    )
)


class MessageError(ValueError):
    """Bytes on a channel that are not a message of the catalogue."""


def encode(message: Message) -> bytes:
    """The one encoding of every message (pickle: both ends run the same swoolish)."""
    if type(message) not in _CATALOGUE:
        raise TypeError(f"not a swoolish message: {message!r}")
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes | memoryview) -> Message:
    """The message ``data`` encodes; :class:`MessageError` for anything else."""
    try:
        message = pickle.loads(data)
    except Exception as exc:
        raise MessageError(f"undecodable message ({type(exc).__name__})") from None
    if type(message) not in _CATALOGUE:
        raise MessageError(f"not a swoolish message: {type(message).__name__}")
    return message  # type: ignore[no-any-return]
