"""Whether a connection reads from its client, decided by named reasons.

Several things can make a connection stop reading: the client does not read what we
write, its coroutine handlers are behind, pipelined HTTP requests wait for answers, or
the session is about to move to another worker. Each pauses reading for its own reason
and resumes only that reason; the transport reads again only when no reason holds. So
one cause ending (the client catching up) can never resume reading that another cause
(a full handler queue) still needs paused, which is how unbounded input buffers happen.
"""

from __future__ import annotations

import array
import enum
import fcntl
import socket
import sys
import termios
from typing import Any, Protocol

__all__ = ["FlowControl", "Reason", "bytes_acked", "kernel_unsent", "tcp_socket"]

#: ``struct tcp_info`` (linux/tcp.h): ``tcpi_bytes_acked`` is the u64 at offset 120
#: (Linux 4.1 on), after the fields of 32 bits and the two pacing rates.
_TCP_INFO_SIZE = 128
_BYTES_ACKED = slice(120, 128)


class Reason(enum.IntEnum):
    """Why a connection does not read (bit values: several can hold at once)."""

    BACKPRESSURE = 1  # the client does not read what we write (pause_writing)
    HANDLERS = 2  # this connection's coroutine handlers are behind (its handler queue is full)
    PIPELINE = 4  # pipelined HTTP requests (or a handshake the app decides on) wait
    MOVING = 8  # the session is about to move to another worker (live hand-off)
    SHARE = 16  # the rest of a long read waits for the next loop iteration (fair share)


class ReadingTransport(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """The reasons that hold one transport's reading paused."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: ReadingTransport) -> None:
        self._transport = transport
        self._held = 0

    def pause(self, reason: Reason) -> None:
        """Stop reading for ``reason`` (pausing twice for one reason is one pause)."""
        if not self._held:
            self._transport.pause_reading()
        self._held |= reason

    def resume(self, reason: Reason) -> None:
        """``reason`` no longer holds; read again if no other reason does."""
        if self._held & reason:
            self._held &= ~reason
            if not self._held:
                self._transport.resume_reading()

    def holds(self, reason: Reason) -> bool:
        return bool(self._held & reason)

    @property
    def reading(self) -> bool:
        """True when no reason holds reading paused."""
        return not self._held

    @property
    def reasons(self) -> list[Reason]:
        """The reasons holding reading paused now, for logs and tests."""
        return [reason for reason in Reason if self._held & reason]

    def __repr__(self) -> str:
        held = "|".join(reason.name for reason in self.reasons) or "reading"
        return f"<FlowControl {held}>"


def bytes_acked(transport: Any) -> int | None:
    """How many bytes of this connection the client's TCP has acknowledged so far
    (``tcpi_bytes_acked``), or None where the kernel does not say (a Unix socket,
    another system).

    A sign of life that needs nothing from the client but reading: while the server
    holds bytes for a client it has stopped reading from (``BACKPRESSURE``), the client
    shows it is there by taking them, not by what it sends.
    """
    sock = tcp_socket(transport)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    return int.from_bytes(info[_BYTES_ACKED], sys.byteorder)


def kernel_unsent(transport: Any) -> int:
    """The bytes in this TCP connection's send queue in the kernel, not yet acknowledged
    by the client (``SIOCOUTQ``, tcp(7)); 0 where the kernel does not say.

    What a TLS connection still owes is there, not in its transport: uvloop's TLS
    transport hands what it encrypts to a TCP transport below it at once, and its own
    buffer is empty while that one, out of the worker's sight, waits for a client that
    does not read. That transport buffers only what the socket refuses, so when it
    holds anything, this queue is full.
    """
    sock = tcp_socket(transport)
    if sock is None:
        return 0
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)
    except (OSError, AttributeError, ValueError):
        return 0
    return queued[0]


def tcp_socket(transport: Any) -> Any:
    """The transport's socket if it is a TCP one (IPv4 or IPv6), else None."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock
