"""The subscriber half of a worker's bus link: a thread that reads what Redis sends.

Redis closes a subscriber that falls 32 MiB behind (its default
``client-output-buffer-limit pubsub 32mb 8mb 60``), and with it every message of that
moment, control messages included (docs/cluster.md, "Failures"). A subscriber read by the
event loop falls behind whenever the loop is busy: one broadcast compressed for ten
sessions held it 300 ms, and Redis closed both subscribers of a node 20 times in 20 s.
So a thread of the worker reads the connection, whatever the loop is doing (zlib and
blocking calls let go of the GIL, and Python hands it over every 5 ms anyway), and
sorts each message (``classify``, which runs in the thread):

* ``SKIP``: nothing for the loop (our own node's messages);
* ``URGENT``: what keeps the other nodes' liveness and sessions known; applied first.
  Up to URGENT_LIMIT bytes of it wait; past that an essential one rebuilds the link
  (the loop has been stuck for long), another (a question) is dropped;
* ``IN_ORDER``: messages for sessions, applied in order, READ_SHARE of a loop iteration
  at a time, so the worker's own clients are served in between. They wait up to
  ``limit`` bytes; past it one is dropped and counted (``dropped``): a worker that
  cannot keep up loses some messages of other nodes, where Redis would have taken all
  of them and the link. ``essential`` ones (a disconnect) may go ``room`` further.

redis-py's synchronous connection opens it (address, TLS, password, database, name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "IN_ORDER",
    "READ_SHARE",
    "SKIP",
    "URGENT",
    "BusReader",
    "Subscriber",
    "describe_error",
]

log = logging.getLogger("swoolish.cluster")

READ_SHARE = 0.005  # seconds of a loop iteration spent applying messages at a time
# Bytes asked of the socket per read. While the loop is busy, the thread has the GIL
# back once per 5 ms switch interval for each read: 256 KiB a read capped it near
# 50 MB/s, under what a flood of 1 MiB broadcasts brings.
READ_SIZE = 1024 * 1024
URGENT_LIMIT = 4 * 1024 * 1024  # control messages waiting: past it the link is rebuilt

SKIP, URGENT, IN_ORDER = 0, 1, 2


class BusReader(Protocol):
    """What the subscriber hands messages to (swoolish.worker.cluster.Cluster)."""

    def classify(self, data: bytes) -> int:
        """SKIP, URGENT or IN_ORDER; called in the subscriber's thread."""

    def essential(self, data: bytes) -> bool:
        """Not to be dropped: an IN_ORDER one may go ``room`` past the bound; an URGENT
        one past URGENT_LIMIT rebuilds the link instead (the others are dropped)."""

    def apply(self, data: bytes) -> None:
        """Apply one message, on the loop."""

    def dropped(self, count: int) -> None:
        """``count`` more messages were dropped, over the bound (told on the loop)."""


class Subscriber:
    """Reads a subscribed Redis connection in a thread; applies on the loop."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channels: list[bytes],
        reader: BusReader,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        room: int,
    ) -> None:
        """``connect`` makes the (unconnected) redis-py connection, in the thread."""
        self.connect = connect
        self.channels = channels
        self.reader = reader
        self.loop = loop
        self.limit = limit
        self.room = room
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.dropped = 0  # written by the thread only
        self._dropped_told = 0  # ... and how many of them the reader heard of
        self._urgent: deque[bytes] = deque()
        self._in_order: deque[bytes] = deque()
        # bytes waiting = added (the thread's) - taken (the loop's): one writer each
        self._added = self._taken = 0
        self._urgent_added = self._urgent_taken = 0
        self._woken = False
        self._stopping = False
        self._dropping = False  # an episode of drops: one log line each
        self._connection: Any = None
        self._thread = threading.Thread(target=self._run, name="swoolish-bus", daemon=True)

    @property
    def waiting(self) -> int:
        """Bytes read and not yet applied."""
        return self._added - self._taken

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading (from the loop): the thread wakes from its read and ends."""
        self._stopping = True
        connection = self._connection
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._in_order.clear()
        self._urgent.clear()

    # -- the thread

    def _run(self) -> None:
        try:
            self._connection = connection = self.connect()
            connection.connect()
            if self._stopping:
                return
            connection.send_command("SUBSCRIBE", *self.channels)
            for _ in self.channels:
                reply = connection.read_response()
                if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
                    raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r:.80}")
            self._tell(self._subscribed)
            self._read(connection)
        except BaseException as exc:  # the thread's end, told to the loop
            if not self._stopping:
                self._tell(self._lose, describe_error(exc))
        finally:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.disconnect()

    def _read(self, connection: Any) -> None:
        classify, essential = self.reader.classify, self.reader.essential
        urgent, in_order = self._urgent, self._in_order
        while not self._stopping:
            reply = connection.read_response(disconnect_on_error=False)
            if not (type(reply) is list and len(reply) == 3 and reply[0] == b"message"):
                continue  # a subscriber gets messages only, and our confirmations
            data = reply[2]
            kind = classify(data)
            if kind == URGENT:
                if self._urgent_added - self._urgent_taken > URGENT_LIMIT:
                    if essential(data):
                        raise ConnectionError("the loop took no control message for too long")
                    self.dropped += 1
                    continue
                urgent.append(data)
                self._urgent_added += len(data)
            elif kind == IN_ORDER:
                bound = self.limit + self.room if essential(data) else self.limit
                if in_order and self._added - self._taken + len(data) > bound:
                    self.dropped += 1
                    continue
                in_order.append(data)
                self._added += len(data)
            else:
                continue
            if not self._woken:
                self._woken = True
                self.loop.call_soon_threadsafe(self._deliver)

    def _tell(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the worker is ending
            self.loop.call_soon_threadsafe(callback, *args)

    # -- the loop

    def _subscribed(self) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(None)

    def _lose(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(reason))

    def _deliver(self) -> None:
        """Everything urgent, then messages in order for READ_SHARE; the rest later."""
        self._woken = False
        if self._stopping:
            return  # read by a link that is gone: the next one starts afresh
        self.apply_urgent()
        apply = self.reader.apply
        in_order = self._in_order
        clock = time.perf_counter
        deadline = clock() + READ_SHARE
        while in_order:
            data = in_order.popleft()
            self._taken += len(data)
            self._safely(apply, data)
            if clock() > deadline:
                break
        self._note_drops()
        if in_order and not self._woken:
            self._woken = True
            self.loop.call_soon(self._deliver)

    def apply_urgent(self) -> None:
        """Apply the control messages read so far, now. Also called before the worker
        judges the other nodes' silence: after the loop was blocked, uvloop runs a timer
        that came due before the callbacks the thread scheduled meanwhile, and a worker
        declared healthy nodes down whose heartbeats it had read (docs/cluster.md,
        "Liveness")."""
        if self._stopping:
            return
        apply = self.reader.apply
        urgent = self._urgent
        while urgent:
            data = urgent.popleft()
            self._urgent_taken += len(data)
            self._safely(apply, data)

    @staticmethod
    def _safely(apply: Callable[[bytes], None], data: bytes) -> None:
        try:
            apply(data)
        except Exception:
            log.exception("cluster bus message failed")

    def _note_drops(self) -> None:
        """Drops counted; one log line per episode, which ends when half the bound is
        free."""
        dropped = self.dropped
        if dropped > self._dropped_told:
            self.reader.dropped(dropped - self._dropped_told)
            self._dropped_told = dropped
            if self._dropping:
                return
            self._dropping = True
            log.warning(
                "cluster bus: %d bytes of messages wait to be applied (bound %d); other "
                "nodes' messages for sessions are dropped (counted in cluster_dropped) "
                "until half of the bound is free",
                self.waiting,
                self.limit,
            )
        elif self._dropping and self.waiting <= self.limit // 2:
            self._dropping = False


def describe_error(exc: BaseException) -> str:
    """An exception as one log line's reason."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
