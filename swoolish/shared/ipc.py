"""Messages between processes over Unix ``SOCK_SEQPACKET`` socketpairs.

SEQPACKET keeps message boundaries (no length framing to get wrong) and lets file
descriptors ride with a message (SCM_RIGHTS): the master hands the old worker the
new worker's adoption inbox inside its ``Stop`` message, and a hand-off batch carries
up to 253 sockets (SCM_MAX_FD) with their state.

Descriptors are received with ``MSG_CMSG_CLOEXEC`` through ``recvmsg`` itself
(``socket.recv_fds`` drops its flags argument on Python 3.11), and a truncated message
(``MSG_CTRUNC``/``MSG_TRUNC``: the kernel dropped descriptors or bytes) is reported,
never half-used.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket

from ..core.messages import Message, MessageError, decode, encode

__all__ = ["MAX_FDS", "Truncated", "channel_pair", "close_fds", "receive", "send"]

log = logging.getLogger("swoolish.ipc")

MAX_FDS = 253  # SCM_MAX_FD: the kernel refuses more descriptors in one message
MAX_MESSAGE = 4 * 1024 * 1024
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
SEND_TIMEOUT = 5.0


class Truncated(Exception):
    """A message arrived cut short; its descriptors (if any) are in ``fds``."""

    def __init__(self, fds: list[int]) -> None:
        super().__init__("message or descriptors truncated in transit")
        self.fds = fds


def channel_pair(buffer_size: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected SEQPACKET pair; ``buffer_size`` raises both socket buffers."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if buffer_size:
        for sock in (a, b):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
    return a, b


def send(sock: socket.socket, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (with descriptors); waits at most SEND_TIMEOUT for room."""
    payload = encode(message)
    blocking = sock.getblocking()
    sock.settimeout(SEND_TIMEOUT)
    try:
        if fds:
            socket.send_fds(sock, [payload], list(fds))
        else:
            sock.send(payload)
    finally:
        sock.setblocking(blocking)


def receive(sock: socket.socket) -> list[tuple[Message, list[int]]]:
    """Every message waiting on the socket (never blocks), each with its descriptors.

    Raises ``EOFError`` when the peer has gone and nothing is left to read.
    """
    messages: list[tuple[Message, list[int]]] = []
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                MAX_MESSAGE, _ANCILLARY, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return messages
        fds = _descriptors(ancillary)
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise Truncated(fds)
        if not data and not fds:
            if messages:
                return messages
            raise EOFError("peer closed the channel")
        try:
            messages.append((decode(data), fds))
        except MessageError:
            # Never sent by swoolish itself: drop it (and its descriptors), keep the rest.
            log.error("dropped an undecodable message on a channel")
            close_fds(fds)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
