"""The written interface of a worker, as its connections, router and hand-off see it.

:class:`swoolish.worker.process.Worker` implements :class:`WorkerHost`; the modules below
it in the worker package (``http``, ``websocket``, ``router``, ``handoff``) depend on
this protocol only, never on the class, so they import nothing above them, and a test can
hand them a small double that a type checker holds to the same interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..core.messages import Message, Operation, Target
from ..core.settings import Settings
from ..core.stats import Counts
from ..core.timerwheel import TimerWheel
from .deadlines import Deadlines
from .listener import Listener
from .sessions import SessionMap
from .tlshandshakes import TlsHandshakes

__all__ = ["HandoffRouting", "SessionIds", "WorkerHost"]


class HandoffRouting(Protocol):
    """The router's side of a live hand-off (see :mod:`swoolish.worker.router`)."""

    def send(self, target: Target, op: Operation) -> bool: ...

    def lookup(self, sid: int) -> tuple[int, int, int] | None:
        """A session of this node in the shared table: (region, state, peer), or None."""

    def flush(self) -> None: ...

    def release(self, number: int, sids: list[int]) -> None: ...

    async def answered(self, number: int, timeout: float) -> bool: ...

    def adopting(self, predecessor: int | None) -> None: ...

    def lost(self, sid: int) -> None: ...

    def announce(self) -> None: ...


class SessionIds(Protocol):
    """Hands out session ids, never reused (swoolish.shared.ids.IdAllocator)."""

    def next_id(self) -> int: ...


class WorkerHost(Protocol):
    """What connections, the router and the hand-off use of their worker."""

    worker_id: int
    settings: Settings
    loop: asyncio.AbstractEventLoop
    log: logging.Logger
    server: Any  # the app's server object, the first argument of every handler
    stats: Counts
    connections: SessionMap  # this worker's sessions (open, not closing)
    listener: Listener  # takes new connections, balanced against the other workers
    live: set[Any]  # every connection with a transport, closing ones included
    timers: TimerWheel
    deadlines: Deadlines  # every connection's deadline (worker/deadlines.py)
    draining: bool
    handled_left: int = -1  # requests and messages before max_request (below 0: never)
    outliving_handlers: int = 0  # lost connections whose coroutine handlers still work
    closing_with_output: int = 0  # closed by the server, output still unsent
    tls_handshakes: TlsHandshakes  # accepted on a TLS listener, handshake under way

    @property
    def ids(self) -> SessionIds:
        """Where new session ids come from (never reused)."""
        ...

    @property
    def router(self) -> HandoffRouting: ...

    #: The app's handler of an event, or None. An attribute holding a lookup (a dict's
    #: ``get``), not a method: connections look a handler up per message and per
    #: request, and a C call is what that should cost.
    handler: Callable[[str], Callable[..., Any] | None]

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the drain waits for."""
        ...

    def report(self, message: Message) -> None:
        """Send ``message`` to the master."""

    def clear_bound_timers(self, sid: int) -> None: ...

    def handled_enough(self) -> None:
        """``handled_left`` reached 0: ask the master to recycle this worker."""

    def established_while_draining(self, conn: Any) -> None:
        """A handshake completed after this worker stopped accepting."""

    def take_late_movers(self, final: bool) -> list[Any]: ...

    def serves_slot(self) -> bool:
        """Whether this worker is the one serving its slot now (not before its Serve,
        not once a reload paused it)."""
        ...

    # cluster mode (swoolish.worker.cluster); without it these do nothing

    def bus_marks(self) -> dict[tuple[int, int], int] | None:
        """How far this worker has read the cluster bus, as sessions leave it."""

    async def settle_bus(self) -> None:
        """Wait (bounded) until Redis answered what this worker published."""

    def bus_adopting(self, sid: int, marks: dict[tuple[int, int], int] | None) -> None:
        """A session is moving here: once it is ours, it catches up on the bus messages
        its old worker had not read."""
