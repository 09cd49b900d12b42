"""Receiving one large WebSocket message: seconds from its first byte sent to the reply.

Starts one ``swoolish serve`` worker (``max_message_size`` 64 MiB, ``reload_handoff`` on
or off) whose ``message`` handler answers with the length of what it got; a raw client
sends one 32 MiB binary frame (built before the clock starts, with an all-zero masking
key so the client costs nothing to mask) and waits for the reply. Each run is a fresh
connection; three runs per setting by default.

Receiving used to be quadratic with hand-off on: every read rescanned the frame in
progress (``_rx_pending + data``); ``core/frames.FrameCursor`` now reads each header once
and counts the payload down. ``--root`` serves another checkout of swoolish, to compare
the code before and after (it must accept ``reload_handoff`` and ``max_message_size``).

Run: ``python benchmarks/large_message_bench.py [--mib 32] [--runs 3] [--root PATH]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadclient import free_port, read_upgrade

ROOT = Path(__file__).resolve().parent.parent

APP = """
from swoolish import WebSocketServer

server = WebSocketServer(max_message_size={max_size}, reload_handoff={handoff})

@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, str(len(frame.data)))
"""

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def binary_frame(payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2) with a 64-bit length and a zero key."""
    return bytes((0x82, 0x80 | 127)) + len(payload).to_bytes(8, "big") + b"\0\0\0\0" + payload


def wait_for_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def one_run(port: int, wire: bytes) -> tuple[float, bytes]:
    """Seconds from the first byte of the message sent to the whole reply read."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(HANDSHAKE)
        _, reply = read_upgrade(sock)
        started = time.perf_counter()
        sock.sendall(wire)
        while len(reply) < 2 or len(reply) < 2 + (reply[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed before the reply")
            reply += chunk
        return time.perf_counter() - started, reply[2 : 2 + (reply[1] & 0x7F)]


def bench(root: Path, handoff: bool, mib: int, runs: int) -> list[float]:
    size = mib * 1024 * 1024
    wire = binary_frame(os.urandom(size))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "large_message_app.py"
        app.write_text(APP.format(max_size=2 * size, handoff=handoff))
        env = dict(os.environ, PYTHONPATH=str(root))
        server = subprocess.Popen(
            [sys.executable, "-m", "swoolish", "serve", f"{app}:server", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            seconds = []
            for _ in range(runs):
                elapsed, reply = one_run(port, wire)
                if reply != str(size).encode():
                    raise RuntimeError(f"unexpected reply {reply!r}")
                seconds.append(round(elapsed, 3))
            return seconds
        finally:
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
            if server.poll() is None:
                server.kill()
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="message size in MiB (32)")
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (3)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the swoolish checkout to serve")
    args = parser.parse_args()
    result = {"root": str(args.root), "mib": args.mib}
    for handoff in (True, False):
        result[f"handoff_{'on' if handoff else 'off'}_s"] = bench(
            args.root, handoff, args.mib, args.runs
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
