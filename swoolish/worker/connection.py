"""What every client connection of a worker shares, HTTP or WebSocket.

A connection is one session (its id never reused, docs/quickstart.md): it starts as
:class:`swoolish.worker.http.HttpConnection` and, when a WebSocket handshake succeeds,
hands its transport to a :class:`swoolish.worker.websocket.WsConnection`
(``transport.set_protocol``), which keeps the same session id. This base class owns the
parts both need: the in-order dispatch of handlers, the per-connection timer, reading
flow control with named reasons, and the start of a close.

Dispatch keeps a connection's events in order without a task per event: a plain
function handler is called inline; the first coroutine handler opens a per-connection
queue that one task works through until it is empty.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable
from typing import Any

from .flow import FlowControl, Reason, kernel_unsent
from .host import WorkerHost

__all__ = ["MAX_QUEUED_BYTES", "MAX_QUEUED_HANDLERS", "Connection", "high_water"]

MAX_QUEUED_HANDLERS = 1024  # events queued for coroutine handlers before a connection stops reading
#: Bytes of messages queued for coroutine handlers before a connection stops reading (or
#: max_message_size, if larger): the count alone let 1,024 messages of 1 MiB wait, and
#: a compressed message of 1 KiB on the wire inflates to 1 MiB (docs/security.md).
MAX_QUEUED_BYTES = 1024 * 1024


def high_water(buffer_output_size: int) -> int:
    """Unsent bytes past which a connection stops reading (and answering HTTP requests).

    A quarter of the budget: a client that does not read is stopped well before
    ``buffer_output_size``, the point at which it is closed (docs/quickstart.md, "Bad
    input"), so only what one read already brought in can take it that far.
    """
    return buffer_output_size // 4


class Connection:
    """The session state and handler dispatch shared by HTTP and WebSocket connections."""

    __slots__ = (
        "_handler_queue",
        "_lingering",
        "_outliving",
        "_queued_bytes",
        "_timer",
        "_timer_at",
        "_timer_callback",
        "_timer_deadline",
        "_worker",
        "closing",
        "connect_time",
        "established",
        "flow",
        "last_time",
        "messages_in",
        "messages_out",
        "peer",
        "sid",
        "transport",
    )

    def __init__(self, worker: WorkerHost) -> None:
        self._worker = worker
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.sid = 0
        self.established = False  # WebSocket handshake done (Swoole's isEstablished)
        self.closing = False  # a close began; exists() is False from here on
        self.peer: tuple[str, int] = ("", 0)
        self.connect_time = self.last_time = 0.0
        self.messages_in = self.messages_out = 0
        self._handler_queue: deque[tuple[Callable[..., Any], tuple[Any, ...], int]] | None = None
        self._queued_bytes = 0  # the sizes of the messages in _handler_queue
        self._outliving = False  # lost, its handlers still working: see _count_if_outliving
        self._lingering = False  # closed by us, output still unsent: see _bound_unsent
        # The connection's one deadline (a request, idle or closing deadline), filed
        # with the worker's Deadlines (worker/deadlines.py); see _arm_timer
        self._timer = 0  # the tick it is filed under; 0: none is
        self._timer_at = 0.0  # the deadline it is filed for
        self._timer_deadline = 0.0  # when the callback is due (never before _timer_at)
        self._timer_callback: Callable[[], None] | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so a client that sends
        # without reading cannot grow our memory (docs/quickstart.md, "Bad input").
        if self.flow is not None:
            self.flow.pause(Reason.BACKPRESSURE)

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume(Reason.BACKPRESSURE)

    # ------------------------------------------------------------------ the worker's view

    def push(self, data: str | bytes, opcode: int | None) -> bool:
        """Only an established WebSocket takes messages: ``False`` here, counted."""
        self._worker.stats["push_to_closed"] += 1
        return False

    def disconnect(self, code: int = 1000, reason: str = "") -> bool:
        """Only an open WebSocket has a closing handshake to start."""
        return False

    def abort(self) -> None:
        if self.transport is not None:
            self._begin_close()
            self.transport.abort()

    def heartbeat(self, now: float, idle_time: float) -> None:
        """The worker's periodic check of its sessions (``heartbeat_check_interval``)."""

    def awaiting_first_request(self) -> bool:
        """Accepted, and neither answered nor upgraded yet (only an HTTP connection)."""
        return False

    def quiescent(self) -> bool:
        """No handler of this connection is in flight."""
        return self._handler_queue is None

    def client_info(self) -> dict[str, Any]:
        return {
            "fd": self.sid,
            "worker_id": self._worker.worker_id,
            "remote_ip": self.peer[0],
            "remote_port": self.peer[1],
            "connect_time": self.connect_time,
            "last_time": self.last_time,
            "websocket_status": 3 if self.established else 1,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
        }

    # ------------------------------------------------------------------ for the subclasses

    def _report_over_budget(self, unsent: int) -> None:
        """Counted, and logged once: the connection is closed right after."""
        worker = self._worker
        worker.stats["closed_over_buffer"] += 1
        worker.log.warning(
            "session %d (%s:%d) does not read: %d bytes wait unsent, over "
            "buffer_output_size (%d); closing it",
            self.sid,
            self.peer[0],
            self.peer[1],
            unsent,
            worker.settings.buffer_output_size,
        )

    def _begin_close(self) -> None:
        """The session ends here for the app: exists() turns False, bound timers go."""
        if self.closing:
            return
        self.closing = True
        worker = self._worker
        worker.connections.closing(self.sid)
        if self.sid:
            worker.clear_bound_timers(self.sid)

    def _close_transport(self, transport: asyncio.Transport) -> None:
        """The server's end of a connection: the session ends, and the transport closes
        once what is unsent is sent (``_bound_unsent`` limits how long)."""
        self._begin_close()
        transport.close()
        self._bound_unsent(transport)

    def _bound_unsent(self, transport: asyncio.Transport) -> None:
        """A closing transport still holding output keeps the connection, and those
        bytes, for as long as its client takes nothing: a client that asked for an
        answer (or sent a close frame) and never reads would hold them for ever. Such a
        connection counts against max_connections until it is lost, and ``_linger``
        arms the deadline past which it is reset (docs/quickstart.md, "Bad input"). One
        size check: a connection closing with nothing unsent costs nothing more."""
        if self._lingering or not self._owed(transport):
            return
        self._lingering = True
        self._worker.closing_with_output += 1
        self._linger(transport)

    def _owed(self, transport: asyncio.Transport) -> int:
        """The bytes its client is still owed, as far as the worker can tell: the
        transport's buffer and, over TLS, the socket's send queue in the kernel, as
        uvloop's TLS transport keeps none of what it passed on (flow.kernel_unsent). A
        TLS client that asked for an answer and then took nothing was otherwise never
        let go: its transport looked empty, so its close armed no deadline, and uvloop
        waits for ever to send what it holds before it closes the socket."""
        unsent = transport.get_write_buffer_size()
        if self._worker.settings.ssl_cert_file is not None:
            unsent += kernel_unsent(transport)
        return unsent

    def _linger(self, transport: asyncio.Transport) -> None:
        """Arm the deadline of a connection closed with output unsent (the subclass's)."""
        raise NotImplementedError

    def _count_lost(self) -> None:
        """At connection_lost: a connection that lingered with output holds its place
        in max_connections no more (_bound_unsent); a closed one whose handlers still
        work takes it on (_count_if_outliving)."""
        if self._lingering:
            self._lingering = False
            self._worker.closing_with_output -= 1
        self._count_if_outliving()

    def _dispatch(
        self,
        handler: Callable[..., Any] | None,
        args: tuple[Any, ...],
        after: Callable[[], None] | None = None,
        size: int = 0,
    ) -> None:
        """Run a handler in this connection's order: inline if nothing is pending.

        Queued behind a coroutine handler, an event counts ``size`` bytes (a message's)
        against MAX_QUEUED_BYTES; past that, or MAX_QUEUED_HANDLERS events, the
        connection stops reading until its handlers are done (``_handlers_behind``).
        """
        if self._handler_queue is not None:
            self._handler_queue.append((_then(handler, after), args, size))
            self._queued_bytes += size
            if self.flow is not None and self._handlers_behind():
                self.flow.pause(Reason.HANDLERS)
            return
        if handler is not None:
            try:
                result = handler(*args)
            except Exception:
                self._handler_failed(handler)
                return
            if result is not None and self._queue_if_awaitable(result, handler, after):
                return
        if after is not None:
            try:
                after()  # e.g. the end() of a response the handler left open
            except Exception:
                self._handler_failed(handler or after)

    def _queue_if_awaitable(
        self, result: Any, handler: Callable[..., Any], after: Callable[[], None] | None = None
    ) -> bool:
        """A coroutine handler's ``result`` runs as a task (then ``after``), and this
        connection's later handlers queue behind it; False if ``result`` is no awaitable."""
        if not inspect.isawaitable(result):
            return False
        self._handler_queue = deque()
        self._worker.track(self._work_handler_queue(result, handler, after))
        return True

    async def _work_handler_queue(
        self, first: Any, handler: Callable[..., Any], after: Callable[[], None] | None
    ) -> None:
        """Await coroutine handlers one after another until the queue is empty."""
        queue = self._handler_queue
        assert queue is not None
        try:
            await first
            if after is not None:
                after()
        except Exception:
            self._handler_failed(handler)
        while queue:
            step, args, size = queue.popleft()
            self._queued_bytes -= size
            try:
                result = step(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                self._handler_failed(step)
        self._handler_queue = None
        if self._outliving:
            self._outliving = False
            self._worker.outliving_handlers -= 1
        self._handlers_idle()
        if self.flow is not None and not self._handlers_behind():
            self.flow.resume(Reason.HANDLERS)  # not if what _handlers_idle ran is behind

    def _count_if_outliving(self) -> None:
        """At connection_lost: a connection whose coroutine handlers are still working
        through what it sent counts against max_connections until they are done. Its
        queue holds up to MAX_QUEUED_BYTES (or a max_message_size) of messages, and a
        client that closes and connects again must not make a worker hold that for as
        many connections as it cares to open (docs/security.md)."""
        if self._handler_queue is not None and not self._outliving:
            self._outliving = True
            self._worker.outliving_handlers += 1

    def _handlers_behind(self) -> bool:
        """Whether the events queued for coroutine handlers are past their bound: more
        than MAX_QUEUED_HANDLERS, or messages of MAX_QUEUED_BYTES (or one
        max_message_size, if larger) in all."""
        queue = self._handler_queue
        if queue is None:
            return False
        if len(queue) > MAX_QUEUED_HANDLERS:
            return True
        queued = self._queued_bytes
        return queued >= MAX_QUEUED_BYTES and queued >= self._worker.settings.max_message_size

    def _handlers_idle(self) -> None:
        """Every handler of this connection has finished (after coroutine handlers)."""

    def _handler_failed(self, handler: Callable[..., Any]) -> None:
        """Log with traceback; the subclass closes this connection only."""
        worker = self._worker
        worker.stats["handler_errors"] += 1
        name = getattr(handler, "__qualname__", repr(handler))
        worker.log.exception(
            "handler %s raised for session %d; closing it with 1011", name, self.sid
        )
        self._fail_after_handler_error()

    def _fail_after_handler_error(self) -> None:
        raise NotImplementedError

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay`` seconds (up to ``deadlines.RESOLUTION`` later),
        replacing what was armed before.

        A keep-alive connection re-arms its deadline twice per request; a deadline
        already filed no later than the new one is kept, and when it passes early it is
        filed again for the rest (``deadline_passed``), so steady traffic files nothing
        new. The worker's ``Deadlines`` hold every connection's, with one loop timer.
        """
        worker = self._worker
        deadline = worker.loop.time() + delay
        self._timer_deadline = deadline
        self._timer_callback = callback
        if self._timer:
            if self._timer_at <= deadline:
                return
            worker.deadlines.withdraw(self, self._timer)
        self._timer_at = deadline
        self._timer = worker.deadlines.file(self, deadline)

    def deadline_passed(self) -> None:
        """The deadline filed came (``Deadlines``): call what is due, or file again for
        a deadline re-armed for later meanwhile."""
        self._timer = 0
        callback = self._timer_callback
        if callback is None:
            return  # disarmed meanwhile (_disarm_timer)
        deadline = self._timer_deadline
        if deadline > self._timer_at:  # re-armed for later meanwhile: wait for the rest
            self._timer_at = deadline
            self._timer = self._worker.deadlines.file(self, deadline)
            return
        self._timer_callback = None
        callback()

    def _disarm_timer(self) -> None:
        """Nothing is due until the next _arm_timer; the deadline filed, if any, is kept
        for it (a request being answered, between two deadlines)."""
        self._timer_callback = None

    def _cancel_timer(self) -> None:
        """Nothing is due any more, and the worker's deadlines let go of this
        connection."""
        self._timer_callback = None
        if self._timer:
            self._worker.deadlines.withdraw(self, self._timer)
            self._timer = 0


def _then(
    handler: Callable[..., Any] | None, after: Callable[[], None] | None
) -> Callable[..., Any]:
    """A step for the handler queue: the handler (sync or async), then ``after``."""

    async def step(*args: Any) -> None:
        if handler is not None:
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        if after is not None:
            after()

    if after is None and handler is not None:
        return handler
    return step
