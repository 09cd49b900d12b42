"""The master's control socket, for ``swoolish reload --wait`` and ``swoolish status``.

A Unix socket in Linux's abstract namespace, named after the master's pid: nothing to
clean up on disk, nothing a stale file could point at, and reachable only from this
host. Requests and replies are JSON, one object per line; a reply stream ends when the
master closes the connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ControlClient", "ControlServer", "address", "request"]

MAX_REQUEST = 64 * 1024


def address(master_pid: int) -> str:
    return f"\0swoolish-master-{master_pid}"


class ControlClient:
    """One connected CLI, as the master sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON line; a CLI that went away is simply dropped."""
        if self.closed:
            return
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


class ControlServer:
    """Accepts CLI connections; hands each complete request to ``on_request``."""

    def __init__(
        self, master_pid: int, on_request: Callable[[ControlClient, dict[str, Any]], None]
    ) -> None:
        self.on_request = on_request
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address(master_pid))
        self.sock.listen(16)
        self.sock.setblocking(False)

    def accept(self) -> ControlClient | None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        return ControlClient(conn)

    def readable(self, client: ControlClient) -> bool:
        """Read from a client; returns False when it should be unregistered."""
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            chunk = b""
        if not chunk:
            client.close()
            return False
        client.buffer += chunk
        if b"\n" not in client.buffer:
            if len(client.buffer) > MAX_REQUEST:
                client.send({"error": "request too large"})
                client.close()
                return False
            return True
        line, _, client.buffer = client.buffer.partition(b"\n")
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            client.send({"error": "a request is one JSON object per line"})
            client.close()
            return False
        self.on_request(client, message)
        return not client.closed

    def close(self) -> None:
        self.sock.close()


def request(master_pid: int, message: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
    """Send one request to a master and yield its reply lines until it hangs up.

    Raises ``TimeoutError`` when no complete reply arrives within ``timeout`` seconds
    and ``ConnectionError`` when the master has no control socket.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(address(master_pid))
        except OSError as exc:
            raise ConnectionError(f"master {master_pid} is not answering ({exc})") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply from master {master_pid} within {timeout:g}s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(
                    f"no reply from master {master_pid} within {timeout:g}s"
                ) from None
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                yield json.loads(line)
