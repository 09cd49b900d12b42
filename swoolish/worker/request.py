"""HTTP requests and responses as Swoole hands them to ``request`` handlers.

``request.method``, ``.path``, ``.query`` (dict, parsed on first use), ``.headers``
(case-insensitive), ``.body`` (bytes), ``.remote_addr``, ``.scheme``;
``response.status(code)``, ``response.header(name, value)``, ``response.end(body)``. The
same :class:`Request` is what ``open`` and ``handshake`` handlers get for a WebSocket,
with ``request.fd`` set to the new session id.
"""

from __future__ import annotations

import functools
import http
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import parse_qsl

from websockets.datastructures import Headers

__all__ = [
    "Headers",
    "Request",
    "Response",
    "field",
    "list_members",
    "offers_websocket",
    "parsed_headers",
    "render_response",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a field name (RFC 9110 §5.1, §5.6.2)
# What a field value or reason phrase may not hold: CR, LF, NUL (RFC 9110 §5.5), nor a
# character outside latin-1, the octets HTTP/1.1 carries (RFC 9112 §5).
_BAD_TEXT = re.compile(r"[\r\n\x00]|[^\x00-\xff]")
_DECIMAL = re.compile(r"[0-9]+")  # a Content-Length value (RFC 9110 §8.6)

log = logging.getLogger("swoolish.worker")


@functools.lru_cache(maxsize=256)
def is_token(text: str) -> bool:
    """Whether ``text`` is a token (a field name, a Connection option); remembered, as an
    app sets the same few field names on every response."""
    return _TOKEN.fullmatch(text) is not None


@functools.lru_cache(maxsize=1024)
def is_valid_field(name: str, value: str) -> bool:
    """Whether a response may carry the field ``name: value`` (see :func:`field_error`);
    remembered, as an app sends the same few fields again and again (a field that
    changes per response costs one check and one entry)."""
    return field_error(name, value) is None


def field_error(name: str, value: str) -> str | None:
    """Why a response may not carry the field ``name: value``, or None if it may.

    The name is a token and the value latin-1 text without CR, LF or NUL (RFC 9110
    §5.1, §5.5). The framing is the server's (:func:`render_response`): an app's
    Transfer-Encoding would announce a coding the body does not have, so it is refused
    here, at the call; an app's Content-Length must be a decimal number, and is checked
    against the body when the response is sent.
    """
    if not is_token(name) or _BAD_TEXT.search(value):
        return "the name is a token, the value latin-1 text without CR, LF or NUL"
    low = name.lower()
    if low == "transfer-encoding":
        return "the server frames every response with Content-Length itself"
    if low == "content-length" and _DECIMAL.fullmatch(value) is None:
        return "Content-Length is a decimal number of bytes"
    return None


def parsed_headers(fields: list[tuple[str, str]]) -> Headers:
    """The ``Headers`` of a request's fields as httptools parsed them, in order.

    ``Headers(fields)`` adds them one at a time, checking each value against the
    characters a field value may hold (RFC 9110 §5.5); llhttp has already refused every
    request with any other (a control character but HTAB, or DEL), so that check cannot
    fail here, and skipping it and the one-by-one insertion saves about 7 µs on a
    browser's ten fields: a fifth of what a keep-alive request costs the server
    (docs/performance.md, "HTTP"). The result is equal to ``Headers(fields)``
    (tests/unit/test_handshake.py checks it against websockets' own).
    """
    by_name: dict[str, list[str]] = {}
    for name, value in fields:
        key = name.lower()
        values = by_name.get(key)
        if values is None:
            by_name[key] = [value]
        else:
            values.append(value)
    return grouped_headers(fields, by_name)


def grouped_headers(fields: list[tuple[str, str]], by_name: dict[str, list[str]]) -> Headers:
    """The ``Headers`` of ``fields`` with their values already grouped under their
    lower-case names, in order (as ``upgrade_head`` returns them: see
    swoolish.worker.http)."""
    headers = Headers.__new__(Headers)
    headers._dict = by_name
    headers._list = fields
    return headers


def field(headers: Headers, name: str) -> str:
    """The value of the field ``name``, its lines joined with ", " if a client sent it
    more than once (RFC 9110 §5.3), "" if absent. ``headers.get`` raises for a repeated
    field (websockets' ``MultipleValuesError``): a client repeating ``Connection`` must
    get an answer, not an error out of the parser's callback."""
    values = headers.get_all(name)
    if not values:
        return ""
    return values[0] if len(values) == 1 else ", ".join(values)


def list_members(value: str) -> set[str]:
    """The members of a comma-separated field value (RFC 9110 §5.6.1), in lower case,
    without the spaces and tabs around them."""
    return {member.strip(" \t").lower() for member in value.split(",")}


def offers_websocket(headers: Headers) -> bool:
    """Whether ``Upgrade`` names websocket among the protocols offered (RFC 9110 §7.8),
    however many times and in whatever case: a WebSocket handshake, valid or not."""
    offered = field(headers, "Upgrade")
    if offered.lower() == "websocket":
        return True  # what every WebSocket client sends
    return "websocket" in list_members(offered)


class Request:
    """One parsed HTTP request (or WebSocket handshake request)."""

    __slots__ = (
        "_keep_alive",
        "_query",
        "_remote_addr",
        "_secure",
        "body",
        "fd",
        "headers",
        "method",
        "path",
        "query_string",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes = b"",
        version: str = "1.1",
        fd: int = 0,
        remote_addr: str = "",
        secure: bool = False,
        keep_alive: bool | None = None,
    ) -> None:
        path, _, query_string = target.partition("?")
        self.method = method
        self.path = path
        self.query_string = query_string
        self._query: dict[str, str] | None = None  # parsed on first use: see query
        self.headers = headers
        self.body = body
        self.version = version
        self.fd = fd
        self._remote_addr = remote_addr
        self._secure = secure
        self._keep_alive = keep_alive  # the parser's verdict, when it gave one

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters, parsed when first asked for (blank values kept;
        of a repeated key, the last value). Parsed for every request, a query of 11,000
        short keys cost 1 MB of objects whether the app read it or not, and 16 such
        requests pipelined behind a slow handler 20 MB per connection."""
        query = self._query
        if query is None:
            text = self.query_string
            query = self._query = dict(parse_qsl(text, keep_blank_values=True)) if text else {}
        return query

    @query.setter
    def query(self, value: dict[str, str]) -> None:
        self._query = value

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    @property
    def remote_addr(self) -> str:
        """The client's IP address: the peer's, or with ``proxy_headers`` the one a
        trusted proxy forwarded; "" for a Unix socket peer that named no client."""
        return self._remote_addr

    @property
    def scheme(self) -> str:
        """How the client reached us: "http" or "https" for a request, "ws" or "wss" for
        a WebSocket handshake; TLS here, or a trusted proxy's X-Forwarded-Proto."""
        websocket = offers_websocket(self.headers)
        if websocket:
            return "wss" if self._secure else "ws"
        return "https" if self._secure else "http"

    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 only when asked
        (RFC 9112 §9.3). A request parsed here carries llhttp's answer to the same
        question, read from the Connection header's tokens."""
        if self._keep_alive is not None:
            return self._keep_alive
        options = list_members(field(self.headers, "Connection"))
        if self.version == "1.0":
            return "keep-alive" in options
        return "close" not in options

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} fd={self.fd}>"


_BODY_TYPES = (bytes, bytearray, memoryview)


class Response:
    """The answer a ``request`` (or ``handshake``) handler builds.

    Nothing is sent until :meth:`end`; a handler that returns without calling it gets
    its response ended for it (status as set, empty body), so a client is never left
    waiting.
    """

    __slots__ = ("_auto_ended", "_headers", "_send", "_status", "closes", "ended", "reason")

    def __init__(self, send: Callable[[Response, bytes], None]) -> None:
        self._send = send
        self._status = 200
        self.reason: str | None = None
        self._headers: list[tuple[str, str]] = []
        self.ended = False
        self._auto_ended = False  # ended for its handler, which returned without end()
        self.closes = False  # the handler set Connection: close (see header)

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self._headers)

    def status(self, code: int, reason: str | None = None) -> Response:
        """Set the status code (Swoole: ``$response->status(404)``)."""
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 999:
            raise ValueError(f"an HTTP status code is an integer 100-999, got {code!r}")
        if reason is not None and (not isinstance(reason, str) or _BAD_TEXT.search(reason)):
            raise ValueError(
                f"invalid reason phrase {reason!r}: latin-1 text without CR, LF or NUL"
            )
        self._status = code
        self.reason = reason
        return self

    def header(self, name: str, value: str) -> Response:
        """Add a response header; raises ``ValueError`` here, at the call, for a name
        that is not a token or a value that HTTP/1.1 cannot carry (a CR or LF would split
        the response; a character outside latin-1 cannot be sent), for
        ``Transfer-Encoding``, and for a ``Content-Length`` that is not a decimal number.

        The server frames the response: it sends ``Content-Length``, the length of the
        body given to :meth:`end`. An app may set it too, as uvicorn and hypercorn let
        an ASGI app do: then it must be that length, or the client gets a 500 instead
        and the worker logs why (:func:`render_response`), since a wrong length would
        make a keep-alive client read the rest of the body as the next response. For
        ``HEAD``, the app may set the length of the body a ``GET`` would get and end
        with no body.

        ``Connection`` is the server's too (RFC 9112 §9.6): it sends its own, keep-alive
        or close, on every response, so an app's is not sent beside it, where a client
        would read both. ``Connection: close`` is honoured: the server closes the
        connection once this response is sent; other options are dropped.
        """
        name, value = str(name), str(value)
        if not is_valid_field(name, value):
            raise ValueError(
                f"invalid HTTP header {name!r}: {value!r} ({field_error(name, value)})"
            )
        if len(name) == 10 and name.lower() == "connection":
            self.closes = self.closes or "close" in list_members(value)
            return self
        self._headers.append((name, value))
        return self

    def end(self, body: str | bytes = b"") -> bool:
        """Send the response; a second call returns ``False`` and sends nothing."""
        if self.ended:
            if self._auto_ended:
                _warn_late_end()
            return False
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, _BODY_TYPES):
            raise TypeError(f"response body must be str or bytes, got {type(body).__name__}")
        self.ended = True
        self._send(self, bytes(body))
        return True

    def end_if_open(self) -> None:
        """End the response a handler returned without ending (status as set, no body)."""
        if not self.ended:
            self.end()
            self._auto_ended = True

    def wire(self, body: bytes, keep_alive: bool, head: bool = False) -> bytes:
        """The response as sent (:func:`render_response`), body included unless ``head``."""
        return render_response(self._status, self._headers, body, keep_alive, self.reason, head)


_late_end_logged = False


def _warn_late_end() -> None:
    """Once per worker: an ``end()`` after the handler returned, which Swoole apps do
    from a timer (``$response`` lives on there), sends nothing here."""
    global _late_end_logged
    if _late_end_logged:
        return
    _late_end_logged = True
    log.warning(
        "response.end() was called after its request handler returned: the response "
        "had been sent then, with its status and no body, and this end() sends "
        "nothing. End it within the handler; an async handler may await its work "
        'first (docs/porting.md, "A response ends with its handler"). Logged once '
        "per worker"
    )


#: The status line of each registered code with its reason phrase (RFC 9110 §15).
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in http.HTTPStatus}
#: The fields render_response adds unless the handler set them, lower-case.
_ADDED_FIELDS = frozenset(("content-length", "content-type", "date", "server"))
#: The statuses whose responses have no content (RFC 9110 §6.4.1): 1xx, 204, 304.
_NO_CONTENT = frozenset((*range(100, 200), 204, 304))
#: Those of _NO_CONTENT of which a body was dropped and logged (once each per worker).
_bodies_dropped: set[int] = set()


class _HttpDate:
    """The ``Date`` header's value (RFC 9110 §6.6.1), formatted once per second, not once
    per response."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
        return self.text


_http_date = _HttpDate()
#: The ``Date`` header's value now.
http_date = _http_date.now


def render_response(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    keep_alive: bool,
    reason: str | None = None,
    head: bool = False,
) -> bytes:
    """Serialize a response, adding Content-Length, Connection, Date and Server.

    The framing is the server's: Content-Length is the length of ``body`` (sent unless
    ``head``). A Content-Length the handler set must say the same (for ``head`` with no
    body, any one value: the length a GET would get), else ``ValueError``: a keep-alive
    client would read the bytes past it as the next response, or wait for bytes that
    never come. A 1xx, 204 or 304 goes without body (:func:`_without_content`).

    Built by appending to one string (CPython extends it in place): on the keep-alive
    path this runs once per request, and a list of parts and a set of names cost a
    third more (docs/performance.md, "HTTP").
    """
    no_content = status in _NO_CONTENT
    if no_content:
        headers, body = _without_content(status, headers, body), b""
    if reason:
        text = f"HTTP/1.1 {status} {reason}\r\n"
    else:
        text = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
    names: tuple[str, ...] = ()  # which of the fields added here the handler set itself
    for name, value in headers:
        text += f"{name}: {value}\r\n"
        low = name.lower()
        if low in _ADDED_FIELDS:
            names += (low,)
    if not no_content:  # none added to a 1xx, 204 or 304; a 304's own stays
        if "content-length" not in names:
            text += f"Content-Length: {len(body)}\r\n"
        else:
            _check_length(headers, body, head)
    if body and "content-type" not in names:
        text += "Content-Type: text/plain; charset=utf-8\r\n"
    if "date" not in names:
        text += f"Date: {_http_date.now()}\r\n"
    if "server" not in names:
        text += "Server: swoolish\r\n"
    text += "Connection: keep-alive\r\n\r\n" if keep_alive else "Connection: close\r\n\r\n"
    wire = text.encode("latin-1")
    return wire if head else wire + body


def _app_length(headers: list[tuple[str, str]]) -> str:
    """The one Content-Length the handler set (``ValueError`` if it set several: a client
    may refuse a response that repeats it, RFC 9110 §8.6)."""
    values = [value for name, value in headers if name.lower() == "content-length"]
    if len(values) > 1:
        raise ValueError(f"the handler set Content-Length {len(values)} times: {values}")
    return values[0]


def _check_length(headers: list[tuple[str, str]], body: bytes, head: bool) -> None:
    """``ValueError`` unless the handler's Content-Length is the length of ``body``."""
    value = _app_length(headers)
    if int(value) != len(body) and not (head and not body):
        raise ValueError(
            f"the handler set Content-Length: {value}, but its body is {len(body)} bytes "
            "(a str body is sent in UTF-8: its length is len(text.encode()); or leave "
            "Content-Length to the server)"
        )


def _without_content(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> list[tuple[str, str]]:
    """The headers of a 1xx, 204 or 304 response, which goes without body whatever the
    handler gave (logged once per worker and status), and with no Content-Length but a
    304's own.

    RFC 9110 §15.3.5 and §15.4.5: these responses end with their header section, so a
    body sent would be read by a keep-alive client as the next response. §8.6: a 1xx
    or 204 must not carry Content-Length (the handler's is left out); a 304 may carry
    the one its 200 would have, which only the handler knows (kept, and none added).
    """
    if body and status not in _bodies_dropped:
        _bodies_dropped.add(status)
        log.warning(
            "a %d response has no body (RFC 9110 §6.4.1): the %d bytes its handler "
            "gave were not sent (logged once per status and worker)",
            status,
            len(body),
        )
    if status != 304:
        return [(name, value) for name, value in headers if name.lower() != "content-length"]
    if any(name.lower() == "content-length" for name, _ in headers):
        _app_length(headers)  # one, at most
    return headers


def simple_response(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A complete ``Connection: close`` response with a plain-text body."""
    return render_response(status, list(extra or []), text.encode(), keep_alive=False)
