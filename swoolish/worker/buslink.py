"""A worker's link to the cluster bus: one publisher and one subscriber Redis connection.

Built on redis-py's asyncio ``Connection`` used directly, never its pool: the pool
opens a connection per concurrent command and gives up at 100, which loses
fire-and-forget publishes and their order (docs/cluster.md, "Why two connections").

* **Publishing never awaits.** ``publish`` packs the command into a buffer that goes
  out once per loop iteration (write-combining); ``publish(..., now=True)`` writes at
  once (a broadcast reaches the other nodes before its local fan-out starts). Replies
  are read by a task and only counted: call order is wire order, and Redis keeps it.
* **Bounded.** What is buffered, written and not yet answered is capped at
  ``max_pending`` bytes; past it a publish is refused (``False``), so a stalled Redis
  cannot grow a worker's memory. An *essential* publish (the small control messages:
  heartbeats, session events and lists) may go ESSENTIAL_ROOM past it: refused behind
  a flood of app messages, an event was lost for good (the other nodes' view of the
  sessions stayed wrong), and a heartbeat made them declare a live node down.
* **Health.** A ``PING`` goes out every second; a command unanswered for ``timeout``
  seconds (a hung Redis: TCP alone would not tell) or any error on either connection
  drops both, and the link reconnects every ``retry`` seconds (with jitter, growing to
  ``retry_cap``). ``on_state`` hears each change once: one log line per change, never
  one per publish.
* **A refused command is that command's failure, not the link's.** Redis answers an
  error (over ``maxmemory`` with ``noeviction``, a read-only replica, an ACL) to one
  command and goes on with the next: the link stays up while Redis answers. Each
  refusal is counted; ``on_refusal`` hears when Redis starts refusing a command (with
  its error) and when it took it again and refused none for REFUSAL_QUIET seconds: one
  log line each per episode. Dropping the link instead resent the refused command on
  every reconnection, and every worker flapped twice a second (docs/cluster.md,
  "Failures").
* **The subscriber** is read by a thread of its own, whatever the loop is doing, and
  what it reads is applied on the loop, bounded (swoolish.worker.subscriber). If Redis
  drops it anyway (``CLIENT KILL TYPE pubsub``, its output buffer limit), the whole
  link is rebuilt and the restart is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from .subscriber import READ_SIZE, BusReader, Subscriber, describe_error

__all__ = ["BusLink", "LinkDown", "retry_delay"]

log = logging.getLogger("swoolish.cluster")

HEALTH_INTERVAL = 1.0  # seconds between PINGs on the publisher connection
LINK_TIMEOUT = 2.0  # a command unanswered this long: the link is down
RETRY = 0.5  # seconds between reconnection attempts at first
RETRY_CAP = 5.0  # ... growing to this after RETRY_STEADY seconds of failures
RETRY_STEADY = 10
MAX_PENDING = 16 * 1024 * 1024  # bytes buffered, written and unanswered
ESSENTIAL_ROOM = 1024 * 1024  # ... and how far past it an essential publish may go
MAX_BEHIND = 16 * 1024 * 1024  # read and not applied: past it, dropped (worker.subscriber)
ESSENTIAL_BEHIND = 1024 * 1024  # ... and how far past it a disconnect may still wait
REFUSAL_QUIET = 5.0  # a refused command taken again and refused no more this long: told


class LinkDown(ConnectionError):
    """Why the link went down (its message is the one log line)."""


def retry_delay(attempt: int, draw: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before reconnection attempt ``attempt`` (1, 2, …): ``RETRY`` with
    jitter for the first ``RETRY_STEADY`` attempts (a Redis back after a short outage is
    used again within about a second), then growing to ``RETRY_CAP``."""
    growth = min(attempt - RETRY_STEADY, 16)  # 1.5**16 > RETRY_CAP / RETRY: no overflow
    base = RETRY if growth <= 0 else min(RETRY_CAP, RETRY * 1.5**growth)
    return draw(0.8 * base, 1.2 * base)


def _connection(url: str, sync: bool = False) -> Any:
    """A redis-py connection for ``url`` (``redis://``, ``rediss://``, ``unix://``):
    asyncio, or ``sync`` for the subscriber's thread. Without redis-py's retries or
    socket timeout: this link has its own (a retried command on a hung Redis waited a
    minute in the measurements behind docs/cluster.md)."""
    from redis.backoff import NoBackoff

    if sync:
        from redis.connection import Connection, parse_url
        from redis.retry import Retry
    else:
        from redis.asyncio.connection import Connection, parse_url  # type: ignore[assignment]
        from redis.asyncio.retry import Retry  # type: ignore[assignment]

    kwargs = parse_url(url)
    connection_class = kwargs.pop("connection_class", Connection)
    return connection_class(  # type: ignore[misc]
        **kwargs,
        socket_timeout=None,
        socket_connect_timeout=LINK_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        client_name="swoolish",
        protocol=2,  # RESP2: messages are plain replies, one parser path
        **({"socket_read_size": READ_SIZE} if sync else {}),
    )


class BusLink:
    """Publishes in call order without awaiting; subscribes; reconnects by itself."""

    def __init__(
        self,
        url: str,
        channels: list[bytes],
        reader: BusReader,
        on_state: Callable[[bool, str], None],
        loop: asyncio.AbstractEventLoop,
        max_pending: int = MAX_PENDING,
        max_behind: int = MAX_BEHIND,
        on_refusal: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_refusal(command, error)``: Redis started refusing ``command``;
        ``on_refusal(command, "")``: it takes it again (see module doc)."""
        self.url = url
        self.channels = channels
        self.reader = reader
        self.on_state = on_state
        self.on_refusal = on_refusal
        self.loop = loop
        self.max_pending = max_pending
        self.up = False
        self.changed_at = loop.time()  # when ``up`` last changed
        self.reason = "connecting"  # why it is down (for status)
        self.ups = 0  # times the link came up
        self._down_told = False  # on_state heard of this episode of being down
        self.subscriber_restarts = 0
        self.max_behind = max_behind
        self._pub: Any = None
        self._subscriber: Subscriber | None = None
        self._buffer: list[bytes] = []  # packed commands not written yet
        self._buffered = 0  # bytes in _buffer
        self._commands = 0  # commands in _buffer (each gets one reply)
        self._unanswered: deque[tuple[int, int, float]] = deque()  # (commands, bytes, when)
        self._unanswered_bytes = 0
        self.refused = 0  # commands Redis answered with an error
        self.refusing: dict[str, _Refusal] = {}  # command -> its episode of refusals
        self._sent = 0  # commands packed on this connection (each gets one reply) ...
        self._replies = 0  # ... and replies read: the next reply answers command number this
        self._named: deque[tuple[int, str]] = deque()  # (number, name) of non-PUBLISH ones
        self._flush_scheduled = False
        self._settled: list[asyncio.Future[None]] = []
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] | None = None

    # -- publishing (synchronous for the caller)

    def publish(
        self, channel: bytes, payload: bytes, now: bool = False, essential: bool = False
    ) -> bool:
        """Hand one message to the bus: False, with nothing sent, when the link is down
        or ``max_pending`` bytes wait already (an ``essential`` one: ESSENTIAL_ROOM more)."""
        size = len(payload) + len(channel) + 32
        room = self.max_pending + ESSENTIAL_ROOM if essential else self.max_pending
        if not self.up or self._buffered + self._unanswered_bytes + size > room:
            return False
        # RESP2 (https://redis.io/docs/latest/develop/reference/protocol-spec/)
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n"
        self._buffer.append(head % (len(channel), channel, len(payload)))
        self._buffer.append(payload)
        self._buffer.append(b"\r\n")
        self._buffered += size
        self._commands += 1
        self._sent += 1
        if now:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)
        return True

    def command(self, *args: str | bytes | int) -> bool:
        """Any other command, fire-and-forget, in order with the publishes (its reply
        is read and dropped; an error reply is logged)."""
        if not self.up:
            return False
        packed = self._pub.pack_command(*args)
        self._buffer.extend(packed)
        self._buffered += sum(len(part) for part in packed)
        self._commands += 1
        name = args[0]
        self._named.append((self._sent, name.decode() if isinstance(name, bytes) else str(name)))
        self._sent += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Write what is buffered, as one write (write-combining)."""
        self._flush_scheduled = False
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        size, self._buffered = self._buffered, 0
        commands, self._commands = self._commands, 0
        if not self.up or self._pub is None:
            return  # lost with the link: at most once (docs/cluster.md)
        self._unanswered.append((commands, size, self.loop.time()))
        self._unanswered_bytes += size
        # redis-py's writer is a plain asyncio StreamWriter: write() is synchronous and
        # never blocks; what the kernel does not take waits in the transport, counted
        # above in _unanswered_bytes, so max_pending bounds it.
        self._pub._writer.writelines(buffer)

    def catch_up(self) -> None:
        """Apply the control messages the subscriber read and the loop has not applied
        yet (heartbeats among them): before judging who is silent."""
        if self._subscriber is not None:
            self._subscriber.apply_urgent()

    @property
    def behind(self) -> int:
        """Bytes the subscriber read and the worker has not applied yet."""
        return self._subscriber.waiting if self._subscriber is not None else 0

    @property
    def pending(self) -> int:
        """Bytes handed to the link and not yet answered by Redis."""
        return self._buffered + self._unanswered_bytes

    async def settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until Redis answered everything published
        so far: from then on another connection's publishes come after ours (a session
        that moves to another worker keeps its order, docs/cluster.md "Reloads")."""
        self.flush()
        if not self.up or not self._unanswered:
            return True
        future = self.loop.create_future()
        self._settled.append(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False

    # -- running

    def start(self) -> None:
        self._runner = self.loop.create_task(self._run())

    async def wait_up(self, timeout: float) -> bool:
        deadline = self.loop.time() + timeout
        while not self.up and self.loop.time() < deadline and not self._closing:
            await asyncio.sleep(0.01)
        return self.up

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        await self._drop()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                await asyncio.wait_for(self._connect(), LINK_TIMEOUT)
            except (OSError, TimeoutError, Exception) as exc:
                await self._drop()
                self._went_down(describe_error(exc), was_up=False)
                attempt += 1
                await asyncio.sleep(retry_delay(attempt))
                continue
            attempt = 0
            self._lost = self.loop.create_future()
            tasks = [
                self.loop.create_task(self._read_replies()),
                self.loop.create_task(self._watch_subscriber()),
                self.loop.create_task(self._check_health()),
            ]
            self._went_up()
            try:
                reason = await self._lost
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._drop()
            self._went_down(reason, was_up=True)
            if not self._closing:
                await asyncio.sleep(retry_delay(1))

    async def _connect(self) -> None:
        self._pub = _connection(self.url)
        await self._pub.connect()
        self._subscriber = Subscriber(
            functools.partial(_connection, self.url, sync=True),
            self.channels,
            self.reader,
            self.loop,
            self.max_behind,
            ESSENTIAL_BEHIND,
        )
        self._subscriber.start()
        await self._subscriber.subscribed

    async def _drop(self) -> None:
        if self._pub is not None:
            with contextlib.suppress(Exception):
                await self._pub.disconnect(nowait=True)
        if self._subscriber is not None:
            self._subscriber.stop()
        self._pub = self._subscriber = None

    def _lose(self, reason: str) -> None:
        """The link broke: nothing more is published from now on (the connections
        close on the next iterations)."""
        self.up = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    @property
    def reconnects(self) -> int:
        """Times the link came back after being up."""
        return max(0, self.ups - 1)

    def _went_up(self) -> None:
        self._sent = self._replies = 0  # a new connection: its replies count from 0
        self._named.clear()
        self.ups += 1
        self._down_told = False
        self.up = True
        self.changed_at = self.loop.time()
        self.reason = ""
        self.on_state(True, "")

    def _went_down(self, reason: str, was_up: bool) -> None:
        self._buffer.clear()
        self._buffered = self._commands = 0
        self._unanswered.clear()
        self._unanswered_bytes = 0
        self._wake_settled()
        self.up = False
        self.reason = reason
        if was_up:
            self.changed_at = self.loop.time()
        if not self._down_told and not self._closing:
            self._down_told = True
            self.on_state(False, reason)  # once per change, never once per attempt

    async def _read_replies(self) -> None:
        """Every reply, in command order. redis-py raises an error reply (a
        ``ResponseError``) rather than return it; the reply was read whole, so the
        connection goes on (see module doc). Anything else breaks the link."""
        from redis.exceptions import ResponseError  # redis-py: cluster mode only

        pub = self._pub
        try:
            while True:
                try:
                    await pub.read_response(disconnect_on_error=False)
                    error = ""
                except ResponseError as exc:
                    error = describe_error(exc)
                self._replied(error)
                self._answered()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lose(f"publisher connection: {describe_error(exc)}")

    def _replied(self, error: str) -> None:
        """The reply to the next command: ``error`` if Redis refused it."""
        number = self._replies
        self._replies = number + 1
        named = self._named
        name = named.popleft()[1] if named and named[0][0] == number else "PUBLISH"
        if error:
            self._refused(name, error)
        elif self.refusing:
            episode = self.refusing.get(name)
            if episode is not None:
                episode.taken = True

    def _refused(self, name: str, error: str) -> None:
        """Counted each time; told once, when an episode starts."""
        self.refused += 1
        episode = self.refusing.get(name)
        if episode is not None:
            episode.last = self.loop.time()
            episode.taken = False
            return
        self.refusing[name] = _Refusal(error, self.loop.time())
        if self.on_refusal is not None:
            self.on_refusal(name, error)

    def _end_refusals(self) -> None:
        """An episode ends once its command was taken again and none was refused for
        REFUSAL_QUIET seconds (a command refused on some channels and taken on others
        stays one episode, not a line per message)."""
        now = self.loop.time()
        for name, episode in list(self.refusing.items()):
            if episode.taken and now - episode.last >= REFUSAL_QUIET:
                del self.refusing[name]
                if self.on_refusal is not None:
                    self.on_refusal(name, "")

    def _answered(self) -> None:
        unanswered = self._unanswered
        if not unanswered:
            return
        commands, size, when = unanswered[0]
        if commands > 1:
            unanswered[0] = (commands - 1, size, when)
            return
        unanswered.popleft()
        self._unanswered_bytes -= size
        if not unanswered:
            self._wake_settled()

    def _wake_settled(self) -> None:
        waiters, self._settled = self._settled, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def _watch_subscriber(self) -> None:
        """The subscriber reads by itself (swoolish.worker.subscriber); when Redis drops
        it, the whole link is rebuilt."""
        reason = await self._subscriber.lost  # type: ignore[union-attr]
        self.subscriber_restarts += 1
        self._lose(f"subscriber connection: {reason}")

    async def _check_health(self) -> None:
        """PING every HEALTH_INTERVAL; the oldest unanswered command past LINK_TIMEOUT
        means a Redis that is hung or unreachable. Not judged on a round that woke late:
        the loop was busy, and the answers may be waiting unread in the socket (a worker
        busy for seconds declared a healthy Redis down)."""
        pause = HEALTH_INTERVAL / 2
        while True:
            woke = self.loop.time() + pause
            await asyncio.sleep(pause)
            if self.loop.time() - woke > pause:
                continue  # late: let the reply reader have its turn first
            if self.refusing:
                self._end_refusals()
            unanswered = self._unanswered
            if unanswered and self.loop.time() - unanswered[0][2] > LINK_TIMEOUT:
                self._lose(f"no answer from Redis within {LINK_TIMEOUT:g}s")
                return
            if not unanswered or self.loop.time() - unanswered[-1][2] >= HEALTH_INTERVAL:
                self.command("PING")


class _Refusal:
    """One episode of Redis refusing one command."""

    __slots__ = ("error", "last", "taken")

    def __init__(self, error: str, last: float) -> None:
        self.error = error  # the first refusal's error
        self.last = last  # when it was last refused
        self.taken = False  # taken since then
