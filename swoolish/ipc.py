"""Framed messages between the master and a worker over a Unix socketpair.

Each message is a pickled dict prefixed with its length (4 bytes, big-endian). Both
ends are non-blocking; :func:`receive` returns every complete message read so far and
keeps a partial one for next time.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

__all__ = ["receive", "send"]

_LENGTH = struct.Struct("!I")
_buffers: dict[int, bytearray] = {}


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message; control messages are small, so a blocking send is bounded."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.setblocking(True)
    try:
        sock.sendall(_LENGTH.pack(len(payload)) + payload)
    finally:
        sock.setblocking(False)


def receive(sock: socket.socket) -> list[dict[str, Any]]:
    """Read what is available; raise ``EOFError`` when the peer has gone."""
    buffer = _buffers.setdefault(sock.fileno(), bytearray())
    while True:
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            _buffers.pop(sock.fileno(), None)
            raise EOFError("peer closed the channel")
        buffer += chunk
        if len(chunk) < 65536:
            break
    messages = []
    while len(buffer) >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < _LENGTH.size + length:
            break
        messages.append(pickle.loads(bytes(buffer[_LENGTH.size : _LENGTH.size + length])))
        del buffer[: _LENGTH.size + length]
    return messages


def forget(sock: socket.socket) -> None:
    """Drop the partial-message buffer of a channel that is being closed."""
    _buffers.pop(sock.fileno(), None)
