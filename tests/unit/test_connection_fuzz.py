"""Property tests for a client connection fed arbitrary client bytes.

An ``HttpConnection`` is driven directly, as the event loop would drive it, and after
the handshake the ``WsConnection`` it hands its transport to (``set_protocol``), with a
fake transport that records what the server writes and a small double of the worker it
serves (a ``WorkerHost``: settings, counters, the session table, an echo ``message``
handler). The client side
is a valid opening handshake followed by valid, mutated and random frames, cut at random
points into ``data_received`` calls and interleaved with pushes, app-side disconnects
and the end of the stream. What the server wrote is parsed back with websockets' own
client-side protocol, so a malformed server frame fails the test too.

Properties: no exception escapes the transport callbacks; nothing is written after the
transport is closed; buffered input stays bounded by ``max_message_size``; every frame
the server sends is valid and its messages are exactly the ones the app pushed; a valid
masked text or binary message is always echoed; a close the server sends carries the
code RFC 6455 §7.4.1 and docs/quickstart.md prescribe for the fault (1000/1002/1007/1009/1011, or
the client's or the app's own code); and every connection ends closed (nothing hangs).
Close codes are those of docs/quickstart.md.
"""

from __future__ import annotations

import itertools
import logging
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Opcode
from websockets.headers import parse_extension
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from swoolish.core import frames
from swoolish.core.settings import Settings
from swoolish.core.stats import Counts
from swoolish.core.timerwheel import TimerWheel
from swoolish.worker import websocket
from swoolish.worker.deadlines import Deadlines
from swoolish.worker.host import WorkerHost
from swoolish.worker.http import HttpConnection
from swoolish.worker.sessions import SessionMap
from swoolish.worker.websocket import WsConnection

MAX_MESSAGE = 512  # small, so that 1009 is easy to reach
SERVER_CODES = {1000, 1002, 1007, 1009, 1011}  # the codes the server sends on its own
BOOM = "boom!"  # a message the test app's handler raises on (a handler error: 1011)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # fast_path: the same for every example
    ],
)

_QUIET = logging.getLogger("swoolish.tests.fuzz")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # handler tracebacks are expected here


# ---------------------------------------------------------------------- fakes


class FakeHandle:
    def __init__(self, when: float, callback: Any, args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Timers on a clock of its own; the test fires them itself (no waiting): firing one
    moves the clock to its time."""

    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> FakeHandle:
        handle = FakeHandle(when, callback, args)
        self.handles.append(handle)
        return handle

    def call_later(self, delay: float, callback: Any, *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Any, *args: Any) -> FakeHandle:
        return self.call_at(self.now, callback, *args)

    def pending(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]

    def fire_all(self) -> None:
        for _ in range(10):
            due = self.pending()
            if not due:
                return
            for handle in due:
                handle.cancelled = True
                self.now = max(self.now, handle.when)
                handle.callback(*handle.args)


class FakeTransport:
    """Records writes; a closed transport delivers and accepts nothing more."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.writes_after_close = 0
        self.paused = False
        self.protocol: Any = None  # what transport events go to (set_protocol)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes) -> None:
        if self.closing:
            self.writes_after_close += 1
        else:
            self.out += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class StubIds:
    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)


class StubServer:
    """What handlers get as ``server``: push() records every message actually sent."""

    def __init__(self, worker: StubWorker) -> None:
        self.worker = worker
        self.sent: list[tuple[int, bytes]] = []  # (opcode, payload) in send order
        self.echoed: list[tuple[int, bytes]] = []

    def push(self, fd: int, data: str | bytes, opcode: int | None = None) -> bool:
        conn = self.worker.connections.get(fd)
        if conn is None or not conn.push(data, opcode):
            return False
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self.sent.append((1 if isinstance(data, str) else 2, payload))
        return True


class StubListener:
    """No listening socket here: connections are made by hand."""

    def accepted(self) -> None:
        pass


class StubWorker(WorkerHost):
    """A ``WorkerHost`` (the written worker interface) for connections alone."""

    def __init__(self, compression: bool) -> None:
        self.settings = Settings(
            {"max_message_size": MAX_MESSAGE, "websocket_compression": compression}
        )
        self.stats = Counts()
        self.connections = SessionMap()
        self.listener = StubListener()  # type: ignore[assignment]
        self.live: set[Any] = set()  # open transports, sessions or not
        self._ids = StubIds()
        self.loop = FakeLoop()  # type: ignore[assignment]
        self.log = _QUIET
        self.draining = False
        self.worker_id = 0
        self.server = StubServer(self)
        self.timers = TimerWheel(clock=lambda: 0.0, wakeup=lambda deadline: None)
        self.deadlines = Deadlines(self.loop)
        self.closed_events = 0
        self._handlers = {"message": self._on_message, "close": self._on_close}
        self.handler = self._handlers.get  # WorkerHost.handler

    def track(self, coro: Any) -> None:
        coro.close()
        raise AssertionError("the test app has no coroutine handlers")

    @property
    def ids(self) -> StubIds:
        return self._ids

    @property
    def router(self) -> Any:
        raise AssertionError("a connection alone routes nothing to other workers")

    def clear_bound_timers(self, sid: int) -> None:
        pass

    def report(self, message: Any) -> None:
        raise AssertionError("a connection alone sends the master nothing")

    def established_while_draining(self, conn: Any) -> None:
        raise AssertionError("this worker never drains")

    def take_late_movers(self, final: bool) -> list[Any]:
        return []

    def _on_message(self, server: StubServer, frame: Any) -> None:
        payload = frame.data.encode() if isinstance(frame.data, str) else frame.data
        server.echoed.append((frame.opcode, payload))
        if frame.data == BOOM:
            raise RuntimeError("the app failed on purpose")
        server.push(frame.fd, frame.data)

    def _on_close(self, server: StubServer, fd: int) -> None:
        self.closed_events += 1


# ---------------------------------------------------------------------- client bytes


def handshake(deflate: bool) -> bytes:
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    return (
        "GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extension}\r\n"
    ).encode()


def client_frame(
    opcode: int,
    payload: bytes,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
) -> bytes:
    """One client frame (RFC 6455 §5.2); ``mask=None`` builds an illegal unmasked one."""
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_message(
    opcode: int, payload: bytes, cuts: list[int], compress: bool, mask: bytes
) -> bytes:
    """A message as frames cut at ``cuts``; compressed per RFC 7692 §7.2.1 if asked."""
    data = payload
    if compress:
        compressor = zlib.compressobj(wbits=-15)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        data = data[:-4]
    bounds = sorted({c % (len(data) + 1) for c in cuts} - {0, len(data)})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        out += client_frame(
            opcode if i == 0 else 0,
            piece,
            fin=i == len(pieces) - 1,
            rsv=4 if compress and i == 0 else 0,
            mask=mask,
        )
    return out


masks = st.binary(min_size=4, max_size=4)
cut_lists = st.lists(st.integers(0, 1000), max_size=4)


@st.composite
def valid_messages(draw: st.DrawFn, deflate: bool) -> tuple[int, bytes, bytes]:
    """(opcode, payload, wire bytes) of a valid message, maybe fragmented, with pings."""
    if draw(st.booleans()):
        opcode = 1
        payload = draw(st.text(max_size=40).filter(lambda t: t != BOOM)).encode()
    else:
        opcode, payload = 2, draw(st.binary(max_size=120))
    wire = client_message(
        opcode, payload, draw(cut_lists), deflate and draw(st.booleans()), draw(masks)
    )
    if draw(st.booleans()):
        ping = client_frame(9, draw(st.binary(max_size=125)), mask=draw(masks))
        wire = ping + wire
    return opcode, payload, wire


# Single faults: (wire bytes, the close code RFC 6455 and docs/quickstart.md prescribe).
FAULTS: dict[str, Any] = {}


def fault(name: str) -> Any:
    def register(fn: Any) -> Any:
        FAULTS[name] = fn
        return fn

    return register


@fault("invalid UTF-8 in text")
def _bad_utf8(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    good = draw(st.text(max_size=20)).encode()
    bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
    payload = good + bad + draw(st.binary(max_size=5))
    return client_message(
        1, payload, draw(cut_lists), deflate and draw(st.booleans()), b"abcd"
    ), 1007


@fault("message over max_message_size")
def _too_big(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    size = draw(st.integers(MAX_MESSAGE + 1, MAX_MESSAGE * 3))
    payload = bytes([draw(st.integers(0, 255))]) * size
    compress = deflate and draw(st.booleans())
    return client_message(2, payload, draw(cut_lists), compress, b"wxyz"), 1009


@fault("reserved bits")
def _rsv(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    rsv = draw(st.sampled_from([1, 2, 3] if deflate else [1, 2, 3, 4, 5, 6, 7]))
    return client_frame(draw(st.sampled_from([1, 2, 9])), b"x", rsv=rsv), 1002


@fault("reserved opcode")
def _opcode(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
    return client_frame(opcode, draw(st.binary(max_size=10))), 1002


@fault("unmasked client frame")
def _unmasked(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(draw(st.sampled_from([1, 2, 9])), b"hi", mask=None), 1002


@fault("control frame over 125 bytes")
def _big_control(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    opcode = draw(st.sampled_from([8, 9, 10]))
    return client_frame(opcode, b"\x03\xe8" + b"x" * draw(st.integers(124, 300))), 1002


@fault("fragmented control frame")
def _frag_control(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(draw(st.sampled_from([9, 10])), b"p", fin=False), 1002


@fault("continuation with nothing to continue")
def _lone_cont(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(0, b"orphan", fin=draw(st.booleans())), 1002


@fault("new message inside a fragmented one")
def _interleaved(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(1, b"one", fin=False) + client_frame(2, b"two"), 1002


@fault("close with an invalid code")
def _bad_close_code(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    code = draw(st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]))
    return client_frame(8, struct.pack("!H", code)), 1002


@fault("close with a one-byte payload")
def _short_close(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(8, b"\x03"), 1002


@fault("close reason not UTF-8")
def _bad_close_reason(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_frame(8, b"\x03\xe8ok\xff"), 1007


@fault("handler raises")
def _boom(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    return client_message(1, BOOM.encode(), draw(cut_lists), False, b"bbbb"), 1011


@fault("client closes")
def _client_close(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    code = draw(st.sampled_from([1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999]))
    reason = draw(st.text(max_size=20)).encode()[:100]
    return client_frame(8, struct.pack("!H", code) + reason), code


@fault("client closes inside a fragmented message")
def _close_mid_message(draw: st.DrawFn, deflate: bool) -> tuple[bytes, int]:
    # RFC 6455 §5.4: control frames may come between fragments; Autobahn 7.1.5
    return client_frame(1, b"frag", fin=False) + client_frame(8, b"\x03\xe8"), 1000


@st.composite
def mutated(draw: st.DrawFn, deflate: bool) -> bytes:
    """A frame (valid, faulty or random bytes) with a few bytes flipped, cut or added."""
    kind = draw(st.sampled_from(["valid", "fault", "random"]))
    if kind == "valid":
        wire = draw(valid_messages(deflate))[2]
    elif kind == "fault":
        wire = FAULTS[draw(st.sampled_from(sorted(FAULTS)))](draw, deflate)[0]
    else:
        return draw(st.binary(max_size=64))
    data = bytearray(wire)
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


# ---------------------------------------------------------------------- driver


class Outcome:
    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []  # data messages the server sent
        self.close_code: int | None = None
        self.frames_after_close = 0


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({c % (len(stream) + 1) for c in cuts})
    edges = [0, *bounds, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]


def run(deflate: bool, actions: list[tuple[str, Any]], send_eof: bool = True) -> Any:
    """Play ``actions`` against a fresh connection; check the invariants on the way.

    Transport events go to the transport's protocol, as the event loop sends them: the
    HTTP connection, then (after a handshake) the WebSocket connection it handed over to.
    Returns the worker, the last protocol and the parsed output.
    """
    worker = StubWorker(compression=deflate)
    transport = FakeTransport()
    transport.protocol = HttpConnection(worker)
    transport.protocol.connection_made(transport)
    for kind, arg in actions:
        if transport.closing:
            break  # a closed transport delivers no more events
        conn = transport.protocol
        if kind == "data":
            conn.data_received(arg)
            check_bounded(transport.protocol, len(arg))
        elif kind == "push":
            worker.server.push(conn.sid, arg)
        elif kind == "disconnect":
            conn.disconnect(arg)
        # nothing may wait forever: an open close handshake has its timer
        conn = transport.protocol
        if conn.closing and not transport.closing:
            armed = conn._timer_callback == conn.abort  # the connection's one deadline
            filed = conn in worker.deadlines._buckets.get(conn._timer, ())
            assert armed and filed, "a close began with no timer to end it"
    conn = transport.protocol
    if send_eof and not transport.closing and not conn.eof_received():
        transport.close()  # what asyncio does when eof_received() returns a false value
    worker.loop.fire_all()
    if send_eof:
        assert transport.closing, "the connection did not end after the client's EOF"
    conn.connection_lost(None)
    assert transport.writes_after_close == 0, "wrote to a closed transport"
    assert not worker.connections, "a lost connection stayed in the session table"
    assert not worker.live, "a lost connection stayed among the live ones"
    assert worker.stats["closed"] == 1
    upgraded = isinstance(conn, WsConnection)  # its protocol object may never be made
    assert worker.closed_events == (1 if upgraded else 0)
    return worker, conn, parse_output(bytes(transport.out))


def check_bounded(conn: Any, chunk: int) -> None:
    """Input is never buffered beyond one message (plus a frame header and one read)."""
    fragments = getattr(conn, "_fragments", None)
    assert fragments is None or len(fragments.data) <= MAX_MESSAGE
    ws = getattr(conn, "ws", None)
    if ws is not None:
        assert len(ws.reader.buffer) <= MAX_MESSAGE + 14 + chunk
    pending = getattr(conn, "_pending_upgrade_bytes", None)
    assert pending is None or len(pending) <= 64 * 1024 + chunk


def parse_output(out: bytes) -> Outcome:
    """The server's bytes, read by websockets' client protocol: any bad frame fails."""
    outcome = Outcome()
    head, sep, rest = out.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response: {out[:200]!r}"
    assert head.startswith(b"HTTP/1.1 101 "), head
    client = ClientProtocol(parse_uri("ws://127.0.0.1/chat"), state=OPEN, max_size=None)
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-extensions":
            [(_, params)] = parse_extension(value.strip())
            factory = ClientPerMessageDeflateFactory()
            client.extensions = [factory.process_response_params(params, [])]
    client.receive_data(rest)
    assert client.parser_exc is None, f"the server sent an invalid frame: {client.parser_exc}"
    for frame in client.events_received():
        if outcome.close_code is not None:
            outcome.frames_after_close += 1
        elif frame.opcode is Opcode.CLOSE:
            outcome.close_code = Close.parse(frame.data).code
        elif frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            assert frame.fin, "the server does not fragment"
            outcome.messages.append((1 if frame.opcode is Opcode.TEXT else 2, bytes(frame.data)))
    return outcome


def check_output(worker: StubWorker, outcome: Outcome) -> None:
    assert outcome.messages == worker.server.sent, "the wire differs from what the app pushed"
    assert outcome.frames_after_close == 0, "the server sent frames after its close"


# ---------------------------------------------------------------------- properties


@pytest.fixture(autouse=True, params=["compiled", "python"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every property holds on both fast paths: the compiled reader and encoder of
    ``swoolish/core/_speedups.c`` (when built) and their pure-Python versions."""
    if request.param == "python":
        monkeypatch.setattr(websocket, "next_frame", frames.py_next_frame)
        monkeypatch.setattr(websocket, "encode_message", frames.py_encode_message)
    elif not frames.SPEEDUPS:
        pytest.skip("the C accelerator was not built (or SWOOLISH_NO_SPEEDUPS is set)")
    return str(request.param)


def test_short_fragments_of_messages_ended_in_one_read_are_not_charged_to_the_next():
    """A short fragment counts as FRAGMENT_CHARGE bytes of its message (1009 past
    MAX_MESSAGE), but only of its own: two messages of six one-byte fragments and the
    first fragment of a third in one read, the rest of the third in the next. Each
    message is charged about 320 bytes, under MAX_MESSAGE; charged to the third, the
    first two's fragments refused it with 1009 (found by the property below)."""

    def fragmented(text: bytes) -> list[bytes]:
        first = [client_frame(0x1, text[:1], fin=False)]
        middle = [client_frame(0x0, bytes([b]), fin=False) for b in text[1:-1]]
        return [*first, *middle, client_frame(0x0, text[-1:])]

    a, b, c = fragmented(b"abcdef"), fragmented(b"ghijkl"), fragmented(b"mnopqr")
    first_read = handshake(False) + b"".join(a + b) + c[0]
    worker, _, outcome = run(False, [("data", first_read), ("data", b"".join(c[1:]))])
    check_output(worker, outcome)
    assert worker.server.echoed == [(0x1, b"abcdef"), (0x1, b"ghijkl"), (0x1, b"mnopqr")]


@FUZZ
@given(data=st.data(), deflate=st.booleans())
def test_valid_messages_are_all_echoed_in_order(data: st.DataObject, deflate: bool) -> None:
    messages = data.draw(st.lists(valid_messages(deflate), max_size=6), label="messages")
    stream = handshake(deflate) + b"".join(wire for _, _, wire in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    worker, _, outcome = run(deflate, [("data", c) for c in split(stream, cuts)])
    check_output(worker, outcome)
    expected = [(opcode, payload) for opcode, payload, _ in messages]
    assert worker.server.echoed == expected
    assert outcome.messages == expected
    assert outcome.close_code is None  # the client just went away (EOF): no close frame


@FUZZ
@given(data=st.data(), deflate=st.booleans(), name=st.sampled_from(sorted(FAULTS)))
def test_each_fault_gets_its_close_code(data: st.DataObject, deflate: bool, name: str) -> None:
    prefix = data.draw(st.lists(valid_messages(deflate), max_size=3), label="prefix")
    wire, code = FAULTS[name](data.draw, deflate)
    junk = data.draw(st.binary(max_size=40), label="junk after the fault")
    stream = handshake(deflate) + b"".join(w for _, _, w in prefix) + wire + junk
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    worker, _, outcome = run(deflate, [("data", c) for c in split(stream, cuts)])
    check_output(worker, outcome)
    expected = [(opcode, payload) for opcode, payload, _ in prefix]
    assert outcome.messages == expected, "a valid message before the fault was not echoed"
    assert outcome.close_code == code, f"{name}: expected close {code}"


@FUZZ
@given(
    data=st.data(),
    deflate=st.booleans(),
    app_code=st.sampled_from([1000, 1001, 4000]),
)
def test_app_disconnect_sends_its_code_and_ends(
    data: st.DataObject, deflate: bool, app_code: int
) -> None:
    prefix = data.draw(st.lists(valid_messages(deflate), max_size=3), label="prefix")
    after = data.draw(st.lists(mutated(deflate), max_size=3), label="after the close")
    reply = data.draw(st.booleans(), label="client answers the close")
    actions: list[tuple[str, Any]] = [("data", handshake(deflate))]
    actions += [("data", w) for _, _, w in prefix]
    actions.append(("disconnect", app_code))
    actions += [("data", w) for w in after if w]
    if reply:
        actions.append(("data", client_frame(8, struct.pack("!H", app_code))))
    worker, _, outcome = run(deflate, actions, send_eof=data.draw(st.booleans()))
    check_output(worker, outcome)
    assert outcome.messages == [(opcode, payload) for opcode, payload, _ in prefix]
    assert outcome.close_code == app_code


@FUZZ
@given(data=st.data(), deflate=st.booleans())
def test_any_stream_with_pushes_and_disconnects(data: st.DataObject, deflate: bool) -> None:
    prefix = data.draw(st.lists(valid_messages(deflate), max_size=3), label="prefix")
    tail = data.draw(st.lists(mutated(deflate), max_size=4), label="tail")
    head = handshake(deflate) + b"".join(w for _, _, w in prefix)
    stream = head + b"".join(tail)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    chunks = split(stream, cuts)
    actions: list[tuple[str, Any]] = []
    delivered = 0
    prefix_done_before_disconnect = True
    app_codes: set[int] = set()
    for chunk in chunks:
        actions.append(("data", chunk))
        delivered += len(chunk)
        extra = data.draw(
            st.sampled_from(["none", "none", "none", "push-text", "push-bytes", "disconnect"])
        )
        if extra == "push-text":
            actions.append(("push", data.draw(st.text(max_size=30))))
        elif extra == "push-bytes":
            actions.append(("push", data.draw(st.binary(max_size=30))))
        elif extra == "disconnect":
            code = data.draw(st.sampled_from([1000, 1001, 3001, 4000]))
            app_codes.add(code)
            actions.append(("disconnect", code))
            if delivered < len(head):
                prefix_done_before_disconnect = False
    worker, conn, outcome = run(deflate, actions, send_eof=data.draw(st.booleans()))
    check_output(worker, outcome)
    if prefix_done_before_disconnect:
        expected = [(opcode, payload) for opcode, payload, _ in prefix]
        assert worker.server.echoed[: len(expected)] == expected
    code = outcome.close_code
    if code is not None and code not in SERVER_CODES | app_codes:
        # any other code is the client's own close, echoed (RFC 6455 §5.5.1)
        assert conn.ws is not None and conn.ws.close_rcvd is not None
        assert conn.ws.close_rcvd.code == code
