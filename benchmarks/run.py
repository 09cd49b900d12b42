"""Side-by-side benchmark: swoolish against the websockets, aiohttp and picows echo servers,
and against uvicorn and aiohttp as plain-HTTP servers.

Every server runs as a subprocess on loopback, on a free port. Scenarios are interleaved
(A B C D, A B C D, ...) so that slow drifts of a shared, noisy machine hit every server alike,
and every figure is also given as a ratio to the baseline server of the same round:
``websockets`` for the WebSocket scenarios, ``uvicorn`` for the HTTP ones.

The stable figure is the server's CPU time per message (or per HTTP request): user+sys of the
server process and all its children (psutil), sampled right at the edges of the measured
window, divided by the messages echoed (requests answered) in it. Throughput and latency are
reported too, but they depend on how much CPU the load client and everything else on the
machine leave to the server.

HTTP scenarios (``benchmarks/httpload.py`` is the client; every server answers ``GET /`` with
the 5-byte text/plain body ``hello``, one process or one worker each):

* ``http_keepalive``: 50 persistent HTTP/1.1 connections, each sending its next request as soon
  as the previous response is complete (no pipelining);
* ``http_new_connection``: 50 concurrent loops of connect, one request with
  ``Connection: close``, response, close: the cost of accepting and tearing down a
  connection per request.

The servers: ``swoolish serve benchmarks/servers/http_swoolish_app.py:server --workers 1``;
``uvicorn`` with ``--loop uvloop --http httptools``, one worker, no access log, serving a raw
ASGI app (``servers/http_uvicorn.py``); aiohttp's ``web`` server on uvloop
(``servers/http_aiohttp.py``).

Reconnect storms (``storm5k``, ``storm10k``; ``loadclient.run_storm``): N WebSocket clients on
a fresh server, all dropped at once by the client (RST, no close frame), then all N connecting
again at once, each doing its handshake and one 64 B echo. Timed from the start of the
reconnect until the last one was served; the server's CPU is sampled at those two edges. Every
server listens with a backlog of 2048 (swoolish's; the reference scripts take ``--backlog``,
whose defaults would otherwise be 100 or 128): an overflowing accept queue makes clients wait
for SYN retransmits (1 s, then 3 s), which would decide "time until all served" alone. The
client drops connections with a real RST (``loadclient.reset``), leaving no TIME_WAIT behind,
and its heap is frozen for the window. Ratios are given to ``websockets`` and to ``picows``
(the target is stated against picows).

``stormwork`` (run only when named): ``storm5k`` against ``picows``, swoolish and the floor
(``servers/ws_floor.py``) as is and spending 10, 20 and 30 µs of CPU in each handshake
(``floor+10``...): the rate a server reaches here for a given amount of work of its own per
handshake, all else being the least there is.

``large32m``: one 32 MiB binary message per fresh connection, answered with its length
(``large_message_bench.py``'s client and swoolish app; the reference servers with
``--reply-length``). ``handoff1k``: ``handoff_bench.py`` with 1,000 idle connections.

Usage::

    python benchmarks/run.py [--quick] [--rounds N] [--only SCENARIO[,SCENARIO...]]

Results: a table on stdout and ``benchmarks/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import uvloop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from httpload import run_http  # noqa: E402
from large_message_bench import APP as LARGE_APP  # noqa: E402
from large_message_bench import binary_frame, one_run  # noqa: E402
from loadclient import (  # noqa: E402
    EchoStats,
    WSClient,
    close_all,
    free_port,
    open_connections,
    percentile,
    run_echo,
    run_storm,
)

HOST = "127.0.0.1"
PY = sys.executable
#: The server every ratio of a WebSocket scenario refers to.
BASELINE = "websockets"
#: The server every ratio of an HTTP scenario refers to: uvicorn (httptools on uvloop) is the
#: usual Python HTTP server to beat, and the target is stated against it.
HTTP_BASELINE = "uvicorn"
#: Baseline by scenario kind; kinds not listed use BASELINE.
BASELINES: dict[str, str] = {"http": HTTP_BASELINE}
#: Further servers a kind's figures are also divided by, round by round: the storm and echo
#: targets are stated against picows ("handshakes/s >= 1.5x picows", "echo <= 1.1x picows").
EXTRA_BASELINES: dict[str, list[str]] = {"storm": ["picows"], "echo": ["picows"]}
#: The heading of a ratio column, by baseline.
RATIO_LABELS: dict[str, str] = {BASELINE: "x ws", HTTP_BASELINE: "x uv", "picows": "x picows"}


def _swoolish_cmd(target: str, workers: int, log_level: str = "warning") -> Callable[[int], list]:
    def cmd(port: int) -> list[str]:
        return [
            PY,
            "-m",
            "swoolish",
            "serve",
            target,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            log_level,
        ]

    return cmd


def _script_cmd(script: str) -> Callable[[int], list]:
    def cmd(port: int) -> list[str]:
        return [PY, str(HERE / "servers" / script), "--port", str(port)]

    return cmd


def _plus(cmd: Callable[[int], list[str]], *extra: str) -> Callable[[int], list[str]]:
    """``cmd`` with more command-line arguments: one scenario's settings for a server."""

    def with_extra(port: int) -> list[str]:
        return [*cmd(port), *extra]

    return with_extra


def _pure_python(cmd: Callable[[int], list[str]]) -> Callable[[int], list[str]]:
    """``cmd`` with swoolish's fast path in Python, not its compiled accelerator."""

    def pure(port: int) -> list[str]:
        return ["env", "SWOOLISH_NO_SPEEDUPS=1", *cmd(port)]

    return pure


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "websockets": _script_cmd("ws_websockets.py"),
    "aiohttp": _script_cmd("ws_aiohttp.py"),
    "picows": _script_cmd("ws_picows.py"),
    "swoolish": _swoolish_cmd("examples/echo.py:server", 1),
    "swoolish-2w": _swoolish_cmd("examples/echo.py:server", 2),
    "swoolish-py": _pure_python(_swoolish_cmd("examples/echo.py:server", 1)),
    # Not a server: the least a WebSocket server on uvloop can do (servers/ws_floor.py).
    # Its figures are what this machine, its kernel and the client allow any server.
    "floor": _script_cmd("ws_floor.py"),
    # The floor spending 10, 20 or 30 µs of CPU in each handshake (``stormwork``): what a
    # server's own work per handshake does to a storm's rate on this machine.
    **{
        f"floor+{us}": _plus(_script_cmd("ws_floor.py"), "--handshake-work-us", str(us))
        for us in (10, 20, 30)
    },
}

#: Plain-HTTP servers, a separate set: the WebSocket echo servers above have no HTTP handler,
#: and "aiohttp" / "swoolish" here are other apps under the same names.
HTTP_SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": _script_cmd("http_uvicorn.py"),
    "aiohttp": _script_cmd("http_aiohttp.py"),
    "swoolish": _swoolish_cmd("benchmarks/servers/http_swoolish_app.py:server", 1),
}

ECHO_SERVERS = ["websockets", "aiohttp", "picows", "swoolish"]
#: The servers that accept permessage-deflate (picows has no compression).
DEFLATE_SERVERS = ["websockets", "aiohttp", "swoolish"]

#: Scenarios run only when named in ``--only``: studies, not figures of the targets.
ON_REQUEST = {"stormwork"}

#: name -> (kind, parameters, participants)
SCENARIOS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "echo64": ("echo", {"size": 64, "conns": 100}, ECHO_SERVERS),
    "echo4k": ("echo", {"size": 4096, "conns": 100}, ECHO_SERVERS),
    "workers": ("echo", {"size": 64, "conns": 100}, ["websockets", "swoolish", "swoolish-2w"]),
    # The fast path compiled (swoolish/core/_speedups.c, when built) and in Python.
    "fastpath": (
        "echo",
        {"size": 64, "conns": 100},
        ["picows", "swoolish", "swoolish-py", "floor"],
    ),
    "idle1k": ("idle", {"conns": 1_000}, ECHO_SERVERS),
    "idle10k": ("idle", {"conns": 10_000}, ECHO_SERVERS),
    # A browser-like client: offers permessage-deflate and compresses what it sends.
    "echo64z": ("echo", {"size": 64, "conns": 100, "deflate": True}, DEFLATE_SERVERS),
    "echo4kz": ("echo", {"size": 4096, "conns": 100, "deflate": True}, DEFLATE_SERVERS),
    "idle2kz": ("idle", {"conns": 2_000, "deflate": True}, DEFLATE_SERVERS),
    "timers": ("timers", {}, ["swoolish"]),
    "reload": ("reload", {"workers": 4, "ws_conns": 50, "http_concurrency": 8}, ["swoolish"]),
    "broadcast": ("hook", {"sessions": 10_000, "workers": 2}, ["swoolish"]),
    # N clients dropped at once (RST) and reconnecting at once, one 64 B echo each; fresh
    # server per measurement, every server with a listen backlog of 2048.
    "storm5k": ("storm", {"conns": 5_000, "size": 64}, [*ECHO_SERVERS, "floor"]),
    "storm10k": ("storm", {"conns": 10_000, "size": 64}, [*ECHO_SERVERS, "floor"]),
    # storm5k against the floor with 0, 10, 20 and 30 µs of work per handshake: the rate
    # a server doing that much work of its own can reach here (docs/performance.md)
    "stormwork": (
        "storm",
        {"conns": 5_000, "size": 64},
        ["picows", "floor", "floor+10", "floor+20", "floor+30", "swoolish"],
    ),
    # One 32 MiB binary message per fresh connection, answered with its length.
    "large32m": ("large", {"mib": 32, "runs": 5}, ECHO_SERVERS),
    # Live hand-off of 1,000 idle connections: the longest pause of a busy client.
    "handoff1k": ("hook", {"conns": 1_000, "runs": 3}, ["swoolish"]),
    # Plain HTTP against uvicorn and aiohttp: 50 keep-alive connections doing closed-loop
    # GET / round trips; 50 concurrent loops of one request per new connection.
    "http_keepalive": ("http", {"conns": 50, "new_connection": False}, list(HTTP_SERVERS)),
    "http_new_connection": ("http", {"conns": 50, "new_connection": True}, list(HTTP_SERVERS)),
}


# -- server processes -------------------------------------------------------------------------

_RUNNING: list[Server] = []


class Server:
    """One server under test: a subprocess (plus its children), stopped by pid."""

    def __init__(self, name: str, cmd: list[str] | Callable[[int], list[str]], logdir: Path):
        self.name = name
        self.port = free_port()
        self.cmd = cmd(self.port) if callable(cmd) else cmd
        self.log_path = logdir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in a finally
            )
        finally:
            log.close()
        _RUNNING.append(self)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-2000:]}")
            try:
                _r, w = await asyncio.open_connection(HOST, self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening after {timeout}s")

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def cpu_seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                kid.terminate()
        _gone, alive = psutil.wait_procs(kids, timeout=3)
        for kid in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                kid.kill()


def stop_all() -> None:
    for server in list(_RUNNING):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            print(f"warning: stopping {server.name}: {exc}", file=sys.stderr)


# -- scenarios --------------------------------------------------------------------------------


class WindowCpu:
    """The server's CPU time over exactly the measured window: the load client calls
    ``start`` and ``end`` at its edges, after the warm-up."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.procs: list[psutil.Process] = []
        self.cpu0 = self.cpu1 = 0.0

    def start(self) -> None:
        self.procs = self.server.processes()
        self.cpu0 = Server.cpu_seconds(self.procs)

    def end(self) -> None:
        self.cpu1 = Server.cpu_seconds(self.procs)

    def add_to(self, r: dict[str, Any], count: int, per: str) -> dict[str, Any]:
        """``r`` with the server's CPU seconds, per unit (``per``: µs) and cores busy."""
        cpu = self.cpu1 - self.cpu0
        r["server_cpu_s"] = cpu
        r[per] = cpu / count * 1e6 if count else float("nan")
        r["server_cores_busy"] = cpu / r["seconds"]
        return r


async def measure_echo(
    server: Server, size: int, conns: int, cfg: dict, deflate: bool = False
) -> dict[str, Any]:
    window = WindowCpu(server)
    r = await run_echo(
        HOST,
        server.port,
        conns=conns,
        size=size,
        warmup=cfg["warmup"],
        duration=cfg["duration"],
        on_start=window.start,
        on_end=window.end,
        deflate=deflate,
    )
    return window.add_to(r, r["msgs"], "server_cpu_us_per_msg")


async def measure_http(
    server: Server, conns: int, new_connection: bool, cfg: dict
) -> dict[str, Any]:
    """Server CPU per HTTP request, sampled around exactly the requests counted, as for echo."""
    window = WindowCpu(server)
    r = await run_http(
        HOST,
        server.port,
        conns=conns,
        new_connection=new_connection,
        warmup=cfg["warmup"],
        duration=cfg["duration"],
        on_start=window.start,
        on_end=window.end,
    )
    return window.add_to(r, r["requests"], "server_cpu_us_per_req")


async def measure_idle(
    name: str, conns: int, cfg: dict, logdir: Path, deflate: bool = False
) -> dict[str, Any]:
    """RSS per idle WebSocket connection, on a fresh server process.

    With ``deflate`` the clients negotiate permessage-deflate and the RSS is taken after
    one compressed round trip on every connection: a server may set up its compression
    state only when the first message needs it.

    The connections open in two halves, the RSS read after each: ``kib_per_conn`` is the
    growth over all of them from the RSS before the first; ``kib_per_conn_2nd_half`` the
    growth over the second half alone, what one more connection costs once the first
    half has used up whatever the server's heap had free after its boot (which moves the
    first figure by up to a quarter at 2,000 connections: docs/performance.md).
    """
    server = Server(name, SERVERS[name], logdir).start()
    try:
        await server.wait_ready()
        # touch every code path once so lazily built state is not charged to the connections
        await run_echo(
            HOST, server.port, conns=5, size=64, warmup=0.1, duration=0.2, deflate=deflate
        )
        await asyncio.sleep(0.3)
        rss0 = server.rss()
        stats = EchoStats()
        half = conns // 2
        first, open_first, rss_half = await _open_idle(server, half, stats, cfg, deflate)
        rest, open_rest, rss1 = await _open_idle(server, conns - half, stats, cfg, deflate)
        clients = first + rest
        answered = await _one_round_trip_each(clients, stats) if not deflate else stats.count
        await close_all(clients, settle=0.5)
    finally:
        server.stop()
    return {
        "conns": len(clients),
        "connect_errors": stats.errors,
        "echo_answered": answered,
        "dropped": stats.dropped,
        "open_s": open_first + open_rest,
        "rss_before_mib": rss0 / 2**20,
        "rss_half_mib": rss_half / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "kib_per_conn": (rss1 - rss0) / conns / 1024,
        "kib_per_conn_2nd_half": (rss1 - rss_half) / max(1, conns - half) / 1024,
        "deflate_accepted": stats.deflate_accepted,
    }


async def _open_idle(
    server: Server, n: int, stats: EchoStats, cfg: dict, deflate: bool
) -> tuple[list[WSClient], float, int]:
    """Open ``n`` more idle connections (with ``deflate``, one compressed round trip on
    each), let the server settle; the clients, the seconds the opening took, the RSS."""
    t0 = time.perf_counter()
    clients = await open_connections(
        HOST, server.port, n, 64, stats, concurrency=100, deflate=deflate
    )
    open_s = time.perf_counter() - t0
    if deflate:
        await _one_round_trip_each(clients, stats)
    await asyncio.sleep(cfg["idle_settle"])
    return clients, open_s, server.rss()


async def _one_round_trip_each(clients: list[WSClient], stats: EchoStats) -> int:
    """One round trip on every connection (they all still answer); how many answered."""
    stats.recording = True
    before = stats.count
    for c in clients:
        c.start()
        c.stop()
    deadline = time.monotonic() + 15
    while stats.count - before < len(clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return stats.count - before


async def measure_timers(cfg: dict) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PY,
        str(HERE / "timers_bench.py"),
        "--tick-seconds",
        str(cfg["tick_seconds"]),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return json.loads(out)


_RELOAD_DONE = re.compile(rb"reload to generation (\d+) (complete|rolled back)[^\d]*([\d.]+)s")


async def measure_reload(params: dict, cfg: dict, logdir: Path) -> dict[str, Any]:
    """Rolling reload of N workers under WebSocket echo load plus fresh-connection HTTP load.

    Reload time comes from the master's log line "reload to generation N complete in X s".
    Failures: HTTP requests without a 200 answer; WebSocket round trips left waiting > 1 s;
    WebSocket connections lost while doing round trips (reopened to keep the load up) and
    the round trips in flight when that happened; reconnects that failed.
    """
    loop = asyncio.get_running_loop()
    cmd = _swoolish_cmd(
        "benchmarks/servers/swoolish_reload_app.py:server", params["workers"], "info"
    )
    server = Server("swoolish-reload", cmd, logdir).start()
    phase = "warmup"
    http: dict[str, dict[str, Any]] = {
        p: {"ok": 0, "failed": 0, "lat": []} for p in ("before", "during", "after")
    }
    ws_lat: dict[str, list[float]] = {}
    stats = EchoStats()
    clients: list[WSClient] = []
    tasks: set[asyncio.Task] = set()
    running = True

    def on_lost(_client: WSClient) -> None:
        if running:
            t = loop.create_task(reopen())
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    async def reopen() -> None:
        new = await open_connections(HOST, server.port, 1, 64, stats, on_lost=on_lost)
        for c in new:
            clients.append(c)
            if running:
                c.start()

    async def http_loop() -> None:
        req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        while running:
            ph = phase
            t0 = time.perf_counter()
            ok = False
            writer = None
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection(HOST, server.port)
                    writer.write(req)
                    data = await reader.read()
                    ok = data.startswith(b"HTTP/1.1 200")
            except (OSError, TimeoutError):
                ok = False
            finally:
                if writer is not None:
                    writer.close()
            if ph in http:
                bucket = http[ph]
                bucket["ok" if ok else "failed"] += 1
                if ok:
                    bucket["lat"].append(time.perf_counter() - t0)

    http_tasks: list[asyncio.Task] = []
    try:
        await server.wait_ready()
        await run_echo(HOST, server.port, conns=10, size=64, warmup=0.2, duration=0.3)
        clients.extend(
            await open_connections(
                HOST, server.port, params["ws_conns"], 64, stats, on_lost=on_lost
            )
        )
        for c in clients:
            c.start()
        http_tasks = [loop.create_task(http_loop()) for _ in range(params["http_concurrency"])]
        stats.recording = True
        phase = "before"
        await asyncio.sleep(cfg["reload_before"])
        ws_lat["before"], stats.latencies[:] = list(stats.latencies), []
        drops_before, unanswered_before = stats.dropped, stats.unanswered
        log_offset = len(server.log_text().encode())
        phase = "during"
        t0 = time.perf_counter()
        os.kill(server.proc.pid, signal.SIGUSR1)
        match = None
        deadline = time.monotonic() + cfg["reload_timeout"]
        while match is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            match = _RELOAD_DONE.search(server.log_path.read_bytes()[log_offset:])
        observed = time.perf_counter() - t0
        ws_lat["during"], stats.latencies[:] = list(stats.latencies), []
        now = time.perf_counter()
        stalled_during = sum(c.stalled(now) for c in clients)
        drops_during, unanswered_during = stats.dropped, stats.unanswered
        phase = "after"
        await asyncio.sleep(cfg["reload_after"])
        ws_lat["after"] = list(stats.latencies)
        now = time.perf_counter()
        stalled_after = sum(c.stalled(now) for c in clients)
        phase = "done"
    finally:
        running = False
        for t in http_tasks:
            t.cancel()
        await asyncio.gather(*http_tasks, return_exceptions=True)
        for t in list(tasks):
            t.cancel()
        await close_all(clients, settle=0.3)
        server.stop()

    def p99_ms(values: list[float]) -> float:
        return percentile(sorted(values), 99) * 1000

    out: dict[str, Any] = {
        "workers": params["workers"],
        "reload_ok": bool(match and match.group(2) == b"complete"),
        "reload_s": float(match.group(3)) if match else float("nan"),
        "reload_observed_s": observed,
        "http_failed": sum(h["failed"] for h in http.values()),
        "http_failed_during": http["during"]["failed"],
        "http_ok": sum(h["ok"] for h in http.values()),
        "ws_dropped": stats.dropped,
        "ws_dropped_during": drops_during - drops_before,
        "ws_unanswered": stats.unanswered,
        "ws_unanswered_during": unanswered_during - unanswered_before,
        "ws_reconnect_errors": stats.errors,
        # connections whose round trip had waited > 1 s for its echo at the end of the phase
        "ws_stalled_end_during": stalled_during,
        "ws_stalled_end_after": stalled_after,
    }
    for ph in ("before", "during", "after"):
        out[f"ws_p99_ms_{ph}"] = p99_ms(ws_lat.get(ph, []))
        out[f"ws_msgs_{ph}"] = len(ws_lat.get(ph, []))
        out[f"http_p99_ms_{ph}"] = p99_ms(http[ph]["lat"])
    return out


#: The floor's figures the broadcast hook reports beside swoolish's, as floor_<name>.
FLOOR_BROADCAST_FIGURES = ("broadcast_seconds", "sessions_per_second", "server_cpu_us_per_session")


def hook_broadcast_10k_sessions_2_workers(params: dict) -> dict[str, Any]:
    """Broadcast of one message to 10k sessions spread over 2 workers (server.broadcast):
    time from the trigger until every client received it (benchmarks/broadcast_bench.py).
    Then the same broadcast by servers/ws_floor.py, the least a prefork uvloop server can
    do, whose figures (``floor_*``) are what this machine and client allow any server;
    ``x_floor`` is swoolish's sessions per second over the floor's."""
    from broadcast_bench import measure

    sessions, workers = params.get("sessions", 10_000), params.get("workers", 2)
    result = measure(sessions, workers)
    floor = measure(sessions, workers, floor=True)
    result |= {f"floor_{key}": floor[key] for key in FLOOR_BROADCAST_FIGURES}
    rate, floor_rate = result["sessions_per_second"], floor["sessions_per_second"]
    result["x_floor"] = round(float(rate) / float(floor_rate), 2)  # type: ignore[arg-type]
    return result


def hook_handoff_1k_connections(params: dict) -> dict[str, Any]:
    """Live hand-off of 1,000 idle connections (benchmarks/handoff_bench.py), ``runs`` times:
    the longest gap between two echoes of a busy client across the reload, and the time the
    old worker took to move the connections. A failed run is counted, not fatal."""
    from handoff_bench import run_one

    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for _ in range(params.get("runs", 3)):
        try:
            runs.append(run_one(params.get("conns", 1_000), params.get("busy_first", False)))
        except Exception as exc:  # one bad run: report it, keep the others
            errors.append(repr(exc))
    gaps = [r["busy_longest_gap_ms"] for r in runs]
    moves = [r["handoff_seconds"] for r in runs]
    return {
        "conns": params.get("conns", 1_000),
        "runs": len(runs),
        "failed_runs": len(errors),
        "busy_longest_gap_ms_median": _median(gaps),
        "busy_longest_gap_ms_max": max(gaps, default=float("nan")),
        "busy_longest_gap_ms": gaps,
        "busy_gap_before_max_ms": max(
            (r["busy_gap_before_p100_ms"] for r in runs), default=float("nan")
        ),
        "move_s_median": _median(moves),
        "move_s_max": max(moves, default=float("nan")),
        "reload_s_median": _median([r["reload_seconds"] for r in runs]),
        # the old worker's count includes the busy client
        "moved": [r["moved"] for r in runs],
        "all_moved": all(r["moved"] == r["connections"] + 1 for r in runs) and bool(runs),
        "all_answer_from_gen2": all(r["all_answer_from_gen2"] for r in runs) and bool(runs),
        "errors": errors,
    }


#: Scenarios that run once, in-process and on their own loop, after the interleaved rounds.
HOOKS: dict[str, Callable[[dict], dict[str, Any]]] = {
    "broadcast": hook_broadcast_10k_sessions_2_workers,
    "handoff1k": hook_handoff_1k_connections,
}


# -- reconnect storm --------------------------------------------------------------------------

#: TcpExt counters (/proc/net/netstat, this network namespace) that tell why a connect was
#: slow: accept-queue overflows and drops, SYN cookies sent, SYN (and SYN-ACK) retransmits.
KERNEL_COUNTERS = {
    "ListenOverflows": "listen_overflows",
    "ListenDrops": "listen_drops",
    "SyncookiesSent": "syncookies_sent",
    "TCPSynRetrans": "syn_retrans",
}


def tcp_ext_counters() -> dict[str, int]:
    """The KERNEL_COUNTERS now (empty when /proc/net/netstat cannot be read)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in KERNEL_COUNTERS if k in table}
    return {}


class StormWindow(WindowCpu):
    """The server's CPU and the kernel's TCP counters over the reconnect: from the start of
    the storm's connects to the moment its last connection was served."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.net0: dict[str, int] = {}
        self.net1: dict[str, int] = {}

    def start(self) -> None:
        super().start()
        self.net0 = tcp_ext_counters()

    def end(self) -> None:
        super().end()
        self.net1 = tcp_ext_counters()

    def add_to(self, r: dict[str, Any], count: int, per: str) -> dict[str, Any]:
        r = super().add_to(r, count, per)
        for key, name in KERNEL_COUNTERS.items():
            if key in self.net0 and key in self.net1:
                r[name] = self.net1[key] - self.net0[key]
        return r


def storm_cmd(name: str, conns: int) -> Callable[[int], list[str]]:
    """The server ``name`` for a storm of ``conns``: swoolish's per-worker cap (10,000 by
    default, answered 503 past it) raised to hold the old connections it has not yet seen
    closed as well as the new ones: the reference servers have no cap. Their listen backlog
    is the scripts' default, 2048, as swoolish's."""
    if name.startswith("swoolish"):
        return _plus(SERVERS[name], "--max-connections", str(2 * conns + 1024))
    return SERVERS[name]


async def measure_storm(name: str, params: dict, cfg: dict, logdir: Path) -> dict[str, Any]:
    """One reconnect storm on a fresh server (``loadclient.run_storm``): server CPU per
    handshake over exactly the reconnect, and whether the server was still up after it."""
    conns = params["conns"]
    server = Server(name, storm_cmd(name, conns), logdir).start()
    window = StormWindow(server)
    try:
        await server.wait_ready()
        # touch every code path once so the first handshakes do not pay for lazy imports
        await run_echo(HOST, server.port, conns=5, size=64, warmup=0.1, duration=0.2)
        r = await run_storm(
            HOST,
            server.port,
            conns,
            size=params.get("size", 64),
            timeout=cfg["storm_timeout"],
            settle=cfg["storm_settle"],
            on_start=window.start,
            on_end=window.end,
        )
        r["server_alive"] = int(server.proc is not None and server.proc.poll() is None)
    finally:
        server.stop()
    return window.add_to(r, r["served"], "server_cpu_us_per_handshake")


# -- one large message ------------------------------------------------------------------------


def large_cmd(name: str, size: int, logdir: Path) -> Callable[[int], list[str]]:
    """The server ``name`` answering every message with its length, its message size limit
    raised above ``size``: swoolish serves large_message_bench.py's app (max_message_size
    2 x size, hand-off on: the defaults otherwise); websockets (max_size=None) and aiohttp
    (max_msg_size=0) already take any size; picows's 10 MiB frame limit is raised."""
    if name == "swoolish":
        app = logdir / "large_message_app.py"
        app.write_text(LARGE_APP.format(max_size=2 * size, handoff=True))
        return _swoolish_cmd(f"{app}:server", 1)
    cmd = _plus(SERVERS[name], "--reply-length")
    if name == "picows":
        cmd = _plus(cmd, "--max-frame-size", str(2 * size))
    return cmd


def large_runs(server: Server, wire: bytes, size: int, runs: int) -> dict[str, Any]:
    """``runs`` fresh connections one after another, each sending ``wire`` (one message of
    ``size`` bytes): seconds from its first byte sent to the reply (large_message_bench's
    one_run), and the server's CPU per message over all of them (psutil counts in 10 ms
    ticks: one message alone would be measured to +-30 %). Blocking: run it in a thread."""
    seconds: list[float] = []
    window = WindowCpu(server)
    window.start()
    for _ in range(runs):
        elapsed, reply = one_run(server.port, wire)
        if reply != str(size).encode():
            raise RuntimeError(f"{server.name}: unexpected reply {reply[:80]!r}")
        seconds.append(elapsed)
    window.end()
    return {
        "mib": size / 2**20,
        "runs": runs,
        "recv_s": statistics.median(seconds),
        "recv_s_min": min(seconds),
        "recv_s_max": max(seconds),
        "server_cpu_ms_per_msg": (window.cpu1 - window.cpu0) / runs * 1e3,
    }


# -- summary ----------------------------------------------------------------------------------

ECHO_METRICS = [
    ("msgs_per_s", "msgs/s", "{:,.0f}"),
    ("server_cpu_us_per_msg", "srv CPU us/msg", "{:.2f}"),
    ("p50_us", "p50 us", "{:,.0f}"),
    ("p99_us", "p99 us", "{:,.0f}"),
    ("client_cpu_us_per_msg", "client us/msg", "{:.2f}"),
    ("server_cores_busy", "srv cores", "{:.2f}"),
    ("deflate_accepted", "deflate", "{:,.0f}"),
]
IDLE_METRICS = [
    ("kib_per_conn", "KiB/conn", "{:.2f}"),
    ("kib_per_conn_2nd_half", "2nd half", "{:.2f}"),
    ("open_s", "open s", "{:.2f}"),
    ("conns", "conns", "{:,.0f}"),
    ("connect_errors", "errors", "{:.0f}"),
    ("echo_answered", "answered", "{:,.0f}"),
    ("deflate_accepted", "deflate", "{:,.0f}"),
]
HTTP_METRICS = [
    ("reqs_per_s", "req/s", "{:,.0f}"),
    ("server_cpu_us_per_req", "srv CPU us/req", "{:.2f}"),
    ("p50_us", "p50 us", "{:,.0f}"),
    ("p99_us", "p99 us", "{:,.0f}"),
    ("client_cpu_us_per_req", "client us/req", "{:.2f}"),
    ("server_cores_busy", "srv cores", "{:.2f}"),
    ("connect_errors", "conn err", "{:.0f}"),
    ("bad_responses", "bad", "{:.0f}"),
    ("dropped", "dropped", "{:.0f}"),
]
STORM_METRICS = [
    ("handshakes_per_s", "hs/s", "{:,.0f}"),
    ("server_cpu_us_per_handshake", "srv CPU us/hs", "{:.1f}"),
    ("all_served_s", "all served s", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:,.0f}"),
    ("p99_ms", "p99 ms", "{:,.0f}"),
    ("max_ms", "max ms", "{:,.0f}"),
    ("served", "served", "{:,.0f}"),
    ("connect_errors", "conn err", "{:.0f}"),
    ("timeouts", "timeouts", "{:.0f}"),
    ("lost", "lost", "{:.0f}"),
    ("slow_1s", ">1s", "{:.0f}"),
    ("listen_overflows", "overflows", "{:.0f}"),
    ("syn_retrans", "SYN rtx", "{:.0f}"),
    ("client_cpu_us_per_handshake", "client us/hs", "{:.1f}"),
    ("server_cores_busy", "srv cores", "{:.2f}"),
]
LARGE_METRICS = [
    ("recv_s", "seconds", "{:.3f}"),
    ("server_cpu_ms_per_msg", "srv CPU ms/msg", "{:.1f}"),
    ("recv_s_min", "min s", "{:.3f}"),
    ("recv_s_max", "max s", "{:.3f}"),
]
TABLE_METRICS = {
    "echo": ECHO_METRICS,
    "idle": IDLE_METRICS,
    "http": HTTP_METRICS,
    "storm": STORM_METRICS,
    "large": LARGE_METRICS,
}
RATIO_KEYS = {
    "msgs_per_s",
    "server_cpu_us_per_msg",
    "reqs_per_s",
    "server_cpu_us_per_req",
    "p50_us",
    "p99_us",
    "kib_per_conn",
    "kib_per_conn_2nd_half",
    "handshakes_per_s",
    "server_cpu_us_per_handshake",
    "recv_s",
    "server_cpu_ms_per_msg",
}


def baseline_of(kind: str) -> str:
    return BASELINES.get(kind, BASELINE)


def ratio_baselines(kind: str) -> list[str]:
    """Every server a kind's figures are divided by, the main baseline first."""
    return [baseline_of(kind), *EXTRA_BASELINES.get(kind, [])]


def _median(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def summarise(name: str, kind: str, rounds: dict[str, list[dict]]) -> dict[str, Any]:
    """Median over rounds of every numeric figure, plus the median per-round ratio to the
    baseline server of the scenario's kind (``websockets``; ``uvicorn`` for HTTP) and to any
    EXTRA_BASELINES of the kind (``picows`` for storms), where they took part."""
    summary: dict[str, Any] = {}
    for server, runs in rounds.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
        s: dict[str, Any] = {k: _median([r[k] for r in runs]) for k in keys}
        for baseline in ratio_baselines(kind):
            base = rounds.get(baseline)
            if base is None or kind not in TABLE_METRICS:
                continue
            for k in keys:
                if k not in RATIO_KEYS:
                    continue
                ratios = [
                    r[k] / b[k]
                    for r, b in zip(runs, base, strict=False)
                    if b.get(k) and r[k] == r[k]
                ]
                s[f"{k}_vs_{baseline}"] = _median(ratios)
        summary[server] = s
    return summary


def print_table(name: str, kind: str, summary: dict[str, Any]) -> None:
    if kind in TABLE_METRICS:
        metrics = TABLE_METRICS[kind]
        baselines = ratio_baselines(kind)
        headers = ["server"]
        for key, label, _ in metrics:
            headers.append(label)
            if key in RATIO_KEYS:
                headers += [RATIO_LABELS.get(b, f"x {b}") for b in baselines]
        rows = []
        for server, s in summary.items():
            row = [server]
            for key, _, fmt in metrics:
                row.append(fmt.format(s.get(key, float("nan"))))
                if key in RATIO_KEYS:
                    for b in baselines:
                        ratio = s.get(f"{key}_vs_{b}")
                        row.append("-" if ratio is None else f"{ratio:.2f}")
            rows.append(row)
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
        print(f"\n## {name}")
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    else:
        print(f"\n## {name}")
        for server, s in summary.items():
            for k, v in s.items():
                shown = f"{v:.4g}" if isinstance(v, float) else v
                print(f"  {server:>10}  {k:<28} {shown}")


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in (
        "swoolish",
        "uvloop",
        "websockets",
        "aiohttp",
        "picows",
        "uvicorn",
        "httptools",
        "psutil",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def raise_nofile(needed: int, wanted: int = 0) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE (inherited by the servers) to ``wanted``, or as far as the
    hard limit allows; warn when that is below ``needed``."""
    wanted = max(needed, wanted)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        print(f"warning: RLIMIT_NOFILE is {soft} (< {needed} wanted)", file=sys.stderr)
    return {"soft": soft, "hard": hard}


# -- driver -----------------------------------------------------------------------------------


def _rotated(items: list[str], r: int) -> list[str]:
    k = r % len(items)
    return items[k:] + items[:k]


async def amain(args: argparse.Namespace, cfg: dict, logdir: Path) -> dict[str, Any]:
    selected = args.only or [s for s in SCENARIOS if s not in ON_REQUEST]
    raw: dict[str, dict[str, list[dict]]] = {name: {} for name in selected}

    # Long-lived echo servers, started once and shared by the echo scenarios.
    echo_names: list[str] = []
    for name in selected:
        kind, _p, participants = SCENARIOS[name]
        if kind == "echo":
            echo_names += [s for s in participants if s not in echo_names]
    servers = {name: Server(name, SERVERS[name], logdir).start() for name in echo_names}
    for s in servers.values():
        await s.wait_ready()
    for s in servers.values():  # warm-up: imports, first connections, JIT-free but cache-warm
        await run_echo(HOST, s.port, conns=20, size=64, warmup=0.2, duration=cfg["warmup"])

    # Long-lived plain-HTTP servers, likewise shared by the HTTP scenarios.
    http_names: list[str] = []
    for name in selected:
        kind, _p, participants = SCENARIOS[name]
        if kind == "http":
            http_names += [s for s in participants if s not in http_names]
    http_servers = {
        name: Server(f"http-{name}", HTTP_SERVERS[name], logdir).start() for name in http_names
    }
    for s in http_servers.values():
        await s.wait_ready()
    for s in http_servers.values():
        for new_connection in (False, True):
            await run_http(
                HOST,
                s.port,
                conns=20,
                new_connection=new_connection,
                warmup=0.2,
                duration=cfg["warmup"] / 2,
            )

    # Servers answering one large message with its length, likewise started once.
    large_servers = await start_large_servers(selected, logdir)
    wires: dict[int, bytes] = {}

    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for name in selected:
            kind, params, participants = SCENARIOS[name]
            if kind == "echo":
                for sname in _rotated(participants, r):
                    res = await measure_echo(
                        servers[sname],
                        params["size"],
                        params["conns"],
                        cfg,
                        params.get("deflate", False),
                    )
                    raw[name].setdefault(sname, []).append(res)
                    _progress(name, sname, f"{res['server_cpu_us_per_msg']:.2f} us/msg")
            elif kind == "http":
                for sname in _rotated(participants, r):
                    res = await measure_http(
                        http_servers[sname], params["conns"], params["new_connection"], cfg
                    )
                    raw[name].setdefault(sname, []).append(res)
                    _progress(name, sname, f"{res['server_cpu_us_per_req']:.2f} us/req")
            elif kind == "idle":
                participants = cfg.get("idle_servers", {}).get(name, participants)
                for sname in _rotated(participants, r):
                    res = await measure_idle(
                        sname, params["conns"], cfg, logdir, params.get("deflate", False)
                    )
                    raw[name].setdefault(sname, []).append(res)
                    _progress(name, sname, f"{res['kib_per_conn']:.2f} KiB/conn")
            elif kind == "timers":
                res = await measure_timers(cfg)
                raw[name].setdefault("swoolish", []).append(res)
                _progress(name, "swoolish", f"after 100k {res['after_100k_s']:.3f}s")
            elif kind == "reload" and (r == 0 or not args.quick):
                res = await measure_reload(params, cfg, logdir)
                raw[name].setdefault("swoolish", []).append(res)
                _progress(name, "swoolish", f"reload {res['reload_s']:.3f}s")
            elif kind == "storm":
                for sname in _rotated(participants, r):
                    res = await measure_storm(sname, params, cfg, logdir)
                    raw[name].setdefault(sname, []).append(res)
                    _progress(
                        name,
                        sname,
                        f"{res['served']}/{res['conns']} served in {res['seconds']:.2f}s, "
                        f"{res['server_cpu_us_per_handshake']:.1f} us/hs",
                    )
            elif kind == "large":
                size = params["mib"] * 2**20
                if size not in wires:
                    wires[size] = binary_frame(os.urandom(size))
                for sname in _rotated(participants, r):
                    res = await asyncio.get_running_loop().run_in_executor(
                        None, large_runs, large_servers[sname], wires[size], size, params["runs"]
                    )
                    raw[name].setdefault(sname, []).append(res)
                    _progress(name, sname, f"{res['recv_s']:.3f}s")

    for s in [*servers.values(), *http_servers.values(), *large_servers.values()]:
        s.stop()

    results: dict[str, Any] = {}
    for name in selected:
        kind, params, participants = SCENARIOS[name]
        if kind == "hook":
            results[name] = {"kind": kind, "params": params}
            # A hook runs its own event loop: give it a thread.
            results[name]["hook"] = await asyncio.get_running_loop().run_in_executor(
                None, HOOKS[name], params
            )
            continue
        summary = summarise(name, kind, raw[name])
        results[name] = {
            "kind": kind,
            "params": params,
            "baseline": baseline_of(kind),
            "summary": summary,
            "rounds": raw[name],
        }
    return results


async def start_large_servers(selected: list[str], logdir: Path) -> dict[str, Server]:
    """The servers of the selected ``large`` scenarios (one size per run: the first one's),
    started, and warmed up with one message each so that no measured run pays for growing
    the process's heap the first time."""
    names: list[str] = []
    size = 0
    for name in selected:
        kind, params, participants = SCENARIOS[name]
        if kind == "large":
            size = size or params["mib"] * 2**20
            names += [s for s in participants if s not in names]
    servers = {n: Server(f"large-{n}", large_cmd(n, size, logdir), logdir).start() for n in names}
    if servers:
        wire = binary_frame(os.urandom(size))
        loop = asyncio.get_running_loop()
        for s in servers.values():
            await s.wait_ready()
            await loop.run_in_executor(None, large_runs, s, wire, size, 1)
    return servers


def _progress(scenario: str, server: str, text: str) -> None:
    print(f"  {scenario:<8} {server:<12} {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round, short durations (smoke check)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated scenarios: {', '.join(SCENARIOS)} "
        f"({', '.join(sorted(ON_REQUEST))} only when named)",
    )
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    args = p.parse_args(argv)
    if args.only:
        unknown = [s for s in args.only if s not in SCENARIOS]
        if unknown:
            p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.quick:
        cfg = {"warmup": 0.3, "duration": 1.0, "idle_settle": 0.3, "tick_seconds": 1.0}
        cfg |= {"reload_before": 0.8, "reload_after": 1.5, "reload_timeout": 20.0}
        # keep the smoke check short: 10k idle connections only for the baseline and swoolish
        cfg["idle_servers"] = {"idle10k": [BASELINE, "swoolish"]}
    else:
        cfg = {"warmup": 1.0, "duration": 5.0, "idle_settle": 1.0, "tick_seconds": 2.0}
        cfg |= {"reload_before": 2.0, "reload_after": 4.0, "reload_timeout": 30.0}
    # a storm's connections each get up to storm_timeout s (they all start together)
    cfg |= {"storm_timeout": 30.0, "storm_settle": 0.5}

    def most_conns(kind: str) -> int:
        chosen = args.only or list(SCENARIOS)
        return max((SCENARIOS[s][1]["conns"] for s in chosen if SCENARIOS[s][0] == kind), default=0)

    # A storm's server may still hold the old connections when the new ones arrive: 2 x N is
    # wanted; the client closes its old ones first, so N is needed.
    max_idle, max_storm = most_conns("idle"), most_conns("storm")
    nofile = raise_nofile(max(max_idle, max_storm) + 1024, 2 * max_storm + 1024)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.time()
    results: dict[str, Any] | None = None
    logdir = Path(tempfile.mkdtemp(prefix="swoolish-bench-"))
    try:
        results = uvloop.run(amain(args, cfg, logdir))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        stop_all()
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": time.time() - started,
        "mode": "quick" if args.quick else "full",
        "rounds": args.rounds,
        "config": cfg,
        "rlimit_nofile": nofile,
        "machine": machine_info(),
        "baseline": BASELINE,  # of the WebSocket scenarios; each scenario names its own
        "scenarios": results,
        "server_logs": str(logdir),
    }
    m = report["machine"]
    print(
        f"\n# swoolish benchmark ({report['mode']}, {args.rounds} round(s), "
        f"{report['wall_s']:.0f}s) on {m['nproc']} x {m['cpu_model']}, Python {m['python']}"
    )
    for name, res in results.items():
        if res["kind"] == "hook":
            figures = "  ".join(f"{k}={v}" for k, v in res["hook"].items())
            print(f"\n## {name}\n  swoolish  {figures}")
        else:
            print_table(name, res["kind"], res["summary"])
    if not args.no_save:
        out_dir = HERE / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nJSON: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
