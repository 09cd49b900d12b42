"""Messages between processes over Unix ``SOCK_SEQPACKET`` socketpairs.

SEQPACKET keeps packet boundaries (no length framing to get wrong) and lets file
descriptors ride with a packet (SCM_RIGHTS): the master hands the old worker the new
worker's adoption inbox inside its ``Stop`` message, and a hand-off batch carries up to
253 sockets (SCM_MAX_FD) with their state.

Each end of a channel is a :class:`Channel`, and three rules hold for every one of them:

* **Nobody blocks on a peer.** The socket is non-blocking; what the kernel does not take
  now waits in the channel's own queue, in order, and is written when the socket is
  writable again (the owner calls :meth:`Channel.flush` from its event loop: a worker's
  ``loop.add_writer`` through :meth:`Channel.use_loop`, the master's selector through
  ``on_backlog``). The queue is bounded: :meth:`Channel.send` returns False once more
  than ``limit`` bytes wait (``QUEUE_LIMIT``), so a stalled peer makes operations fail
  visibly instead of stalling the sender. An *essential* message (lifecycle, hand-off
  bookkeeping: small, and losing one would stall a protocol) may go past the bound, up
  to ``HARD_LIMIT``.
* **Any size fits any buffer.** A kernel caps a SEQPACKET packet at the socket's send
  buffer, which ``net.core.wmem_max`` caps in turn (212992 bytes by default on Linux,
  so about 416 KiB per packet, whatever swoolish asks for). Every encoded message is
  therefore cut into packets of at most ``FRAGMENT_BYTES`` after a one-byte header
  (more follow / continues a message); the descriptors ride with the first packet and
  the receiver reassembles the packets in order (one sender per end, and the sender
  queues a message's packets back to back, so they are contiguous). A message is at
  most ``MAX_MESSAGE`` bytes.
* **What arrives damaged is dropped alone.** A truncated packet (``MSG_TRUNC``/
  ``MSG_CTRUNC``: the kernel dropped bytes or descriptors), a message whose fragments
  do not follow each other, one over ``MAX_MESSAGE``, or bytes that do not decode to a
  catalogue message are dropped, each with one log line and its descriptors closed;
  the messages read before it are kept and reading goes on.

Descriptors are received with ``MSG_CMSG_CLOEXEC`` through ``recvmsg`` itself
(``socket.recv_fds`` drops its flags argument on Python 3.11).

Tests only: the environment variable ``SWOOLISH_CHANNEL_BUFFER`` (bytes) forces
``SO_SNDBUF``/``SO_RCVBUF`` of every pair :func:`channel_pair` makes, whatever size the
caller asks for, e.g. ``212992`` to reproduce a default Linux on a machine whose
``wmem_max`` is larger.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Callable

from ..core.messages import Message, MessageError, decode, encode

__all__ = [
    "BUFFER_ENV",
    "FRAGMENT_BYTES",
    "HARD_LIMIT",
    "MAX_FDS",
    "MAX_MESSAGE",
    "QUEUE_LIMIT",
    "READ_BATCH",
    "Channel",
    "channel_pair",
    "close_fds",
    "send_packet",
]

log = logging.getLogger("swoolish.ipc")

MAX_FDS = 253  # SCM_MAX_FD: the kernel refuses more descriptors in one packet
FRAGMENT_BYTES = 64 * 1024  # payload of one packet: a fraction of the smallest buffer
MAX_MESSAGE = 64 * 1024 * 1024  # one reassembled message; a larger one is dropped
QUEUE_LIMIT = 8 * 1024 * 1024  # bytes queued for one peer before send() refuses
HARD_LIMIT = 4 * QUEUE_LIMIT  # the bound of essential messages
READ_BATCH = 64  # packets one receive() reads: one busy peer cannot starve the others
BUFFER_ENV = "SWOOLISH_CHANNEL_BUFFER"

_MORE = 1  # header flag: more packets of this message follow
_CONT = 2  # header flag: this packet continues a message
_HEADERS = tuple(bytes([flags]) for flags in range(4))
_PACKET = 1 + FRAGMENT_BYTES
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
_DAMAGED = socket.MSG_TRUNC | socket.MSG_CTRUNC

# Receiving states: between messages, inside one, skipping the rest of a dropped one.
_IDLE, _ASSEMBLING, _DISCARDING = 0, 1, 2


def channel_pair(buffer_size: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected SEQPACKET pair; ``buffer_size`` raises both socket buffers (the
    kernel caps it at ``net.core.wmem_max``/``rmem_max``)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    forced = os.environ.get(BUFFER_ENV)
    if forced:
        buffer_size = int(forced)
    if buffer_size:
        for sock in (a, b):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
    return a, b


class _Packet:
    """One queued packet: its header, its slice of the message, and the descriptors we
    own (dups of the sender's, closed once sent; only a message's first packet has any)."""

    __slots__ = ("chunk", "fds", "header")

    def __init__(self, header: bytes, chunk: memoryview, fds: list[int]) -> None:
        self.header = header
        self.chunk = chunk
        self.fds = fds


class Channel:
    """One end of a SEQPACKET channel: non-blocking, with a bounded outgoing queue and
    the reassembly of incoming fragments (see the module docstring)."""

    def __init__(self, sock: socket.socket, limit: int = QUEUE_LIMIT, name: str = "") -> None:
        """``name`` says whose channel this is in log lines (e.g. "worker 1 (pid 42)")."""
        sock.setblocking(False)
        self.sock = sock
        self.name = name or "a channel"
        self.limit = limit
        self.queued = 0  # bytes waiting in our queue (not yet in the kernel)
        self.refused = 0  # messages send() refused: queue over its bound, or peer gone
        self.dropped = 0  # incoming messages dropped: damaged, out of order, undecodable
        self.closed = False
        self.broken = False  # a send failed for good (the peer is gone)
        #: Called with True when packets start waiting for room, False once all left.
        self.on_backlog: Callable[[bool], None] | None = None
        self._out: deque[_Packet] = deque()
        self._drained: list[Callable[[], None]] = []
        self._state = _IDLE
        self._parts: list[bytes] = []
        self._size = 0
        self._fds: list[int] = []  # the descriptors of the message being reassembled

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending

    def send(
        self, message: Message, fds: list[int] | tuple[int, ...] = (), *, essential: bool = False
    ) -> bool:
        """Send ``message`` (with descriptors, which stay the caller's); never blocks.

        False if the queue already holds more than ``limit`` bytes (``HARD_LIMIT`` for an
        essential message) and this one would add to it, or if the channel is broken.
        An empty queue always takes one message, however large (up to MAX_MESSAGE).
        """
        if self.closed or self.broken:
            self.refused += 1
            return False
        payload = encode(message)
        size = len(payload)
        if size > MAX_MESSAGE:
            log.error(
                "%s: refused to send a %s of %d bytes", self.name, type(message).__name__, size
            )
            self.refused += 1
            return False
        bound = HARD_LIMIT if essential else self.limit
        if self.queued and self.queued + size > bound:
            self.refused += 1
            return False
        packets = _cut(payload)
        sent = 0
        if not self._out:
            try:
                while sent < len(packets) and self._write(*packets[sent], fds if not sent else ()):
                    sent += 1
            except OSError as exc:
                self._failed(exc, type(message).__name__)
                return False
            if sent == len(packets):
                return True
        owned = _dup_all(fds) if fds and not sent else []
        was_idle = not self._out
        for header, chunk in packets[sent:]:
            self._out.append(_Packet(header, chunk, owned))
            self.queued += len(chunk)
            owned = []
        if was_idle and self.on_backlog is not None:
            self.on_backlog(True)
        return True

    def flush(self) -> None:
        """Write what waits, in order, until the kernel takes no more (call when the
        socket is writable)."""
        out = self._out
        while out:
            packet = out[0]
            try:
                if not self._write(packet.header, packet.chunk, packet.fds):
                    return
            except OSError as exc:
                self._failed(exc, "queued message")
                if self.broken:
                    self._abandon()
                else:
                    self._skip_message()
                continue
            out.popleft()
            self.queued -= len(packet.chunk)
            close_fds(packet.fds)
        self._now_drained()

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once nothing waits in our queue (now, if nothing does)."""
        if self._out:
            self._drained.append(callback)
        else:
            callback()

    async def drained(self, seconds: float) -> bool:
        """Wait (at most ``seconds``, in an asyncio loop) until nothing waits in our
        queue; whether that happened."""
        if not self._out:
            return True
        future = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        self.when_drained(done)
        try:
            await asyncio.wait_for(future, seconds)
        except TimeoutError:
            return False
        return not self._out

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush from ``loop`` whenever packets wait for room (a worker's channels)."""
        fd = self.sock.fileno()

        def backlog(waiting: bool) -> None:
            if waiting:
                loop.add_writer(fd, self.flush)
            else:
                loop.remove_writer(fd)

        self.on_backlog = backlog

    def _write(self, header: bytes, chunk: memoryview, fds: list[int] | tuple[int, ...]) -> bool:
        """One packet into the kernel: True if it took it, False if there is no room."""
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            self.sock.sendmsg([header, chunk], ancillary)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def _failed(self, exc: OSError, what: str) -> None:
        self.refused += 1
        if exc.errno == errno.EMSGSIZE:
            # The socket's buffer is smaller than one packet: this message cannot go;
            # the receiver drops the fragments that went (the next message starts anew).
            log.error("%s: a %s does not fit the socket buffer; dropped", self.name, what)
            return
        if not self.broken:
            log.debug("%s: broken (%s), the peer is gone", self.name, exc)
        self.broken = True

    def _skip_message(self) -> None:
        """Drop the first waiting packet and the rest of its message."""
        out = self._out
        while out:
            packet = out.popleft()
            self.queued -= len(packet.chunk)
            close_fds(packet.fds)
            if not out or not out[0].header[0] & _CONT:
                return

    def _abandon(self) -> None:
        """Drop what waits (the peer is gone): close the descriptors we own."""
        for packet in self._out:
            close_fds(packet.fds)
        self._out.clear()
        self.queued = 0

    def _now_drained(self) -> None:
        if self._out:
            return
        if self.on_backlog is not None:
            self.on_backlog(False)
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()

    # -- receiving

    def receive(self, max_packets: int | None = READ_BATCH) -> list[tuple[Message, list[int]]]:
        """The messages waiting (never blocks), each with its descriptors, in order.

        Reads at most ``max_packets`` packets (None: until none is left), so that one
        busy peer cannot starve the others; call again while the socket is readable.
        Raises ``EOFError`` when the peer has gone and nothing is left to read.
        """
        messages: list[tuple[Message, list[int]]] = []
        count = 0
        reset = False
        while max_packets is None or count < max_packets:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(_PACKET, _ANCILLARY, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                # The peer closed with messages of ours unread: Linux reports that once
                # (unix(7), ECONNRESET), ahead of what the peer sent before it went,
                # which is still there to read (a worker's last words).
                if reset:
                    raise
                reset = True
                continue
            count += 1
            fds = _descriptors(ancillary)
            if not data and not fds:  # every packet has its header: this is the end
                if messages:
                    return messages  # the EOF is still there for the next call
                raise EOFError("peer closed the channel")
            if flags & _DAMAGED or not data:
                self._drop_damaged(data, fds)
                continue
            self._take(data, fds, messages)
        return messages

    def _take(self, data: bytes, fds: list[int], messages: list[tuple[Message, list[int]]]) -> None:
        flags = data[0]
        if not flags & _CONT:
            if self._state == _ASSEMBLING:
                # The sender could not finish that one (a packet too large for its buffer).
                self._drop("an incomplete message", self._reset())
            self._state = _IDLE
            if flags & _MORE:
                self._state, self._parts, self._size, self._fds = _ASSEMBLING, [data], 0, fds
                self._size = len(data) - 1
            else:
                self._deliver(memoryview(data)[1:], fds, messages)
            return
        close_fds(fds)  # descriptors ride only with the first packet of a message
        if self._state == _ASSEMBLING:
            self._parts.append(data)
            self._size += len(data) - 1
            if self._size > MAX_MESSAGE:
                self._drop(f"a message over {MAX_MESSAGE} bytes", self._reset())
                self._state = _DISCARDING if flags & _MORE else _IDLE
            elif not flags & _MORE:
                parts = self._parts
                fds = self._reset()
                self._deliver(b"".join(memoryview(part)[1:] for part in parts), fds, messages)
            return
        if self._state == _IDLE:
            self._drop("a fragment without its start", [])
        self._state = _DISCARDING if flags & _MORE else _IDLE

    def _drop_damaged(self, data: bytes, fds: list[int]) -> None:
        """A packet the kernel cut: it and the message it belongs to are dropped."""
        close_fds(fds)
        close_fds(self._reset())
        self._drop("a truncated message", [])
        more = bool(data) and bool(data[0] & _MORE)
        self._state = _DISCARDING if more else _IDLE

    def _deliver(
        self, payload: memoryview | bytes, fds: list[int], messages: list[tuple[Message, list[int]]]
    ) -> None:
        try:
            messages.append((decode(payload), fds))
        except MessageError:
            # Never sent by swoolish itself: drop it (and its descriptors), keep the rest.
            self._drop("an undecodable message", fds)

    def _reset(self) -> list[int]:
        """Forget the message being reassembled; returns its descriptors."""
        fds = self._fds
        self._state, self._parts, self._size, self._fds = _IDLE, [], 0, []
        return fds

    def _drop(self, what: str, fds: list[int]) -> None:
        close_fds(fds)
        self.dropped += 1
        log.error("dropped %s on %s", what, self.name)

    # -- the end

    def close(self) -> None:
        """Close the socket; what still waits is dropped (its descriptors closed)."""
        if self.closed:
            return
        self.closed = True
        self._abandon()
        close_fds(self._reset())
        self.sock.close()
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()


def send_packet(sock: socket.socket, message: Message) -> bool:
    """Send a small ``message`` as one packet, now, bypassing every :class:`Channel`
    queue; True if the kernel took it.

    For a thread that does not own the channel (a booting worker's watchdog,
    worker/process.py ``BootWatch``): a Channel's queue belongs to its owner's thread.
    A message that does not fit one packet is not sent. The one packet is whole on its
    own; only if the owner is in the middle of a multi-packet message at that instant
    does the receiver drop that message as out of order (logged, module docstring).
    """
    payload = encode(message)
    if len(payload) > FRAGMENT_BYTES:
        return False
    try:
        sock.sendmsg([_HEADERS[0], payload], [], socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def _cut(payload: bytes) -> list[tuple[bytes, memoryview]]:
    """The packets of one encoded message: header and slice each."""
    view = memoryview(payload)
    if len(view) <= FRAGMENT_BYTES:
        return [(_HEADERS[0], view)]
    starts = range(0, len(view), FRAGMENT_BYTES)
    last = starts[-1]
    return [
        (
            _HEADERS[(_CONT if start else 0) | (_MORE if start != last else 0)],
            view[start : start + FRAGMENT_BYTES],
        )
        for start in starts
    ]


def _dup_all(fds: list[int] | tuple[int, ...]) -> list[int]:
    """Our own copies of descriptors that wait in the queue: the caller may close its."""
    return [os.dup(fd) for fd in fds]  # os.dup: non-inheritable (close-on-exec)


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
