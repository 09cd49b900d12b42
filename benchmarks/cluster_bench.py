"""Cluster mode side by side: python-socketio on Redis against swoolish on Redis.

Both systems run as two server processes (nodes A and B) sharing one ``redis-server`` on
loopback; the benchmark itself is the only client process (uvloop, hand-made WebSocket
sessions). Rounds are interleaved (sio, swoolish, sio, ...) so that drift of the machine hits
both alike, and every figure is the median over the rounds that succeeded::

    python benchmarks/cluster_bench.py [--clients N] [--rounds N] [--only sio,swoolish]

Per round and system: N sessions (even ones on A, odd ones on B), then

* broadcast: session 0 asks A to broadcast; time until all N (and the A half, the B half)
  received it, median of ``--broadcasts`` (after one unmeasured warm-up broadcast);
* server CPU: user+sys of both nodes (with their children) over those broadcasts, per delivery;
* burst: 10 broadcasts back to back, deliveries/s, and every session checks the send order;
* targeted: 300 pushes one at a time from A to sessions on B, then 300 to sessions on A.

Every message carries ``time.monotonic_ns()`` of its send (CLOCK_MONOTONIC is one clock for
every process of the machine), receipt times are taken as the client reads them, so the
client's own speed is part of every figure, alike for both systems (the JSON also gives the
client's and Redis's CPU per delivery). A markdown table goes to stdout and the details to
``benchmarks/results/cluster-<timestamp>.json``. A round that fails (swoolish before it has a
``redis_url`` setting, a node that dies, a deadline missed) is reported with its error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import redis
import uvloop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loadclient import build_frame, handshake_request, percentile  # noqa: E402
from procs import stop_tree, tree_cpu_seconds  # noqa: E402

HOST = "127.0.0.1"
REDIS_SERVER = "/usr/bin/redis-server"
SYSTEMS = ("sio", "swoolish")
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
OPEN_CONCURRENCY = 100
#: An event in either system's framing (sio ``42["b",{"t":..,"k":..}]``, swoolish
#: ``{"ev": "b", "t": .., "k": ..}``): one regex costs a third of ``json.loads``, and the
#: client's cost per receipt is part of every figure.
EVENT = re.compile(rb'"([bp])",\s*\{?"t":\s*(\d+),\s*"k":\s*(\d+)')
BURST = 10
SAMPLES = 300  # targeted pushes of each kind


class Wave:
    """The receipts of one broadcast: how many per node, and when the last one came."""

    __slots__ = ("done", "got", "last", "total", "want")

    def __init__(self, want: int) -> None:
        self.want, self.total = want, 0
        self.got = {"A": 0, "B": 0}
        self.last = {"A": 0, "B": 0}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def hit(self, node: str, now: int) -> None:
        self.got[node] += 1
        self.last[node] = now
        self.total += 1
        if self.total == self.want and not self.done.done():
            self.done.set_result(None)


class Collector:
    """What every session reports to: broadcast waves, the one pending push, the anomalies.

    Sessions call :meth:`event` straight from ``data_received`` so that a receipt costs a
    dict lookup and a few additions, not a task switch.
    """

    def __init__(self) -> None:
        self.waves: dict[int, Wave] = {}
        self.push: tuple[Conn, int, asyncio.Future[int]] | None = None
        self.violations = {"A": 0, "B": 0}  # a broadcast older than one already received
        self.duplicates = 0
        self.strays = 0  # pushes that reached the wrong session or came too late
        self.lost = 0  # sessions closed by the server during the measurement

    def event(self, conn: Conn, name: bytes, t: int, k: int, now: int) -> None:
        if name == b"b":
            if k in conn.seen:
                self.duplicates += 1
                return
            conn.seen.add(k)
            if k < conn.last_b:
                self.violations[conn.node] += 1
            conn.last_b = max(k, conn.last_b)
            wave = self.waves.get(k)
            if wave is not None:
                wave.hit(conn.node, now)
        elif name == b"p":
            if self.push is not None and self.push[:2] == (conn, k) and not self.push[2].done():
                self.push[2].set_result(now - t)
            else:
                self.strays += 1


class Conn(asyncio.Protocol):
    """One client session: handshake, frame parser, and the thin protocol on top of it.

    ``sio``: Engine.IO v4 / Socket.IO v5 text packets (``0{..}`` open, ``40`` connect,
    ``2``/``3`` ping/pong, ``42[name, data]`` events). Otherwise JSON text: the first
    message is ``{"fd": id}``, later ones ``{"ev": name, "t": ns, "k": seq}``.
    """

    def __init__(self, idx: int, node: str, sio: bool, port: int, col: Collector) -> None:
        self.idx, self.node, self.sio, self.col = idx, node, sio, col
        self.request = handshake_request(HOST, port, SIO_PATH if sio else "/")
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.sid: Any = None
        self.open = self.closing = False
        self.buf = self.frag = b""
        self.last_b = -1  # the newest broadcast received, for the order check
        self.seen: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"session {self.idx} closed while opening"))
        elif not self.closing:
            self.col.lost += 1

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.open and not self.buf and 2 < len(data) == data[1] + 2 and data[0] == 0x81:
            self._message(data[2:], now)  # the common case: one whole short text frame
            return
        if self.buf:
            data, self.buf = self.buf + data, b""
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                status = data.split(b"\r\n", 1)[0]
                self._fail(f"handshake refused: {status!r}")
                return
            self.open = True
            data = data[end + 4 :]
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, ln = data[pos], data[pos + 1] & 0x7F
            hl = 2 + {126: 2, 127: 8}.get(ln, 0)
            if n - pos < hl:
                break
            if hl > 2:
                ln = int.from_bytes(data[pos + 2 : pos + hl], "big")
            end = pos + hl + ln
            if end > n:
                break
            self._frame(b0, data[pos + hl : end], now)
            pos = end
        if pos < n:
            self.buf = data[pos:]

    def _frame(self, b0: int, payload: bytes, now: int) -> None:
        op = b0 & 0x0F
        if op <= 2:  # text, binary or continuation
            if not b0 & 0x80:
                self.frag += payload
                return
            if self.frag:
                payload, self.frag = self.frag + payload, b""
            self._message(payload, now)
        elif op == 0x9 and self.transport is not None:
            self.transport.write(build_frame(payload, opcode=0xA))
        elif op == 0x8 and self.transport is not None:
            self.transport.close()

    def _message(self, payload: bytes, now: int) -> None:
        m = EVENT.search(payload)
        if m is not None:
            self.col.event(self, m[1], int(m[2]), int(m[3]), now)
        elif self.sio:
            if payload == b"2":
                self.send(b"3")
            elif payload.startswith(b"40"):
                self.sid = json.loads(payload[2:])["sid"]
                if not self.ready.done():
                    self.ready.set_result(None)
            elif payload.startswith(b"0"):
                self.send(b"40")
            elif payload.startswith(b"44"):
                self._fail(f"Socket.IO connect error: {payload[:200]!r}")
        elif not self.ready.done():
            self.sid = json.loads(payload)["fd"]
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(build_frame(payload))

    def ask(self, op: str, t: int, k: int, to: Any = None) -> None:
        """Send a request (``bcast`` or ``push``) in this system's framing."""
        body: dict[str, Any] = {"t": t, "k": k} if to is None else {"to": to, "t": t, "k": k}
        if self.sio:
            self.send(b"42" + json.dumps([op, body]).encode())
        else:
            self.send(json.dumps({"op": op, **body}).encode())

    def abort(self) -> None:
        self.closing = True
        if not self.ready.done():
            self.ready.cancel()
        if self.transport is not None:
            self.transport.abort()


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (every socket held until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu_seconds(procs: list[Any]) -> float:
    """user+sys of the processes and their live children (swoolish forks its workers)."""
    return tree_cpu_seconds([proc.pid for proc in procs])


def uvicorn_ws() -> str:
    """The sans-I/O websockets protocol where uvicorn has it, else the classic one."""
    name = "uvicorn.protocols.websockets.websockets_sansio_impl"
    with contextlib.suppress(ImportError):
        if importlib.util.find_spec(name) is not None:
            return "websockets-sansio"
    return "websockets"


def swoolish_has_cluster() -> bool:
    """Cluster mode exists once ``redis_url`` is a declared setting."""
    text = (ROOT / "swoolish" / "core" / "settings.py").read_text()
    return re.search(r"""["']redis_url["']""", text) is not None


def node_command(
    system: str, port: int, redis_url: str, tag: str, log_level: str = "warning"
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one node of ``system``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if system == "sio":
        env.update(SIO_REDIS_URL=redis_url, SIO_CHANNEL=f"bench-{tag}")
        cmd = [
            *(sys.executable, "-m", "uvicorn", "benchmarks.servers.cluster_sio_app:app"),
            *("--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools"),
            *("--ws", uvicorn_ws(), "--log-level", log_level, "--no-access-log"),
            *("--backlog", "4096", "--timeout-graceful-shutdown", "2"),
        ]
    else:
        env.update(
            SWOOLISH_REDIS_URL=redis_url, SWOOLISH_CLUSTER_NAME=f"bench-{tag}",
            BENCH_REDIS_URL=redis_url, BENCH_PORT=str(port),
        )  # fmt: skip
        cmd = [
            *(sys.executable, "-m", "swoolish", "serve"),
            "benchmarks/servers/cluster_swoolish_app.py:server",
            *("--port", str(port), "--workers", "1", "--log-level", log_level),
        ]
    return cmd, env


def tail(path: Path, n: int = 600) -> str:
    """The end of a node's log, to say why it failed."""
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:].strip()
    return ""


async def wait_node(system: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the node accepts a whole session (not only TCP): then it is really serving."""
    deadline = time.monotonic() + 30
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{system} node on {port} exited {proc.returncode}: {tail(log)}")
        probe = Conn(-1, "A", system == "sio", port, Collector())
        try:
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().create_connection(lambda p=probe: p, HOST, port)
                await probe.ready
            return
        except (OSError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.1)
        finally:
            probe.abort()
    raise RuntimeError(f"{system} node on {port} not serving after 30 s ({last!r}): {tail(log)}")


async def open_sessions(
    system: str, ports: list[int], n: int, col: Collector, conn_cls: type[Conn] = Conn
) -> list[Conn]:
    """N sessions, even ones on A and odd ones on B, at most 100 openings in flight."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    conns = [conn_cls(i, "AB"[i % 2], system == "sio", ports[i % 2], col) for i in range(n)]

    async def one(c: Conn, port: int) -> None:
        async with sem, asyncio.timeout(30):
            await loop.create_connection(lambda: c, HOST, port)
            await c.ready

    results = await asyncio.gather(
        *(one(c, ports[c.idx % 2]) for c in conns), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for c in conns:
            c.abort()
        raise RuntimeError(f"{len(failed)} of {n} sessions did not open; first: {failed[0]!r}")
    return conns


async def send_waves(
    conns: list[Conn], col: Collector, k: int, count: int, timeout: float
) -> tuple[list[Wave], int]:
    """Session 0 asks A for ``count`` broadcasts (``k``, ``k+1``, ...) written back to back;
    returns their waves, once every session got every one, and the first send time."""
    waves = [Wave(len(conns)) for _ in range(count)]
    col.waves.update(zip(range(k, k + count), waves, strict=True))
    t0 = time.monotonic_ns()
    for i in range(count):
        conns[0].ask("bcast", time.monotonic_ns(), k + i)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(w.done for w in waves))
    except TimeoutError:
        got = {node: sum(w.got[node] for w in waves) for node in "AB"}
        raise RuntimeError(
            f"broadcast {k}..{k + count - 1}: {got} of {count * len(conns)} received in "
            f"{timeout} s (sessions lost {col.lost})"
        ) from None
    return waves, t0


async def targeted(conns: list[Conn], targets: list[Conn], col: Collector, k0: int) -> list[float]:
    """Push to one session at a time from session 0 (on A); sorted latencies in ms."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    for i in range(SAMPLES):
        target = targets[i % len(targets)]
        col.push = (target, k0 + i, loop.create_future())
        conns[0].ask("push", time.monotonic_ns(), k0 + i, to=target.sid)
        try:
            async with asyncio.timeout(5):
                lat.append(await col.push[2] / 1e6)
        except TimeoutError:
            raise RuntimeError(
                f"push {i} to session {target.idx} (node {target.node}) not received in 5 s"
            ) from None
    return sorted(lat)


async def measure(
    system: str, args: argparse.Namespace, redis_url: str, redis_proc: psutil.Process, tmp: Path
) -> dict[str, Any]:
    """One system, one round: two fresh nodes, N sessions, every figure; nodes stopped after."""
    if system == "swoolish" and not swoolish_has_cluster():
        raise RuntimeError("swoolish has no redis_url setting yet (cluster mode not available)")
    n, timeout = args.clients, args.wave_timeout
    procs: list[subprocess.Popen[bytes]] = []
    conns: list[Conn] = []
    logs = [tmp / "A.log", tmp / "B.log"]
    try:
        ports = free_ports(2)
        for port, log in zip(ports, logs, strict=True):
            cmd, env = node_command(system, port, redis_url, tmp.name)
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out))
        for port, proc, log in zip(ports, procs, logs, strict=True):
            await wait_node(system, port, proc, log)
        await asyncio.sleep(0.5)  # both nodes subscribed and known to each other

        col = Collector()
        t_open = time.monotonic()
        conns = await open_sessions(system, ports, n, col)
        open_s = time.monotonic() - t_open
        gc.collect()
        gc.freeze()  # the client's N sessions out of every later collection: less client noise
        await asyncio.sleep(1.0)  # let the accept storm settle
        await send_waves(conns, col, 0, 1, timeout)  # warm-up, not measured
        await asyncio.sleep(0.2)

        ms: dict[str, list[float]] = {"all": [], "A": [], "B": []}
        cpu = {"server": 0.0, "redis": 0.0, "client": 0.0}
        for k in range(1, args.broadcasts + 1):
            before = cpu_seconds(procs), cpu_seconds([redis_proc]), time.process_time()
            (wave,), t0 = await send_waves(conns, col, k, 1, timeout)
            await asyncio.sleep(0.05)  # work after the last receipt (Redis echo) counts too
            after = cpu_seconds(procs), cpu_seconds([redis_proc]), time.process_time()
            for key, b, a in zip(cpu, before, after, strict=True):
                cpu[key] += a - b
            for node in "AB":
                ms[node].append((wave.last[node] - t0) / 1e6)
            ms["all"].append(max(ms["A"][-1], ms["B"][-1]))
            await asyncio.sleep(0.2)
        deliveries = args.broadcasts * n

        k = args.broadcasts + 1
        waves, t0 = await send_waves(conns, col, k, BURST, 2 * timeout)
        burst_s = (max(max(w.last.values()) for w in waves) - t0) / 1e9
        await asyncio.sleep(0.3)

        cross = await targeted(conns, conns[1::2], col, k + BURST)
        same = await targeted(conns, conns[2::2], col, k + BURST + SAMPLES)
        all_ms = statistics.median(ms["all"])
        return {
            "n": n,
            "open_s": round(open_s, 2),
            "broadcast_all_ms": ms["all"],
            "broadcast_local_ms": ms["A"],
            "broadcast_remote_ms": ms["B"],
            "all_ms": all_ms,
            "deliveries_per_s": n / (all_ms / 1e3),
            "local_ms": statistics.median(ms["A"]),
            "remote_ms": statistics.median(ms["B"]),
            "burst_deliveries_per_s": BURST * n / burst_s,
            "cpu_us_per_delivery": cpu["server"] / deliveries * 1e6,
            "redis_cpu_us_per_delivery": cpu["redis"] / deliveries * 1e6,
            "client_cpu_us_per_delivery": cpu["client"] / deliveries * 1e6,
            "order_violations": sum(col.violations.values()),
            "order_violations_on_a": col.violations["A"],
            "order_violations_on_b": col.violations["B"],
            "duplicates": col.duplicates,
            "stray_pushes": col.strays,
            "sessions_lost": col.lost,
            "cross_p50_ms": percentile(cross, 50),
            "cross_p99_ms": percentile(cross, 99),
            "same_p50_ms": percentile(same, 50),
            "same_p99_ms": percentile(same, 99),
        }
    except Exception as exc:
        notes = "; ".join(f"{log.stem}: {tail(log)}" for log in logs if tail(log))
        why = str(exc) if isinstance(exc, RuntimeError) else repr(exc)
        raise RuntimeError(why + (f" [node logs: {notes}]" if notes else "")) from exc
    finally:
        gc.unfreeze()
        for c in conns:
            c.abort()
        await asyncio.sleep(0.1)
        for proc in procs:
            stop_tree(proc)


def redis_argv(port: int) -> list[str]:
    """A throwaway redis-server on loopback without persistence (it starts empty)."""
    return [REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", HOST]


def start_redis() -> tuple[subprocess.Popen[bytes], redis.Redis]:
    """A throwaway redis-server answering PING; stopped by its pid by the caller."""
    port = free_ports(1)[0]
    proc = subprocess.Popen(redis_argv(port), stdout=subprocess.DEVNULL)
    client = redis.Redis(host=HOST, port=port)
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            if proc.poll() is None and client.ping():
                return proc, client
        time.sleep(0.05)
    stop_tree(proc)
    raise RuntimeError(f"redis-server did not answer on port {port}")


def raise_nofile(n: int) -> int:
    """Room for N client sockets here and N/2 per node (the nodes inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 2048
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def version(dist: str) -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(dist)
    return None


def summarize(rounds: list[dict[str, Any]], systems: list[str]) -> dict[str, dict[str, Any]]:
    """Median of every figure over the rounds each system completed."""
    out: dict[str, dict[str, Any]] = {}
    for system in systems:
        ok = [r["result"] for r in rounds if r["system"] == system and "result" in r]
        errors = [r["error"] for r in rounds if r["system"] == system and "error" in r]
        med: dict[str, Any] = {"rounds_ok": len(ok), "rounds": len(ok) + len(errors)}
        if ok:
            for key, value in ok[0].items():
                if isinstance(value, int | float):
                    med[key] = statistics.median(r[key] for r in ok)
        med["errors"] = errors
        out[system] = med
    return out


COLUMNS = (  # table heading, then the summary keys and formats shown in that cell
    ("N", ("n", "{:.0f}")),
    ("all received ms", ("all_ms", "{:.1f}")),
    ("deliveries/s", ("deliveries_per_s", "{:,.0f}")),
    ("local half ms", ("local_ms", "{:.1f}")),
    ("remote half ms", ("remote_ms", "{:.1f}")),
    ("burst deliveries/s", ("burst_deliveries_per_s", "{:,.0f}")),
    ("CPU µs/delivery", ("cpu_us_per_delivery", "{:.1f}")),
    ("order violations", ("order_violations", "{:.0f}")),
    ("cross-node p50/p99 ms", ("cross_p50_ms", "{:.2f}"), ("cross_p99_ms", "{:.2f}")),
    ("same-node p50/p99 ms", ("same_p50_ms", "{:.2f}"), ("same_p99_ms", "{:.2f}")),
)


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the medians, then one line per failed round."""
    heads = ["system", "rounds ok", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for system, s in summary.items():
        cells = [system, f"{s['rounds_ok']}/{s['rounds']}"]
        for _, *keys in COLUMNS:
            cells.append(" / ".join(f.format(s[k]) for k, f in keys) if s["rounds_ok"] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for system, s in summary.items():
        lines.extend(f"\n{system} failed a round: {err}" for err in s["errors"])
    return "\n".join(lines)


async def run(args: argparse.Namespace, systems: list[str]) -> dict[str, Any]:
    redis_proc, rc = start_redis()
    redis_url = f"redis://{HOST}:{rc.connection_pool.connection_kwargs['port']}/0"
    rounds: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        rps = psutil.Process(redis_proc.pid)
        for rnd in range(args.rounds):
            for system in systems:
                rc.flushall()  # nothing of the previous system's run is left
                entry: dict[str, Any] = {"system": system, "round": rnd}
                print(f"round {rnd + 1}/{args.rounds}: {system} ...", file=sys.stderr, flush=True)
                try:
                    async with asyncio.timeout(args.round_timeout):
                        logs = tmp / f"{system}-r{rnd}"
                        logs.mkdir()
                        entry["result"] = await measure(system, args, redis_url, rps, logs)
                except Exception as exc:  # a failed round is a result, not the end of the run
                    entry["error"] = str(exc) if isinstance(exc, RuntimeError) else repr(exc)
                    if isinstance(exc, TimeoutError):
                        entry["error"] = f"no result within --round-timeout {args.round_timeout} s"
                    print(f"  failed: {entry['error']}", file=sys.stderr, flush=True)
                rounds.append(entry)
                await asyncio.sleep(1.0)
    finally:
        rc.close()
        stop_tree(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": rounds, "summary": summarize(rounds, systems)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=5000, help="sessions (half on each node)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per system")
    p.add_argument("--only", default="sio,swoolish", help="comma-separated: sio,swoolish")
    p.add_argument("--broadcasts", type=int, default=5, help="measured broadcasts per round")
    p.add_argument("--wave-timeout", type=float, default=30.0, help="s for one broadcast")
    p.add_argument("--round-timeout", type=float, default=600.0, help="s for one system round")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        p.error(f"--only takes {','.join(SYSTEMS)}")
    if args.clients < 4:
        p.error("--clients must be at least 4")
    nofile = raise_nofile(args.clients)
    machine = {
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nofile": nofile,
        "redis_server": subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "versions": {d: version(d) for d in ("python-socketio", "python-engineio", "uvicorn",
                                             "websockets", "redis", "swoolish")},
        "uvicorn_ws": uvicorn_ws(),
    }  # fmt: skip
    started = time.strftime("%Y%m%d-%H%M%S")
    out = uvloop.run(run(args, systems))
    report = {"started": started, "args": vars(args), "machine": machine, **out}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"cluster-{started}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(out["summary"]))
    print(
        f"\ncpus {machine['cpu_count']}, load at start {machine['loadavg_at_start']}, "
        f"uvicorn --ws {machine['uvicorn_ws']}; details: {path.relative_to(ROOT)}"
    )
    return 0 if all(s["rounds_ok"] for s in out["summary"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
