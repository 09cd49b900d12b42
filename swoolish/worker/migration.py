"""The per-connection side of a live hand-off: detach, describe, and resume a session.

:class:`Movable` is mixed into :class:`swoolish.connection.Connection`. It keeps the two
records a move needs and that the protocol layer does not expose:

* ``unparsed`` -- the raw bytes after the last complete frame. websockets' parser hides
  a partial frame's header once it has read it, so a 20-line scanner over the raw
  stream tracks the frame boundary instead (only while hand-off is enabled).
* ``unsent`` -- a suffix of what was written that the transport still holds. A copy
  of recent writes is kept only while the transport's buffer is not empty, so a
  client that keeps up costs nothing.

The state is plain data, versioned by the hand-off envelope (see handoff.py).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import OPEN

from ..core.frames import unparsed_tail
from ..core.timerwheel import is_plain_data, resolve_callback

if TYPE_CHECKING:
    from websockets.server import ServerProtocol

    from .process import Worker

__all__ = ["Movable"]

log = logging.getLogger("swoolish.handoff")


def export_extensions(extensions: list[Any]) -> list[dict[str, Any]] | None:
    """The negotiated extensions as data; None if one carries state that cannot move."""
    exported = []
    for ext in extensions:
        if not isinstance(ext, PerMessageDeflate):
            return None
        if not ext.remote_no_context_takeover:
            return None  # the client's deflate window would have to move (RFC 7692 §7.1.1)
        exported.append(
            {
                "name": ext.name,
                "remote_no_context_takeover": ext.remote_no_context_takeover,
                "local_no_context_takeover": ext.local_no_context_takeover,
                "remote_max_window_bits": ext.remote_max_window_bits,
                "local_max_window_bits": ext.local_max_window_bits,
            }
        )
    return exported


def import_extensions(exported: list[dict[str, Any]]) -> list[Any]:
    return [
        PerMessageDeflate(
            e["remote_no_context_takeover"],
            e["local_no_context_takeover"],
            e["remote_max_window_bits"],
            e["local_max_window_bits"],
        )
        for e in exported
    ]


class Movable:
    """Hand-off support for a connection (mixed into Connection)."""

    __slots__ = (
        "_app_state",
        "_close_when_idle",
        "_frozen",
        "_moved_timers",
        "_moving",
        "_rx_pending",
        "_track",
        "_tx_bytes",
        "_tx_log",
        "_unsent",
        "moved_out",
    )

    # Provided by Connection:
    _worker: Worker
    transport: Any
    ws: ServerProtocol | None
    sid: int
    closing: bool
    established: bool
    peer: tuple[str, int]
    connect_time: float
    last_time: float
    messages_in: int
    messages_out: int
    _inbox: Any
    _reading_paused: bool
    _fast: bool
    _fragments: list[Any]
    _frag_opcode: int
    _text_decoder: codecs.IncrementalDecoder | None

    def _init_movable(self, track: bool) -> None:
        self._track = track  # record unparsed/unsent bytes: hand-off is enabled
        self._rx_pending = b""
        self._tx_log: deque[bytes] | None = None  # created on the first write left buffered
        self._tx_bytes = 0
        self._unsent = b""
        self._moving = False
        self._frozen = False
        self._moved_timers: list[dict[str, Any]] | None = None  # set by prepare_move
        self._app_state: Any = None
        self._close_when_idle: tuple[int, str] | None = None
        self.moved_out: asyncio.Future[None] | None = None

    # -- bookkeeping on the hot path (only when hand-off is enabled)

    def _note_received(self, data: bytes) -> None:
        pending = self._rx_pending
        self._rx_pending = unparsed_tail(pending + data if pending else data)

    def _note_written(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or not transport.get_write_buffer_size():
            if self._tx_log is not None:
                self._tx_log = None  # the client caught up: nothing is owed, free the log
                self._tx_bytes = 0
            return
        tx_log = self._tx_log
        if tx_log is None:
            tx_log = self._tx_log = deque()
        tx_log.append(data)
        self._tx_bytes += len(data)
        limit = 2 * self._worker.settings.buffer_output_size
        while self._tx_bytes > limit and len(tx_log) > 1:
            self._tx_bytes -= len(tx_log.popleft())

    # -- the old worker's side

    def prepare_move(self) -> None:
        """Take this session's bound timers out of the wheel, as data that moves."""
        moved, dropped = self._worker.timers.export_bound(self.sid)
        self._moved_timers = moved
        if dropped:
            self._worker.stats["timers_not_movable"] += dropped

    def freeze(self) -> None:
        """Stop reading: from here on, nothing new arrives for this worker to handle."""
        self._frozen = True
        if self.transport is not None:
            self.transport.pause_reading()

    def thaw(self) -> None:
        self._frozen = False
        if self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def quiescent(self) -> bool:
        return self._inbox is None

    def unmovable_reason(self) -> str | None:
        """Why this connection must stay and close with 1012; None if it can move."""
        ws = self.ws
        if self.closing or ws is None or ws.state is not OPEN or self.transport is None:
            return "closing"
        if not self.quiescent():
            return "busy past the bound"
        if ws.expect_continuation_frame:
            return "sending a fragmented message"
        if self.transport.get_extra_info("sslcontext") is not None:
            return "TLS"
        if export_extensions(ws.extensions) is None:
            return "compression context"
        worker = self._worker
        handler = worker.handler("handoff")
        if handler is not None:
            try:
                self._app_state = handler(worker.server, self.sid)
            except Exception:
                log.exception("handoff hook raised for session %d", self.sid)
                return "handoff hook raised"
            if not is_plain_data(self._app_state):
                return "app state is not plain data"
        return None

    def begin_move(self) -> int:
        """Detach: dup the socket, abort the transport (no FIN, no RST, no flush)."""
        transport = self.transport
        fd = os.dup(transport.get_extra_info("socket").fileno())
        self._moving = True
        self.moved_out = self._worker.loop.create_future()
        self._worker.connections.pop(self.sid, None)  # gone from here: push() is False
        transport.abort()
        return fd

    def _moved_lost(self) -> None:
        """connection_lost of a moving connection: only now is the unsent size exact."""
        transport = self.transport
        remaining = transport.get_write_buffer_size() if transport is not None else 0
        if remaining and self._tx_log:
            self._unsent = b"".join(self._tx_log)[-remaining:]
        self._tx_log = None
        if self.moved_out is not None and not self.moved_out.done():
            self.moved_out.set_result(None)
        self._worker.stats["handed_off"] += 1

    def export_state(self) -> dict[str, Any]:
        ws = self.ws
        assert ws is not None
        decoder = self._text_decoder
        return {
            "sid": self.sid,
            "peer": list(self.peer),
            "connect_time": self.connect_time,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "extensions": export_extensions(ws.extensions) or [],
            "subprotocol": ws.subprotocol,
            "current_size": ws.current_size,
            "fragments": list(self._fragments),
            "frag_opcode": self._frag_opcode,
            "decoder": list(decoder.getstate()) if decoder is not None else None,
            "unparsed": self._rx_pending,
            "unsent": self._unsent,
            "app": self._app_state,
            "timers": self._moved_timers or [],
        }

    # -- the new worker's side (and the old worker's, when it takes one back)

    def _resume_from(self, state: dict[str, Any], closing_code: int | None) -> None:
        from .connection import open_protocol

        worker = self._worker
        transport = self.transport
        transport.set_write_buffer_limits(high=worker.settings.buffer_output_size)
        self.sid = state["sid"]
        self.peer = (state["peer"][0], state["peer"][1]) if state["peer"] else ("", 0)
        self.connect_time = state["connect_time"]
        self.last_time = time.time()
        self.messages_in = state["messages_in"]
        self.messages_out = state["messages_out"]
        ws = open_protocol(
            import_extensions(state["extensions"]),
            state["subprotocol"],
            worker.settings.max_message_size,
        )
        ws.current_size = state["current_size"]
        self.ws = ws
        self._fragments = list(state["fragments"])
        self._frag_opcode = state["frag_opcode"]
        if state["decoder"] is not None:
            self._text_decoder = codecs.getincrementaldecoder("utf-8")()
            self._text_decoder.setstate(tuple(state["decoder"]))
        self.established = True
        self._fast = not ws.extensions and not self._fragments and ws.current_size is None
        worker.connections[self.sid] = self
        if state["unsent"]:
            transport.write(state["unsent"])  # what the old worker owed goes first
        if closing_code is None:
            worker.stats["adopted"] += 1
            handler = worker.handler("resume")
            if handler is not None:
                self._dispatch(handler, (worker.server, self.sid, state["app"]))  # type: ignore[attr-defined]
            self._rearm_timers(state["timers"])
        if state["unparsed"]:
            self._websocket_data(state["unparsed"])  # type: ignore[attr-defined]
        if closing_code is not None:
            self.disconnect_when_idle(closing_code, "server restarting")

    def _rearm_timers(self, snapshots: list[dict[str, Any]]) -> None:
        timers = self._worker.timers
        for snapshot in snapshots:
            callback = resolve_callback(snapshot["name"])
            if callback is None:
                self._worker.stats["timers_not_resumed"] += 1
                log.warning(
                    "session %d: timer callback %s is not defined by the new code; "
                    "its timer is dropped",
                    self.sid,
                    snapshot["name"],
                )
                continue
            timers.import_bound(self.sid, snapshot, callback)

    def disconnect_when_idle(self, code: int, reason: str = "") -> None:
        """Close with ``code`` once this connection's handlers in flight are done."""
        if self._inbox is None:
            self.disconnect(code, reason)  # type: ignore[attr-defined]
        else:
            self._close_when_idle = (code, reason)
