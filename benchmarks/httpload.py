"""A cheap HTTP/1.1 load client on uvloop, for the plain-HTTP benchmarks.

Two shapes of load, both closed-loop (one request outstanding per connection, no pipelining):

* keep-alive: ``conns`` persistent connections, each writing the next ``GET /`` as soon as the
  previous response is complete;
* new connection: ``conns`` concurrent loops, each opening a TCP connection, sending one
  ``GET /`` with ``Connection: close``, reading the response and closing, then starting over.

Every connection is a plain ``asyncio.Protocol`` writing one pre-built request bytes object.
Responses are parsed only as far as knowing where they end: the status line (200 or not) and
Content-Length; the servers under test all send one, so chunked bodies are not handled (a
response without Content-Length counts as an error and closes its connection).

The client shares the machine with the server under test, so it is built to be cheap per
request and it reports its own CPU time per request (``client_cpu_us_per_req``).

Standalone use::

    python benchmarks/httpload.py --port 8000 --conns 50 --duration 5 [--new-connection]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a swoolish dependency
    uvloop = None

from loadclient import measured_window, percentile

__all__ = ["HttpStats", "KeepAliveClient", "OneShotClient", "build_request", "run_http"]

#: Bytes of response head tolerated before a response counts as malformed.
MAX_HEAD = 16384
_CONTENT_LENGTH = b"\r\ncontent-length:"


def build_request(host: str, port: int, path: str = "/", close: bool = False) -> bytes:
    """The request every connection sends, built once."""
    connection = "close" if close else "keep-alive"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: {connection}\r\n\r\n"
    ).encode()


class HttpStats:
    """Counters shared by every connection of one run."""

    __slots__ = ("bad", "connect_errors", "count", "dropped", "latencies", "recording")

    def __init__(self) -> None:
        self.count = 0  # 200 responses completed while recording
        self.latencies: list[float] = []
        self.recording = False
        self.bad = 0  # responses that were not 200, or could not be delimited
        self.connect_errors = 0  # connects that failed or timed out
        self.dropped = 0  # connections lost with a request outstanding

    def reset(self) -> None:
        """Forget the warm-up: only the measured window counts."""
        self.latencies.clear()
        self.count = self.bad = self.dropped = 0


class _ResponseReader(asyncio.Protocol):
    """Finds where each response ends: the head up to the blank line, then Content-Length
    bytes of body. Subclasses decide what a completed response leads to."""

    __slots__ = ("_buf", "_need", "_ok", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._need = -1  # bytes of the current response (head + body); -1 while in the head
        self._ok = False

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            if self._need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self._buf = buf
                    if len(buf) > MAX_HEAD:
                        self._malformed()
                    return
                head = buf[:end]
                at = head.lower().find(_CONTENT_LENGTH)
                if at < 0:
                    self._malformed()
                    return
                stop = head.find(b"\r\n", at + 2)
                try:
                    length = int(head[at + len(_CONTENT_LENGTH) : stop if stop > 0 else end])
                except ValueError:
                    self._malformed()
                    return
                self._ok = head.startswith(b"HTTP/1.1 200 ")
                self._need = end + 4 + length
            if len(buf) < self._need:
                self._buf = buf
                return
            buf = buf[self._need :]
            self._need = -1
            self._buf = b""
            self._complete(self._ok)
            if not buf or self.transport is None:
                return

    def _malformed(self) -> None:
        self._buf = b""
        self._need = -1
        self._complete(False)
        if self.transport is not None:
            self.transport.close()

    def _complete(self, ok: bool) -> None:
        raise NotImplementedError


class KeepAliveClient(_ResponseReader):
    """One persistent connection doing closed-loop request/response round trips."""

    __slots__ = ("_lat_append", "_request", "_stats", "_t0", "closed", "in_flight", "running")

    def __init__(self, request: bytes, stats: HttpStats) -> None:
        super().__init__()
        self._request = request
        self._stats = stats
        self._lat_append = stats.latencies.append
        self._t0 = 0.0
        self.running = False
        self.in_flight = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.in_flight:
            self.in_flight = False
            self._stats.dropped += 1
        self.running = False

    def _complete(self, ok: bool) -> None:
        now = time.perf_counter()
        self.in_flight = False
        stats = self._stats
        if stats.recording:
            if ok:
                stats.count += 1
                self._lat_append(now - self._t0)
            else:
                stats.bad += 1
        if self.running and self.transport is not None:
            self._t0 = now
            self.in_flight = True
            self.transport.write(self._request)

    def start(self) -> None:
        if self.transport is None:
            return
        self.running = True
        self.in_flight = True
        self._t0 = time.perf_counter()
        self.transport.write(self._request)

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.running = False
        self.in_flight = False  # a request abandoned here is not a connection the server lost
        if self.transport is not None:
            self.transport.close()


class OneShotClient(_ResponseReader):
    """One connection, one request: ``done`` gets whether a 200 response came back whole.

    It closes as soon as the response is complete, as wrk does: the server, told
    ``Connection: close``, has normally closed its side already.
    """

    __slots__ = ("_request", "done")

    def __init__(self, request: bytes, done: asyncio.Future[bool]) -> None:
        super().__init__()
        self._request = request
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done.done():
            self.done.set_result(False)

    def _complete(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _open_keepalive(
    host: str, port: int, n: int, request: bytes, stats: HttpStats, timeout: float
) -> list[KeepAliveClient]:
    loop = asyncio.get_running_loop()

    async def one() -> KeepAliveClient | None:
        proto = KeepAliveClient(request, stats)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: proto, host, port)
        except (OSError, TimeoutError):
            stats.connect_errors += 1
            return None
        return proto

    opened = await asyncio.gather(*(one() for _ in range(n)))
    return [c for c in opened if c is not None]


async def _one_shot_loop(
    host: str,
    port: int,
    request: bytes,
    stats: HttpStats,
    running: Callable[[], bool],
    timeout: float,
) -> None:
    """Connection after connection until ``running()`` turns false; each one bounded by
    ``timeout``, and a short pause after a failure so a refusing server is not spun on."""
    loop = asyncio.get_running_loop()
    lat_append = stats.latencies.append
    while running():
        done: asyncio.Future[bool] = loop.create_future()
        proto = OneShotClient(request, done)
        t0 = time.perf_counter()
        ok = False
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda p=proto: p, host, port)
                ok = await done
        except OSError:
            stats.connect_errors += 1
        except TimeoutError:
            stats.dropped += 1
        else:
            if stats.recording:
                if ok:
                    stats.count += 1
                    lat_append(time.perf_counter() - t0)
                else:
                    stats.bad += 1
        finally:
            if not ok:  # timed out, failed or cancelled: nothing may stay open
                proto.abort()
        if not ok:
            await asyncio.sleep(0.01)


async def run_http(
    host: str,
    port: int,
    *,
    conns: int = 50,
    new_connection: bool = False,
    warmup: float = 1.0,
    duration: float = 5.0,
    path: str = "/",
    timeout: float = 5.0,
    on_start: Callable[[], Any] | None = None,
    on_end: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """HTTP load: ``conns`` keep-alive connections, or with ``new_connection`` that many
    concurrent connect-request-close loops, each doing ``GET path`` round trips.

    ``on_start``/``on_end`` run right at the edges of the measured window (after warm-up), so a
    caller can sample the server's CPU time around exactly the requests counted here.
    """
    stats = HttpStats()
    request = build_request(host, port, path, close=new_connection)
    clients: list[KeepAliveClient] = []
    loops: list[asyncio.Task] = []
    running = True
    try:
        if new_connection:
            loops = [
                asyncio.create_task(
                    _one_shot_loop(host, port, request, stats, lambda: running, timeout)
                )
                for _ in range(conns)
            ]
        else:
            clients = await _open_keepalive(host, port, conns, request, stats, timeout)
            for c in clients:
                c.start()
        elapsed, cpu = await measured_window(stats, warmup, duration, on_start, on_end)
        running = False
        for c in clients:
            c.stop()
        # let in-flight requests land before closing; every loop ends within `timeout`
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline and any(c.in_flight for c in clients):
            await asyncio.sleep(0.01)
        if loops:
            _done, pending = await asyncio.wait(loops, timeout=timeout + 1.0)
            for t in pending:
                t.cancel()
    finally:
        running = False
        for c in clients:
            c.close()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.sleep(0.1)
    lat = sorted(stats.latencies)
    count = stats.count
    return {
        "conns": conns if new_connection else len(clients),
        "requests": count,
        "seconds": elapsed,
        "reqs_per_s": count / elapsed if elapsed else 0.0,
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "client_cpu_us_per_req": cpu / count * 1e6 if count else float("nan"),
        "connect_errors": stats.connect_errors,
        "bad_responses": stats.bad,
        "dropped": stats.dropped,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="HTTP/1.1 load client (uvloop)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--new-connection", action="store_true", help="one connection per request")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    coro = run_http(
        a.host,
        a.port,
        conns=a.conns,
        new_connection=a.new_connection,
        warmup=a.warmup,
        duration=a.duration,
    )
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
