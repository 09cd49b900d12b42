"""The HTTP/1.1 side of a client connection, parsed by httptools (as uvicorn does).

Every accepted connection starts here. Plain requests go to the app's ``request``
handler, pipelined ones answered in order; a request without a handler gets ``426
Upgrade Required``. A WebSocket handshake (RFC 6455 §4.2) is accepted through
websockets' sans-I/O ``ServerProtocol`` (after the app's ``handshake`` handler, if any),
and then the transport is handed to a :class:`~swoolish.worker.websocket.WsConnection`
(``transport.set_protocol``), which serves the same session from the next byte on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, cast

import httptools
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from .connection import Connection
from .flow import FlowControl, Reason
from .host import WorkerHost
from .request import Request, Response, render_response, simple_response
from .websocket import QUIET_LOG, WsConnection

__all__ = ["MAX_HEADER_BYTES", "MAX_PIPELINED", "HttpConnection"]

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; more gets 431
MAX_PIPELINED = 16  # parsed-but-unanswered requests before we stop reading

#: The resting value of the parser's header and body lists between requests (never mutated:
#: on_message_begin replaces it with a fresh list before anything is appended).
_NO_ITEMS: Any = ()


class HttpConnection(Connection, asyncio.Protocol):
    """A client connection until (unless) it upgrades to a WebSocket."""

    __slots__ = (
        "_answered",
        "_body",
        "_body_size",
        "_close_after_response",
        "_header_bytes",
        "_headers",
        "_in_flight",
        "_parser",
        "_pending_upgrade_bytes",
        "_rejection",
        "_requests",
        "_url",
    )

    def __init__(self, worker: WorkerHost) -> None:
        super().__init__(worker)
        self._parser: httptools.HttpRequestParser | None = None
        # The parser's scratch state rests on shared empty values between requests, not on
        # per-connection lists (on_message_begin makes fresh ones): nothing of a handshake
        # stays with the session.
        self._url = b""
        self._headers: list[tuple[str, str]] = _NO_ITEMS
        self._header_bytes = 0
        self._body: list[bytes] = _NO_ITEMS
        self._body_size = 0
        self._requests: list[Request] = []  # at most MAX_PIPELINED: a list beats a deque here
        self._in_flight = False  # a request is being answered
        self._close_after_response = False
        self._answered = 0  # responses sent on this connection
        self._pending_upgrade_bytes: bytearray | None = None
        # set by a parser callback that refuses the request for a reason with its own
        # status (413, 431); the parser itself only reports a generic error
        self._rejection: tuple[int, str] | None = None

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport
        self.transport = transport
        worker = self._worker
        worker.live.add(self)
        self.connect_time = self.last_time = time.time()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (peer[0], peer[1])
        if len(worker.connections) >= worker.settings.max_connections:
            # More clients than max_connections are refused cleanly (docs/quickstart.md).
            worker.stats["refused"] += 1
            self.closing = True
            transport.write(simple_response(503, "Server is at max_connections, retry later.\n"))
            transport.close()
            return
        transport.set_write_buffer_limits(high=worker.settings.buffer_output_size)
        self.flow = FlowControl(transport)
        self.sid = worker.ids.next_id()
        worker.connections.accepted(self.sid, self)
        worker.stats["accepted"] += 1
        self._parser = httptools.HttpRequestParser(self)
        self._arm_timer(worker.settings.handshake_timeout, self._on_request_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_time = time.time()
        if self._pending_upgrade_bytes is not None:
            self._pending_upgrade_bytes += data  # the handshake handler is still deciding
        else:
            self._http_data(data)

    def eof_received(self) -> bool | None:
        self._begin_close()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self._worker
        worker.live.discard(self)
        self._cancel_timer()
        self._begin_close()
        worker.stats["closed"] += 1
        self.transport = None

    # ------------------------------------------------------------------ the worker's view

    def drain(self, code: int, reason: str) -> None:
        """Close now if idle, else after the response in flight (``Connection: close``)."""
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
        return not self.closing and self.transport is not None and not self._answered

    # ------------------------------------------------------------------ parsing

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
            self._reject(status, text)
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
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            Headers(self._headers),
            b"".join(self._body),
            parser.get_http_version(),
            self.sid,
        )
        self._url = b""
        self._headers = self._body = _NO_ITEMS  # now owned by the request
        self._requests.append(request)
        if len(self._requests) > MAX_PIPELINED and self.flow is not None:
            self.flow.pause(Reason.PIPELINE)

    # ------------------------------------------------------------------ answering

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
            # docs/quickstart.md: a plain HTTP request when the app serves only WebSockets.
            self._reject(
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
        self._dispatch(handler, (request, response), after=lambda: _end_if_open(response))

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
        if self.flow is not None and len(self._requests) <= MAX_PIPELINED:
            self.flow.resume(Reason.PIPELINE)
        if self._requests:
            self._answer_next_request()
        else:
            self._arm_timer(self._worker.settings.keepalive_timeout, self._on_idle_timeout)

    def _reject(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(simple_response(status, text, headers))
            self._begin_close()
            self.transport.close()

    def _fail_after_handler_error(self) -> None:
        if self.transport is not None:
            self._in_flight = False
            self._reject(500, "Internal Server Error\n")

    def _on_request_timeout(self) -> None:
        # A client that never finishes its request or handshake is dropped
        # (docs/quickstart.md, "Bad input").
        self._worker.stats["handshake_timeouts"] += 1
        self._reject(408, "Request Timeout\n")

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
            self._reject(400, "Bad Request: an upgrade must not follow pipelined requests.\n")
            return
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self._reject(400, "Bad Request: only WebSocket upgrades are supported.\n")
            return
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
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if custom is not None and (
            (result and result[0] is False) or (custom.ended and custom.status_code != 101)
        ):
            status = custom.status_code if custom.status_code != 200 else 403
            transport.write(render_response(status, custom.headers, b"", False, custom.reason))
            self._begin_close()
            transport.close()
            return
        protocol = self._handshake_protocol()
        handshake = protocol.accept(WsRequest(request.target, request.headers, request.method))
        if custom is not None:
            for name, value in custom.headers:
                handshake.headers[name] = value
        protocol.send_response(handshake)
        if handshake.status_code != 101:
            for data in protocol.data_to_send():
                transport.write(data)
            self._begin_close()
            transport.close()
            return
        self._cancel_timer()
        self._upgrade(protocol, request)

    def _handshake_protocol(self) -> ServerProtocol:
        settings = self._worker.settings
        extensions = []
        if settings.websocket_compression:
            # With live hand-off, ask the client not to keep its compression context
            # (RFC 7692 §7.1.1.1): then no decompression window has to move.
            extensions.append(
                ServerPerMessageDeflateFactory(client_no_context_takeover=settings.reload_handoff)
            )
        return ServerProtocol(
            extensions=extensions, max_size=settings.max_message_size, logger=QUIET_LOG
        )

    def _upgrade(self, handshake: ServerProtocol, request: Request) -> None:
        """Hand the transport and the session to a WebSocket connection."""
        transport = self.transport
        assert transport is not None and self.flow is not None
        worker = self._worker
        ws = WsConnection(worker, self.sid, self.peer, self.connect_time)
        ws.last_time = self.last_time
        flow, self.flow = self.flow, None
        worker.live.discard(self)
        # This object is done: the transport and the session belong to ws from here on.
        self.transport = None
        self.closing = True
        transport.set_protocol(ws)
        rest = bytes(self._pending_upgrade_bytes or b"")
        self._pending_upgrade_bytes = None
        ws.upgraded(transport, flow, handshake, request, rest)


def _end_if_open(response: Response) -> None:
    """Runs after the request handler returned: end a response it left open."""
    if not response.ended:
        response.end()


async def _store_result(awaitable: Any, box: list[Any]) -> None:
    box.append(await awaitable)
