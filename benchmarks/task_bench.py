"""Task round trips per second: swoolish task workers beside a ProcessPoolExecutor.

swoolish: a real ``swoolish serve`` with one event worker and 1 or 4 task workers; a
WebSocket message asks the event worker to run ``await server.taskwait(None)`` against a
no-op ``task`` handler, ``n`` times, either one at a time (``sequential``: the latency of
one round trip event worker → master → task worker → master → event worker) or 64 at a
time (``concurrent``: ``asyncio.gather`` of 64 taskwaits, repeated). The event worker
times itself (``time.perf_counter``), so the client's own costs are not counted.

Executor: the same two shapes on a uvloop loop in this process, ``await
loop.run_in_executor(pool, noop)`` with a ``ProcessPoolExecutor`` of 1 or 4 processes
(started and warmed up before timing): the usual way to run blocking work in other
processes from asyncio.

Each figure is the median of ``--rounds`` rounds. Prints one JSON object and a markdown
table. Run: ``python benchmarks/task_bench.py [--n 5000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 64

APP = f"""
import asyncio, json, time
from swoolish import WebSocketServer

server = WebSocketServer()

@server.on("task")
def on_task(server, task):
    return None

@server.on("message")
async def on_message(server, frame):
    shape, n = frame.data.split(":")
    n = int(n)
    started = time.perf_counter()
    if shape == "sequential":
        for _ in range(n):
            await server.taskwait(None, 10)
    else:
        for _ in range(n // {CONCURRENCY}):
            await asyncio.gather(*(server.taskwait(None, 10) for _ in range({CONCURRENCY})))
    server.push(frame.fd, json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def _noop() -> None:
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(task_workers: int, directory: Path):
    port = _free_port()
    log = open(directory / f"server-{task_workers}.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SWOOLISH_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "swoolish", "serve", "bench_app.py:server",
            "--port", str(port), "--workers", "1", "--task-workers", str(task_workers),
        ],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}/", open_timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with ws:
            ws.send("sequential:64")  # every task worker up and warm
            ws.recv(timeout=20)
            yield ws
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def _swoolish(task_workers: int, n: int, rounds: int, directory: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with _server(task_workers, directory) as ws:
        for shape in ("sequential", "concurrent"):
            rates = []
            for _ in range(rounds):
                ws.send(f"{shape}:{n}")
                seconds = json.loads(ws.recv(timeout=120))["seconds"]
                rates.append(n / seconds)
            out[shape] = statistics.median(rates)
    return out


async def _executor_round(pool: concurrent.futures.Executor, shape: str, n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    if shape == "sequential":
        for _ in range(n):
            await loop.run_in_executor(pool, _noop)
    else:
        for _ in range(n // CONCURRENCY):
            await asyncio.gather(*(loop.run_in_executor(pool, _noop) for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - started)


def _executor(processes: int, n: int, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(_executor_round(pool, "concurrent", CONCURRENCY * 4))
            for shape in ("sequential", "concurrent"):
                rates = [
                    loop.run_until_complete(_executor_round(pool, shape, n)) for _ in range(rounds)
                ]
                out[shape] = statistics.median(rates)
        finally:
            loop.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_app.py").write_text(APP)
        for count in (1, 4):
            results[f"swoolish taskwait, {count} task worker(s)"] = _swoolish(
                count, args.n, args.rounds, directory
            )
            results[f"run_in_executor, ProcessPoolExecutor({count})"] = _executor(
                count, args.n, args.rounds
            )
    print(json.dumps({"n": args.n, "rounds": args.rounds, "cpus": os.cpu_count(), **results}))
    print()
    print("| | sequential (round trips/s) | 64 in flight (round trips/s) |")
    print("|---|---:|---:|")
    for name, figures in results.items():
        print(f"| {name} | {figures['sequential']:,.0f} | {figures['concurrent']:,.0f} |")


if __name__ == "__main__":
    main()
