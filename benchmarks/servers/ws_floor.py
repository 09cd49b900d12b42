"""The floor: the least a WebSocket server on uvloop can do, as a reference, not a server.

Every figure of a scenario includes the kernel's TCP on loopback and the client, both on
the same two cores as the server. This script does nothing a real server must do beyond the
bytes on the wire (no header parsing but the key, no limits, no UTF-8 check, no sessions,
no logging), so what a scenario measures for it is what the machine allows any Python
server on uvloop: a target above the floor's figure is out of reach here, and a server's
distance from the floor is what its own code costs.

- A handshake: wait for the end of the request, find ``Sec-WebSocket-Key``, answer 101
  with its accept value (RFC 6455 §4.2.2).
- A message: client frames of one fragment (the benchmark clients never fragment) are
  unmasked and sent back unmasked; a close is answered and the connection closed.
- ``--workers N`` forks N processes over one listening socket. With ``--broadcast``, a text
  message ``go`` makes every worker write one frame, encoded once, to each of its
  connections: the trigger's worker writes one byte to each other worker's pipe, and each
  worker's loop is one ``transport.write`` per connection (``broadcast_bench.py --floor``).
- ``--handshake-work-us U`` spends U µs of CPU in each handshake (a busy loop after the
  101 is written): a server whose own work per handshake costs U µs and nothing else
  (``run.py``'s ``stormwork``). What that does to a storm's rate tells how much work of
  its own a server may do per handshake and still reach a given rate on this machine.

``python benchmarks/servers/ws_floor.py --port P [--workers N] [--broadcast]
[--handshake-work-us U]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time

import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
KEY_HEADER = b"\r\nsec-websocket-key:"
BROADCAST = b"\x81\x0abroadcast!"


def accept_answer(request: bytes) -> bytes:
    """The 101 answer to ``request`` (a whole request head), or b"" without a key."""
    start = request.lower().find(KEY_HEADER)
    if start < 0:
        return b""
    start += len(KEY_HEADER)
    key = request[start : request.index(b"\r\n", start)].strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def unmask(mask: bytes, payload: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``mask`` (RFC 6455 §5.3), one big-int XOR."""
    if not payload:
        return payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Worker:
    """One process's connections, and the pipes to the other workers for a broadcast."""

    def __init__(self, siblings: list[int]) -> None:
        self.transports: set[asyncio.Transport] = set()
        self.siblings = siblings

    def write_all(self) -> None:
        for transport in self.transports:
            transport.write(BROADCAST)

    def broadcast(self) -> None:
        for fd in self.siblings:
            os.write(fd, b"b")
        self.write_all()


class Floor(asyncio.Protocol):
    """A connection: the handshake, then frames echoed (or a broadcast triggered)."""

    def __init__(self, worker: Worker, broadcast: bool, work: float = 0.0) -> None:
        self.worker = worker
        self.broadcast = broadcast
        self.work = work  # seconds of CPU spent per handshake (--handshake-work-us)
        self.buf = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.transports.discard(self.transport)  # type: ignore[arg-type]
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            answer = accept_answer(buf[:end])
            if not answer:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                return
            self.transport.write(answer)  # type: ignore[union-attr]
            if self.work:
                spend(self.work)
            self.open = True
            self.worker.transports.add(self.transport)  # type: ignore[arg-type]
            buf = buf[end + 4 :]
        self.buf = self.frames(buf)

    def frames(self, buf: bytes) -> bytes:
        """Answer every whole frame in ``buf``; returns what is left of it."""
        while len(buf) >= 6:
            opcode, size, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if size == 126:
                size, at = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + 4 + size:
                return buf
            payload = unmask(buf[at : at + 4], buf[at + 4 : at + 4 + size])
            buf = buf[at + 4 + size :]
            self.answer(opcode, payload)
        return buf

    def answer(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if opcode == 0x8:
            transport.write(b"\x88" + bytes([len(payload)]) + payload)
            transport.close()
        elif opcode == 0x9:
            transport.write(b"\x8a" + bytes([len(payload)]) + payload)
        elif self.broadcast and payload == b"go":
            self.worker.broadcast()
        elif opcode in (0x1, 0x2):
            transport.write(frame_head(opcode, len(payload)) + payload)


def spend(seconds: float) -> None:
    """Keep the CPU busy for ``seconds`` (this thread's CPU time, not the wall clock)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def frame_head(opcode: int, n: int) -> bytes:
    """The unmasked header of an ``n``-byte frame (RFC 6455 §5.2)."""
    if n < 126:
        return bytes([0x80 | opcode, n])
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")


def woken(pipe: int, worker: Worker) -> None:
    """Another worker's broadcast: one byte on this worker's pipe."""
    if os.read(pipe, 4096):
        worker.write_all()


async def serve(
    sock: socket.socket,
    backlog: int,
    worker: Worker,
    pipe: int | None,
    broadcast: bool,
    work: float = 0.0,
) -> None:
    loop = asyncio.get_running_loop()
    if pipe is not None:
        loop.add_reader(pipe, woken, pipe, worker)
    # create_server listens again on ``sock``, with its own backlog (100 unless told)
    server = await loop.create_server(
        lambda: Floor(worker, broadcast, work), sock=sock, backlog=backlog
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (2048, as swoolish)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--broadcast", action="store_true", help='a text "go" broadcasts')
    p.add_argument(
        "--handshake-work-us", type=float, default=0.0, help="CPU µs spent in each handshake"
    )
    a = p.parse_args()
    work = a.handshake_work_us / 1e6
    sock = socket.create_server((a.host, a.port), backlog=a.backlog)
    sock.setblocking(False)
    if a.workers == 1:
        uvloop.run(serve(sock, a.backlog, Worker([]), None, a.broadcast, work))
        return
    pipes = [os.pipe() for _ in range(a.workers)]
    children = []
    for me in range(a.workers):
        pid = os.fork()
        if pid == 0:
            siblings = [w for i, (_, w) in enumerate(pipes) if i != me]
            uvloop.run(serve(sock, a.backlog, Worker(siblings), pipes[me][0], a.broadcast, work))
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
