"""The WebSocket opening handshake's answer (RFC 6455 §4.2.2), fast for the requests
browsers send.

websockets' sans-I/O ``ServerProtocol`` checks a handshake request and negotiates its
extensions thoroughly, and it is what answers every request this module does not take:
every refusal (400, 426, 505...) and every unusual request comes from it, with its
messages. It costs about 60 µs per handshake on a 2-core EPYC, though (a protocol object
with a UUID and a logger, a ``Headers`` built field by field, an extension header parsed
again for every connection), which was most of a swoolish handshake and what limited a
reconnect storm (docs/performance.md, "Reconnect storm").

So a request that is plainly valid (one ``Upgrade: websocket``, a ``Connection`` naming
``upgrade``, one 16-byte base64 key, version 13: §4.2.1) is answered here, with the
bytes websockets would send. The extension negotiation is not redone: websockets'
outcome for an offer (the ``Sec-WebSocket-Extensions`` values, for one configuration) is
remembered the first time it answers it, and replayed for every later connection that
makes the same offer, with a fresh extension object each time. Browsers make one or two
different offers, so after the first connection every browser's handshake is answered
here; a client inventing offers only reaches the bounded memory of what was learnt and
is answered by websockets.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import re
from typing import Any, NamedTuple

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from .request import Request, http_date, is_token

__all__ = ["HandshakeConfig", "Opening", "open_handshake"]

#: RFC 6455 §1.3: appended to the client's key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A key that is 16 bytes in base64 (§4.2.1, item 5): 22 digits and the padding, the
#: only text ``base64.b64decode(key, validate=True)`` turns into 16 bytes.
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
#: The fields as clients send them (RFC 6455 §4.1), compared as a whole before they
#: are looked at in detail.
_AS_SENT_UPGRADE = ["websocket"]
_AS_SENT_CONNECTION = ["Upgrade"]
_VERSION = ["13"]
#: How many different extension offers (per configuration) are remembered.
MAX_LEARNT_OFFERS = 64
#: Fields the server's answer to a handshake carries itself (RFC 6455 §4.2.2), and
#: Content-Length, which a 101 never has (RFC 9110 §8.6): a handshake handler's are not
#: sent, where a client would read two of them (``Connection`` never gets here: it is
#: the server's on every response, ``Response.header``).
SERVER_FIELDS = frozenset(
    ("upgrade", "sec-websocket-accept", "sec-websocket-extensions", "content-length", "date")
)

log = logging.getLogger("swoolish.worker")
#: The SERVER_FIELDS a handshake handler set that were logged (once each per worker).
_dropped_logged: set[str] = set()


class Opening(NamedTuple):
    """The handshake's answer: ``wire`` goes to the client as is; with status 101 the
    session speaks with ``extensions`` (and ``subprotocol``) from the next byte."""

    status: int
    wire: bytes
    extensions: list[Any]
    subprotocol: str | None
    body_size: int


class HandshakeConfig(NamedTuple):
    """What the negotiation depends on besides the client's offer: permessage-deflate
    on, and which side keeps its compression context (RFC 7692 §7.1.1)."""

    compression: bool
    server_context_takeover: bool
    client_context_takeover: bool


#: (configuration, the offer's header values) -> (the answer's extension header, the
#: PerMessageDeflate arguments, or None for no extension)
_learnt: dict[tuple[HandshakeConfig, tuple[str, ...]], tuple[str | None, tuple | None]] = {}


def open_handshake(
    request: Request,
    config: HandshakeConfig,
    max_size: int | None,
    extra_headers: list[tuple[str, str]],
    quiet_log: Any,
) -> Opening:
    """Answer ``request``'s opening handshake, adding ``extra_headers`` (the app's
    handshake handler's) to a 101, but those of SERVER_FIELDS."""
    if extra_headers:
        extra_headers = _app_fields(extra_headers)
    offer = tuple(request.headers._dict.get("sec-websocket-extensions", ()))  # get_all's
    learnt = _learnt.get((config, offer))
    accept = _plain_accept(request) if learnt is not None else None
    if accept is None or learnt is None:
        return _websockets_answer(request, config, offer, max_size, extra_headers, quiet_log)
    extension_header, deflate_args = learnt
    lines = [
        "HTTP/1.1 101 Switching Protocols\r\nDate: ",
        http_date(),
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
        "\r\n",
    ]
    if extension_header is not None:
        lines += ("Sec-WebSocket-Extensions: ", extension_header, "\r\n")
    for name, value in extra_headers:
        lines += (name, ": ", value, "\r\n")
    lines.append("\r\n")
    extensions = [] if deflate_args is None else [PerMessageDeflate(*deflate_args)]
    return Opening(101, "".join(lines).encode("latin-1"), extensions, None, 0)


def _app_fields(extra_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The handshake handler's fields without SERVER_FIELDS; one warning per field name
    and worker for those left out, which the app might otherwise look for in vain."""
    kept = []
    for name, value in extra_headers:
        low = name.lower()
        if low not in SERVER_FIELDS:
            kept.append((name, value))
        elif low not in _dropped_logged:
            _dropped_logged.add(low)
            log.warning(
                "the handshake handler set %s, which the server's answer to a handshake "
                "sets itself (or a 101 never has): it was not sent. Logged once per worker",
                name,
            )
    return kept


def _plain_accept(request: Request) -> str | None:
    """``Sec-WebSocket-Accept`` for a request that is plainly valid (RFC 6455 §4.2.1),
    None for anything websockets should look at. The fields are read from the
    ``Headers``' own name-to-values dict: ``get_all`` is a Python call around the
    same lookup, four per handshake."""
    if request.method != "GET":
        return None
    fields = request.headers._dict
    upgrade = fields.get("upgrade", ())
    if upgrade != _AS_SENT_UPGRADE and (len(upgrade) != 1 or upgrade[0].lower() != "websocket"):
        return None
    connection = fields.get("connection", ())
    if connection != _AS_SENT_CONNECTION and (
        len(connection) != 1 or not _names_upgrade(connection[0])
    ):
        return None
    key = fields.get("sec-websocket-key", ())
    if fields.get("sec-websocket-version") != _VERSION or len(key) != 1:
        return None
    if _KEY.fullmatch(key[0]) is None:
        return None
    digest = hashlib.sha1(key[0].encode("ascii") + _GUID).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


def _names_upgrade(value: str) -> bool:
    """A ``Connection`` value that is a list of tokens, one of them ``upgrade``."""
    if value.lower() == "upgrade":
        return True
    options = [option.strip(" \t") for option in value.split(",")]
    return all(is_token(o) for o in options) and any(o.lower() == "upgrade" for o in options)


def _websockets_answer(
    request: Request,
    config: HandshakeConfig,
    offer: tuple[str, ...],
    max_size: int | None,
    extra_headers: list[tuple[str, str]],
    quiet_log: Any,
) -> Opening:
    """websockets' answer (every refusal comes from here), remembering how it negotiated
    the offer."""
    factories = []
    if config.compression:
        factories.append(
            ServerPerMessageDeflateFactory(
                server_no_context_takeover=not config.server_context_takeover,
                client_no_context_takeover=not config.client_context_takeover,
            )
        )
    protocol = ServerProtocol(extensions=factories, max_size=max_size, logger=quiet_log)
    response = protocol.accept(WsRequest(request.target, request.headers, request.method))
    if response.status_code == 101:
        _learn(config, offer, response.headers, protocol.extensions)
    for name, value in extra_headers:
        response.headers[name] = value
    protocol.send_response(response)
    wire = b"".join(protocol.data_to_send())
    body_size = len(response.body or b"")
    return Opening(response.status_code, wire, protocol.extensions, protocol.subprotocol, body_size)


def _learn(
    config: HandshakeConfig,
    offer: tuple[str, ...],
    response_headers: Headers,
    extensions: list[Any],
) -> None:
    """Remember the negotiation's outcome for ``offer``, if it is one to replay: no
    extension, or one permessage-deflate."""
    if len(_learnt) >= MAX_LEARNT_OFFERS or len(extensions) > 1:
        return
    if extensions and type(extensions[0]) is not PerMessageDeflate:
        return
    values = response_headers.get_all("Sec-WebSocket-Extensions")
    if len(values) > 1 or bool(values) != bool(extensions):
        return
    deflate_args = None
    if extensions:
        ext = extensions[0]
        deflate_args = (
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
        )
    _learnt[(config, offer)] = (values[0] if values else None, deflate_args)
