"""One client connection: bytes in, events out, on a uvloop ``asyncio.Protocol``.

A connection starts as HTTP/1.1 (parsed by httptools). A request that asks for a
WebSocket upgrade is handed to websockets' sans-I/O ``ServerProtocol``, which owns the
handshake rules, the framing rules of RFC 6455 and permessage-deflate (RFC 7692); this
module owns what a server adds on top: session ids, message reassembly and UTF-8
validation (RFC 6455 §8.1), in-order dispatch, the close codes of SPEC §7, bounded
buffers and timeouts.

Dispatch keeps a connection's messages in order without a task per message: a plain
function handler is called inline from ``data_received``; the first coroutine handler
opens a per-connection inbox that one task works through until it is empty.
"""

from __future__ import annotations

import asyncio
import codecs
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import CLOSED, OPEN, Protocol
from websockets.server import ServerProtocol

try:  # websockets' C speedups: unmasking at C speed
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without its C extension
    from websockets.utils import apply_mask

from ..core.frames import (
    BINARY,
    INTERNAL_ERROR,
    INVALID_DATA,
    TEXT,
    check_close,
    encode_close,
    encode_frame,
)
from .http import Request, Response, render_response, simple_response
from .migration import Movable

if TYPE_CHECKING:
    from .process import Worker

__all__ = ["Connection", "Frame"]

OP_TEXT, OP_BINARY, OP_CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
OP_CLOSE, OP_PING = Opcode.CLOSE, Opcode.PING
PONG_HEAD = bytes((0x80 | Opcode.PONG,))  # a server's pong frame starts so (RFC 6455 §5.2)

CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's half of a closing handshake
MAX_HEADER_BYTES = 64 * 1024  # request line and headers; more gets 431
MAX_PIPELINED = 16  # parsed-but-unanswered requests before we stop reading

#: The resting value of the parser's header and body lists between requests (never mutated:
#: on_message_begin replaces it with a fresh list before anything is appended).
_NO_ITEMS: Any = ()

_QUIET = logging.getLogger("swoolish.websockets")
_QUIET.setLevel(logging.CRITICAL)  # the protocol's per-connection chatter is ours to log


class Frame:
    """A complete WebSocket message as ``message`` handlers get it (Swoole's Frame)."""

    __slots__ = ("data", "fd", "finish", "opcode")

    def __init__(self, fd: int, data: str | bytes, opcode: int) -> None:
        self.fd = fd
        self.data = data
        self.opcode = opcode
        self.finish = True

    def __repr__(self) -> str:
        return f"<Frame fd={self.fd} opcode={self.opcode} {len(self.data)} bytes>"


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


def open_protocol(extensions: list[Any], subprotocol: Any, max_size: int | None) -> ServerProtocol:
    """A sans-I/O protocol already in the OPEN state, parsing frames from the first byte.

    The handshake request was parsed by httptools, not by the protocol, so the protocol
    that accepted it is still waiting for an HTTP request line; frames go to a protocol
    created OPEN with the negotiated extensions. A connection adopted from another
    worker is rebuilt the same way.
    """
    protocol = _FrameProtocol(state=OPEN, max_size=max_size, logger=_QUIET)
    protocol.extensions = list(extensions)
    protocol.subprotocol = subprotocol
    return protocol


class Connection(Movable, asyncio.Protocol):
    """A client connection and, once upgraded, its WebSocket session."""

    __slots__ = (
        "_answered",
        "_body",
        "_body_size",
        "_close_after_response",
        "_closing_code",
        "_fast",
        "_frag_opcode",
        "_fragments",
        "_header_bytes",
        "_headers",
        "_in_flight",
        "_inbox",
        "_parser",
        "_pending_upgrade_bytes",
        "_reading_paused",
        "_rejection",
        "_requests",
        "_resume_state",
        "_text_decoder",
        "_timer",
        "_url",
        "_worker",
        "closing",
        "connect_time",
        "established",
        "last_time",
        "messages_in",
        "messages_out",
        "peer",
        "sid",
        "transport",
        "ws",
    )

    def __init__(
        self,
        worker: Worker,
        resume: dict[str, Any] | None = None,
        closing_code: int | None = None,
    ) -> None:
        """``resume``: the state of a session moved from another worker (live hand-off);
        ``closing_code``: take such a session back only to close it with this code."""
        self._worker = worker
        self._resume_state = resume
        self._closing_code = closing_code
        self._init_movable(worker.settings.reload_handoff)
        self.transport: asyncio.Transport | None = None
        self.sid = 0
        self.ws: ServerProtocol | None = None
        self.established = False  # WebSocket handshake done (Swoole's isEstablished)
        self.closing = False  # a close began; exists() is False from here on
        self.peer: tuple[str, int] = ("", 0)
        self.connect_time = self.last_time = 0.0
        self.messages_in = self.messages_out = 0
        self._parser: httptools.HttpRequestParser | None = None
        # The parser's scratch state rests on shared empty values between requests, not on
        # per-connection lists (on_message_begin makes fresh ones): an idle WebSocket keeps
        # nothing of its handshake.
        self._url = b""
        self._headers: list[tuple[str, str]] = _NO_ITEMS
        self._header_bytes = 0
        self._body: list[bytes] = _NO_ITEMS
        self._body_size = 0
        self._requests: list[Request] = []  # at most MAX_PIPELINED: a list beats a deque here
        self._in_flight = False  # an HTTP request is being answered
        self._close_after_response = False
        self._answered = 0  # HTTP responses sent on this connection
        self._pending_upgrade_bytes: bytearray | None = None
        self._fragments: list[bytes] = []
        self._frag_opcode = 0
        self._text_decoder: codecs.IncrementalDecoder | None = None
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        # set by a parser callback that refuses the request for a reason with its own
        # status (413, 431); the parser itself only reports a generic error
        self._rejection: tuple[int, str] | None = None
        self._fast = False  # the next WebSocket bytes start at a frame boundary, may go fast

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self._worker.live.add(self)
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            self._resume_from(state, self._closing_code)
            return
        worker = self._worker
        self.connect_time = self.last_time = time.time()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (peer[0], peer[1])
        if len(worker.connections) >= worker.settings.max_connections:
            # SPEC §7: more clients than max_connections are refused cleanly.
            worker.stats["refused"] += 1
            self.closing = True
            transport.write(simple_response(503, "Server is at max_connections, retry later.\n"))
            transport.close()
            return
        transport.set_write_buffer_limits(high=worker.settings.buffer_output_size)
        self.sid = worker.ids.next_id()
        worker.connections[self.sid] = self
        worker.stats["accepted"] += 1
        self._parser = httptools.HttpRequestParser(self)
        self._arm_timer(worker.settings.handshake_timeout, self._on_request_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_time = time.time()
        if self.ws is not None:
            self._websocket_data(data)
        elif self._pending_upgrade_bytes is not None:
            self._pending_upgrade_bytes += data  # the handshake handler is still deciding
        else:
            self._http_data(data)

    def eof_received(self) -> bool | None:
        if self.ws is not None and self.ws.state is not CLOSED:
            self.ws.receive_eof()
            self._flush_protocol()
        self._begin_close()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker.live.discard(self)
        if self._moving:  # handed to another worker: the session lives on over there
            self._moved_lost()
            self.transport = None
            return
        self._cancel_timer()
        self._begin_close()
        worker = self._worker
        worker.stats["closed"] += 1
        if self.established:
            self.established = False
            self._dispatch(worker.handler("close"), (worker.server, self.sid))
        self.transport = None

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so a client that sends
        # without reading cannot grow our memory (SPEC §7, bounded buffers).
        self._pause_reading()

    def resume_writing(self) -> None:
        self._resume_reading()

    # ------------------------------------------------------------------ HTTP (httptools)

    def _http_data(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            self._parser = None
            status, text = self._rejection or (
                400,
                "Bad Request: the request is not valid HTTP/1.1.\n",
            )
            self._reject_http(status, text)
            return
        if self._requests and not self._in_flight:
            self._answer_next_request()

    # httptools callbacks, in the order it calls them
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        if not self._in_flight and not self._requests:
            self._arm_timer(self._worker.settings.handshake_timeout, self._on_request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._count_header_bytes(len(name) + len(value))

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            # RFC 6585 §5: 431, not a generic 400, so the client knows what to fix
            self._rejection = (431, "Request Header Fields Too Large: 64 KiB at most.\n")
            raise httptools.HttpParserError("header fields too large")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        limit = self._worker.settings.max_request_size
        if self._body_size > limit:
            # RFC 9110 §15.5.14: 413, not a generic 400, so the client knows what to fix
            self._rejection = (413, f"Payload Too Large: the body may be {limit} bytes at most.\n")
            raise httptools.HttpParserError("request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        headers = Headers(self._headers)
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            headers,
            b"".join(self._body),
            parser.get_http_version(),
            self.sid,
        )
        self._url = b""
        self._headers = self._body = _NO_ITEMS  # now owned by the request
        self._requests.append(request)
        if len(self._requests) > MAX_PIPELINED:
            self._pause_reading()

    def _answer_next_request(self) -> None:
        """Answer pipelined requests one at a time, in order."""
        if not self._requests or self.transport is None:
            return
        self._cancel_timer()
        request = self._requests.pop(0)
        worker = self._worker
        handler = worker.handler("request")
        worker.stats["requests"] += 1
        if handler is None:
            # SPEC §7: a plain HTTP request when the app serves only WebSockets.
            self._reject_http(
                426,
                "Upgrade Required: this server speaks WebSocket only.\n",
                [("Upgrade", "websocket")],
            )
            return
        self._in_flight = True
        keep_alive = request.keep_alive()
        response = Response(
            lambda resp, body: self._send_response(resp, body, keep_alive, request.method)
        )
        self._dispatch(handler, (request, response), after=lambda: self._finish(response))

    def _finish(self, response: Response) -> None:
        """Runs after the request handler returned: end a response it left open."""
        if not response.ended:
            response.end()

    def _send_response(self, resp: Response, body: bytes, keep_alive: bool, method: str) -> None:
        transport = self.transport
        self._in_flight = False
        if transport is None or transport.is_closing():
            return
        self._answered += 1
        keep_alive = keep_alive and not self._close_after_response and not self._worker.draining
        transport.write(
            render_response(
                resp.status_code, resp.headers, body, keep_alive, resp.reason, method == "HEAD"
            )
        )
        if not keep_alive:
            self._begin_close()
            transport.close()
            return
        self._resume_reading()
        if self._requests:
            self._answer_next_request()
        else:
            self._arm_timer(self._worker.settings.keepalive_timeout, self._on_idle_timeout)

    def _reject_http(
        self, status: int, text: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(simple_response(status, text, headers))
            self._begin_close()
            self.transport.close()

    def _on_request_timeout(self) -> None:
        # SPEC §7: a client that never finishes its request or handshake is dropped.
        self._worker.stats["handshake_timeouts"] += 1
        self._reject_http(408, "Request Timeout\n")

    def _on_idle_timeout(self) -> None:
        if self.transport is not None and not self._in_flight and not self._requests:
            self._begin_close()
            self.transport.close()

    # ------------------------------------------------------------------ WebSocket handshake

    def _on_upgrade(self, rest: bytes) -> None:
        last = self._requests[-1] if self._requests else None
        if (
            last is not None
            and last.method != "CONNECT"
            and last.headers.get("Upgrade", "").lower() != "websocket"
            and last.headers.get("Content-Length", "0") == "0"
            and "Transfer-Encoding" not in last.headers
        ):
            # RFC 9110 §7.8: a server may ignore an Upgrade it does not support, and
            # clients such as `curl --http2` offer h2c on ordinary requests expecting an
            # HTTP/1.1 answer: serve it as a plain request, keep parsing what follows.
            # (The parser hands a body of an upgrade request over as upgraded bytes, so
            # only body-less requests can be served this way; others still get 400.)
            self._parser = httptools.HttpRequestParser(self)
            self._http_data(rest)
            return
        request = self._requests.pop() if self._requests else None
        self._parser = None
        if request is None or self._requests or self._in_flight:
            self._reject_http(400, "Bad Request: an upgrade must not follow pipelined requests.\n")
            return
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self._reject_http(400, "Bad Request: only WebSocket upgrades are supported.\n")
            return
        self._cancel_timer()
        self._arm_timer(self._worker.settings.handshake_timeout, self._on_request_timeout)
        self._pending_upgrade_bytes = bytearray(rest)
        handler = self._worker.handler("handshake")
        if handler is None:
            self._accept_websocket(request, None)
            return
        response = Response(lambda resp, body: None)  # sent by _accept_websocket
        result_box: list[Any] = []

        def run_handshake_handler() -> Any:
            result = handler(request, response)
            if inspect.isawaitable(result):
                return _store_result(result, result_box)
            result_box.append(result)
            return None

        self._dispatch(
            run_handshake_handler,
            (),
            after=lambda: self._accept_websocket(request, response, result_box),
        )

    def _accept_websocket(
        self, request: Request, custom: Response | None, result: list[Any] | None = None
    ) -> None:
        """Complete the opening handshake (RFC 6455 §4.2.2) unless the app refused it."""
        if self.transport is None or self.transport.is_closing():
            return
        worker = self._worker
        if custom is not None and (
            (result and result[0] is False) or (custom.ended and custom.status_code != 101)
        ):
            status = custom.status_code if custom.status_code != 200 else 403
            self.transport.write(render_response(status, custom.headers, b"", False, custom.reason))
            self._begin_close()
            self.transport.close()
            return
        extensions = []
        if worker.settings.websocket_compression:
            # With live hand-off, ask the client not to keep its compression context
            # (RFC 7692 §7.1.1.1): then no decompression window has to move.
            extensions.append(
                ServerPerMessageDeflateFactory(
                    client_no_context_takeover=worker.settings.reload_handoff
                )
            )
        protocol = ServerProtocol(
            extensions=extensions, max_size=worker.settings.max_message_size, logger=_QUIET
        )
        ws_request = WsRequest(request.target, request.headers, request.method)
        handshake = protocol.accept(ws_request)
        if custom is not None:
            for name, value in custom.headers:
                handshake.headers[name] = value
        protocol.send_response(handshake)
        if handshake.status_code != 101:
            self._flush(protocol)
            self._begin_close()
            if self.transport is not None:
                self.transport.close()
            return
        self._cancel_timer()
        self.ws = open_protocol(
            protocol.extensions, protocol.subprotocol, protocol.max_message_size
        )
        self._fast = not self.ws.extensions
        self.established = True
        worker.session_established(self.sid)
        worker.stats["websocket_opened"] += 1
        self._flush(protocol)
        rest = bytes(self._pending_upgrade_bytes or b"")
        self._pending_upgrade_bytes = None
        self._dispatch(worker.handler("open"), (worker.server, request))
        if rest:
            self._websocket_data(rest)
        if worker.draining:
            worker.established_while_draining(self)

    # ------------------------------------------------------------------ WebSocket frames

    def _websocket_data(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        if self._fast and not self.closing and ws.state is OPEN:
            consumed = self._fast_frames(data)
            if consumed == len(data):
                return
            data = data[consumed:]  # the rest starts at a frame boundary
        self._note_received(data)
        ws.receive_data(data)
        events = ws.events_received()
        # The protocol queued its replies while parsing the whole chunk: one pong per
        # ping, then a close (echoed, or its own on a protocol error) and EOF. Send each
        # pong when its ping comes up among the events, so that replies keep the order
        # of the frames that caused them (RFC 6455 §5.5.2: a pong answers a ping "as
        # soon as is practical"; Autobahn 5.6, 5.19 expect the pong before a message
        # completed after the ping). The close goes last, after echoed messages.
        writes = ws.data_to_send()
        w = 0
        for frame in events:
            opcode = frame.opcode
            if opcode is OP_TEXT or opcode is OP_BINARY or opcode is OP_CONT:
                self._data_frame(opcode, frame.data, frame.fin)
            elif opcode is OP_PING:
                if w < len(writes) and writes[w][:1] == PONG_HEAD:
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(writes[w])
                    w += 1
            elif opcode is OP_CLOSE:
                self._begin_close()
            # PONG needs nothing.
        self._write_all(writes[w:] if w else writes)
        self._flush_protocol()  # anything a handler's disconnect() queued meanwhile
        # Back at a frame boundary with nothing pending: the next chunk may go fast.
        self._fast = (
            not self._rx_pending
            and ws.state is OPEN
            and ws.current_size is None
            and not self._fragments
            and not ws.extensions
        )

    def _fast_frames(self, data: bytes) -> int:
        """Handle the common case without the protocol object; returns bytes consumed.

        Only complete, final, masked text or binary frames without RSV bits, shorter
        than 64 KiB and within max_message_size, taken from a frame boundary (RFC 6455
        §5.2). The first frame that is anything else -- a control frame, a fragment, an
        extension's, too large, cut by the read -- and everything after it goes to
        websockets' protocol, which then owns every rule this path does not check.
        """
        worker = self._worker
        handler = worker.handler("message")
        server = worker.server
        limit = worker.settings.max_message_size
        n = len(data)
        pos = 0
        while n - pos >= 6:
            b0 = data[pos]
            b1 = data[pos + 1]
            if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80:  # FIN, no RSV, text/binary; masked
                break
            length = b1 & 0x7F
            head = pos + 6
            if length == 126:
                if n - pos < 8:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 8
            elif length == 127:
                break
            end = head + length
            if end > n or length > limit:
                break
            payload = apply_mask(data[head:end], data[head - 4 : head])
            pos = end
            if b0 == 0x81:
                try:
                    message: str | bytes = payload.decode()
                except UnicodeDecodeError as exc:
                    self._fail(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                    return n  # failing: the rest is discarded (RFC 6455 §7.1.7)
                opcode = TEXT
            else:
                message, opcode = payload, BINARY
            self.messages_in += 1
            worker.stats["messages_in"] += 1
            self._dispatch(handler, (server, Frame(self.sid, message, opcode)))
            if self.closing or self.ws is None or self.ws.state is not OPEN:
                # A handler closed the session: the client's reply to that close, and
                # whatever else follows, belongs to the protocol.
                self._fast = False
                return pos
        return pos

    def _data_frame(self, opcode: Any, payload: bytes, fin: bool) -> None:
        if self.closing:
            return  # RFC 6455 §1.4: after a close is sent, data frames are discarded
        if opcode is not OP_CONT:
            self._frag_opcode = TEXT if opcode is OP_TEXT else BINARY
            if self._frag_opcode == TEXT and not fin:
                self._text_decoder = codecs.getincrementaldecoder("utf-8")()
        if self._frag_opcode == TEXT:
            try:
                if self._text_decoder is not None:
                    # Fail fast on invalid UTF-8 inside a fragmented message (§8.1).
                    self._fragments.append(self._text_decoder.decode(payload, fin))
                else:
                    self._fragments.append(payload.decode())
            except UnicodeDecodeError as exc:
                self._fail(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                return
        else:
            self._fragments.append(payload)
        if not fin:
            return
        parts, self._fragments, self._text_decoder = self._fragments, [], None
        if self._frag_opcode == TEXT:
            data: str | bytes = parts[0] if len(parts) == 1 else "".join(parts)  # type: ignore[arg-type]
        else:
            data = parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[arg-type]
        self.messages_in += 1
        worker = self._worker
        worker.stats["messages_in"] += 1
        self._dispatch(
            worker.handler("message"), (worker.server, Frame(self.sid, data, self._frag_opcode))
        )

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 §7.1.7) with ``code``, from an event."""
        ws = self.ws
        if ws is not None and ws.state is OPEN:
            ws.fail(code, reason)
        elif ws is not None and not self.closing and self.transport is not None:
            # The protocol already queued a close for a later frame of the same chunk
            # (its own 1002, or the echo of the client's close); it is not on the wire
            # yet. The first error wins (§7.1.7): send this close, drop the queued one.
            self.transport.write(encode_close(code, reason))
            self._cancel_timer()
            self._begin_close()
            self.transport.close()
            return
        self._begin_close()
        self._flush_protocol()

    def _flush_protocol(self) -> None:
        if self.ws is not None:
            self._flush(self.ws)

    def _flush(self, protocol: ServerProtocol) -> None:
        self._write_all(protocol.data_to_send())

    def _write_all(self, writes: list[bytes]) -> None:
        transport = self.transport
        for data in writes:
            if transport is None or transport.is_closing():
                return
            if data:
                transport.write(data)
                if self._track:
                    self._note_written(data)
            else:
                # websockets' SEND_EOF: the closing handshake is over (RFC 6455 §7.1.1),
                # the server closes the TCP connection first.
                self._cancel_timer()
                self._begin_close()
                transport.close()
                return

    # ------------------------------------------------------------------ server-side API

    def push(self, data: str | bytes, opcode: int | None) -> bool:
        """Send one message; ``False`` (never an exception) when it cannot be sent."""
        transport = self.transport
        worker = self._worker
        if self.closing or not self.established or transport is None:
            worker.stats["push_to_closed"] += 1
            return False
        if transport.get_write_buffer_size() > worker.settings.buffer_output_size:
            worker.stats["push_over_buffer"] += 1
            return False
        if isinstance(data, str):
            payload = data.encode()
            opcode = opcode or TEXT
        else:
            payload = bytes(data)
            opcode = opcode or BINARY
        ws = self.ws
        assert ws is not None
        if ws.extensions:
            # permessage-deflate (RFC 7692 §7.2.1) compresses the frame; serialised here
            # rather than with ws.send_text(), which refuses once the protocol has queued
            # a close: a message answered before that close still goes out before it.
            frame = WsFrame(Opcode.TEXT if opcode == TEXT else Opcode.BINARY, payload)
            wire = frame.serialize(mask=False, extensions=ws.extensions)
        else:
            wire = encode_frame(opcode, payload)
        transport.write(wire)
        if self._track:
            self._note_written(wire)
        self.messages_out += 1
        worker.stats["messages_out"] += 1
        return True

    def disconnect(self, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake with ``code``; the session is gone from now on."""
        ws = self.ws
        if self.closing or ws is None or ws.state is not OPEN or self.transport is None:
            return False
        check_close(code, reason)  # RFC 6455 §5.5, §7.4: a bad code raises here, at the call
        ws.send_close(code, reason)
        self._begin_close()
        self._flush(ws)
        self._arm_timer(CLOSE_TIMEOUT, self.abort)
        return True

    def close_http(self) -> None:
        """Drain an HTTP connection: now if idle, else after the response in flight."""
        if self.transport is None:
            return
        if self._in_flight or self._requests or (self._parser is not None and not self._answered):
            # Busy, or accepted just before this worker stopped accepting and its first
            # request is still on its way: answer it (Connection: close), then close.
            self._close_after_response = True
        else:
            self._begin_close()
            self.transport.close()

    def awaiting_first_request(self) -> bool:
        """Accepted, and neither answered nor upgraded yet: its first request (perhaps a
        WebSocket handshake) is still on its way or being handled."""
        return (
            not self.established
            and not self.closing
            and self.transport is not None
            and not self._answered
        )

    def abort(self) -> None:
        if self.transport is not None:
            self._begin_close()
            self.transport.abort()

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

    # ------------------------------------------------------------------ internals

    def _begin_close(self) -> None:
        """The session ends here for the app: exists() turns False, bound timers go."""
        if self.closing:
            return
        self.closing = True
        worker = self._worker
        worker.connections.pop(self.sid, None)
        if self.sid:
            worker.clear_bound_timers(self.sid)

    def _dispatch(
        self,
        handler: Callable[..., Any] | None,
        args: tuple[Any, ...],
        after: Callable[[], None] | None = None,
    ) -> None:
        """Run a handler in this connection's order: inline if nothing is pending."""
        if self._inbox is not None:
            self._inbox.append((_then(handler, after), args))
            if len(self._inbox) > MAX_PIPELINED * 64:
                self._pause_reading()
            return
        if handler is not None:
            try:
                result = handler(*args)
            except Exception:
                self._handler_failed(handler)
                return
            if result is not None and inspect.isawaitable(result):
                self._inbox = deque()
                self._worker.track(self._work_inbox(result, handler, after))
                return
        if after is not None:
            after()

    async def _work_inbox(
        self, first: Any, handler: Callable[..., Any], after: Callable[[], None] | None
    ) -> None:
        """Await coroutine handlers one after another until the inbox is empty."""
        inbox = self._inbox
        assert inbox is not None
        try:
            await first
        except Exception:
            self._handler_failed(handler)
        else:
            if after is not None:
                after()
        while inbox:
            step, args = inbox.popleft()
            try:
                result = step(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                self._handler_failed(step)
        self._inbox = None
        if self._close_when_idle is not None:
            code, reason = self._close_when_idle
            self._close_when_idle = None
            self.disconnect(code, reason)
        self._resume_reading()

    def _handler_failed(self, handler: Callable[..., Any]) -> None:
        """SPEC §7: log with traceback; close this connection only, with 1011."""
        worker = self._worker
        worker.stats["handler_errors"] += 1
        name = getattr(handler, "__qualname__", repr(handler))
        worker.log.exception(
            "handler %s raised for session %d; closing it with 1011", name, self.sid
        )
        if self.established:
            if self.disconnect(INTERNAL_ERROR, "internal error"):
                return
            if not self.closing and self.ws is not None:
                self._fail(INTERNAL_ERROR, "internal error")  # a close is queued, unsent
            else:
                self.abort()
        elif self.ws is None and self.transport is not None:
            self._in_flight = False
            self._reject_http(500, "Internal Server Error\n")

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._worker.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._reading_paused
            and self.transport is not None
            and self._inbox is None
            and not self._frozen  # a connection about to move stays paused
        ):
            self._reading_paused = False
            self.transport.resume_reading()


def _then(
    handler: Callable[..., Any] | None, after: Callable[[], None] | None
) -> Callable[..., Any]:
    """A step for the inbox: the handler (sync or async), then ``after``."""

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


async def _store_result(awaitable: Any, box: list[Any]) -> None:
    box.append(await awaitable)
