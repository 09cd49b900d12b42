"""A cheap WebSocket load client on uvloop.

Every connection is a plain ``asyncio.Protocol`` with a hand-made opening handshake. Once open,
it does closed-loop round trips: it writes one pre-built, pre-masked text frame, waits for the
echo, records the round-trip time and writes the same bytes again. Replies are not decoded:
frames are only counted by walking their headers (opcode and payload length), with a fast path
for the common case where one ``data_received`` call carries exactly one expected reply.

The client shares the machine with the server under test, so it is built to be cheap per
message and it reports its own CPU time per message (``client_cpu_us_per_msg``).

Standalone use::

    python benchmarks/loadclient.py --port 9501 --conns 100 --size 64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a swoolish dependency
    uvloop = None

__all__ = [
    "EchoStats",
    "WSClient",
    "build_frame",
    "close_all",
    "deflate_payload",
    "echo_frame",
    "handshake_request",
    "open_connections",
    "percentile",
    "run_echo",
    "run_storm",
]

#: Fixed mask key: masking is required by RFC 6455, unpredictability does not matter here.
MASK = b"\x37\xfa\x21\x3d"
#: A masked close frame with status 1000 (normal closure).
CLOSE_FRAME = bytes([0x88, 0x82]) + MASK + bytes([0x03 ^ MASK[0], 0xE8 ^ MASK[1]])


#: What a browser offers (RFC 7692 §7.1): permessage-deflate, any client window size.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


def deflate_payload(payload: bytes) -> bytes:
    """``payload`` as a permessage-deflate message compressed as a fresh stream (RFC 7692
    §7.2.1): what a browser sends once the server asked for client_no_context_takeover,
    and valid for a server that keeps the client's context too (no back-reference)."""
    comp = zlib.compressobj(wbits=-15)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # the empty block's 0x00 0x00 0xff 0xff goes (§7.2.1)


def build_frame(payload: bytes, opcode: int = 0x1, mask: bytes = MASK, rsv1: bool = False) -> bytes:
    """One final, masked client frame carrying ``payload`` (built once, sent many times);
    ``rsv1`` marks a compressed message (RFC 7692 §6)."""
    n = len(payload)
    head = bytearray([0x80 | (0x40 if rsv1 else 0) | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    head += mask
    masked = (
        int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    ).to_bytes(n, "big")
    return bytes(head) + masked


def server_header(n: int, opcode: int = 0x1) -> bytes:
    """The unmasked header a server puts in front of an ``n``-byte echo."""
    if n < 126:
        return bytes([0x80 | opcode, n])
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")


def handshake_request(host: str, port: int, path: str = "/", deflate: bool = False) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{offer}"
        "\r\n"
    ).encode()


def read_upgrade(sock: socket.socket) -> tuple[bytes, bytes]:
    """A blocking socket's answer to the opening handshake: its head, and what followed
    it in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def free_port() -> int:
    """A loopback TCP port free at this moment, for a server about to listen on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``nan`` when empty)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class EchoStats:
    """Counters shared by every connection of one run."""

    __slots__ = (
        "count",
        "deflate_accepted",
        "dropped",
        "errors",
        "latencies",
        "recording",
        "unanswered",
    )

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.recording = False
        self.errors = 0  # failed connects or handshakes
        self.dropped = 0  # connections lost while running
        self.unanswered = 0  # round trips in flight when a connection was lost
        self.deflate_accepted = 0  # handshakes answered with permessage-deflate

    def reset(self) -> None:
        """Forget the warm-up: only the measured window counts."""
        self.latencies.clear()
        self.count = 0


class WSClient(asyncio.Protocol):
    """One client connection: handshake, then closed-loop echo round trips."""

    __slots__ = (
        "_buf",
        "_expect",
        "_fast",
        "_frame",
        "_hbuf",
        "_lat_append",
        "_opcode",
        "_remaining",
        "_stats",
        "_t0",
        "closed",
        "in_flight",
        "on_lost",
        "open",
        "ready",
        "request",
        "running",
        "transport",
    )

    def __init__(
        self,
        request: bytes,
        frame: bytes,
        payload_len: int,
        stats: EchoStats,
        ready: asyncio.Future[bool],
        on_lost: Callable[[WSClient], None] | None = None,
    ) -> None:
        # on_lost(client) is called when a connection is lost while doing round trips.
        self.request = request
        self._frame = frame
        self._fast = server_header(payload_len)
        self._expect = len(self._fast) + payload_len
        self._stats = stats
        self._lat_append = stats.latencies.append
        self.ready = ready
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closed = False
        self.running = False
        self.in_flight = False
        self._hbuf = b""
        self._buf = b""
        self._remaining = 0
        self._opcode = 0
        self._t0 = 0.0

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.open
        self.closed = True
        self.transport = None
        if not self.ready.done():
            self.ready.set_result(False)
        was_running = was_open and self.running
        self.running = False
        if was_running:
            self._stats.dropped += 1
            if self.in_flight:
                self._stats.unanswered += 1
            if self.on_lost is not None:
                self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self._handshake(data)
            return
        # Fast path: exactly one whole echo, header as expected.
        if (
            not self._remaining
            and not self._buf
            and len(data) == self._expect
            and data.startswith(self._fast)
        ):
            self._message()
            return
        self._parse(data)

    # -- internals -----------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        buf = self._hbuf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 16384:
                self.transport.close()  # type: ignore[union-attr]
            self._hbuf = buf
            return
        self._hbuf = b""
        ok = buf.startswith(b"HTTP/1.1 101")
        if not ok:
            self.transport.close()  # type: ignore[union-attr]
            if not self.ready.done():
                self.ready.set_result(False)
            return
        self.open = True
        if b"permessage-deflate" in buf[:end].lower():
            self._stats.deflate_accepted += 1
        if not self.ready.done():
            self.ready.set_result(True)
        rest = buf[end + 4 :]
        if rest:
            self._parse(rest)

    def _parse(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        n = len(buf)
        while True:
            if self._remaining:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining:
                    return
                self._frame_done()
            if pos >= n:
                return
            if n - pos < 2:
                self._buf = buf[pos:]
                return
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    self._buf = buf[pos:]
                    return
                ln = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    self._buf = buf[pos:]
                    return
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            pos += hl
            self._opcode = b0 & 0x0F
            self._remaining = ln
            if not ln:
                self._frame_done()

    def _frame_done(self) -> None:
        op = self._opcode
        if op == 0x1 or op == 0x2:
            self._message()
        elif op == 0x8:  # close from the server: connection_lost does the accounting
            if self.transport is not None:
                self.transport.close()
        # continuation, ping and pong frames are only counted past; the reference servers
        # run with their keepalive pings off and replies are never fragmented.

    def _message(self) -> None:
        now = time.perf_counter()
        self.in_flight = False
        stats = self._stats
        if stats.recording:
            stats.count += 1
            self._lat_append(now - self._t0)
        if self.running:
            self._t0 = now
            self.in_flight = True
            self.transport.write(self._frame)  # type: ignore[union-attr]

    def start(self) -> None:
        if self.transport is None or not self.open:
            return
        self.running = True
        self.in_flight = True
        self._t0 = time.perf_counter()
        self.transport.write(self._frame)

    def stop(self) -> None:
        self.running = False

    def stalled(self, now: float, after: float = 1.0) -> bool:
        """True when a round trip has been waiting for its echo longer than ``after`` s."""
        return self.running and self.in_flight and now - self._t0 > after

    def close(self) -> None:
        self.running = False
        t = self.transport
        if t is not None:
            if self.open:
                t.write(CLOSE_FRAME)
            t.close()


async def open_connections(
    host: str,
    port: int,
    n: int,
    payload_len: int,
    stats: EchoStats,
    *,
    frame: bytes | None = None,
    concurrency: int = 200,
    timeout: float = 15.0,
    on_lost: Callable[[WSClient], None] | None = None,
    deflate: bool = False,
) -> list[WSClient]:
    """Open ``n`` WebSocket connections, ``concurrency`` handshakes at a time.

    Failures are counted in ``stats.errors``; only established clients are returned.
    ``deflate``: offer permessage-deflate as a browser does and send compressed frames.
    """
    loop = asyncio.get_running_loop()
    if frame is None:
        frame = echo_frame(payload_len, deflate)
    request = handshake_request(host, port, deflate=deflate)
    clients: list[WSClient] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            ready: asyncio.Future[bool] = loop.create_future()
            proto = WSClient(request, frame, payload_len, stats, ready, on_lost)
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: proto, host, port)
                    ok = await ready
            except (OSError, TimeoutError):
                ok = False
            if ok:
                clients.append(proto)
            else:
                stats.errors += 1
                proto.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


def echo_frame(size: int, deflate: bool = False) -> bytes:
    """The text frame of a ``size``-byte echo, compressed as a browser would if ``deflate``."""
    payload = b"x" * size
    if deflate:
        return build_frame(deflate_payload(payload), rsv1=True)
    return build_frame(payload)


async def close_all(clients: list[WSClient], settle: float = 0.2) -> None:
    for c in clients:
        c.close()
    await asyncio.sleep(settle)


async def measured_window(
    stats: Any,
    warmup: float,
    duration: float,
    on_start: Callable[[], Any] | None,
    on_end: Callable[[], Any] | None,
) -> tuple[float, float]:
    """Warm up, then record exactly ``duration`` seconds: ``stats`` (with ``reset()`` and
    ``recording``) counts only inside the window, whose edges ``on_start``/``on_end`` see
    (a caller samples the server's CPU there). Returns the window's wall seconds and this
    client's CPU seconds in it."""
    await asyncio.sleep(warmup)
    stats.reset()
    if on_start is not None:
        on_start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stats.recording = True
    await asyncio.sleep(duration)
    stats.recording = False
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if on_end is not None:
        on_end()
    return elapsed, cpu


async def run_echo(
    host: str,
    port: int,
    *,
    conns: int = 100,
    size: int = 64,
    warmup: float = 1.0,
    duration: float = 5.0,
    on_start: Callable[[], Any] | None = None,
    on_end: Callable[[], Any] | None = None,
    deflate: bool = False,
) -> dict[str, Any]:
    """Echo load: ``conns`` connections doing round trips of a ``size``-byte text message.

    ``on_start``/``on_end`` run right at the edges of the measured window (after warm-up), so a
    caller can sample the server's CPU time around exactly the messages counted here.
    """
    stats = EchoStats()
    frame = echo_frame(size, deflate)
    clients = await open_connections(host, port, conns, size, stats, frame=frame, deflate=deflate)
    try:
        for c in clients:
            c.start()
        elapsed, cpu = await measured_window(stats, warmup, duration, on_start, on_end)
        for c in clients:
            c.stop()
        # let in-flight round trips land before closing
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline and any(c.in_flight and c.open for c in clients):
            await asyncio.sleep(0.01)
    finally:
        await close_all(clients)
    lat = sorted(stats.latencies)
    count = stats.count
    return {
        "conns": len(clients),
        "size": size,
        "msgs": count,
        "seconds": elapsed,
        "msgs_per_s": count / elapsed if elapsed else 0.0,
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "client_cpu_us_per_msg": cpu / count * 1e6 if count else float("nan"),
        "connect_errors": stats.errors,
        "dropped": stats.dropped,
        "deflate_accepted": stats.deflate_accepted,
    }


# -- reconnect storm ----------------------------------------------------------------------------


class StormStats:
    """What happened to the connections of one reconnect storm, and when the last one ended."""

    __slots__ = ("bad", "connect_errors", "done", "ended", "last_at", "lost", "times", "wanted")

    def __init__(self, wanted: int, done: asyncio.Future[None]) -> None:
        self.wanted = wanted
        self.done = done
        self.times: list[float] = []  # per served connection: connect started -> echo received
        self.connect_errors = 0  # the connect itself failed (refused, reset, EMFILE...)
        self.bad = 0  # an answer other than 101, or an echo that did not match
        self.lost = 0  # connected, then closed before its echo arrived
        self.ended = 0  # served + failed; reaching ``wanted`` sets ``done``
        self.last_at = 0.0

    def end_one(self) -> None:
        """One more connection served or failed; the last one sets ``done``."""
        self.ended += 1
        self.last_at = time.perf_counter()
        if self.ended >= self.wanted and not self.done.done():
            self.done.set_result(None)


class StormClient(asyncio.Protocol):
    """One reconnecting client of a storm: handshake, one echo round trip, then it stays open.

    As cheap as WSClient: the 101 answer is checked by its status line only, and the echo is
    compared byte for byte with the unmasked frame expected (no frame parser)."""

    __slots__ = (
        "_buf",
        "_frame",
        "_reply",
        "_request",
        "_stats",
        "ended",
        "open",
        "t0",
        "transport",
    )

    def __init__(self, request: bytes, frame: bytes, reply: bytes, stats: StormStats) -> None:
        self._request = request
        self._frame = frame
        self._reply = reply
        self._stats = stats
        self._buf = b""  # the handshake answer, then the echo, as far as they arrived
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.ended = False
        self.t0 = 0.0  # set by the caller right before it connects

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ended:
            self._stats.lost += 1
            self._end()

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        buf = self._buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                if len(buf) > 16384:
                    self._fail()
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail()
                return
            self.open = True
            self.transport.write(self._frame)  # type: ignore[union-attr]
            buf = buf[end + 4 :]
        if len(buf) < len(self._reply):
            self._buf = buf
            return
        self._buf = b""
        if buf.startswith(self._reply):
            self._stats.times.append(time.perf_counter() - self.t0)
            self._end()
        else:
            self._fail()

    def _fail(self) -> None:
        self._stats.bad += 1
        self._end()
        self.abort()

    def _end(self) -> None:
        self.ended = True
        self._stats.end_one()

    def abort(self) -> None:
        """Drop the connection without a close frame (RST), as a network blip would."""
        if self.transport is not None:
            reset(self.transport)


#: SO_LINGER on, with a zero timeout: close() sends RST (socket(7)).
_LINGER_NONE = struct.pack("ii", 1, 0)


def reset(transport: asyncio.BaseTransport) -> None:
    """Drop a connection with a TCP RST, as a network blip does. uvloop's ``abort()``
    closes the socket, which sends a FIN when nothing unread waits, and leaves it in
    TIME_WAIT on this side for a minute: storm after storm, tens of thousands of them
    made every later connect() search longer for a free source port."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
    transport.abort()


async def _storm_connect(
    loop: asyncio.AbstractEventLoop, proto: StormClient, host: str, port: int
) -> None:
    """One connect of the storm; its clock starts right before the connect is issued."""
    proto.t0 = time.perf_counter()
    try:
        await loop.create_connection(lambda: proto, host, port)
    except OSError:
        proto._stats.connect_errors += 1
        proto._end()


async def wait_closed(clients: list[Any], timeout: float = 10.0) -> int:
    """Wait until this side closed every client's transport (not until the server noticed);
    how many are still open at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = sum(c.transport is not None for c in clients)
        if not left:
            return 0
        await asyncio.sleep(0.01)
    return sum(c.transport is not None for c in clients)


async def run_storm(
    host: str,
    port: int,
    n: int,
    *,
    size: int = 64,
    timeout: float = 30.0,
    settle: float = 0.5,
    on_start: Callable[[], Any] | None = None,
    on_end: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """A reconnect storm: ``n`` connections open, all dropped at once, all back at once.

    First ``n`` WebSocket connections are opened (200 handshakes at a time, not measured) and
    left alone for ``settle`` seconds. The blip: every one is aborted by this side (RST, no
    close frame) and, as soon as this side closed them all, ``n`` new connections are started
    together, each doing its handshake and one round trip of a ``size``-byte text message.
    Measured from the start of the reconnect to the moment the last one was served (or
    failed, or ``timeout`` passed): ``on_start``/``on_end`` run at those edges.

    Both drops are real RSTs (:func:`reset`), so no connection of a storm lingers in
    TIME_WAIT to slow the connects of the next. This process's heap is frozen for the
    window (``gc.freeze``), so that the client's collector does not walk the 2 x ``n``
    connections' objects again and again: the client shares the two cores with the
    server and should spend as little of them as it can.
    """
    loop = asyncio.get_running_loop()
    old_stats = EchoStats()
    old = await open_connections(host, port, n, size, old_stats, concurrency=200)
    await asyncio.sleep(settle)
    for c in old:
        if c.transport is not None:
            reset(c.transport)
    old_left = await wait_closed(old)
    request = handshake_request(host, port)
    frame = echo_frame(size)
    reply = server_header(size) + b"x" * size
    stats = StormStats(n, loop.create_future())
    protos = [StormClient(request, frame, reply, stats) for _ in range(n)]
    gc.collect()
    gc.freeze()
    # -- the measured window --
    if on_start is not None:
        on_start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    tasks = [loop.create_task(_storm_connect(loop, p, host, port)) for p in protos]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stats.done), timeout)
    end = stats.last_at if stats.done.done() else time.perf_counter()
    cpu = time.process_time() - cpu0
    if on_end is not None:
        on_end()
    gc.unfreeze()
    # -- teardown: whatever is still pending counts as a timeout --
    timed_out = n - stats.ended
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for p in protos:
        p.abort()
    await wait_closed(protos)
    elapsed = end - t0
    served = len(stats.times)
    times = sorted(stats.times)
    return {
        "conns": n,
        "old_opened": len(old),
        "old_connect_errors": old_stats.errors,
        "old_left_open": old_left,
        "served": served,
        "all_served": int(served == n),
        "connect_errors": stats.connect_errors,
        "bad_answers": stats.bad,
        "lost": stats.lost,
        "timeouts": timed_out,
        "seconds": elapsed,
        "all_served_s": elapsed if served == n else float("nan"),
        "handshakes_per_s": served / elapsed if elapsed > 0 else float("nan"),
        "p50_ms": percentile(times, 50) * 1e3,
        "p99_ms": percentile(times, 99) * 1e3,
        "max_ms": times[-1] * 1e3 if times else float("nan"),
        # served after more than 1 s: a SYN retransmit (1 s, 3 s...) or just a long queue;
        # the kernel's counters (run.py's StormWindow) tell which
        "slow_1s": sum(t > 1.0 for t in times),
        "client_cpu_s": cpu,
        "client_cpu_us_per_handshake": cpu / served * 1e6 if served else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="WebSocket echo load client (uvloop)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, compress")
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    coro = run_echo(
        a.host,
        a.port,
        conns=a.conns,
        size=a.size,
        warmup=a.warmup,
        duration=a.duration,
        deflate=a.deflate,
    )
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
