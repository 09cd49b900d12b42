"""The WebSocket side of a client connection, from the handshake to the close.

websockets' sans-I/O protocol owns the framing rules of RFC 6455 and permessage-deflate
(RFC 7692); this module owns what a server adds on top: message reassembly and UTF-8
validation (RFC 6455 §8.1), in-order dispatch to the app, ``push``, the closing
handshake with the close codes of docs/quickstart.md, and a fast path for the common
small frame that skips the protocol object, which also takes messages compressed as
streams of their own (permessage-deflate without context takeover,
:mod:`swoolish.core.deflate`); ``push`` compresses only messages of
``websocket_compression_threshold`` bytes or more.

A :class:`WsConnection` comes to life in one of two ways: an
:class:`~swoolish.worker.http.HttpConnection` finishes a handshake and hands it the
transport (:meth:`WsConnection.upgraded`), or a worker adopts a socket handed over in a
reload (:meth:`WsConnection.adopting`, see :mod:`swoolish.worker.handoff`). For the
second, and only while live hand-off is enabled, it keeps the two records a move needs
and the protocol object does not expose: the bytes after the last complete frame read
(``unparsed``) and what the transport still holds of what was written (``unsent``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, cast

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import CLOSED, OPEN, Protocol
from websockets.server import ServerProtocol

from ..core.deflate import RSV1, compress_message, inflate_message
from ..core.frames import (
    BINARY,
    FOUND_PING,
    FOUND_PONG,
    GOING_AWAY,
    INTERNAL_ERROR,
    INVALID_DATA,
    INVALID_TEXT,
    POLICY_VIOLATION,
    TEXT,
    Frame,
    FrameCursor,
    check_close,
    check_push,
    encode_close,
    encode_frame,
    encode_message,
    frame_extent,
    next_frame,
)
from ..core.messages import MovingSession
from ..core.timerwheel import is_plain_data, resolve_callback
from .access import client_address, log_close, log_open, request_client
from .connection import Connection, high_water
from .flow import FlowControl, Reason, bytes_acked
from .fragments import Fragments
from .handshake import Opening
from .host import WorkerHost

__all__ = ["QUIET_LOG", "Frame", "WsConnection", "open_protocol"]

OP_TEXT, OP_BINARY, OP_CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
OP_CLOSE, OP_PING, OP_PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
PONG_HEAD = bytes((0x80 | Opcode.PONG,))  # a server's pong frame starts so (RFC 6455 §5.2)
PING = encode_frame(Opcode.PING, b"")  # the heartbeat's ping (RFC 6455 §5.5.2)

CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's half of a closing handshake
#: Bytes every fragment that does not end its message counts, at least, against
#: max_message_size: empty continuation frames add nothing to a message, so a client could
#: stream them for ever, never reaching the limit, at some 4 µs of the worker each
#: (docs/security.md). 16,384 such fragments fill the default 1 MiB.
FRAGMENT_CHARGE = 64
ABNORMAL_CLOSURE = 1006  # closed without a close frame (RFC 6455 §7.1.5); never sent
#: Bytes of a frame in progress kept for a hand-off (worker/handoff.py moves at most
#: 256 KiB of unsent and unparsed bytes per session); a session reading a larger frame
#: stays and gets the 1012 of the reload.
MAX_UNPARSED_KEPT = 256 * 1024
#: A long read's frames are handled a share at a time: its bytes (the clock is looked at
#: once per share, never for a read of one share), and the time after which the rest
#: waits for the next loop iteration (data_received, _share_spent).
SHARE_BYTES = 512
SHARE_SECONDS = 0.005
#: A read this large is timed even without a frame boundary in it (data_received): the
#: pieces of one large message, which over TLS may each have cost uvloop milliseconds
#: of decryption before the read reached us.
LARGE_READ = 8 * 1024

log = logging.getLogger("swoolish.handoff")

QUIET_LOG = logging.getLogger("swoolish.websockets")
QUIET_LOG.setLevel(logging.CRITICAL)  # the protocol's per-connection chatter is ours to log


class _FrameProtocol(ServerProtocol):
    """websockets' protocol with one rule changed, for a close inside a fragmented message.

    RFC 6455 §5.4 lets control frames arrive between the fragments of a message, and
    §5.5.1 says a Close is answered with a Close; the message left incomplete is simply
    abandoned. websockets instead fails the connection with 1002 ("incomplete fragmented
    message"), which Autobahn case 7.1.5 reports as FAILED: echo the close instead.
    """

    # Always created OPEN (open_protocol), where ServerProtocol.parse only delegates to
    # Protocol.parse: parsing with the latter directly saves a generator frame (about 250
    # bytes) per connection.
    parse = Protocol.parse

    def recv_frame(self, frame: WsFrame) -> None:
        if frame.opcode is OP_CLOSE:
            self.current_size = None  # the unfinished message is dropped, not an error
        super().recv_frame(frame)


def open_protocol(
    extensions: Sequence[Any], subprotocol: Any, max_size: int | None
) -> ServerProtocol:
    """A sans-I/O protocol already in the OPEN state, parsing frames from the first byte.

    The handshake request was parsed by httptools, not by the protocol, so the protocol
    that accepted it is still waiting for an HTTP request line; frames go to a protocol
    created OPEN with the negotiated extensions. A connection adopted from another
    worker is rebuilt the same way.
    """
    protocol = _FrameProtocol(state=OPEN, max_size=max_size, logger=QUIET_LOG)
    protocol.extensions = list(extensions)
    protocol.subprotocol = subprotocol
    return protocol


def export_extensions(extensions: Sequence[Any]) -> list[dict[str, Any]] | None:
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


class WsConnection(Connection, asyncio.Protocol):
    """An established WebSocket session."""

    __slots__ = (
        "_app_state",
        "_arrival",
        "_close_when_idle",
        "_deflate",
        "_extensions",
        "_fast",
        "_fragments",
        "_held",
        "_inflate_bits",
        "_moved_timers",
        "_rx",
        "_share_began",
        "_stash",
        "_subprotocol",
        "_taking",
        "_track",
        "_tx_bytes",
        "_tx_log",
        "_unsent",
        "moved_out",
        "moving",
        "path",
        "ws",
    )

    def __init__(
        self, worker: WorkerHost, sid: int, peer: tuple[str, int], connect_time: float
    ) -> None:
        super().__init__(worker)
        self.sid = sid
        self.peer = peer
        self.connect_time = self.last_time = connect_time
        # websockets' protocol object, made when a frame or a close first needs it
        # (_protocol); until then the session is OPEN and its frames go the fast path
        self.ws: ServerProtocol | None = None
        # negotiated in the handshake; a tuple, () for none: a session keeps as few
        # objects the garbage collector walks as it can (freeze_what_booted)
        self._extensions: tuple[Any, ...] = ()
        self._subprotocol: str | None = None
        self._fast = False  # the next bytes start at a frame boundary, may go fast
        self._deflate: PerMessageDeflate | None = None  # permessage-deflate, if negotiated
        self._inflate_bits = 0  # the fast path inflates with this window; 0: it does not
        self._fragments: Fragments | None = None  # made by a message's first fragment
        self._close_when_idle: tuple[int, str] | None = None
        # (when the client was last seen taking our output, its acknowledged bytes or,
        # without them, our unsent bytes then): only once the heartbeat found it behind
        self._taking: tuple[float, int] | None = None
        # hand-off records, kept only while hand-off is enabled and possible (a TLS
        # connection never moves: its TLS state lives in this process)
        settings = worker.settings
        self._track = settings.reload_handoff and settings.ssl_cert_file is None
        # where the frame in progress ends (and, for a hand-off, its bytes)
        self._rx = FrameCursor(MAX_UNPARSED_KEPT if self._track else 0)
        self._stash = b""  # a small frame cut by the read, kept for the fast path
        self._held = False  # _stash is the rest of a read, held while handlers are behind
        self._share_began = 0.0  # when this turn of the loop began for us (_share_spent)
        self._tx_log: deque[bytes] | None = None  # created on the first write left buffered
        self._tx_bytes = 0
        self._unsent = b""
        self.moving = False  # detached for a successor: the session lives on over there
        self._moved_timers: list[dict[str, Any]] | None = None  # set by prepare_move
        self._app_state: Any = None
        self.moved_out: asyncio.Future[None] | None = None
        self._arrival: tuple[MovingSession, int | None] | None = None
        self.path = ""  # the handshake's request path (the access log's)

    # ------------------------------------------------------------------ the two beginnings

    def upgraded(
        self,
        transport: asyncio.Transport,
        flow: FlowControl,
        opening: Opening,
        request: Any,
        rest: bytes,
    ) -> None:
        """Serve the session ``opening`` accepted: send the 101 response, run ``open``,
        then parse what the client sent after the request."""
        worker = self._worker
        self.transport = transport
        self.flow = flow
        worker.live.add(self)
        self._use_extensions(opening.extensions, opening.subprotocol)
        self._fast = True
        self.established = True
        self.path = request.path
        worker.connections.upgraded(self.sid, self)
        worker.stats["websocket_opened"] += 1
        self._write(opening.wire)
        if worker.settings.access_log:
            log_open(request_client(self.peer, request), self.path)
        self._dispatch(worker.handler("open"), (worker.server, request))
        if rest:
            self.data_received(rest)
        if worker.draining:
            worker.established_while_draining(self)

    @classmethod
    def adopting(
        cls, worker: WorkerHost, record: MovingSession, closing_code: int | None = None
    ) -> WsConnection:
        """The session described by ``record``, on a socket handed over by another worker
        (``closing_code``: a session this worker takes back only to close it)."""
        conn = cls(worker, record.sid, record.peer, record.connect_time)
        conn._arrival = (record, closing_code)
        conn.path = record.path  # the same connection: no open line (worker/access.py)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Only for an adopted socket (an upgrade hands over a connected transport)."""
        transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport
        assert self._arrival is not None
        record, closing_code = self._arrival
        self._arrival = None
        worker = self._worker
        self.transport = transport
        self.flow = FlowControl(transport)
        worker.live.add(self)
        transport.set_write_buffer_limits(high=high_water(worker.settings.buffer_output_size))
        self.last_time = time.time()
        self.messages_in = record.messages_in
        self.messages_out = record.messages_out
        self._use_extensions(import_extensions(record.extensions), record.subprotocol)
        if record.current_size is not None:
            self._protocol().current_size = record.current_size  # inside a message
        self._fragments = Fragments.adopted(record)
        self.established = True
        self._fast = self._fragments is None and record.current_size is None
        if record.unsent:
            self._write(record.unsent)  # what the old worker owed goes first
        if closing_code is None:
            # ours from here: in cluster mode it catches up on the bus, after the unsent
            worker.connections.adopted(self.sid, self)
        else:
            worker.connections.taken_back(self.sid, self)
        if closing_code is None:
            worker.stats["adopted"] += 1
            handler = worker.handler("resume")
            if handler is not None:
                self._dispatch(handler, (worker.server, self.sid, record.app))
            self._rearm_timers(record.timers)
        if record.unparsed:
            self.data_received(record.unparsed)
        if closing_code is not None:
            self.drain(closing_code, "server restarting")

    def _use_extensions(self, extensions: list[Any], subprotocol: str | None) -> None:
        """Note how the negotiated permessage-deflate, if any, lets messages go.

        A client that keeps no context between messages (client_no_context_takeover)
        sends each compressed message as a stream of its own, which the fast path
        inflates alone; with its context kept, compressed messages need the protocol
        object's decompressor and go that way (uncompressed ones still go fast).
        """
        self._extensions = tuple(extensions)
        self._subprotocol = subprotocol
        for ext in extensions:
            if isinstance(ext, PerMessageDeflate):
                self._deflate = ext
                if ext.remote_no_context_takeover:
                    self._inflate_bits = ext.remote_max_window_bits

    def _protocol(self) -> ServerProtocol:
        """websockets' protocol object for this session, made the first time a frame
        leaves the fast path or the server closes: most sessions never need one, and a
        handshake, an idle session and a reconnect storm are cheaper without it (about
        6 µs and 1 KiB each: docs/performance.md, "Reconnect storm")."""
        ws = self.ws
        if ws is None:
            ws = self.ws = open_protocol(
                self._extensions, self._subprotocol, self._worker.settings.max_message_size
            )
        return ws

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

    # ------------------------------------------------------------------ transport events

    def eof_received(self) -> bool | None:
        # Without a protocol object the session was OPEN between frames, where EOF
        # leaves no frame to send: the transport closes (RFC 6455 §7.1.5: 1006), once
        # what was written before is sent (_bound_unsent).
        self._cancel_timer()
        if self.ws is not None and self.ws.state is not CLOSED:
            self.ws.receive_eof()
            self._flush_protocol()
        self._begin_close()
        if self.transport is not None:
            self._bound_unsent(self.transport)  # what it was sent before its EOF
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self._worker
        worker.live.discard(self)
        if self.moving:  # handed to another worker: the session lives on over there
            self._moved_lost()
            self.transport = None
            return
        if self._held:
            self._stash, self._held = b"", False  # unparsed: lost with the connection
        self._cancel_timer()
        self._begin_close()
        worker.stats["closed"] += 1
        if self.established:
            self.established = False
            if worker.settings.access_log:
                client = client_address(self.peer)
                log_close(client, self.path, self._close_code(), self.connect_time)
            self._dispatch(worker.handler("close"), (worker.server, self.sid))
        self._count_lost()
        self.transport = None

    def _close_code(self) -> int:
        """The close code of the access log: the client's close frame, else ours, else
        1006, no close frame at all (RFC 6455 §7.1.5)."""
        ws = self.ws
        if ws is not None:
            for close in (ws.close_rcvd, ws.close_sent):
                if close is not None:
                    return int(close.code)
        return ABNORMAL_CLOSURE

    # ------------------------------------------------------------------ frames in

    def data_received(self, data: bytes) -> None:
        """Bytes from the client (or, on arrival, bytes it sent before the upgrade or the
        move): the fast path takes whole frames, websockets' protocol the rest.

        While this connection's coroutine handlers are behind (``_handlers_behind``),
        the rest of the read is held, unparsed, until they are done (``_handlers_idle``):
        a read brings up to 256 KiB, and a compressed message of 1 KiB in it may inflate
        to max_message_size. So that the protocol object never inflates a whole read at
        once either, it gets one frame at a time on a compressed connection, while
        handlers are queued, or when more than a share is left; otherwise the whole read.

        And the frames of one read are handled a share at a time (SHARE_BYTES): once
        they, and the reads of this connection before them in the same turn of the
        loop, have held it for SHARE_SECONDS, the rest waits for the next loop
        iteration (``_share_spent``), so that one client's burst of messages, each
        costing the app's handler or an inflation, cannot keep the worker's other
        clients (and its heartbeats, its cluster bus) waiting for seconds. A read of
        LARGE_READ or more waits for the next turn, whole, if the turn's share is
        spent already.
        """
        now = self.last_time = time.time()
        if self._stash:
            data, self._stash = self._stash + data, b""
        n = len(data)
        if n >= LARGE_READ and now - self._turn_began(now) > SHARE_SECONDS:
            self._wait_next_turn(data)
            return
        pos = 0  # where the bytes not handled yet begin: only the part handed on is copied
        share_end = SHARE_BYTES  # the frames that begin before it are one share
        while True:
            ws = self.ws
            if self._fast and not self.closing and (ws is None or ws.state is OPEN):
                pos = self._fast_frames(data, pos, share_end)
                if pos == n:
                    return
                if pos >= share_end:  # a share is handled and more waits
                    if self._share_spent(data, pos):
                        return
                    share_end = pos + SHARE_BYTES
                    continue
                if self._fast and self._cut_fast_frame(data, pos):
                    # A stream rarely ends a read on a frame boundary: wait for the end of
                    # this frame (at most 64 KiB) rather than leave the fast path for good.
                    self._stash = data[pos:]
                    return
            if self._deflate is None and self._handler_queue is None and n - pos <= SHARE_BYTES:
                self._protocol_frames(data[pos:] if pos else data)
                return
            if self._handlers_behind():
                self._hold(data[pos:] if pos else data)
                return
            end = self._rx.frame_end(data, pos)
            self._protocol_frames(data[pos:end] if pos or end < n else data)
            if end == n:
                return
            pos = end
            if pos >= share_end:
                if self._share_spent(data, pos):
                    return
                share_end = pos + SHARE_BYTES

    def _share_spent(self, data: bytes, pos: int) -> bool:
        """After a share of a read: if this connection has kept the loop for
        SHARE_SECONDS in this turn, let the worker's other connections have theirs,
        and go on with ``data[pos:]`` in the next loop iteration (reading paused
        meanwhile). Handled in one go, the tiny messages of one 256 KiB read (some
        37,000) held another client of the worker for seconds behind an app handler of
        50 µs.

        The time counts from the start of the first read of this turn that needed a
        share check, not of each read: libuv reads a stream up to 32 times in a row
        while it has data, so a client sending faster than it is handled (and not held
        back by its own output: an app that does not answer each message, or pushes
        held during a hand-off) had 32 reads of up to a share each per turn, and kept
        another client of the worker waiting 120-200 ms for each answer."""
        if time.time() - self._turn_began(self.last_time) <= SHARE_SECONDS:
            return False
        self._wait_next_turn(data[pos:])
        return True

    def _turn_began(self, now: float) -> float:
        """When this connection's count of the loop's present turn began: ``now`` if it
        begins here. ``_end_turn``, queued then, runs before the loop reads again."""
        began = self._share_began
        if not began:
            began = self._share_began = now
            self._worker.loop.call_soon(self._end_turn)
        return began

    def _wait_next_turn(self, rest: bytes) -> None:
        """Hold ``rest``, unparsed, and stop reading until the loop's next turn."""
        self._hold(rest)
        if self.flow is not None:
            self.flow.pause(Reason.SHARE)
        self._worker.loop.call_soon(self._next_share)

    def _end_turn(self) -> None:
        self._share_began = 0.0

    def _next_share(self) -> None:
        if self.transport is None:
            return  # gone meanwhile: what was held goes with it (connection_lost)
        if self.flow is not None:
            self.flow.resume(Reason.SHARE)
        if self._held and not self.moving:
            self._held = False
            self.data_received(b"")

    def _hold(self, rest: bytes) -> None:
        """Keep ``rest``, the unparsed end of a read, until this connection's handlers
        catch up (``_handlers_idle`` replays it; reading is paused meanwhile)."""
        self._stash, self._held = rest, True

    def _protocol_frames(self, data: bytes) -> None:
        """Give ``data`` to websockets' protocol object and act on the frames it parses."""
        # Every byte the protocol gets passes the cursor too, which knows whether a frame is
        # in progress (then the next read must not go fast) without rescanning it.
        ws = self._protocol()
        self._rx.feed(data)
        ws.receive_data(data)
        events = cast(list[WsFrame], ws.events_received())  # frames only, once OPEN
        # The protocol queued its replies while parsing the whole chunk: one pong per
        # ping, then a close (echoed, or its own on a protocol error) and EOF. Send each
        # pong when its ping comes up among the events, so that replies keep the order
        # of the frames that caused them (RFC 6455 §5.5.2: a pong answers a ping "as
        # soon as is practical"; Autobahn 5.6, 5.19 expect the pong before a message
        # completed after the ping). The close goes last, after echoed messages.
        writes = ws.data_to_send()
        w = 0
        in_progress = _after_last_message_end(events)
        for index, frame in enumerate(events):
            opcode = frame.opcode
            if opcode is OP_TEXT or opcode is OP_BINARY or opcode is OP_CONT:
                self._data_frame(opcode, cast(bytes, frame.data), frame.fin, index >= in_progress)
            elif opcode is OP_PING:
                if w < len(writes) and writes[w][:1] == PONG_HEAD:
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        self._write(writes[w])
                    w += 1
            elif opcode is OP_CLOSE:
                self._begin_close()
            # PONG needs nothing.
        self._write_all(writes[w:] if w else writes)
        self._flush_protocol()  # anything a handler's disconnect() queued meanwhile
        # Back at a frame boundary with nothing pending: the next chunk may go fast.
        self._fast = (
            self._rx.at_boundary
            and ws.state is OPEN
            and ws.current_size is None
            and self._fragments is None
        )
        if self._fast:
            # Between messages nothing in the protocol object is needed: a client's
            # compression window is its extension's (self._extensions), which any
            # protocol object made later takes on. Its parser, a generator suspended
            # between frames, holds the last frame parsed (up to max_message_size,
            # inflated) and the object itself: closed, it lets both go now, not at the
            # next full garbage collection or, were the object kept, the session's end.
            ws.parser.close()
            if self._deflate is None or self._inflate_bits:
                self.ws = None  # as if never made
            else:
                # The client keeps its compression context: its compressed messages all
                # come this way, so keep the object (made anew per message it would
                # cost about 6 µs), with a parser started afresh at this frame boundary,
                # the way websockets swaps in its own parsers.
                ws.parser = ws.parse()
                next(ws.parser)

    def _fast_frames(self, data: bytes, pos: int, share_end: int) -> int:
        """Handle the common case without the protocol object, from ``data[pos]`` (a
        frame boundary) until a frame ends at or past ``share_end``; returns where the
        bytes it did not take begin.

        Only complete, final, masked text or binary frames without RSV bits (or with
        RSV1 alone, a message compressed as a stream of its own, when the client keeps no
        compression context), shorter than 64 KiB and within max_message_size, and pings
        and pongs (final, masked, at most 125 bytes: RFC 6455 §5.5; a pong needs nothing,
        and an idle client answers the heartbeat's pings with them), taken from a frame
        boundary (§5.2). The first frame that is anything else -- another control frame, a
        fragment, an extension's, too large, cut by the read, a compressed one that does
        not inflate within max_message_size -- and everything after it goes to websockets'
        protocol, which then owns every rule this path does not check.

        Each ping gets its pong, in order; the pongs of one read go out in one write,
        before the reply to any message that followed them. A client flooding pings
        then costs a fraction of what the protocol object's parser and one write per
        pong cost, and other clients of the worker keep being served.
        """
        worker = self._worker
        handler = worker.handler("message")
        server = worker.server
        limit = worker.settings.max_message_size
        inflate_bits = self._inflate_bits
        n = len(data)
        pongs: list[bytes] = []
        message: Any  # str (text), bytes (binary, compressed, a ping's) or int (bad UTF-8)
        # frames begin before share_end, with 6 bytes at least (the shortest one taken)
        stop = n - 5 if n - 5 < share_end else share_end
        while pos < stop:
            found = next_frame(data, pos, limit, inflate_bits)
            if found is None:
                break
            end, kind, message = found
            if kind == TEXT or kind == BINARY:
                opcode = kind
            elif kind == FOUND_PING or kind == FOUND_PONG:
                if kind == FOUND_PING:  # a ping gets its pong; a pong needs nothing (§5.5.3)
                    pongs.append(encode_frame(OP_PONG, message))
                pos = end
                continue
            elif kind == INVALID_TEXT:
                self._fail_invalid_text(pongs, message)
                return n  # failing: the rest is discarded (RFC 6455 §7.1.7)
            else:  # compressed, as a stream of its own (inflate_bits says the client may)
                inflated = inflate_message(message, inflate_bits, limit)
                if inflated is None:
                    break  # corrupt or too large: the protocol fails it with its code
                opcode = kind & 0x0F
                if opcode == TEXT:
                    try:
                        message = inflated.decode()
                    except UnicodeDecodeError as exc:
                        self._fail_invalid_text(pongs, exc.start)
                        return n
                else:
                    message = inflated
            if pongs and not self._send_pongs(pongs):
                return n  # closed over its output budget: the rest is discarded
            pos = end
            self.messages_in += 1  # the worker's figure sums its sessions' (SessionMap)
            worker.handled_left -= 1
            if not worker.handled_left:
                worker.handled_enough()  # max_request: asks once to be recycled
            frame = Frame(self.sid, message, opcode)
            if self._handler_queue is not None or handler is None:
                self._dispatch(handler, (server, frame), size=len(message))
                if self._handlers_behind():
                    self._hold(data[pos:])
                    if pongs:
                        self._send_pongs(pongs)
                    return n
            else:  # _dispatch's inline case without its call: the path of every message
                try:
                    result = handler(server, frame)
                except Exception:
                    self._handler_failed(handler)
                else:
                    if result is not None:
                        self._queue_if_awaitable(result, handler)
            ws = self.ws
            if self.closing or (ws is not None and ws.state is not OPEN):
                # A handler closed the session: the client's reply to that close, and
                # whatever else follows, belongs to the protocol.
                self._fast = False
                return pos
        if pongs and not self._send_pongs(pongs):
            return n
        return pos

    def _cut_fast_frame(self, data: bytes, pos: int) -> bool:
        """``data[pos:]`` is the start of a frame the fast path takes, cut by the read."""
        b0 = data[pos]
        if self._inflate_bits and (b0 == 0xC1 or b0 == 0xC2):
            b0 ^= RSV1  # a compressed message the fast path takes whole
        if len(data) - pos < 2:
            return b0 == 0x81 or b0 == 0x82 or b0 == 0x89 or b0 == 0x8A
        b1 = data[pos + 1]
        if b0 == 0x89 or b0 == 0x8A:
            return 0x80 <= b1 <= 0xFD
        if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80 or b1 == 0xFF:
            return False
        extent = frame_extent(data, pos)
        if extent is None:
            return True
        head, end = extent
        return end > len(data) and end - head <= self._worker.settings.max_message_size

    def _fail_invalid_text(self, pongs: list[bytes], offset: int) -> None:
        """Close with 1007 for a text message that is not UTF-8 (RFC 6455 §8.1), after
        the pongs owed to pings before it (unless they closed the session already)."""
        if pongs and not self._send_pongs(pongs):
            return
        self._fail(INVALID_DATA, f"invalid UTF-8 at position {offset}")

    def _send_pongs(self, pongs: list[bytes]) -> bool:
        """Write the pongs gathered so far in one write; False if the session closed."""
        self._write(b"".join(pongs) if len(pongs) > 1 else pongs[0])
        pongs.clear()
        return not self.closing

    def _data_frame(self, opcode: Any, payload: bytes, fin: bool, in_progress: bool) -> None:
        """A text, binary or continuation frame from the protocol object: a whole
        message, or a fragment of one (worker/fragments.py). ``in_progress``: its message
        is the one the protocol object is still reading (see _charge_fragment)."""
        if self.closing:
            return  # RFC 6455 §1.4: after a close is sent, data frames are discarded
        if opcode is not OP_CONT:
            kind = TEXT if opcode is OP_TEXT else BINARY
            if fin:
                self._message_received(kind, payload)
                return
            self._fragments = Fragments(kind)
        fragments = self._fragments
        assert fragments is not None  # the protocol refuses a continuation of nothing
        try:
            fragments.add(payload, fin)  # fails fast on invalid UTF-8 (RFC 6455 §8.1)
        except UnicodeDecodeError as exc:
            self._fail(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
            return
        if fin:
            self._fragments = None
            self._message_received(fragments.opcode, fragments.data)
        elif in_progress and len(payload) < FRAGMENT_CHARGE and self.ws is not None:
            self._charge_fragment(self.ws, len(payload))

    @staticmethod
    def _charge_fragment(ws: ServerProtocol, size: int) -> None:
        """Count a short fragment as FRAGMENT_CHARGE bytes of its message: the protocol
        object then refuses the message with 1009 once the charges and the payloads
        reach max_message_size, as it refuses a long one. The charge goes to the size
        of the message the protocol object is reading now, so only a fragment of that
        message is charged: one whose message ended later in the same read was counted
        in full already, and its charge would fall on the next message (a client's
        third fragmented message of one-byte fragments was refused with 1009)."""
        if ws.current_size is not None:
            ws.current_size += FRAGMENT_CHARGE - size

    def _message_received(self, kind: int, data: bytes | bytearray) -> None:
        """Deliver one whole message that came through the protocol object."""
        message: str | bytes
        if kind == TEXT:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                return
        else:
            message = data if type(data) is bytes else bytes(data)
        self.messages_in += 1
        worker = self._worker
        worker.handled_left -= 1
        if not worker.handled_left:
            worker.handled_enough()  # max_request: asks once to be recycled
        frame = Frame(self.sid, message, kind)
        self._dispatch(worker.handler("message"), (worker.server, frame), size=len(message))

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 §7.1.7) with ``code``, from an event."""
        ws = self.ws if self.closing else self._protocol()
        if ws is not None and ws.state is OPEN:
            ws.fail(code, reason)
        elif ws is not None and not self.closing and self.transport is not None:
            # The protocol already queued a close for a later frame of the same chunk
            # (its own 1002, or the echo of the client's close); it is not on the wire
            # yet. The first error wins (§7.1.7): send this close, drop the queued one.
            self.transport.write(encode_close(code, reason))
            self._cancel_timer()
            self._close_transport(self.transport)
            return
        self._begin_close()
        self._flush_protocol()

    # ------------------------------------------------------------------ bytes out

    def _flush_protocol(self) -> None:
        if self.ws is not None:
            self._write_all(self.ws.data_to_send())

    def _write_all(self, writes: list[bytes]) -> None:
        for data in writes:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if data:
                self._write(data)
            else:
                # websockets' SEND_EOF: the closing handshake is over (RFC 6455 §7.1.1),
                # the server closes the TCP connection first.
                self._cancel_timer()
                self._close_transport(transport)
                return

    def _write(self, data: bytes) -> None:
        """Every byte this session writes goes here (the hand-off's ``unsent`` record).

        Everything written counts against one budget, ``buffer_output_size`` unsent
        bytes: past a quarter of it reading stops (``pause_writing``), past it ``push``
        returns False and a write the protocol owes (a pong, a close) closes the
        session with 1008 instead (docs/quickstart.md, "Bad input").
        """
        transport = self.transport
        assert transport is not None
        if not self.closing:
            unsent = transport.get_write_buffer_size()
            if unsent > self._worker.settings.buffer_output_size:
                self._close_over_budget(unsent)
                return
        self._emit(transport, data)

    def _emit(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write ``data`` whose budget was checked, keeping the hand-off's record (only
        while something is owed: a client that keeps up costs one size check)."""
        transport.write(data)
        if self._track:
            unsent = transport.get_write_buffer_size()
            if unsent or self._tx_log is not None:
                self._note_written(data, unsent)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Closed with output unsent (the closing handshake done, the client's EOF, a
        failure): reset if the client has not taken it within CLOSE_TIMEOUT, the bound
        of a close the server starts (disconnect, _close_over_budget)."""
        self._arm_timer(CLOSE_TIMEOUT, self._reset_lingering)

    def _reset_lingering(self) -> None:
        """CLOSE_TIMEOUT passed and the client has still not taken what it is owed:
        reset, counted in closed_idle as an HTTP client that takes none of its answer.
        Only if something is still owed: over TLS the close frame itself is counted
        while in flight (``_owed``), and a session that owes nothing is left to end
        its TLS shutdown."""
        transport = self.transport
        if transport is not None and self._owed(transport):
            self._worker.stats["closed_idle"] += 1
            self.abort()

    def _close_over_budget(self, unsent: int) -> None:
        """The client lets more than buffer_output_size pile up: close it with 1008, and
        abort if it has not taken the close within CLOSE_TIMEOUT (it does not read)."""
        self._report_over_budget(unsent)
        self._fail(POLICY_VIOLATION, "output buffer full")
        if self.transport is not None:
            self._arm_timer(CLOSE_TIMEOUT, self.abort)

    def _note_written(self, data: bytes, unsent: int) -> None:
        """Record ``data`` among what may still be owed, ``unsent`` bytes being queued.

        Only the newest writes that cover those ``unsent`` bytes are kept: the transport
        only sends from here on until the next write, and a move takes just the bytes it
        still holds (``_moved_lost``). So the record costs at most the part of one write
        already sent more than the transport holds, within buffer_output_size.
        """
        if not unsent:
            self._tx_log = None  # the client caught up: nothing is owed, free the log
            self._tx_bytes = 0
            return
        tx_log = self._tx_log
        if tx_log is None:
            tx_log = self._tx_log = deque()
        tx_log.append(data)
        self._tx_bytes += len(data)
        self._forget_sent(unsent)

    def _forget_sent(self, unsent: int) -> None:
        """Drop the recorded writes the transport has sent in full, ``unsent`` bytes being
        queued. Also at each heartbeat sweep: a client that catches up while nothing is
        written to it (an app that does not answer its messages) kept a record of up to
        buffer_output_size, 2.9 MiB a session, until the next write."""
        tx_log = self._tx_log
        if not unsent or tx_log is None:
            self._tx_log = None
            self._tx_bytes = 0
            return
        while len(tx_log) > 1 and self._tx_bytes - len(tx_log[0]) >= unsent:
            self._tx_bytes -= len(tx_log.popleft())  # sent in full

    # ------------------------------------------------------------------ server-side API

    def push(self, data: str | bytes, opcode: int | None) -> bool:
        """Send one message; ``False`` when it cannot be sent.

        What ``push`` may not send raises (``check_push``'s errors, checked while the
        frame is built), even for a session that is gone; nothing else does.
        """
        transport = self.transport
        worker = self._worker
        if self.closing or not self.established or transport is None:
            check_push(data, opcode)
            worker.stats["push_to_closed"] += 1
            return False
        if transport.get_write_buffer_size() > worker.settings.buffer_output_size:
            check_push(data, opcode)  # refused unencoded: no frame built, none compressed
            worker.stats["push_over_buffer"] += 1
            return False
        deflate = self._deflate
        if deflate is None:
            wire = encode_message(data, opcode)
        else:
            wire = self._maybe_compressed(deflate, data, opcode)
        # _emit inline (push is the path of every message): within budget, checked above
        transport.write(wire)
        if self._track:
            unsent = transport.get_write_buffer_size()
            if unsent or self._tx_log is not None:
                self._note_written(wire, unsent)
        self.messages_out += 1  # the worker's figure sums its sessions' (SessionMap)
        return True

    def _maybe_compressed(
        self, deflate: PerMessageDeflate, data: str | bytes, opcode: int | None
    ) -> bytes:
        """The frame of a message on a connection with permessage-deflate: compressed from
        websocket_compression_threshold bytes on, plain below it (RSV1 clear: sent as is,
        RFC 7692 §6)."""
        check_push(data, opcode)
        if isinstance(data, str):
            payload = data.encode()
            opcode = opcode or TEXT
        else:
            payload = bytes(data)
            opcode = opcode or BINARY
        if len(payload) >= self._worker.settings.websocket_compression_threshold:
            return self._compressed(deflate, opcode, payload)
        return encode_frame(opcode, payload)

    def _compressed(self, deflate: PerMessageDeflate, opcode: int, payload: bytes) -> bytes:
        """The frame of a message compressed with permessage-deflate (RFC 7692 §7.2.1).

        Without server context takeover the message is a stream of its own from the
        process's shared compressor; with it, the connection's own compressor (the
        protocol's extension) keeps its window. Serialised here rather than with
        ws.send_text(), which refuses once the protocol has queued a close: a message
        answered before that close still goes out before it.
        """
        if deflate.local_no_context_takeover:
            data = compress_message(payload, deflate.local_max_window_bits)
            return encode_frame(RSV1 | opcode, data)
        frame = WsFrame(Opcode.TEXT if opcode == TEXT else Opcode.BINARY, payload)
        return frame.serialize(mask=False, extensions=[deflate])

    def disconnect(self, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake with ``code``; the session is gone from now on."""
        if self.closing or self.transport is None:
            return False
        ws = self._protocol()
        if ws.state is not OPEN:
            return False
        check_close(code, reason)  # RFC 6455 §5.5, §7.4: a bad code raises here, at the call
        ws.send_close(code, reason)
        self._begin_close()
        self._flush_protocol()
        self._arm_timer(CLOSE_TIMEOUT, self.abort)
        return True

    def heartbeat(self, now: float, idle_time: float) -> None:
        """The worker's periodic check: ping a quiet client, close a silent one (1001).

        A client that has sent nothing, not even a pong, for ``idle_time`` seconds is
        gone or stuck; after half of it, a ping asks for a sign of life (RFC 6455
        §5.5.2). Not while this worker is the one not reading (handlers behind, moving).
        """
        transport, ws, flow = self.transport, self.ws, self.flow
        if self.closing or self.moving or transport is None:
            return
        if self._tx_log is not None:
            self._forget_sent(transport.get_write_buffer_size())
        if ws is not None and ws.state is not OPEN:
            return
        if flow is not None and (flow.holds(Reason.HANDLERS) or flow.holds(Reason.MOVING)):
            return
        budget = self._worker.settings.buffer_output_size
        behind = transport.get_write_buffer_size() >= high_water(budget)
        if behind or (flow is not None and flow.holds(Reason.BACKPRESSURE)):
            self._judge_by_output(transport, flow, now, idle_time)
            return
        quiet = now - self._alive_since()
        if quiet >= idle_time:
            self._worker.stats["closed_idle"] += 1
            self.disconnect(GOING_AWAY, "idle")
        elif quiet >= idle_time / 2:
            self._write(PING)

    def _judge_by_output(
        self, transport: asyncio.Transport, flow: FlowControl | None, now: float, idle: float
    ) -> None:
        """The heartbeat of a client behind on its output: alive while it takes it.

        This worker stopped reading from it (``BACKPRESSURE``), so whatever it sends,
        pongs included, waits unread, and a ping would only queue behind the backlog
        (over ``buffer_output_size``, closing it as not reading). An app that pushes
        until ``push`` returns False keeps a slow but steady reader there for good: it
        was closed at the first ``heartbeat_idle_time``. So its TCP acknowledgements
        tell (``bytes_acked``; elsewhere, its unsent bytes going down): taking output,
        it is alive, and it is read again (what it sends counts, the budget still
        bounds what it can make us hold); taking nothing for ``idle`` seconds, it is
        reset, as an HTTP client that takes none of its answers."""
        acked = bytes_acked(transport)
        mark = -transport.get_write_buffer_size() if acked is None else acked
        if self._taking is None:  # a first look: nothing to compare with yet
            self._taking = (now, mark)
            return
        if mark > self._taking[1]:
            self._taking = (now, mark)
            if flow is not None:
                flow.resume(Reason.BACKPRESSURE)
            return
        if now - self._alive_since() >= idle:
            self._worker.stats["closed_idle"] += 1
            self.abort()

    def _alive_since(self) -> float:
        """When the client last showed it is there: it sent something, or (once the
        heartbeat found it behind, _judge_by_output) it was seen taking its output."""
        taking = self._taking
        return self.last_time if taking is None else max(self.last_time, taking[0])

    def drain(self, code: int, reason: str = "") -> None:
        """Close with ``code`` once this connection's handlers in flight are done."""
        if self._handler_queue is None:
            self.disconnect(code, reason)
        else:
            self._close_when_idle = (code, reason)

    def _handlers_idle(self) -> None:
        if self._held and self.transport is not None and not self.moving:
            # The rest of a read held while handlers were behind (data_received); a
            # session on its way to another worker carries it there as ``unparsed``.
            self._held = False
            self.data_received(b"")
            if self._handler_queue is not None:
                return  # queued again: a close waits for these handlers too
        if self._close_when_idle is not None:
            code, reason = self._close_when_idle
            self._close_when_idle = None
            self.disconnect(code, reason)

    def _fail_after_handler_error(self) -> None:
        """Close this connection only, with 1011 (docs/quickstart.md)."""
        if self.disconnect(INTERNAL_ERROR, "internal error"):
            return
        if not self.closing and self.ws is not None:
            self._fail(INTERNAL_ERROR, "internal error")  # a close is queued, unsent
        else:
            self.abort()

    # ------------------------------------------------------------------ moving (live hand-off)

    def prepare_move(self) -> None:
        """Take this session's bound timers out of the wheel, as data that moves.

        Called before ``worker_stop`` (so none fires here and again over there), again
        after ``worker_exit`` and by :meth:`export_state`: a timer bound to the session
        meanwhile (by those hooks or a late handler) moves too, never cleared."""
        moved, dropped = self._worker.timers.export_bound(self.sid)
        if moved:
            self._moved_timers = [*(self._moved_timers or []), *moved]
        if dropped:
            self._worker.stats["timers_not_movable"] += dropped

    def freeze(self) -> None:
        """Stop reading: from here on, nothing new arrives for this worker to handle."""
        if self.flow is not None:
            self.flow.pause(Reason.MOVING)

    def thaw(self) -> None:
        if self.flow is not None:
            self.flow.resume(Reason.MOVING)

    def unmovable_reason(self) -> str | None:
        """Why this connection must stay and close with 1012; None if it can move."""
        ws = self.ws
        if self.closing or (ws is not None and ws.state is not OPEN) or self.transport is None:
            return "closing"
        if self.transport.get_extra_info("sslcontext") is not None:
            return "TLS"  # its keys and sequence numbers cannot leave this process
        if not self._rx.at_boundary and self._rx.unparsed is None:
            return "reading a large frame"
        if not self.quiescent():
            return "busy past the bound"
        if ws is not None and ws.expect_continuation_frame:
            return "sending a fragmented message"
        if self._deflate is not None and self._deflate.decode_cont_data:
            # Between the fragments of a compressed message the decompressor is in the
            # middle of its stream (RFC 7692 §6.2); only the negotiated parameters move.
            return "receiving a compressed message"
        if export_extensions(self._extensions) is None:
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
        assert transport is not None
        fd = os.dup(transport.get_extra_info("socket").fileno())
        self.moving = True
        self.moved_out = self._worker.loop.create_future()
        self._worker.connections.moving(self.sid)  # gone from here: push() is False
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

    def export_state(self) -> MovingSession:
        """The record of this detached session, for its new worker."""
        ws = self.ws
        self.prepare_move()  # timers bound since the last export
        fragments = self._fragments
        parts, decoder = fragments.export() if fragments is not None else ([], None)
        return MovingSession(
            sid=self.sid,
            peer=self.peer,
            connect_time=self.connect_time,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            extensions=export_extensions(self._extensions) or [],
            subprotocol=self._subprotocol,
            current_size=ws.current_size if ws is not None else None,
            fragments=parts,
            frag_opcode=fragments.opcode if fragments is not None else 0,
            decoder=decoder,
            unparsed=self._stash or self._rx.unparsed or b"",
            unsent=self._unsent,
            app=self._app_state,
            timers=self._moved_timers or [],
            path=self.path,
        )


def fan_out(
    conns: Iterable[WsConnection], frame: bytes, payload: bytes, opcode: int, worker: WorkerHost
) -> int:
    """Write one broadcast to ``conns``: the same ``frame`` bytes, encoded once, to
    every session that takes it as is, with the rules of ``push`` (closing: dropped;
    over buffer_output_size: dropped). One loop with the limits read once: a broadcast
    to thousands of sessions is this loop and one write per session. Returns how many
    sessions took it.

    A session with permessage-deflate takes ``frame`` too when the message is under
    websocket_compression_threshold, and otherwise the message compressed once per
    window size: without server context takeover (the default) every session of a
    window size gets the same bytes (core/deflate.compress_message). Compressed once
    per session, a broadcast of 1 MiB to 200 browsers held the worker for seconds.
    Only a session that keeps a compression context encodes its own (``push``).
    """
    limit = worker.settings.buffer_output_size
    compress = len(payload) >= worker.settings.websocket_compression_threshold
    compressed: dict[int, bytes] = {}  # the compressed frame, by window bits
    sent = closed = over = 0
    for conn in conns:
        deflate = conn._deflate if type(conn) is WsConnection else None
        if type(conn) is not WsConnection or (
            deflate is not None and not deflate.local_no_context_takeover
        ):
            sent += conn.push(payload, opcode)  # its own compression context
            continue
        transport = conn.transport
        if conn.closing or not conn.established or transport is None:
            closed += 1
            continue
        if transport.get_write_buffer_size() > limit:
            over += 1
            continue
        wire = frame
        if deflate is not None and compress:
            bits = deflate.local_max_window_bits
            if bits not in compressed:
                compressed[bits] = encode_frame(RSV1 | opcode, compress_message(payload, bits))
            wire = compressed[bits]
        conn._emit(transport, wire)
        conn.messages_out += 1
        sent += 1
    stats = worker.stats
    if closed:
        stats["push_to_closed"] += closed
    if over:
        stats["push_over_buffer"] += over
    return sent


def _after_last_message_end(events: list[WsFrame]) -> int:
    """The index after the last data frame of ``events`` that ends a message (its
    ``fin`` set): the frames from there on belong to the message still being read."""
    for index in range(len(events) - 1, -1, -1):
        frame = events[index]
        if frame.fin and frame.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            return index + 1
    return 0
