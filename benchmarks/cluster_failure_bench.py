"""Cluster mode with Redis down for 4 s, then restarted: swoolish against python-socketio.

Speed is not all a cluster owes: while the bus is gone, does local traffic flow, what is the
application told, how soon is cross-node traffic back, do the logs stay readable? Usage::

    python benchmarks/cluster_failure_bench.py [--rounds N] [--only sio,swoolish]

Per round, interleaved, each system runs 2 nodes (swoolish: 1 worker each) on the one
redis-server started here, 10 sessions per node (``cluster_bench.py``'s helpers). Every 200 ms
session 0 (on A) asks A for a broadcast and a push to session 1 (on B), each with a sequence
number and ``time.monotonic_ns()``, and hears the outcome (swoolish: ``broadcast``'s count,
``push``'s bool; sio: whether ``emit`` raised, by ack); a message arriving within 1 s counts as
delivered. Phases: 3 s up; Redis SIGKILLed, 4 s; Redis restarted empty on its port, until the
first cross-node delivery (at most 20 s), then 2 s. Reported: deliveries while down (A's 10
sessions; cross-node: B's share of the broadcasts, and the pushes) and what the sender saw; from
Redis answering PING again to the send of the first tick delivered across nodes and to that
delivery; sessions lost; log lines matching the system's warning patterns from the kill on.
Markdown table on stdout, details in ``benchmarks/results/cluster-failure-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster_bench as cb  # noqa: E402
from procs import stop_tree  # noqa: E402

PER_NODE = 10
TICK_S, WINDOW_NS = 0.2, 1_000_000_000
UP_S, DOWN_S, RECOVERY_BOUND_S, AFTER_S = 3.0, 4.0, 20.0, 2.0
#: Lines about the bus: swoolish logs each change of a worker's link (and nodes declared down);
#: python-socketio logs from its Redis manager (and our app logs an ``emit`` that raised).
PATTERNS = {
    "swoolish": re.compile(r"cluster bus|cluster: node|Redis refused"),
    "sio": re.compile(r"Cannot (publish to|receive from) redis|emit raised|pubsub", re.I),
}


@dataclass
class Tick:
    """One tick: the receipt latencies (ns) per session, and what the sender was told."""

    k: int
    t: int
    phase: str
    got: dict[int, int] = field(default_factory=dict)  # session -> broadcast latency
    push: int | None = None
    ret: dict[str, tuple[Any, int]] = field(default_factory=dict)  # op -> (outcome, ns to it)


class Receipts(cb.Collector):
    """Receipts by tick; ``recovered`` resolves at the first in-time cross-node delivery of
    a tick sent after the restart."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target, self.phase = target, "up"
        self.ticks: dict[int, Tick] = {}
        self.recovered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def event(self, conn: cb.Conn, name: bytes, t: int, k: int, now: int) -> None:
        tick = self.ticks.get(k)
        if tick is None or (name == b"p" and conn.idx != self.target):
            self.strays += 1
            return
        if name == b"b":
            tick.got.setdefault(conn.idx, now - t)
        elif tick.push is None:
            tick.push = now - t
        cross = conn.node == "B" and now - t <= WINDOW_NS
        if cross and tick.phase == "after" and not self.recovered.done():
            self.recovered.set_result(None)

    def reply(self, op: str, k: int, value: Any, now: int) -> None:
        """What the server answered about request ``op`` of tick ``k``."""
        if (tick := self.ticks.get(k)) is not None:
            tick.ret[op] = value, now - tick.t


class AckConn(cb.Conn):
    """A session that can ask for the outcome of its request and hears the answer."""

    def _message(self, payload: bytes, now: int) -> None:
        col: Any = self.col
        if self.sio and (m := re.match(rb"43(\d+)(\[.*)", payload, re.S)):
            ack = int(m[1])
            col.reply("push" if ack % 2 else "bcast", ack // 2, json.loads(m[2])[0]["raised"], now)
        elif not self.sio and payload.startswith(b'{"ev": "r"'):
            msg = json.loads(payload)
            col.reply(msg["op"], msg["k"], msg["ret"], now)
        else:
            super()._message(payload, now)

    def ask_ack(self, op: str, t: int, k: int, to: Any = None) -> None:
        body: dict[str, Any] = {"t": t, "k": k} if to is None else {"to": to, "t": t, "k": k}
        if self.sio:  # Socket.IO ack id: 2k for the broadcast, 2k+1 for the push
            self.send(b"42%d" % (2 * k + (op == "push")) + json.dumps([op, body]).encode())
        else:
            self.send(json.dumps({"op": op, **body, "ack": True}).encode())


class RedisBox:
    """The run's one redis-server, killed and restarted on its port, always stopped by pid."""

    def __init__(self) -> None:
        self.proc, client = cb.start_redis()
        self.port: int = client.connection_pool.connection_kwargs["port"]
        self.url = f"redis://{cb.HOST}:{self.port}/0"
        client.close()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    async def restart(self) -> int:
        """Start it again; ``monotonic_ns`` of the first PING answered (at most 10 s)."""
        self.proc = subprocess.Popen(cb.redis_argv(self.port), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await self.command(b"PING"):
                return time.monotonic_ns()
            await asyncio.sleep(0.005)
        raise RuntimeError(f"restarted redis-server not answering on {self.port} after 10 s")

    async def command(self, command: bytes) -> bool:
        """One raw command answered with ``+…`` (no client library retries to blur the time)."""
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection(cb.HOST, self.port)
                writer.write(command + b"\r\n")
                ok = (await reader.readline()).startswith(b"+")
                writer.close()
                return ok
        return False


async def ticker(driver: AckConn, target: AckConn, col: Receipts) -> None:
    """Every 200 ms on a fixed schedule: one broadcast and one push to ``target``."""
    k, due = 0, time.monotonic()
    while True:
        k += 1
        col.ticks[k] = Tick(k, time.monotonic_ns(), col.phase)
        driver.ask_ack("bcast", col.ticks[k].t, k)
        driver.ask_ack("push", time.monotonic_ns(), k, to=target.sid)
        due += TICK_S
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def in_time(lat: int | None) -> bool:
    return lat is not None and lat <= WINDOW_NS


def phase_figures(system: str, ticks: list[Tick], a: set[int]) -> dict[str, Any]:
    """Delivered/expected per kind, and what the sender was told, over some ticks."""
    n, got = len(ticks), [(i in a, v) for x in ticks for i, v in x.got.items()]
    rets = {op: [x.ret[op][0] for x in ticks if op in x.ret] for op in ("bcast", "push")}
    acks = [ns / 1e6 for x in ticks for _, ns in x.ret.values()]
    seen: dict[str, Any] = {"unanswered": 2 * n - len(acks)}
    if system == "swoolish":
        seen.update(push_true=rets["push"].count(True), push_false=rets["push"].count(False),
                    bcast_counts=dict(Counter(map(str, rets["bcast"]))))  # fmt: skip
    else:
        raised = [r for op in rets for r in rets[op] if r is not None]
        seen.update(emit_raised=len(raised), emit_calls=2 * n, raised=raised[:3])
    return {
        "ticks": n,
        "local": [sum(in_time(v) for here, v in got if here), PER_NODE * n],
        "remote_bcast": [sum(in_time(v) for here, v in got if not here), PER_NODE * n],
        "push": [sum(in_time(x.push) for x in ticks), n],
        "late": sum(not in_time(v) for x in ticks for v in [*x.got.values(), x.push] if v),
        "sender": seen,
        "answer_ms_max": round(max(acks), 1) if acks else None,
    }


def recovery(ticks: list[Tick], t_ping: int, a: set[int]) -> dict[str, float | None]:
    """From the PING answered to the send of the first tick with an in-time cross-node
    delivery, and to the first such delivery: for pushes, B's broadcasts, and either."""
    out: dict[str, float | None] = {}
    for kind in ("any", "push", "bcast"):
        hits = [
            (x.t - t_ping, x.t + v - t_ping)
            for x in ticks
            for i, v in [*x.got.items(), (-1, x.push)]
            if in_time(v) and i not in a and kind in ("any", "push" if i < 0 else "bcast")
        ]
        out[f"{kind}_send_ms"] = round(min(hits)[0] / 1e6, 1) if hits else None
        out[f"{kind}_receipt_ms"] = round(min(h[1] for h in hits) / 1e6, 1) if hits else None
    return out


async def measure(system: str, rs: RedisBox, tmp: Path) -> dict[str, Any]:
    """One system, one round: two fresh nodes, the three phases, every figure."""
    procs: list[subprocess.Popen[bytes]] = []
    conns: list[cb.Conn] = []
    logs = [tmp / "A.log", tmp / "B.log"]
    task: asyncio.Task[None] | None = None
    try:
        for port, log in zip(ports := cb.free_ports(2), logs, strict=True):
            cmd, env = cb.node_command(system, port, rs.url, tmp.name, log_level="info")
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(cmd, cwd=cb.ROOT, env=env, stdout=out, stderr=out))
        for port, proc, log in zip(ports, procs, logs, strict=True):
            await cb.wait_node(system, port, proc, log)
        await asyncio.sleep(0.5)  # both nodes subscribed and known to each other
        col = Receipts(target=1)
        conns = await cb.open_sessions(system, ports, 2 * PER_NODE, col, AckConn)
        await asyncio.sleep(0.5)  # B's sessions are in A's replica
        task = asyncio.create_task(ticker(conns[0], conns[1], col))  # type: ignore[arg-type]
        await asyncio.sleep(UP_S + TICK_S / 2)  # between ticks: no message in flight at the kill
        offsets = [log.stat().st_size for log in logs]
        col.phase = "down"
        rs.kill()
        await asyncio.sleep(DOWN_S)
        col.phase = "after"
        t_ping = await rs.restart()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECOVERY_BOUND_S):
                await asyncio.shield(col.recovered)
        await asyncio.sleep(AFTER_S)
        task.cancel()
        await asyncio.sleep(WINDOW_NS / 1e9 + 0.2)  # the last ticks' window
        lines = [log.read_bytes()[off:].decode(errors="replace").splitlines()
                 for log, off in zip(logs, offsets, strict=True)]  # fmt: skip
        hits = [[ln for ln in node if PATTERNS[system].search(ln)] for node in lines]
        a = {c.idx for c in conns if c.node == "A"}
        ticks = list(col.ticks.values())
        phases = {p: [x for x in ticks if x.phase == p] for p in ("up", "down", "after")}
        return {
            **{p: phase_figures(system, xs, a) for p, xs in phases.items()},
            "recovery": recovery(phases["after"], t_ping, a),
            "sessions_lost": col.lost,
            "strays": col.strays,
            "outage_log_lines": [len(h) for h in hits],
            "outage_log_sample": [h[:4] for h in hits],
        }
    finally:
        if task is not None:
            task.cancel()
        for c in conns:
            c.abort()
        await asyncio.sleep(0.1)
        for proc in procs:
            stop_tree(proc)
        if rs.proc.poll() is not None:  # a round that failed while Redis was down
            await rs.restart()


def cell(r: dict[str, Any], system: str) -> list[str]:
    """One table row's figures for a round that completed."""
    d, rec, s = r["down"], r["recovery"], r["down"]["sender"]
    cross = [d["remote_bcast"][i] + d["push"][i] for i in (0, 1)]
    if system == "swoolish":
        counts = ", ".join(f"{v} (x{c})" for v, c in s["bcast_counts"].items())
        seen = f"push True {s['push_true']}/{d['ticks']}, broadcast returned {counts}"
    else:
        seen = f"emit raised {s['emit_raised']}/{s['emit_calls']}"
    up_ok, up_all = (sum(r["up"][k][j] for k in ("local", "remote_bcast", "push")) for j in (0, 1))
    return [
        f"{up_ok}/{up_all}", "{}/{}".format(*d["local"]), "{}/{}".format(*cross),
        f"{seen}; answered ≤ {d['answer_ms_max']} ms",
        f"{rec['any_send_ms']} / {rec['any_receipt_ms']}", str(r["sessions_lost"]),
        " + ".join(map(str, r["outage_log_lines"])),
    ]  # fmt: skip


HEADS = ("system", "round", "up: delivered", "down: local bcast", "down: cross-node",
         "down: sender saw", "PING → first tick sent / first receipt ms", "sessions lost",
         "outage log lines A + B")  # fmt: skip


def table(rounds: list[dict[str, Any]]) -> str:
    """One row per round (not medians): two rounds are too few to summarize, and an outlier
    is worth seeing."""
    lines = ["| " + " | ".join(HEADS) + " |", "|" + "---|" * len(HEADS)]
    for e in rounds:
        row = cell(e["result"], e["system"]) if "result" in e else ["failed"] * (len(HEADS) - 2)
        lines.append("| " + " | ".join([e["system"], str(e["round"] + 1), *row]) + " |")
    lines.extend(f"\n{e['system']} round {e['round'] + 1}: {e['error']}"
                 for e in rounds if "error" in e)  # fmt: skip
    return "\n".join(lines)


async def run(args: argparse.Namespace, systems: list[str]) -> list[dict[str, Any]]:
    """Every round on the one Redis; a failed round is recorded and the run goes on."""
    rs = RedisBox()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-failure-"))
    rounds: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for system in systems:
                await rs.command(b"FLUSHALL")  # nothing of the previous run is left
                entry: dict[str, Any] = {"system": system, "round": rnd}
                print(f"round {rnd + 1}/{args.rounds}: {system} ...", file=sys.stderr, flush=True)
                (logs := tmp / f"{system}-r{rnd}").mkdir()
                try:
                    async with asyncio.timeout(args.round_timeout):
                        entry["result"] = await measure(system, rs, logs)
                except Exception as exc:  # a failed round is a result, not the end of the run
                    why = str(exc) if isinstance(exc, RuntimeError) else repr(exc)
                    entry["error"] = why if str(exc) else f"no result in {args.round_timeout} s"
                    tails = [f"--- {f.stem}:\n{cb.tail(f, 2000)}" for f in sorted(logs.iterdir())]
                    print(f"  failed: {entry['error']}", *tails, sep="\n", file=sys.stderr)
                rounds.append(entry)
    finally:
        stop_tree(rs.proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per system")
    p.add_argument("--only", default="sio,swoolish", help="comma-separated: sio,swoolish")
    p.add_argument("--round-timeout", type=float, default=120.0, help="s for one system round")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    if not systems or any(s not in cb.SYSTEMS for s in systems):
        p.error(f"--only takes {','.join(cb.SYSTEMS)}")
    started = time.strftime("%Y%m%d-%H%M%S")
    rounds = uvloop.run(run(args, systems))
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    machine["versions"] = {d: cb.version(d) for d in ("python-socketio", "redis", "swoolish")}
    report = {"started": started, "args": vars(args), "machine": machine, "rounds": rounds}
    (results := HERE / "results").mkdir(exist_ok=True)
    path = results / f"cluster-failure-{started}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rounds))
    print(f"\ndetails: {path.relative_to(cb.ROOT)}")
    return 0 if all("result" in e for e in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
