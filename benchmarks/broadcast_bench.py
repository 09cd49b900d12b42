"""Broadcast of one message to 10,000 sessions spread over 2 workers.

Serves a small app with 2 workers on loopback, opens N raw WebSocket connections from a
uvloop client, sends one "go" message on an extra connection (the app calls
``server.broadcast``), and measures the time from sending "go" until every one of the N
connections received the broadcast; ``--broadcasts`` times, reporting the median. The
figure that depends least on the client (one process, on the same cores, reading every
session) is the server's CPU time per session reached: user+sys of the master and its
workers over each broadcast, divided by the sessions. Prints one JSON line::

    python benchmarks/broadcast_bench.py [--sessions 10000] [--workers 2] [--broadcasts 5]
                                         [--floor]

``--floor`` measures ``servers/ws_floor.py --broadcast`` instead: the same broadcast by
the least a prefork uvloop server can do, so the figure this machine allows any server.

Every process it starts is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop
from loadclient import free_port
from procs import stop_tree, tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
APP = """
from swoolish import WebSocketServer

server = WebSocketServer(max_connections=40000)


@server.on("message")
def on_message(server, frame):
    if frame.data == "go":
        server.broadcast("broadcast!")
"""
HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
).encode()
EXPECTED = b"\x81\x0abroadcast!"


def masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x00\x00\x00\x00"
    return bytes([0x81, 0x80 | len(payload)]) + mask + payload


class Member(asyncio.Protocol):
    def __init__(self, opened: asyncio.Future[None], done: dict[str, object]) -> None:
        self.opened = opened
        self.done = done
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(HANDSHAKE)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            assert head.startswith(b"HTTP/1.1 101"), head[:80]
            self.upgraded, self.buffer = True, rest
            self.opened.set_result(None)
        if EXPECTED in self.buffer:
            self.buffer = b""
            self.done["count"] += 1  # type: ignore[operator]
            if self.done["count"] == self.done["wanted"]:
                self.done["at"] = time.perf_counter()
                self.done["future"].set_result(None)  # type: ignore[union-attr]


async def run_client(
    port: int, sessions: int, broadcasts: int, server_cpu: Callable[[], float]
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    done: dict[str, object] = {"count": 0, "wanted": sessions, "future": loop.create_future()}
    members: list[Member] = []
    opened_at = time.perf_counter()
    for start in range(0, sessions, 500):
        futures = []
        for _ in range(min(500, sessions - start)):
            opened = loop.create_future()
            futures.append(opened)
            _, member = await loop.create_connection(
                lambda opened=opened: Member(opened, done), "127.0.0.1", port
            )
            members.append(member)
        await asyncio.wait_for(asyncio.gather(*futures), 60)
    open_seconds = time.perf_counter() - opened_at
    trigger_opened = loop.create_future()
    trigger_done = {"count": 0, "wanted": -1, "future": loop.create_future()}
    _, trigger = await loop.create_connection(
        lambda: Member(trigger_opened, trigger_done), "127.0.0.1", port
    )
    await trigger_opened
    await asyncio.sleep(0.5)  # let the accept storm settle before measuring
    times, cpu = [], []
    for _ in range(broadcasts):
        done.update(count=0, future=loop.create_future())
        cpu_before = server_cpu()
        started = time.perf_counter()
        trigger.transport.write(masked_text("go"))  # type: ignore[union-attr]
        await asyncio.wait_for(done["future"], 60)  # type: ignore[arg-type]
        times.append(float(done["at"]) - started)  # type: ignore[arg-type]
        cpu.append(server_cpu() - cpu_before)
        await asyncio.sleep(0.2)  # the next one starts on quiet workers
    for member in [*members, trigger]:
        if member.transport is not None:
            member.transport.abort()
    seconds = statistics.median(times)
    return {
        "sessions": sessions,
        "open_seconds": round(open_seconds, 3),
        "broadcast_seconds": round(seconds, 4),
        "sessions_per_second": round(sessions / seconds),
        "server_cpu_us_per_session": round(statistics.median(cpu) / sessions * 1e6, 2),
    }


def wait_accepting(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on {port}")


def server_command(app: Path, port: int, workers: int, floor: bool) -> list[str]:
    """swoolish serving APP, or with ``floor`` the least a prefork uvloop server can do for
    the same broadcast (``servers/ws_floor.py --broadcast``: one ``transport.write`` per
    connection, one pipe write per other worker): what this machine allows any server."""
    if floor:
        script = str(ROOT / "benchmarks" / "servers" / "ws_floor.py")
        return [
            sys.executable,
            script,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--broadcast",
        ]
    return [
        *(sys.executable, "-m", "swoolish", "serve", f"{app}:server"),
        *("--port", str(port), "--workers", str(workers), "--log-level", "warning"),
    ]


def measure(
    sessions: int = 10_000, workers: int = 2, broadcasts: int = 5, floor: bool = False
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "broadcast_app.py"
        app.write_text(APP)
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(server_command(app, port, workers, floor), env=env)
        try:
            wait_accepting(port)
            time.sleep(0.5)  # every worker booted (they report "serving" at info level)
            result = uvloop.run(
                run_client(port, sessions, broadcasts, lambda: tree_cpu_seconds([proc.pid]))
            )
        finally:
            stop_tree(proc)
    return {"server": "floor" if floor else "swoolish", "workers": workers, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument(
        "--floor", action="store_true", help="measure servers/ws_floor.py instead of swoolish"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args.sessions, args.workers, args.broadcasts, args.floor)))


if __name__ == "__main__":
    main()
