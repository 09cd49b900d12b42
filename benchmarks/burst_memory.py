"""A worker's resident size after a burst of large messages, per session.

Starts one ``swoolish serve`` worker of an echo app (``max_message_size`` 2 MiB) with the
``memory_trim`` setting given; ``--sessions`` websockets clients (no compression) open and
echo one short message; then each sends ``--messages`` random messages of ``--mib`` MiB,
all sessions at a time, reading its echoes. The worker's resident size (psutil) one
second and ``--wait`` seconds after the last echo, less its size before the first large
message, is printed per session: what the burst left behind (and the peak during it,
sampled every 50 ms). ``memory_trim=0`` shows
what the C allocator keeps; the default gives it back at the worker's next look
(docs/deployment.md, "Memory after large messages").

Run: ``python benchmarks/burst_memory.py [--sessions 200] [--messages 5] [--mib 1]
[--wait 11] [--memory-trim BYTES ...]``. Prints one JSON object per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import websockets
from large_message_bench import wait_for_port
from loadclient import free_port

ROOT = Path(__file__).resolve().parent.parent

APP = """
from swoolish import WebSocketServer

server = WebSocketServer(max_message_size=2 * 1024 * 1024)

@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, frame.data)
"""


async def burst(port: int, worker: psutil.Process, args: argparse.Namespace) -> dict:
    url = f"ws://127.0.0.1:{port}"
    clients = [
        await websockets.connect(url, compression=None, max_size=4 << 20, ping_interval=None)
        for _ in range(args.sessions)
    ]
    try:
        for client in clients:
            await client.send("warm")
            await client.recv()
        before = worker.memory_info().rss
        message = os.urandom(args.mib << 20)

        async def echoes(client: websockets.ClientConnection) -> None:
            for _ in range(args.messages):
                await client.send(message)
                if len(await client.recv()) != len(message):
                    raise RuntimeError("a wrong echo")

        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, worker.memory_info().rss)
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(echoes(client) for client in clients))
        done.set()
        await sampler
        await asyncio.sleep(1)
        after_1s = worker.memory_info().rss - before
        await asyncio.sleep(args.wait - 1)
        after_wait = worker.memory_info().rss - before
    finally:
        for client in clients:
            await client.close()
    per = 1024 * args.sessions
    return {
        "peak_kib_per_session": round((peak - before) / per),
        "kib_per_session_1s": round(after_1s / per),
        f"kib_per_session_{args.wait:g}s": round(after_wait / per),
    }


def run(trim: int, args: argparse.Namespace) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "burst_app.py"
        app.write_text(APP)
        command = [sys.executable, "-m", "swoolish", "serve", f"{app}:server"]
        command += ["--port", str(port), "--memory-trim", str(trim), "--log-level", "warning"]
        server = subprocess.Popen(command, cwd=args.root, start_new_session=True)
        try:
            wait_for_port(port)
            (worker,) = psutil.Process(server.pid).children()
            return {"memory_trim": trim, **asyncio.run(burst(port, worker, args))}
        finally:
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1)
    parser.add_argument("--wait", type=float, default=11.0, help="seconds after the burst (11)")
    parser.add_argument(
        "--memory-trim", type=int, nargs="+", default=[0, 16 * 1024 * 1024], metavar="BYTES"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the swoolish checkout to serve")
    args = parser.parse_args()
    for trim in args.memory_trim:
        print(json.dumps(run(trim, args)), flush=True)


if __name__ == "__main__":
    main()
