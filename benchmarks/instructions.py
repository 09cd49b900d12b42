"""Instructions per unit of work on swoolish's hot paths, counted by valgrind.

On a shared or virtual machine, timings of a few microseconds move by a third from run to
run; an instruction count does not. This drives one connection directly, as the event loop
would (``tests/unit/test_connection_fuzz.py``'s worker double and a transport that drops
what is written: no socket, no kernel), and counts the instructions of N units of work
under ``valgrind --tool=callgrind`` twice, for a small and a large N. The difference
divided by the difference in N is the cost of one unit, without the start-up.

Paths:

* ``http``: one keep-alive ``GET /`` answered ``hello`` (the handler of
  ``benchmarks/servers/http_swoolish_app.py``);
* ``echo``: one 64 B masked text frame echoed by ``server.push`` (``examples/echo.py``);
* ``handshake``: a WebSocket opening handshake, then the client's EOF and the close.

Use::

    python benchmarks/instructions.py [--path http echo handshake] [--small 1000 --large 6000]

It needs ``valgrind`` on the PATH. It counts the Python around the sockets, not the
event loop and the kernel: ``run.py`` measures those.
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 300  # units run before counting starts, in both runs alike

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: keep-alive\r\n\r\n"
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9501\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _doubles() -> tuple[Any, Any]:
    """The worker and transport doubles of the unit tests (the WorkerHost interface)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit")]
    from test_connection_fuzz import FakeTransport, StubWorker

    return StubWorker, FakeTransport


def _connection(worker: Any, transport_type: Any) -> tuple[Any, Any]:
    transport = transport_type()
    transport.write = lambda data: None
    conn = _http_connection_type()(worker)
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


@functools.cache
def _http_connection_type() -> Any:
    """HttpConnection, imported once: an import statement run per unit costs a failed
    attribute lookup (the import system asks the module for ``__path__``), and with it
    an AttributeError, a few thousand instructions a handshake that no server pays."""
    from swoolish.worker.http import HttpConnection

    return HttpConnection


def http_unit() -> Callable[[], None]:
    worker_type, transport_type = _doubles()

    def on_request(request: Any, response: Any) -> None:
        response.header("Content-Type", "text/plain")
        response.end("hello")

    worker = worker_type(False)
    worker._handlers["request"] = on_request
    conn, _ = _connection(worker, transport_type)
    return lambda: conn.data_received(REQUEST)


def echo_unit() -> Callable[[], None]:
    worker_type, transport_type = _doubles()
    from loadclient import build_frame

    worker = worker_type(False)
    connections = worker.connections

    def on_message(server: Any, frame: Any) -> None:
        # server.push's path for a session of this worker (swoolish/server.py): the
        # session's push checks what it is given while it builds the frame
        connections.get(frame.fd).push(frame.data, None)

    worker._handlers["message"] = on_message
    conn, transport = _connection(worker, transport_type)
    conn.data_received(HANDSHAKE)
    session = transport.protocol
    frame = build_frame(b"x" * 64)
    return lambda: session.data_received(frame)


def handshake_unit() -> Callable[[], None]:
    worker_type, transport_type = _doubles()
    worker = worker_type(False)

    def one() -> None:
        conn, transport = _connection(worker, transport_type)
        conn.data_received(HANDSHAKE)
        session = transport.protocol
        session.eof_received()
        session.connection_lost(None)
        # uvloop's transport lets go of its protocol after connection_lost; the double
        # keeps it, and the cycle protocol -> flow control -> transport -> protocol
        # would leave every session to the garbage collector, which no server pays
        transport.protocol = None

    return one


PATHS: dict[str, Callable[[], Callable[[], None]]] = {
    "http": http_unit,
    "echo": echo_unit,
    "handshake": handshake_unit,
}


def run_units(path: str, count: int) -> None:
    """The body of one counted run: build the path, warm it up, run ``count`` units."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    unit = PATHS[path]()
    for _ in range(WARMUP + count):
        unit()


def count_instructions(path: str, count: int) -> int:
    """Instructions of a whole run of ``count`` units under callgrind."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--run",
        path,
        str(count),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind: {done.stderr[-500:]}")
    return int(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", nargs="+", choices=sorted(PATHS), default=sorted(PATHS))
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument("--run", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_units(args.run[0], int(args.run[1]))
        return
    report_per_unit(args.path, count_instructions, args.small, args.large, "unit")


def report_per_unit(
    names: list[str], count: Callable[[str, int], int], small: int, large: int, unit: str
) -> None:
    """Print, for each name, ``count``'s instructions for ``large`` units less those for
    ``small``, per unit: the cost of one without the start-up."""
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    for name in names:
        per_unit = (count(name, large) - count(name, small)) / (large - small)
        print(f"{name:<10} {per_unit:>10,.0f} instructions per {unit}", flush=True)


if __name__ == "__main__":
    main()
