"""Live hand-off cost: time to move N idle connections, and the pause a busy client sees.

One worker (one old/new pair, as docs/reload.md describes the hand-off), N idle
WebSocket connections plus one busy client doing echo round trips every 2 ms. After
SIGUSR1 the script reads
the old worker's "N moved to the new worker in X s" log line, checks every idle
connection still answers (from generation 2), and reports the longest gap between two
consecutive echoes of the busy client.

    python benchmarks/handoff_bench.py --conns 1000 10000 [--busy-first] [--flood echo|quiet]

``--flood`` adds a client in a process of its own that sends 64-byte messages as fast as
it can from before the reload to after it, reading and dropping what comes back: each
answered (``echo``: while the session moves, the new worker holds those answers until
its arrival) or not (``quiet``: nothing holds the flooder back but the worker's fair
share). The busy client's longest gap before the reload is then what the flood costs
it outside a reload.

Loopback only; the server is stopped by pid (and its children through psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import uvloop
from loadclient import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = """
import json
from swoolish import WebSocketServer
server = WebSocketServer(max_connections=30000, max_wait_time=5)

@server.on("message")
def on_message(server, frame):
    if frame.data[:1] == "q":  # the quiet flood: not answered
        return
    if frame.data == "who":
        server.push(frame.fd, json.dumps({"gen": server.generation, "fd": frame.fd}))
    else:
        server.push(frame.fd, frame.data)
"""
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked(text: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )


WHO = masked(b"who")


async def open_conn(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE)
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(length)


FLOOD_SECONDS = 6.0  # the flood runs from 2 s before the reload to its end and beyond


def flood(port: int, letter: str, seconds: float) -> None:
    """The flooder's process: ``letter`` * 64 messages, as fast as the socket takes them."""
    import select
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    batch = bytes([0x81, 0x80 | 64]) + b"\0\0\0\0" + letter.encode() * 64
    batch *= 64
    sock.setblocking(False)
    end = time.monotonic() + seconds
    with sock:
        while time.monotonic() < end:
            readable, writable, _ = select.select([sock], [sock], [], 0.1)
            try:
                if readable and not sock.recv(1 << 20):
                    return
                if writable:
                    sock.send(batch)
            except BlockingIOError:
                continue
            except OSError:
                return


def start_flooder(port: int, kind: str) -> subprocess.Popen:
    letter = "f" if kind == "echo" else "q"
    code = f"import handoff_bench as h; h.flood({port}, {letter!r}, {FLOOD_SECONDS})"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parent, env=dict(os.environ)
    )


async def busy_client(port: int, stop: asyncio.Event, gaps: list[float]) -> None:
    reader, writer = await open_conn(port)
    frame = masked(b"busy")
    last = time.monotonic()
    while not stop.is_set():
        writer.write(frame)
        await read_frame(reader)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        await asyncio.sleep(0.002)
    writer.close()


async def scenario(
    port: int, count: int, busy_first: bool, master: int, log: Path, flood_kind: str | None
) -> dict:
    stop = asyncio.Event()
    gaps: list[float] = []
    busy = None
    if busy_first:
        busy = asyncio.create_task(busy_client(port, stop, gaps))
    conns = []
    for start in range(0, count, 500):
        conns += await asyncio.gather(*(open_conn(port) for _ in range(min(500, count - start))))
    if not busy_first:
        busy = asyncio.create_task(busy_client(port, stop, gaps))
    while len(gaps) < 50:
        await asyncio.sleep(0.01)
    flooder = None
    if flood_kind is not None:
        flooder = start_flooder(port, flood_kind)
        await asyncio.sleep(2.0)  # the flood under way, and measured, before the reload
    before = len(gaps)
    os.kill(master, signal.SIGUSR1)
    moved_line = await wait_for_log(log, r"(\d+) moved to the new worker in ([\d.]+)s")
    reload_line = await wait_for_log(log, r"reload to generation 2 complete in ([\d.]+)s")
    await asyncio.sleep(0.3)
    stop.set()
    await busy
    if flooder is not None:
        flooder.wait(FLOOD_SECONDS + 10)
    answers = []
    for start in range(0, count, 500):
        chunk = conns[start : start + 500]
        for _, writer in chunk:
            writer.write(WHO)
        answers += [json.loads(await read_frame(r)) for r, _ in chunk]
    for _, writer in conns:
        writer.close()
    return {
        "connections": count,
        "busy_client": "first" if busy_first else "last",
        "flood": flood_kind or "none",
        "moved": int(moved_line[0]),
        "handoff_seconds": float(moved_line[1]),
        "reload_seconds": float(reload_line[0]),
        "all_answer_from_gen2": all(a["gen"] == 2 for a in answers),
        "busy_longest_gap_ms": round(max(gaps[before:]) * 1000, 1),
        "busy_gap_before_p100_ms": round(max(gaps[10:before]) * 1000, 1),
    }


async def wait_for_log(log: Path, pattern: str, seconds: float = 60) -> tuple[str, ...]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match.groups()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no /{pattern}/ in {log}")


def run_one(count: int, busy_first: bool, flood_kind: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "handoff_bench_app.py"
        app.write_text(APP)
        log = Path(tmp) / "server.log"
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swoolish", "serve", f"{app}:server", "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        known = {proc.pid}
        try:
            deadline = time.monotonic() + 15
            while "serving" not in log.read_text():
                if time.monotonic() > deadline:
                    raise TimeoutError("server did not start")
                time.sleep(0.02)
            known.update(c.pid for c in psutil.Process(proc.pid).children())
            return uvloop.run(scenario(port, count, busy_first, proc.pid, log, flood_kind))
        finally:
            with contextlib.suppress(psutil.Error):
                known.update(c.pid for c in psutil.Process(proc.pid).children())
            for pid in known:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--busy-first", action="store_true")
    parser.add_argument("--flood", choices=["echo", "quiet"])
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for count in args.conns:
        print(json.dumps(run_one(count, args.busy_first, args.flood)), flush=True)


if __name__ == "__main__":
    main()
