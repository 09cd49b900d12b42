"""Clients whose messages the app forwards to a user process faster than its target
takes them: the process's memory stays bounded (docs/lifecycle.md, "User processes";
docs/security.md, "Remote clients").

The app forwards every client message to its user process with ``send_message`` (the
consumer of docs/lifecycle.md). The target is slow: it takes nothing until the test
lets it go. Its inbox was unbounded, and the process read everything the master sent
it: 60 MiB of messages grew it by as much. Now the inbox stops at ``INBOX_MESSAGES`` or
``INBOX_BYTES``, the process stops reading the master's channel, and the master's own
bound takes over (what waits for the process, then dropped, counted in
``routed_dropped``, one log line). What the target then takes comes in the order sent.

Real ``swoolish serve`` processes, a raw WebSocket client, the process's RSS by psutil.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import psutil
import pytest
from support import masked_frame, raw_handshake, serving, timeout, wait_until, write_app

MiB = 1024 * 1024
MESSAGES = 60_000  # of 1 KiB each: 60 MiB for the process, were it to take them all
BOUND = 24 * MiB  # what the process may grow by: its inbox, one read of the channel, slack

APP = """
    import asyncio
    import json
    import os
    import time

    from swoolish import WebSocketServer

    server = WebSocketServer()
    GATE = {gate!r}  # the target takes nothing until this file exists
    sent = {{"sent": 0, "refused": 0}}


    class Seen:
        # what the target took: how many, how many came out of order, the last number
        def __init__(self):
            self.taken = self.out_of_order = 0
            self.last = -1

        def take(self, text):
            number = int(text[:8])
            self.taken += 1
            self.out_of_order += number <= self.last
            self.last = max(self.last, number)


    def plain(process):
        while not os.path.exists(GATE):
            time.sleep(0.005)
        seen = Seen()
        while (got := process.recv()) is not None:
            src, (fd, text) = got
            if text == "done?":
                process.send_message((fd, vars(seen)), src)
            else:
                seen.take(text)


    async def coroutine(process):
        while not os.path.exists(GATE):
            await asyncio.sleep(0.005)
        seen = Seen()
        async for src, (fd, text) in process.messages():
            if text == "done?":
                process.send_message((fd, vars(seen)), src)
            else:
                seen.take(text)


    server.add_process(plain if {kind!r} == "sync" else coroutine, name="consumer")


    @server.on("message")
    def on_message(server, frame):
        if frame.data == "sent?":
            server.push(frame.fd, json.dumps(sent))
            return
        ok = server.send_message((frame.fd, frame.data), server.process_id("consumer"))
        sent["sent" if ok else "refused"] += 1


    @server.on("pipe_message")
    def on_pipe_message(server, src, message):
        fd, seen = message
        server.push(fd, json.dumps(seen))
"""


def text_frame(text: str) -> bytes:
    return masked_frame(0x1, text.encode())


class Replies:
    """The server's text frames to a raw client, read as they come."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.buffer = leftover

    def next(self, seconds: float) -> str | None:
        """The next text frame, or None if none came within ``seconds``."""
        self.sock.settimeout(timeout(seconds))
        while True:
            if len(self.buffer) >= 2:
                length, start = self.buffer[1] & 0x7F, 2
                if length == 126:
                    length, start = int.from_bytes(self.buffer[2:4], "big"), 4
                if len(self.buffer) >= start + length:
                    payload = self.buffer[start : start + length]
                    self.buffer = self.buffer[start + length :]
                    return payload.decode()
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            assert chunk, "the server closed the connection"
            self.buffer += chunk


def ask_until_answered(sock: socket.socket, replies: Replies, question: str) -> str:
    """Ask again until answered (a question may be dropped while the master's queue
    for the process is over its bound), with a deadline."""
    deadline = time.monotonic() + timeout(60)
    while time.monotonic() < deadline:
        sock.sendall(text_frame(question))
        answer = replies.next(1.0)
        if answer is not None:
            return answer
    raise AssertionError(f"{question!r} never answered")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_slow_user_process_stays_bounded_and_takes_messages_in_order(tmp_path, kind):
    """1. a user process whose target takes nothing yet  2. a client sends 60,000
    messages of 1 KiB, each forwarded to it  3. the process grows by less than 24 MiB
    (before, it grew by 55 to 63 MiB), the master logs that it does not read its channel
    4. the target is let go: what it takes comes in the order sent, and it did not
    get everything (the master dropped the rest)."""
    gate = tmp_path / "gate"
    target = f"{write_app(tmp_path, APP.format(gate=str(gate), kind=kind))}:server"
    with serving(target, tmp_path) as server:
        pid = int(server.wait_for_log(r"user process 0 'consumer' gen 1 \(pid (\d+)\) running")[0])
        process = psutil.Process(pid)
        base = process.memory_info().rss
        sock, leftover = raw_handshake(server.port)
        with sock:
            replies = Replies(sock, leftover)
            filler = "x" * 1016
            flood = b"".join(text_frame(f"{n:08d}{filler}") for n in range(MESSAGES))
            sock.sendall(flood)
            sock.sendall(text_frame("sent?"))
            counts = json.loads(replies.next(60) or "null")
            assert counts["sent"] + counts["refused"] == MESSAGES

            def bounded_or_grown() -> bool:
                grown = process.memory_info().rss - base > BOUND
                return grown or f"(pid {pid}) is not reading its channel" in server.log()

            wait_until(bounded_or_grown, 60, what="the master's queue for the process to fill")
            grown = process.memory_info().rss - base
            assert grown <= BOUND, f"the process grew by {grown / MiB:.0f} MiB"

            gate.touch()
            seen = json.loads(ask_until_answered(sock, replies, "done?"))
        assert seen["out_of_order"] == 0, seen
        assert 0 < seen["taken"] < counts["sent"], (seen, counts)
        assert process.memory_info().rss - base <= BOUND


def test_a_user_process_with_a_full_inbox_still_hears_its_stop(tmp_path):
    """1. the target takes nothing: its inbox is full, the process has read as far
    ahead as it may, and the master's queue for it is full too  2. the server stops: the
    master tells the process a Stop waits (SIGUSR2), the process reads on to it, gives
    its target max_wait_time and exits by itself, not killed at the deadline."""
    gate = tmp_path / "gate"  # never made: the target takes nothing
    source = APP.format(gate=str(gate), kind="sync").replace(
        "WebSocketServer()", "WebSocketServer(max_wait_time=1)"
    )
    target = f"{write_app(tmp_path, source)}:server"
    with serving(target, tmp_path) as server:
        server.wait_for_log(r"user process 0 'consumer' gen 1 \(pid \d+\) running")
        sock, _ = raw_handshake(server.port)
        with sock:
            filler = "x" * 1016
            sock.sendall(b"".join(text_frame(f"{n:08d}{filler}") for n in range(MESSAGES)))
            server.wait_for_log(r"is not reading its channel", 60)
            server.signal(signal.SIGTERM)
            server.wait_for_log(r"the target did not return within max_wait_time", 10)
            assert server.wait_exit(10) == 0
        assert "did not exit within max_wait_time; killed" not in server.log()
