"""The HTTP/1.1 side of a client connection, parsed by httptools (as uvicorn does).

Every accepted connection starts here. Plain requests go to the app's ``request``
handler, pipelined ones answered in order; a request without a handler gets ``426
Upgrade Required``. A WebSocket handshake (RFC 6455 §4.2) is answered by
:mod:`swoolish.worker.handshake` (after the app's ``handshake`` handler, if any), and
then the transport is handed to a :class:`~swoolish.worker.websocket.WsConnection`
(``transport.set_protocol``), which serves the same session from the next byte on.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import TYPE_CHECKING, Any

import httptools
from websockets.datastructures import Headers

from ..core.heads import upgrade_head
from ..core.proxy import Client, TrustedPeers, forwarded_client
from ..core.settings import normalize_origin
from .access import log_request, request_client
from .connection import Connection, high_water
from .flow import FlowControl, Reason, bytes_acked
from .handshake import HandshakeConfig, Opening, open_handshake
from .host import WorkerHost
from .request import (
    Request,
    Response,
    field,
    grouped_headers,
    list_members,
    offers_websocket,
    parsed_headers,
    render_response,
    simple_response,
)
from .tlswrites import sliced_writes
from .websocket import QUIET_LOG, WsConnection

__all__ = ["MAX_HEADER_BYTES", "MAX_HEADER_FIELDS", "MAX_PIPELINED", "HttpConnection"]

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; more gets 431 (see _count_head)
MAX_HEADER_FIELDS = 100  # header (and trailer) fields of one request; more gets 431
MAX_PIPELINED = 16  # parsed-but-unanswered requests before we stop parsing and reading
FEED_SIZE = 2048  # bytes handed to the parser at a time, so it stops near MAX_PIPELINED

#: The resting value of the parser's header list between requests (never mutated:
#: on_message_begin replaces it with a fresh list before anything is appended). The body
#: rests on b"": a request without one allocates nothing for it.
_NO_ITEMS: Any = ()
#: The client of a connection not made yet (connection_made sets the peer's): shared, as
#: a NamedTuple costs a Python call to build
_NO_CLIENT = Client("", False)
#: A body shorter than this grows by concatenation (see on_body): 32 KiB copied at most.
_SHORT_BODY = 256
# looked up once: the pump checks them for every request
_BACKPRESSURE = Reason.BACKPRESSURE
_PIPELINE = Reason.PIPELINE
#: The methods as text, decoded once (httptools gives bytes).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
#: What a client gets for a response its handler built that cannot be sent.
_SERVER_ERROR = "Internal Server Error\n"
#: The interim answer a client sending ``Expect: 100-continue`` waits for (RFC 9110 §15.2.1).
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: _head_fed when a request's head has just been read, its Expect not looked at yet
#: (_answer_expectation); -1 when no head is being read, and it was or need not be.
_HEAD_READ = -2


class HttpConnection(Connection, asyncio.Protocol):
    """A client connection until (unless) it upgrades to a WebSocket."""

    __slots__ = (
        "__weakref__",  # counted by a weak reference while its TLS handshake runs
        "_access",
        "_answered",
        "_began",
        "_bodies_waiting",
        "_body",
        "_close_after_response",
        "_direct",
        "_direct_client",
        "_fed",
        "_head",
        "_head_fed",
        "_headers",
        "_in_flight",
        "_keep_alive",
        "_linger_mark",
        "_parser",
        "_pending_upgrade_bytes",
        "_pumping",
        "_rejection",
        "_requests",
        "_secure",
        "_stall_since",
        "_stall_size",
        "_unfed",
        "_unix",
        "_unread",
        "_url",
        "tls_began",
    )

    def __init__(self, worker: WorkerHost) -> None:
        super().__init__(worker)
        # made when the first read is not a plain handshake (_upgrade_at_once); None
        # once parsing stopped for good (a refusal, an upgrade, the connection's end)
        self._parser: httptools.HttpRequestParser | None = None
        # no byte of this connection was parsed yet: requests are read while this or a
        # parser is there
        self._unread = True
        # The parser's scratch state rests on shared empty values between requests, not on
        # per-connection lists (on_message_begin makes fresh ones): nothing of a handshake
        # stays with the session.
        self._url = b""
        self._headers: list[tuple[str, str]] = _NO_ITEMS
        # bytes fed while a request's head is incomplete; -1: none is (_HEAD_READ: see there)
        self._head_fed = -1
        self._body: bytes | bytearray = b""  # see on_body
        self._began = False  # a request began in the feed being parsed, not complete yet
        self._requests: list[Request] = []  # at most MAX_PIPELINED: a list beats a deque here
        self._bodies_waiting = 0  # the bytes of the bodies of _requests (see _pipeline_full)
        self._in_flight = False  # a request is being answered
        self._keep_alive = True  # ... and whether its client keeps the connection
        self._head = False  # ... and whether it asked for the head only (HEAD)
        self._close_after_response = False
        self._answered = 0  # responses sent on this connection
        self._pending_upgrade_bytes: bytearray | None = None
        # set by a parser callback that refuses the request for a reason with its own
        # status (413, 431); the parser itself only reports a generic error
        self._rejection: tuple[int, str] | None = None
        # Bytes read and not yet given to the parser, from _fed on; b"" once all are
        # given, so "are bytes waiting?" is the truth of _unfed.
        self._unfed = b""
        self._fed = 0
        self._pumping = False  # _pump is running (it is never re-entered)
        self._stall_since = 0.0  # since when the unsent bytes have not gone down
        self._stall_size = 0
        self._linger_mark = 0  # _taken when the lingering deadline was armed (_linger)
        # with access_log on: the request being answered, and since when (perf_counter)
        self._access: tuple[Request, float] | None = None
        self._direct: tuple[str, int] = ("", 0)  # the peer itself (a proxy, perhaps)
        self._direct_client = _NO_CLIENT  # ... as every request's client, unproxied
        self._unix = False  # the peer is on a Unix socket: it has no address
        self._secure = False  # TLS on this connection
        # the loop's time of the accept, for a TLS connection (Worker._tls_connection):
        # its handshake_timeout counts from there, TLS handshake included
        self.tls_began = 0.0

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP or Unix transport, or its TLS transport over one of them (said to
        # the type checker alone: typing.cast is a Python call, once per connection)
        if TYPE_CHECKING:
            assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        worker = self._worker
        worker.live.add(self)
        self.connect_time = self.last_time = time.time()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (peer[0], peer[1])
        else:
            self._unix = True  # a Unix socket peer's name is "" (or a path): no address
        self._direct = self.peer
        self._secure = worker.settings.ssl_cert_file is not None  # the server's TLS
        if self._secure:
            worker.tls_handshakes.completed(self)  # counted since the accept
        self._direct_client = Client(self.peer[0], self._secure)
        held = len(worker.connections) + worker.outliving_handlers + worker.closing_with_output
        if held >= worker.settings.max_connections:
            # More clients than max_connections are refused cleanly (docs/quickstart.md);
            # closed ones whose handlers still work count (Connection._count_if_outliving),
            # and so do closed ones whose output is still unsent (_bound_unsent). A refused
            # connection is counted as such, never as accepted nor closed (no session id).
            worker.stats["refused"] += 1
            self.closing = True
            transport.write(simple_response(503, "Server is at max_connections, retry later.\n"))
            transport.close()
            return
        if self._secure:  # large writes in slices: worker/tlswrites.py
            transport = self.transport = sliced_writes(transport)
        # TCP keepalive comes with the socket: it is set on the listening socket
        # (swoolish.master.listeners), and Linux copies it to every accepted one.
        transport.set_write_buffer_limits(high=high_water(worker.settings.buffer_output_size))
        self.flow = FlowControl(transport)
        self.sid = worker.ids.next_id()
        worker.connections.accepted(self.sid, self)
        worker.stats["accepted"] += 1
        worker.listener.accepted()  # the accept balance looks at the counts soon
        self._arm_timer(self._request_time_left(), self._on_request_timeout)

    def _request_time_left(self) -> float:
        """The time the first request has, from now: handshake_timeout, less what the
        TLS handshake took of it (docs/deployment.md, "TLS"). Before, the two had one
        handshake_timeout each: a client that stalled in both held its connection
        twice as long (20 s at the defaults)."""
        timeout = self._worker.settings.handshake_timeout
        if self.tls_began:
            timeout -= self._worker.loop.time() - self.tls_began
        return max(timeout, 0.0)

    def data_received(self, data: bytes) -> None:
        self.last_time = time.time()
        if self._pending_upgrade_bytes is not None:
            self._pending_upgrade_bytes += data  # the handshake handler is still deciding
            return
        if self._unfed:
            self._unfed = self._unfed[self._fed :] + data
        else:
            self._unfed = data
        self._fed = 0
        self._pump()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._pump()  # answering waited for the client to take what was sent

    def eof_received(self) -> bool | None:
        self._begin_close()
        if self.transport is not None:
            self._bound_unsent(self.transport)  # answers written before the client's EOF
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self._worker
        worker.live.discard(self)
        self._cancel_timer()
        self._begin_close()
        if self.sid:  # refused (503) ones were never accepted: see connection_made
            worker.stats["closed"] += 1
        self._count_lost()
        self.transport = None
        # Nothing is parsed or answered from here on (every path checks the transport):
        # let go of the parser, which holds this object's callbacks (a cycle that only a
        # full garbage collection would break, keeping a megabyte of body and 16 parsed
        # requests per closed connection for as long), and of what it parsed. A handler
        # still running keeps its own request; its answer goes nowhere (_send_response).
        self._parser = None
        self._requests.clear()
        self._bodies_waiting = 0
        self._url = b""
        self._headers = _NO_ITEMS
        self._body = b""
        self._unfed, self._fed = b"", 0
        self._pending_upgrade_bytes = None

    # ------------------------------------------------------------------ the worker's view

    def drain(self, code: int, reason: str) -> None:
        """Close now if idle, else after the response in flight (``Connection: close``)."""
        if self.transport is None:
            return
        if (
            self._in_flight
            or self._requests
            or self._unfed
            or ((self._parser is not None or self._unread) and not self._answered)
        ):
            # Busy, or accepted just before this worker stopped accepting and its first
            # request is still on its way: answer it (Connection: close), then close.
            self._close_after_response = True
        else:
            self._close_transport(self.transport)

    def awaiting_first_request(self) -> bool:
        """Accepted, and neither answered nor upgraded yet: its first request (perhaps a
        WebSocket handshake) is still on its way or being handled."""
        return not self.closing and self.transport is not None and not self._answered

    def heartbeat(self, now: float, idle_time: float) -> None:
        """Reset a connection whose client has taken nothing of what waits for it for
        ``idle_time`` seconds (answering stopped at the high-water mark; a client that
        never reads would otherwise hold its slot for ever)."""
        transport = self.transport
        if transport is None or self.closing:
            return
        unsent = transport.get_write_buffer_size()
        if not unsent or not self._stall_size or unsent < self._stall_size:
            self._stall_since = now  # nothing waits, or the client took some
        self._stall_size = unsent
        if unsent and now - self._stall_since >= idle_time:
            self._worker.stats["closed_idle"] += 1
            self.abort()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Closed with an answer unsent (``Connection: close``, HTTP/1.0, a refusal, the
        end of keep-alive): the heartbeat's rule goes on, on this connection's own timer.
        It is reset once heartbeat_idle_time passes in which its client took none of
        what waits, and a slow client that reads still gets all of a large answer."""
        self._linger_mark = self._taken(transport)
        self._arm_timer(self._worker.settings.heartbeat_idle_time, self._check_lingering)

    def _check_lingering(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._owed(transport) and self._taken(transport) <= self._linger_mark:
            self._worker.stats["closed_idle"] += 1
            self.abort()
        else:
            self._linger(transport)  # it took some: another heartbeat_idle_time

    def _taken(self, transport: asyncio.Transport) -> int:
        """A count that grows while the client takes what it is owed: the bytes its TCP
        acknowledged (``bytes_acked``) or, where the kernel does not say, its unsent
        bytes going down. Over TLS the second would not do: the kernel's send queue a
        slow client reads from stays full, refilled from the TLS layer's buffer."""
        acked = bytes_acked(transport)
        return -self._owed(transport) if acked is None else acked

    # ------------------------------------------------------------------ parsing

    def _pump(self) -> None:
        """Parse and answer requests in one loop, never by recursion.

        A client may pipeline thousands of requests in one write. They are answered one
        at a time, in order; the parser gets FEED_SIZE bytes at a time, and only while
        the pipeline is not full (_pipeline_full), so the rest waits as bytes and reading
        stops (``PIPELINE``). Answering also stops while the client does not take what
        was sent (``BACKPRESSURE``, past the high-water mark), until ``resume_writing``.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.transport is not None and not self.closing:
                if self._requests and not self._in_flight:
                    if self.flow is not None and self.flow.holds(_BACKPRESSURE):
                        break
                    self._answer_next_request()
                elif (
                    self._unfed
                    and not (self._requests and self._pipeline_full())
                    and (self._parser is not None or self._unread)
                    and self._pending_upgrade_bytes is None
                ):
                    self._feed_parser()
                else:
                    break
        finally:
            self._pumping = False
        flow = self.flow
        if flow is not None and not self.closing:
            if (
                self._unfed
                or (self._requests and self._pipeline_full())
                or self._pending_upgrade_bytes is not None
            ):
                flow.pause(_PIPELINE)
            else:
                flow.resume(_PIPELINE)

    def _pipeline_full(self) -> bool:
        """Enough parsed requests wait for their answers to stop parsing more: MAX_PIPELINED,
        or bodies of max_request_size in all. Counted in requests alone, 16 bodies of
        max_request_size could wait per connection."""
        return (
            len(self._requests) >= MAX_PIPELINED
            or self._bodies_waiting >= self._worker.settings.max_request_size
        )

    def _feed_parser(self) -> None:
        """Give the parser the next FEED_SIZE bytes (a view: nothing is copied)."""
        parser = self._parser
        if parser is None:  # so _unread: the connection's first bytes (see _pump)
            self._unread = False
            if self._upgrade_at_once():
                return
            parser = self._parser = httptools.HttpRequestParser(self)
        unfed, start = self._unfed, self._fed
        end = start + FEED_SIZE
        if end < len(unfed):
            self._fed = end
            chunk: bytes | memoryview = memoryview(unfed)[start:end]
        else:
            self._unfed, self._fed = b"", 0  # all given: let the read buffer go
            # all of a read at once (one request, as a rule) goes as is; otherwise a view
            chunk = memoryview(unfed)[start:] if start else unfed
        try:
            parser.feed_data(chunk)
            if self._head_fed >= 0:
                self._count_head(len(chunk))
            self._time_partial_request()
        except httptools.HttpParserUpgrade as upgrade:
            self._unfed, self._fed = b"", 0
            self._on_upgrade(unfed[start + upgrade.args[0] :])
        except httptools.HttpParserError:
            status, text = self._rejection or (
                400,
                "Bad Request: the request is not valid HTTP/1.1.\n",
            )
            self._refuse(status, text)

    def _upgrade_at_once(self) -> bool:
        """Take the connection's first read, if it holds a whole WebSocket handshake
        request of the plainest kind, without a parser (``upgrade_head``,
        swoolish/core/_speedups.c): what every client sends. The request is the one
        httptools would have made of the same bytes (tests/unit/test_upgrade_head.py);
        making the parser and hearing its callbacks cost a handshake some 4 µs of a
        reconnect storm's CPU (docs/performance.md, "Reconnect storm"). Anything else,
        or without the compiled module, goes to the parser."""
        unfed = self._unfed
        if upgrade_head is None or type(unfed) is not bytes:
            return False
        head = upgrade_head(unfed, MAX_HEADER_FIELDS, MAX_HEADER_BYTES)
        if head is None:
            return False
        target, version, fields, by_name, end, keep_alive = head
        self._unfed = b""
        headers = grouped_headers(fields, by_name)
        self._request_parsed("GET", target, headers, b"", version, keep_alive)
        self._on_upgrade(unfed[end:])
        return True

    def _refuse(self, status: int, text: str) -> None:
        """Refuse the request being parsed: nothing more is parsed, ``status`` is sent,
        and the connection closed."""
        self._parser = None
        self._unfed, self._fed = b"", 0
        self._reject(status, text)

    # httptools callbacks, in the order it calls them
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_fed = 0
        self._body = b""
        self._began = True

    def _time_partial_request(self) -> None:
        """After a feed that left a request partly received, with nothing to answer
        before it: if it began in this feed, it gets handshake_timeout to finish, counted
        from now, and once its head is read the answer to its ``Expect``
        (_answer_expectation). With requests before it, both wait for their answers
        (_await_rest_of_request). A request complete within one feed (the rule) needs
        neither."""
        if self._headers is _NO_ITEMS or self._in_flight or self._requests:
            return
        if self._began:
            self._await_rest_of_request()
        elif self._head_fed == _HEAD_READ:
            self._answer_expectation()

    def _await_rest_of_request(self) -> None:
        """The request partly received is the next to answer, now that those before it
        are: it gets handshake_timeout to finish, from now, and 408 past it, as a lone
        slow request does; not keepalive_timeout and a close without an answer, as if
        the connection were idle while its client is sending. Its ``Expect`` is
        answered now if its head is read, else when it is. A connection's first request
        keeps the deadline of its accept (connection_made): a client that waited before
        its first byte, or in its TLS handshake, gets no second handshake_timeout."""
        self._began = False
        if self._answered:
            self._arm_timer(self._worker.settings.handshake_timeout, self._on_request_timeout)
        if self._head_fed == _HEAD_READ:
            self._answer_expectation()

    def _answer_expectation(self) -> None:
        """Answer the ``Expect: 100-continue`` of the request partly received, the next
        to be answered, whose head is read and whose body has not begun (RFC 9110
        §10.1.1): ``100 Continue``, so that a client that waits for it sends the body;
        or 413 at once for a Content-Length over max_request_size, before the client
        sends any of it. Any other expectation is ignored, as uvicorn does (417 is a
        "MAY"), and so is one of an HTTP/1.0 request (a "MUST").

        Looked at once per request (_HEAD_READ), and only for a request still arriving
        when its turn comes: one complete within a feed needs no interim answer. With
        requests before it, the 100 waits for their answers (_await_rest_of_request): it
        must not come before theirs on the wire.
        """
        self._head_fed = -1
        parser = self._parser
        if self._body or parser is None or parser.get_http_version() != "1.1":
            return  # the body has begun: the client did not wait (a 100 "MAY" be omitted)
        headers = self._headers
        expected = ", ".join(value for name, value in headers if name.lower() == "expect")
        if "100-continue" not in list_members(expected):
            return
        limit = self._worker.settings.max_request_size
        length = next((v for n, v in headers if n.lower() == "content-length"), "")
        if length and int(length) > limit:  # llhttp took it: digits, one value
            self._refuse(*_too_large(limit))
        elif self.transport is not None and not self.closing:
            self.transport.write(_CONTINUE)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep one field, or refuse the request with 431 past MAX_HEADER_FIELDS.

        A field costs the worker some 150 bytes of Python objects (two strings, a tuple,
        and in the request's ``Headers`` a lower-case name, a list and a dict entry)
        however short it is on the wire, where ``a:`` and its CRLF are four bytes.
        Bounded by bytes alone, 64 KiB of such fields held 1 MB per request, and 40 MB
        per connection with its pipelined requests. 100 is Apache's LimitRequestFields
        and hyper's default; browsers send 10 to 20.
        """
        headers = self._headers
        if len(headers) >= MAX_HEADER_FIELDS:
            self._refuse_head(f"{MAX_HEADER_FIELDS} fields")
        # llhttp keeps the spaces and tabs after a value; they are not part of it (RFC
        # 9112 §5: a field value is what is between the OWS around it)
        headers.append((name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")))

    def on_headers_complete(self) -> None:
        self._head_fed = _HEAD_READ

    # A chunked body's last chunk may carry trailer fields (RFC 9112 §7.1.2), which
    # httptools keeps as it keeps header fields: from a chunk's header to its data or its
    # end (the last one's end comes after the trailers), they count as the head does.
    def on_chunk_header(self) -> None:
        self._head_fed = 0

    def on_chunk_complete(self) -> None:
        self._head_fed = -1

    def _count_head(self, fed: int) -> None:
        """After a feed that left a request's head incomplete: refuse a head past
        MAX_HEADER_BYTES with 431 (RFC 6585 §5), so the client knows what to fix.

        Counted per feed, not per field: httptools hands a field over only once it
        is complete and keeps the part read so far itself, so a field line that never
        ends would otherwise grow for as long as the client sends. The feed that began
        the request may hold the end of the one before it too: a head is refused past
        MAX_HEADER_BYTES + FEED_SIZE, and never at MAX_HEADER_BYTES or less. The
        trailer fields of a chunked body are counted the same way, on their own.
        """
        self._head_fed += fed
        if self._head_fed > MAX_HEADER_BYTES + FEED_SIZE:
            self._refuse_head("64 KiB")

    def _refuse_head(self, limit: str) -> None:
        """Refuse the request with 431, naming the ``limit`` its head went past."""
        self._head_fed = -1
        self._rejection = (431, f"Request Header Fields Too Large: {limit} at most.\n")
        raise httptools.HttpParserError(f"header fields over {limit}")

    def on_body(self, body: bytes) -> None:
        """Add a piece of the body (what one feed holds of it, or of one chunk's data).

        The body is one object however many pieces it comes in: kept as the parser gave
        it if it comes in one (no copy), joined to the next as bytes while it is short
        (quicker than a ``bytearray`` and the copy back), in one ``bytearray`` after
        that. One object per piece cost a chunked body of two-byte chunks eight times
        its size: 20 clients sending 1 MiB bodies so grew a worker by 560 MB.
        """
        self._head_fed = -1  # a chunk's data (counted against max_request_size)
        held = self._body
        limit = self._worker.settings.max_request_size
        if len(held) + len(body) > limit:
            self._rejection = _too_large(limit)
            raise httptools.HttpParserError("request body too large")
        if not held:
            self._body = body
        elif type(held) is bytearray:
            held += body  # in place
        elif len(held) < _SHORT_BODY:
            self._body = held + body
        else:
            self._body = bytearray(held) + body

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        method = parser.get_method()
        body = self._body
        self._request_parsed(
            _METHODS.get(method) or method.decode("ascii", "replace"),
            self._url.decode("latin-1"),
            parsed_headers(self._headers),  # the fields are the request's from here on
            body if type(body) is bytes else bytes(body),
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        self._url = b""
        self._headers = _NO_ITEMS
        self._body = b""
        self._began = False

    def _request_parsed(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        version: str,
        keep_alive: bool,
    ) -> None:
        """Queue the request read, to be answered in turn (_pump)."""
        client = self._client(headers)
        request = Request(
            method, target, headers, body, version, self.sid, client.addr, client.secure, keep_alive
        )
        self._requests.append(request)
        self._bodies_waiting += len(body)

    def _client(self, headers: Headers) -> Client:
        """Who sent this request: the peer, or with ``proxy_headers`` the client a
        trusted proxy names (swoolish.core.proxy)."""
        settings = self._worker.settings
        if not settings.proxy_headers:
            return self._direct_client
        peer = None if self._unix else self._direct[0]
        trusted = _trusted_peers(settings.forwarded_allow_ips)
        return forwarded_client(peer, self._secure, trusted, headers.get_all)

    def _serve_client_of(self, request: Request) -> None:
        """The session's peer is the client of the request being answered from now on,
        so client_info() and the session table show a proxied client's address (its
        port is unknown: 0)."""
        if self._worker.settings.proxy_headers:
            addr = request.remote_addr
            self.peer = self._direct if addr == self._direct[0] else (addr, 0)

    # ------------------------------------------------------------------ answering

    def _answer_next_request(self) -> None:
        """Answer the oldest request (called by _pump only, one at a time, in order)."""
        if not self._requests or self.transport is None:
            return
        self._disarm_timer()  # re-armed (idle) once answered: keep the loop's handle
        request = self._requests.pop(0)
        self._bodies_waiting -= len(request.body)
        self._serve_client_of(request)
        worker = self._worker
        if worker.settings.access_log:
            self._access = (request, time.perf_counter())
        handler = worker.handler("request")
        worker.stats["requests"] += 1
        worker.handled_left -= 1
        if not worker.handled_left:
            worker.handled_enough()
        if handler is None:
            # docs/quickstart.md: a plain HTTP request when the app serves only WebSockets.
            self._reject(
                426,
                "Upgrade Required: this server speaks WebSocket only.\n",
                [("Upgrade", "websocket")],
            )
            return
        self._in_flight = True
        # One request is answered at a time: what its response needs waits here.
        self._keep_alive = request.keep_alive()
        self._head = request.method == "HEAD"
        response = Response(self._send_response)
        self._dispatch(handler, (request, response), after=response.end_if_open)

    def _send_response(self, resp: Response, body: bytes) -> None:
        transport = self.transport
        self._in_flight = False
        access, self._access = self._access, None
        if transport is None or transport.is_closing():
            return
        worker = self._worker
        keep_alive = (
            self._keep_alive
            and not self._close_after_response
            and not worker.draining
            and not resp.closes
        )
        head = self._head
        try:
            wire = resp.wire(body, keep_alive, head)
        except Exception as exc:  # a Content-Length that is not the body's (or worse)
            self._report_unsendable(exc)
            # Nothing of it was sent and the request was read whole: the client gets a
            # 500 in the server's framing, and its next request its own answer.
            resp, body = Response(self._send_response).status(500), _SERVER_ERROR.encode()
            wire = resp.wire(body, keep_alive, head)
        unsent = transport.get_write_buffer_size()
        if unsent > worker.settings.buffer_output_size:
            # The budget's rule (docs/quickstart.md, "Bad input"). _pump starts an answer
            # only below the high-water mark, so in practice a client that does not read
            # is stopped there, and reset by the heartbeat when it never catches up.
            self._report_over_budget(unsent)
            self.abort()
            return
        self._answered += 1
        transport.write(wire)
        if access is not None:
            self._log_access(access, resp.status_code, 0 if head else len(body))
        if not keep_alive:
            self._close_transport(transport)
            return
        if not self._requests:
            if self._headers is _NO_ITEMS:
                self._arm_timer(worker.settings.keepalive_timeout, self._on_idle_timeout)
            else:
                self._await_rest_of_request()  # one is arriving: not idle
        if not self._pumping:
            self._pump()  # the next request (a handler that answered late)

    def _report_unsendable(self, exc: Exception) -> None:
        """Log a response the handler built that cannot be sent as it is (a 500 goes
        instead); counted as a handler error."""
        self._worker.stats["handler_errors"] += 1
        self._worker.log.error(
            "session %d: the response cannot be sent (%s: %s); answering 500 instead",
            self.sid,
            type(exc).__name__,
            exc,
        )

    def _reject(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        access, self._access = self._access, None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(simple_response(status, text, headers))
            if access is not None:
                self._log_access(access, status, len(text.encode()))
            self._close_transport(self.transport)

    def _log_access(self, access: tuple[Request, float], status: int, size: int) -> None:
        """The access log's line for a request answered (access_log on only)."""
        request, started = access
        client = request_client(self.peer, request)
        log_request(client, request.method, request.path, request.version, status, size, started)

    def _fail_after_handler_error(self) -> None:
        if self.transport is not None:
            self._in_flight = False
            self._reject(500, _SERVER_ERROR)

    def _on_request_timeout(self) -> None:
        # A client that never finishes its request or handshake is dropped
        # (docs/quickstart.md, "Bad input").
        self._worker.stats["handshake_timeouts"] += 1
        self._reject(408, "Request Timeout\n")

    def _on_idle_timeout(self) -> None:
        if self.transport is not None and not self._in_flight and not self._requests:
            self._close_transport(self.transport)

    # ------------------------------------------------------------------ WebSocket handshake

    def _on_upgrade(self, rest: bytes) -> None:
        last = self._requests[-1] if self._requests else None
        # RFC 9110 §7.8: an Upgrade of an HTTP/1.0 request is ignored (and RFC 6455 §4.1
        # asks HTTP/1.1 of a handshake): it is a plain request, answered as such.
        websocket = last is not None and last.version != "1.0" and offers_websocket(last.headers)
        if (
            last is not None
            and last.method != "CONNECT"
            and not websocket
            and field(last.headers, "Content-Length") in ("", "0")
            and "Transfer-Encoding" not in last.headers
        ):
            # RFC 9110 §7.8: a server may ignore an Upgrade it does not support, and
            # clients such as `curl --http2` offer h2c on ordinary requests expecting an
            # HTTP/1.1 answer: serve it as a plain request, keep parsing what follows.
            # (The parser hands a body of an upgrade request over as upgraded bytes, so
            # only body-less requests can be served this way; others still get 400.)
            self._parser = httptools.HttpRequestParser(self)
            self._unfed, self._fed = bytes(rest), 0  # _pump goes on parsing it
            return
        request = self._requests.pop() if self._requests else None
        self._parser = None
        if request is not None and self._worker.settings.access_log:
            self._access = (request, time.perf_counter())  # a refusal is logged as a request
        if request is None or self._requests or self._in_flight:
            self._reject(400, "Bad Request: an upgrade must not follow pipelined requests.\n")
            return
        if not websocket:  # request is last
            self._reject(400, "Bad Request: only WebSocket upgrades are supported.\n")
            return
        allowed = self._worker.settings.websocket_origins
        if allowed is not None and not _origin_allowed(request, allowed):
            # Before the handshake handler: a page of another site must not open a
            # WebSocket with the user's cookies (cross-site WebSocket hijacking).
            self._worker.stats["origin_refused"] += 1
            self._reject(403, "Forbidden: WebSockets from this origin are not allowed.\n")
            return
        handler = self._worker.handler("handshake")
        if handler is None:  # answered now, within the request's own deadline
            self._accept_websocket(request, None, rest=rest)
            return
        self._arm_timer(self._worker.settings.handshake_timeout, self._on_request_timeout)
        self._pending_upgrade_bytes = bytearray(rest)
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
        self,
        request: Request,
        custom: Response | None,
        result: list[Any] | None = None,
        rest: bytes = b"",
    ) -> None:
        """Complete the opening handshake (RFC 6455 §4.2.2) unless the app refused it.
        ``rest``: what the client sent after the request, unless the handshake handler
        ran, which had it wait in ``_pending_upgrade_bytes``."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if custom is not None and (
            (result and result[0] is False) or (custom.ended and custom.status_code != 101)
        ):
            status = custom.status_code if custom.status_code != 200 else 403
            try:
                wire = render_response(status, custom.headers, b"", False, custom.reason)
            except ValueError as exc:  # a Content-Length that is not 0: no body goes
                self._report_unsendable(exc)
                status, wire = 500, simple_response(500, _SERVER_ERROR)
            transport.write(wire)
            access, self._access = self._access, None
            if access is not None:
                self._log_access(access, status, 0)
            self._close_transport(transport)
            return
        opening = open_handshake(
            request,
            self._handshake_config(),
            self._worker.settings.max_message_size,
            custom.headers if custom is not None else [],
            QUIET_LOG,
        )
        access, self._access = self._access, None  # an accepted one: WsConnection logs it
        if opening.status != 101:
            transport.write(opening.wire)
            if access is not None:
                self._log_access(access, opening.status, opening.body_size)
            self._close_transport(transport)
            return
        self._cancel_timer()
        self._upgrade(opening, request, rest)

    def _handshake_config(self) -> HandshakeConfig:
        settings = self._worker.settings
        # With live hand-off, ask the client not to keep its compression context (RFC 7692
        # §7.1.1.2): then no decompression window has to move. A TLS connection never
        # moves, so it keeps the better compression. Unless told otherwise, the server
        # keeps none either (§7.1.1.1): its messages are streams of their own and no
        # compressor lives with a connection (docs/performance.md, "Compressed
        # connections").
        movable = settings.reload_handoff and not self._secure
        return _handshake_config(
            settings.websocket_compression,
            settings.websocket_compression_context_takeover,
            not movable,
        )

    def _upgrade(self, opening: Opening, request: Request, rest: bytes) -> None:
        """Hand the transport and the session to a WebSocket connection, with ``rest``
        (or the bytes that waited while the handshake handler decided)."""
        transport = self.transport
        assert transport is not None and self.flow is not None
        worker = self._worker
        self._serve_client_of(request)  # the WebSocket's client for its whole life
        ws = WsConnection(worker, self.sid, self.peer, self.connect_time)
        ws.last_time = self.last_time
        flow, self.flow = self.flow, None
        worker.live.discard(self)
        # This object is done: the transport and the session belong to ws from here on.
        self.transport = None
        self.closing = True
        transport.set_protocol(ws)
        waited, self._pending_upgrade_bytes = self._pending_upgrade_bytes, None
        rest = bytes(waited if waited is not None else rest)  # rest itself if bytes
        flow.resume(Reason.PIPELINE)  # held while the handshake handler decided
        ws.upgraded(transport, flow, opening, request, rest)


def _too_large(limit: int) -> tuple[int, str]:
    """The refusal of a body over max_request_size: RFC 9110 §15.5.14's 413, not a
    generic 400, so the client knows what to fix."""
    return 413, f"Payload Too Large: the body may be {limit} bytes at most.\n"


#: A worker's few HandshakeConfig values, made once each (a NamedTuple's constructor is a
#: Python call, once per handshake otherwise)
_handshake_config = functools.lru_cache(maxsize=8)(HandshakeConfig)


@functools.lru_cache(maxsize=4)
def _trusted_peers(entries: tuple[str, ...]) -> TrustedPeers:
    """``forwarded_allow_ips`` parsed once per worker, not once per request."""
    return TrustedPeers(entries)


def _origin_allowed(request: Request, allowed: tuple[str, ...]) -> bool:
    """Exactly one Origin header (RFC 6454 §7), and one of ``websocket_origins``."""
    origins = request.headers.get_all("Origin")
    return len(origins) == 1 and normalize_origin(origins[0]) in allowed


async def _store_result(awaitable: Any, box: list[Any]) -> None:
    box.append(await awaitable)
