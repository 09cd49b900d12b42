"""The opening handshake's answer (swoolish.worker.handshake) against websockets' own.

The fast path answers a plainly valid request with the bytes websockets' ServerProtocol
would send, replaying the extension negotiation websockets did for the same offer; every
other request is websockets' to answer. These tests hold both to that: for each offer and
configuration, the first answer (websockets') and the replayed ones are compared byte for
byte with what a fresh ServerProtocol sends.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import random
import re
import string

import pytest
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from swoolish.worker import handshake
from swoolish.worker.handshake import HandshakeConfig, open_handshake
from swoolish.worker.request import Request, parsed_headers

QUIET = logging.getLogger("test-handshake")
QUIET.disabled = True
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MAX_SIZE = 1 << 20

OFFERS: list[tuple[str, ...]] = [
    (),
    ("permessage-deflate; client_max_window_bits",),  # what browsers send
    ("permessage-deflate",),
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits",),
    ("permessage-deflate; server_no_context_takeover; client_max_window_bits=12",),
    ("x-webkit-deflate-frame",),  # an extension nobody here speaks
    ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
    ("permessage-deflate; server_max_window_bits=7",),  # out of range: declined
]
CONFIGS = [HandshakeConfig(*flags) for flags in itertools.product((False, True), repeat=3)]


@pytest.fixture(autouse=True)
def _forget_offers():
    handshake._learnt.clear()
    yield
    handshake._learnt.clear()


def _request(fields: list[tuple[str, str]], method: str = "GET") -> Request:
    return Request(method, "/chat?room=1", parsed_headers(fields))


def _browser_fields(offer: tuple[str, ...], connection: str = "Upgrade") -> list:
    fields = [
        ("Host", "127.0.0.1:9501"),
        ("Upgrade", "websocket"),
        ("Connection", connection),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", "http://127.0.0.1:9501"),
    ]
    return fields + [("Sec-WebSocket-Extensions", value) for value in offer]


def _websockets_wire(request: Request, config: HandshakeConfig, extra=()) -> tuple[int, bytes]:
    """What a fresh websockets ServerProtocol answers, configured as swoolish's."""
    factories = []
    if config.compression:
        factories.append(
            ServerPerMessageDeflateFactory(
                server_no_context_takeover=not config.server_context_takeover,
                client_no_context_takeover=not config.client_context_takeover,
            )
        )
    protocol = ServerProtocol(extensions=factories, max_size=MAX_SIZE, logger=QUIET)
    response = protocol.accept(WsRequest(request.target, request.headers, request.method))
    for name, value in extra:
        response.headers[name] = value
    protocol.send_response(response)
    return response.status_code, b"".join(protocol.data_to_send())


def _without_date(wire: bytes) -> bytes:
    """The answer without its Date line: the two sides may read the clock a second apart."""
    return re.sub(rb"Date: [^\r]*\r\n", b"", wire)


def _deflate_args(extensions: list) -> list[tuple]:
    return [
        (
            e.remote_no_context_takeover,
            e.local_no_context_takeover,
            e.remote_max_window_bits,
            e.local_max_window_bits,
        )
        for e in extensions
    ]


def test_parsed_headers_equal_websockets_headers() -> None:
    fields = [
        ("Host", "a"),
        ("X-Many", "1"),
        ("x-many", "2"),
        ("Cookie", "a=1"),
        ("X-MANY", "3"),
        ("Empty", ""),
        ("Latin", "caf\xe9"),
    ]
    ours, theirs = parsed_headers(list(fields)), Headers(fields)
    assert ours == theirs
    assert list(ours.raw_items()) == list(theirs.raw_items())
    assert ours.get_all("x-many") == ["1", "2", "3"]
    assert ours["host"] == "a" and "COOKIE" in ours and len(ours) == len(theirs)
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("offer", OFFERS, ids=str)
def test_every_answer_is_what_websockets_sends(config, offer) -> None:
    """The first answer (websockets', learning the offer) and the next two (replayed)
    are the same bytes as a fresh ServerProtocol's, with the same extension."""
    extra = [("Set-Cookie", "sid=1"), ("X-Room", "1")]
    status, expected = _websockets_wire(_request(_browser_fields(offer)), config, extra)
    assert status == 101
    answers = [
        open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, extra, QUIET)
        for _ in range(3)
    ]
    for opening in answers:
        assert opening.status == 101
        assert _without_date(opening.wire) == _without_date(expected)
        assert opening.wire.count(b"\r\nDate: ") == 1
        assert _deflate_args(opening.extensions) == _deflate_args(answers[0].extensions)
    assert (config, offer) in handshake._learnt  # the later ones were replayed
    # every connection gets an extension object of its own (it carries per-message state)
    ids = {id(e) for opening in answers for e in opening.extensions}
    assert len(ids) == sum(len(opening.extensions) for opening in answers)


@pytest.mark.parametrize(
    "connection", ["keep-alive, Upgrade", "upgrade", "Upgrade ,\tkeep-alive"], ids=str
)
def test_the_connection_header_of_any_browser_is_taken(connection) -> None:
    config = HandshakeConfig(True, False, False)
    offer = OFFERS[1]
    open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, [], QUIET)  # learn
    request = _request(_browser_fields(offer, connection))
    opening = open_handshake(request, config, MAX_SIZE, [], QUIET)
    _, expected = _websockets_wire(request, config)
    assert opening.status == 101
    assert _without_date(opening.wire) == _without_date(expected)


def _replace(fields: list, name: str, value: str | None) -> list:
    kept = [(n, v) for n, v in fields if n.lower() != name.lower()]
    return kept if value is None else [*kept, (name, value)]


BAD_REQUESTS = {
    "key not 16 bytes": lambda f: _replace(f, "Sec-WebSocket-Key", "c2hvcnQ="),
    "key not base64": lambda f: _replace(f, "Sec-WebSocket-Key", "not base64 at all!!"),
    "no key": lambda f: _replace(f, "Sec-WebSocket-Key", None),
    "two keys": lambda f: [*f, ("Sec-WebSocket-Key", KEY)],
    "version 8": lambda f: _replace(f, "Sec-WebSocket-Version", "8"),
    "no version": lambda f: _replace(f, "Sec-WebSocket-Version", None),
    "connection without upgrade": lambda f: _replace(f, "Connection", "keep-alive"),
    "connection not tokens": lambda f: _replace(f, "Connection", "up grade, upgrade"),
    "no connection": lambda f: _replace(f, "Connection", None),
    "upgrade two protocols": lambda f: _replace(f, "Upgrade", "websocket, h2c"),
    "bad extension syntax": lambda f: _replace(
        f, "Sec-WebSocket-Extensions", "permessage-deflate;;"
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_a_request_that_is_not_plainly_valid_gets_websockets_answer(name) -> None:
    """Refusals and oddities are websockets' to answer, also once the browser's offer
    was learnt."""
    config = HandshakeConfig(True, False, False)
    offer = OFFERS[1]
    open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, [], QUIET)  # learn
    request = _request(BAD_REQUESTS[name](_browser_fields(offer)))
    status, expected = _websockets_wire(request, config)
    opening = open_handshake(request, config, MAX_SIZE, [], QUIET)
    assert opening.status == status
    assert _without_date(opening.wire) == _without_date(expected)
    if status != 101:
        assert opening.body_size == len(expected.partition(b"\r\n\r\n")[2]) > 0


def test_a_non_get_request_is_websockets_to_answer() -> None:
    config = HandshakeConfig(False, False, False)
    open_handshake(_request(_browser_fields(())), config, MAX_SIZE, [], QUIET)  # learn
    seen = []
    real = handshake._websockets_answer

    def spy(*args, **kwargs):
        seen.append(args[0].method)
        return real(*args, **kwargs)

    handshake._websockets_answer = spy
    try:
        open_handshake(_request(_browser_fields(()), "POST"), config, MAX_SIZE, [], QUIET)
        open_handshake(_request(_browser_fields(())), config, MAX_SIZE, [], QUIET)
    finally:
        handshake._websockets_answer = real
    assert seen == ["POST"]  # the GET after it was answered from what was learnt


def test_what_is_learnt_is_bounded() -> None:
    """A client inventing offers gets websockets' answers; memory stays bounded."""
    config = HandshakeConfig(True, False, False)
    for bits in range(handshake.MAX_LEARNT_OFFERS + 50):
        offer = (f"permessage-deflate; client_max_window_bits; x-junk-{bits}",)
        opening = open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, [], QUIET)
        assert opening.status in (101, 400)
    assert len(handshake._learnt) <= handshake.MAX_LEARNT_OFFERS


def test_a_replayed_deflate_extension_inflates_and_deflates() -> None:
    """The extension built from learnt arguments works as the negotiated one."""
    config = HandshakeConfig(True, False, False)
    offer = OFFERS[1]
    first = open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, [], QUIET)
    again = open_handshake(_request(_browser_fields(offer)), config, MAX_SIZE, [], QUIET)
    assert [type(e) for e in again.extensions] == [PerMessageDeflate]
    assert _deflate_args(again.extensions) == _deflate_args(first.extensions)
    assert b"server_no_context_takeover; client_no_context_takeover" in again.wire


def test_the_keys_taken_are_those_that_decode_to_16_bytes() -> None:
    """``_KEY`` takes exactly the keys RFC 6455 §4.2.1 asks for, as the strict base64
    decoding it replaced: every other key is left to websockets (which refuses it)."""
    rng = random.Random(6455)
    alphabet = string.ascii_letters + string.digits + "+/=-_ .\t\x00é"
    keys = [base64.b64encode(rng.randbytes(n)).decode() for n in range(12, 20)]
    keys += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 26))) for _ in range(20_000)
    ]
    keys += [k[:22] + "==" for k in keys[:5_000] if len(k) >= 22]
    for key in keys:
        try:
            strict = len(base64.b64decode(key.encode("latin-1"), validate=True)) == 16
        except binascii.Error:
            strict = False
        assert (handshake._KEY.fullmatch(key) is not None) is strict, key
