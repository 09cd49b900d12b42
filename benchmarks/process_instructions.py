"""User-space instructions per echo or per handshake of a whole server, swoolish against picows.

``instructions.py`` counts swoolish's Python alone. This counts everything a server
process runs in user space for one echo -- the event loop, the library, the app's
handler, the interpreter -- so that two servers compare on a figure the machine's noise
cannot move. Each server runs under ``valgrind --tool=callgrind`` (swoolish with one
worker; its master idles) and one client on loopback sends a 64 B masked text message and
waits for its echo, N times, after a warm-up of 1,000. The server is stopped, and the
instructions of the process that held the connection are read from callgrind's output;
the difference between two runs (N small and large), divided by the difference in N, is
one echo's cost without the start-up. One closed-loop client means one message per read
and per poll, as in ``run.py``'s echo64 (about 1.1 messages per poll there).

Kernel time (the read, the write, the poll) is not counted: ``run.py`` measures it, and
both servers make the same three system calls per echo.

``--path handshake`` counts instead one whole short session, as a reconnect storm
(``run.py``'s ``storm5k``) has each client do: connect, the opening handshake, one 64 B
echo, then the client's close (FIN). Every process of the server is counted (for
swoolish, the master too), since a session's start and end might involve more than the
worker holding it.

Use::

    python benchmarks/process_instructions.py [--server swoolish picows floor]
        [--path echo handshake]
        [--small 1000 --large 5000]

``SWOOLISH_NO_SPEEDUPS=1`` in the environment measures swoolish's pure-Python fast path.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from instructions import report_per_unit  # noqa: E402
from loadclient import build_frame, free_port, handshake_request, read_upgrade  # noqa: E402

WARMUP = 1000
SIZE = 64
#: The reference servers; ``floor`` is the least a uvloop WebSocket server can do
#: (servers/ws_floor.py): what is left between it and a server is that server's own code.
SCRIPTS = {"picows": "ws_picows.py", "floor": "ws_floor.py"}


def server_command(name: str, port: int) -> list[str]:
    if name in SCRIPTS:
        return [sys.executable, str(HERE / "servers" / SCRIPTS[name]), "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "swoolish",
        "serve",
        "examples/echo.py:server",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]


def connect(port: int, deadline: float) -> socket.socket:
    """The WebSocket client, once the server (slow under callgrind) listens."""
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    sock.sendall(handshake_request("127.0.0.1", port))
    head, _ = read_upgrade(sock)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    return sock


def sessions(port: int, frame: bytes, count: int) -> None:
    """``count`` short sessions one after another: handshake, one echo, the client's FIN;
    each waits for the server's end of the previous one (its EOF) before the next."""
    for _ in range(count):
        sock = connect(port, time.monotonic() + 10)
        echo(sock, frame, 1)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
        sock.close()


def echo(sock: socket.socket, frame: bytes, count: int) -> None:
    expected = 2 + SIZE
    for _ in range(count):
        sock.sendall(frame)
        got = 0
        while got < expected:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            got += len(chunk)


def serving_pid(root: psutil.Process, port: int) -> int:
    """The process (the server or its worker) holding the client's connection."""
    for proc in [root, *root.children(recursive=True)]:
        for conn in proc.net_connections("tcp"):
            if conn.raddr and conn.laddr.port == port:
                return proc.pid
    raise RuntimeError("no process holds the connection")


def count_run(name: str, count: int, path: str = "echo") -> int:
    """User-space instructions over a whole run of ``count`` units: of the process that
    served the echoes, or of every process of the server for handshakes."""
    port = free_port()
    frame = build_frame(b"x" * SIZE)
    with tempfile.TemporaryDirectory(prefix="swoolish-ir-") as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out.%p",
            *server_command(name, port),
        ]
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            sock = connect(port, time.monotonic() + 180)
            echo(sock, frame, WARMUP)
            pid = serving_pid(psutil.Process(proc.pid), port)
            if path == "echo":
                echo(sock, frame, count)
            sock.close()
            if path == "handshake":
                sessions(port, frame, count)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        outputs = [Path(tmp, f"out.{pid}")] if path == "echo" else Path(tmp).glob("out.*")
        return sum(instruction_total(name, out.read_text()) for out in outputs)


def instruction_total(name: str, text: str) -> int:
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in callgrind's output of {name}")
    return int(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        nargs="+",
        choices=["swoolish", *SCRIPTS],
        default=["swoolish", "picows"],
    )
    parser.add_argument("--path", choices=["echo", "handshake"], default="echo")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    args = parser.parse_args()

    def count(name: str, units: int) -> int:
        return count_run(name, units, args.path)

    report_per_unit(args.server, count, args.small, args.large, args.path)


if __name__ == "__main__":
    main()
