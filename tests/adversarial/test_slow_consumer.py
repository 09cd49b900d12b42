"""A client that reads slowly but steadily stays connected while the app pushes to it as
fast as ``push`` accepts; one that takes nothing is reset: against real ``swoolish
serve`` processes (worker/websocket.py, ``_judge_by_output``).

The app (below) pushes 64 KiB messages every 10 ms for as long as ``push`` returns True,
the documented way to follow a client's pace, so the server's output to a slow client
stays over a quarter of ``buffer_output_size`` and the worker stops reading from it.
Such a client used to be closed at the first ``heartbeat_idle_time``: its pongs and
messages waited unread, and the heartbeat's ping went over the budget (1008, "does not
read"). Heartbeats here: every 0.5 s, idle after 2 s.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

from support import (
    masked_frame,
    next_frame,
    raw_handshake,
    serving,
    timeout,
    wait_until,
    write_app,
)

APP = """
    import json

    from swoolish import Timer, WebSocketServer

    server = WebSocketServer(heartbeat_check_interval=0.5, heartbeat_idle_time=2)
    heard = []


    def feed(timer_id, fd):
        for _ in range(4):
            if not server.push(fd, bytes(65536)):
                return


    @server.on("message")
    def on_message(server, frame):
        if frame.data == "feed":
            Timer.tick(10, feed, frame.fd, bind=frame.fd)
        elif frame.data == "stats":
            server.push(frame.fd, json.dumps({**server.stats(), "heard": len(heard)}))
        else:
            heard.append(frame.data)
"""
IDLE = 2.0


class Reader:
    """Frames from a raw socket (unmasked server frames, RFC 6455 §5.2): text frames kept,
    binary ones counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.texts: list[str] = []
        self.binary = 0
        self.closed = False

    def read(self, size: int) -> None:
        try:
            chunk = self.sock.recv(size)
        except (TimeoutError, BlockingIOError):
            return
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self.buffer += chunk
        while (frame := next_frame(self.buffer)) is not None:
            opcode, payload, self.buffer = frame
            if opcode == 0x1:
                self.texts.append(payload.decode())
            elif opcode == 0x2:
                self.binary += 1
            elif opcode == 0x8:
                self.closed = True


def _feed_client(port: int) -> tuple[socket.socket, Reader]:
    sock, rest = raw_handshake(port)
    assert rest == b""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(0.05)
    sock.sendall(masked_frame(0x1, b"feed"))
    return sock, Reader(sock)


def test_a_slow_steady_reader_is_not_closed_and_is_read(tmp_path) -> None:
    """1. a client reads 16 KiB every 50 ms (some 320 KiB/s, far below the feed) and says
    something every half second  2. three idle times later it is still connected, has
    kept getting the feed, and some of what it said was read (the app counts it)."""
    app = write_app(tmp_path, APP)
    with serving(f"{app}:server", tmp_path) as server:
        sock, reader = _feed_client(server.port)
        with sock:
            started = said = time.monotonic()
            count = 0
            while time.monotonic() - started < 3 * IDLE and not reader.closed:
                reader.read(16384)
                if time.monotonic() - said > 0.5:
                    count += 1
                    sock.sendall(masked_frame(0x1, f"still here {count}".encode()))
                    said = time.monotonic()
                time.sleep(0.05)
            assert not reader.closed, "the slow reader was closed"
            assert reader.binary > 10  # it kept getting the feed
            with server.connect() as ws:
                ws.send("stats")
                stats = json.loads(ws.recv(timeout=timeout(5)))
            assert stats["heard"] >= 1, "nothing the slow reader said was read"
            assert stats["closed_idle"] == 0 and stats["closed_over_buffer"] == 0


def test_a_client_that_takes_nothing_is_reset(tmp_path) -> None:
    """1. a client asks for the feed and reads nothing  2. it is reset within a few idle
    times of the heartbeat, counted in closed_idle, and other clients are served."""
    app = write_app(tmp_path, APP)
    with serving(f"{app}:server", tmp_path) as server:
        sock, _ = _feed_client(server.port)
        with sock:
            wait_until(
                lambda: _reset(sock), seconds=20, interval=0.2, what="the stalled reader's reset"
            )
        with server.connect() as ws:
            ws.send("stats")
            stats = json.loads(ws.recv(timeout=timeout(5)))
        assert stats["closed_idle"] >= 1


def _reset(sock: socket.socket) -> bool:
    """True once the server has dropped the connection: found by draining what it sent
    (reading now cannot save it: the reset is what is waited for)."""
    with contextlib.suppress(TimeoutError, BlockingIOError):
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                return True
            if not chunk:
                return True
    return False
