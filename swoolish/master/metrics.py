"""Prometheus metrics and a health check, served by the master (docs/deployment.md).

With ``metrics_port`` set, the master listens on ``(host, metrics_port)`` and answers
``GET /metrics`` (the Prometheus text format, written by ``prometheus_client``) and
``GET /healthz`` (200 while a worker serves, else 503). It serves them from its own
selector loop, never from a thread: the master forks, and a thread holding a lock at a
fork leaves that lock held forever in the child.

Like the control socket (master/control.py), this endpoint never blocks the master and
never lets a client take it down: sockets are non-blocking and every answer is
written as the client takes it; a client that does not send its request within
``REQUEST_TIMEOUT`` seconds, or does not take its answer within ``ANSWER_TIMEOUT``, is
dropped; a request over ``MAX_REQUEST`` bytes or malformed gets a 400 and a hang-up;
``accept`` errors are survived as the control socket survives them; anything else
that goes wrong with one client is logged (listeners.ClientFaults) and that client hung
up on. Every answer closes the connection.

Clients are held in two bounded groups, so that connections that send nothing never
keep a scrape out. At most ``MAX_READERS`` connections whose request has not come yet:
a newcomer over that takes the place of the oldest, which is read first (its request
may sit unread in the kernel's buffer, and a complete request is served, never
dropped) and gets a 503 if it still has none. At most ``MAX_CLIENTS`` answers under way
(scrapes waiting for the workers' figures, answers being written): a scrape over that
gets a 503. A newcomer's request is read as it is accepted, since a scraper sends it
right behind the connection; ``/healthz`` and the errors are answered at once, under a
flood of scrapes too. Every client turned away gets its 503, and what it sent is read
before the close: a socket closed with unread input resets the connection, and the
reset can destroy the answer in flight (RFC 9112 §9.6).

A scrape asks the workers for fresh figures, as ``swoolish status`` does; the answer
leaves once they all replied or after the master's status deadline, with the last
figures known. Scrapes that arrive while one poll is out share it.

The figures are the sum of the workers' latest figures plus, for the counters, a
:class:`Tally` the master keeps for its whole life: the final figures of every worker
that exited, so a ``*_total`` never goes down when an old worker leaves after a reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import selectors
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from ..core.stats import COUNTERS
from . import listeners

if TYPE_CHECKING:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "MetricsClient",
    "MetricsServer",
    "Snapshot",
    "Tally",
    "WorkerSample",
    "head_end",
    "listen",
    "parse_request",
    "render",
]

log = logging.getLogger("swoolish.master")

MAX_CLIENTS = 16  # answers under way at once (scrapes waiting for figures, being written)
MAX_READERS = 16  # connections held whose request has not come yet
MAX_REQUEST = 8 * 1024  # bytes of request head; a scraper sends a few hundred
REQUEST_TIMEOUT = 5.0  # seconds a client gets to send its request
READ_SIZE = 16 * 1024  # bytes read at once: more than MAX_REQUEST, so one read decides
ANSWER_TIMEOUT = 10.0  # seconds a client gets, after its request, to take the answer
ACCEPTS_PER_PASS = 16  # connections taken per readable event, so the loop moves on
BACKLOG = 64
#: A worker process's states as the master tracks them (master/supervisor.py), each
#: reported in ``swoolish_workers{state}`` whether or not a worker is in it.
WORKER_STATES = ("booting", "serving", "paused", "stopping", "killed")

_HEAD_END = re.compile(rb"\r?\n\r?\n")  # the empty line that ends a request head

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

# (family name, worker counter, help): counters summed over the workers (COUNTERS).
COUNTER_FAMILIES = (
    ("swoolish_connections_opened", "accepted", "Connections accepted (HTTP and WebSocket)."),
    ("swoolish_connections_closed", "closed", "Connections closed (HTTP and WebSocket)."),
    ("swoolish_http_requests", "requests", "HTTP requests answered by the request handler."),
    ("swoolish_websockets_opened", "websocket_opened", "WebSocket handshakes accepted."),
    ("swoolish_messages_in", "messages_in", "WebSocket messages received."),
    ("swoolish_messages_out", "messages_out", "WebSocket messages sent."),
    ("swoolish_handler_errors", "handler_errors", "Handler calls that raised."),
    ("swoolish_handoff_adopted", "adopted", "WebSockets a new worker adopted in a reload."),
    ("swoolish_accept_pauses", "accept_pauses", "Times a worker over its share stopped accepting."),
    (
        "swoolish_capacity_pauses",
        "capacity_pauses",
        "Times a worker at max_connections stopped accepting (TLS: handshakes included).",
    ),
    (
        "swoolish_heap_trimmed_bytes",
        "heap_trimmed_bytes",
        "Bytes of free heap memory workers gave back to the system (memory_trim).",
    ),
    ("swoolish_cluster_messages_out", "cluster_out", "Messages published on the cluster bus."),
    ("swoolish_cluster_messages_in", "cluster_in", "Messages of other nodes applied."),
    ("swoolish_cluster_link_losses", "cluster_link_losses", "Cluster bus links lost (Redis)."),
    (
        "swoolish_cluster_refused_commands",
        "cluster_refused_commands",
        "Cluster bus commands Redis answered with an error (OOM, READONLY, an ACL); "
        "the link stays up.",
    ),
    (
        "swoolish_cluster_dropped",
        "cluster_dropped",
        "Messages of other nodes dropped: the worker was too far behind applying them.",
    ),
)
# reason label -> worker counter, for swoolish_push_failures_total.
PUSH_FAILURES = (
    ("closed", "push_to_closed"),
    ("over_buffer", "push_over_buffer"),
    ("too_large", "push_too_large"),
    ("cluster_refused", "cluster_push_refused"),  # another node's session: see docs/cluster.md
)
# (family name, worker figure, help): what is open now, summed over live workers.
GAUGE_FAMILIES = (
    ("swoolish_connections", "connections", "Open connections (HTTP and WebSocket)."),
    ("swoolish_websocket_connections", "websocket_connections", "Open WebSockets."),
    ("swoolish_timers", "timers", "Active timers."),
)


# ---------------------------------------------------------------------- the figures


@dataclasses.dataclass(frozen=True)
class WorkerSample:
    """One live worker as the master knows it: ``figures`` is its last report."""

    slot: int
    pid: int
    generation: int
    state: str
    figures: Mapping[str, Any]


@dataclasses.dataclass
class Tally:
    """What the master counts for its whole life (the reload history is truncated, and
    a worker's counters leave with it)."""

    retired: Counter[str] = dataclasses.field(default_factory=Counter)  # exited workers
    reloads: Counter[str] = dataclasses.field(default_factory=Counter)  # ok / rolled_back
    handoff_moved: int = 0
    handoff_fell_back: int = 0
    worker_restarts: int = 0  # workers that died without being told to stop
    recycles: Counter[str] = dataclasses.field(default_factory=Counter)  # max_request: ok / …

    def retire(self, figures: Mapping[str, Any]) -> None:
        """Keep an exited worker's final counters, so the totals never go down.

        The connections it still held by those figures went with it: they count as
        closed, so that opened minus closed stays what the workers hold. A worker that
        exits cleanly reports none; one killed between two polls held some, and after
        three kill -9 the difference stayed at 7 with no connection open."""
        for name in COUNTERS:
            value = _int(figures.get(name))
            if value:
                self.retired[name] += value
        self.retired["closed"] += max(0, _int(figures.get("connections")))

    def handed_off(self, handoff: Mapping[str, Any] | None) -> None:
        """Add the hand-off figures of an old worker's ``Exiting`` message."""
        if handoff:
            self.handoff_moved += int(handoff.get("moved", 0))
            self.handoff_fell_back += int(handoff.get("fell_back", 0))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports."""

    generation: int
    workers: tuple[WorkerSample, ...]
    tally: Tally
    routed_dropped: int

    def total(self, name: str) -> int:
        """A counter over the master's life: live workers' latest plus exited ones'."""
        live = sum(_int(w.figures.get(name)) for w in self.workers)
        return live + self.tally.retired.get(name, 0)

    def now(self, name: str) -> int:
        """A gauge: the sum of the live workers' latest figures."""
        return sum(_int(w.figures.get(name)) for w in self.workers)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class _SnapshotCollector:
    """A ``prometheus_client`` custom collector over the master's snapshot."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """The families of one scrape (prometheus_client is imported only when metrics
        are served: it costs every CLI command a tenth of a second)."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        snap = self.source()
        yield GaugeMetricFamily(
            "swoolish_generation", "The generation of workers serving.", value=snap.generation
        )
        states = GaugeMetricFamily(
            "swoolish_workers", "Worker processes by state.", labels=["state"]
        )
        counts = Counter(w.state for w in snap.workers)
        # Every state, 0 included: a series that vanished while no worker is serving (a
        # crash loop) would never fire an alert on serving < 1 (docs/deployment.md).
        for state in (*WORKER_STATES, *sorted(set(counts) - set(WORKER_STATES))):
            states.add_metric([state], counts[state])
        yield states
        for name, figure, text in GAUGE_FAMILIES:
            yield GaugeMetricFamily(name, text, value=snap.now(figure))
        for name, figure, text in COUNTER_FAMILIES:
            yield CounterMetricFamily(name, text, value=snap.total(figure))
        pushes = CounterMetricFamily(
            "swoolish_push_failures",
            "Pushes refused: to a closed session, over the output buffer, too large.",
            labels=["reason"],
        )
        for reason, figure in PUSH_FAILURES:
            pushes.add_metric([reason], snap.total(figure))
        yield pushes
        yield from self._master_counters(snap, CounterMetricFamily)
        yield self._rss(snap, GaugeMetricFamily)

    @staticmethod
    def _master_counters(snap: Snapshot, family: type[CounterMetricFamily]) -> Iterator[Metric]:
        tally = snap.tally
        reloads = family("swoolish_reloads", "Rolling reloads by result.", labels=["result"])
        for result in ("ok", "rolled_back"):
            reloads.add_metric([result], tally.reloads.get(result, 0))
        yield reloads
        yield family(
            "swoolish_handoff_moved",
            "WebSockets an old worker moved to its successor in a reload.",
            value=tally.handoff_moved,
        )
        yield family(
            "swoolish_handoff_fell_back",
            "WebSockets an old worker could not move in a reload (closed with 1012).",
            value=tally.handoff_fell_back,
        )
        yield family(
            "swoolish_routed_dropped",
            "Operations on other workers' sessions the master dropped (a worker not reading).",
            value=snap.routed_dropped,
        )
        yield family(
            "swoolish_worker_restarts",
            "Workers that died without being told to stop (a crash, a signal from outside).",
            value=tally.worker_restarts,
        )
        recycles = family(
            "swoolish_worker_recycles",
            "Workers replaced after max_request, by result (rolled_back: the old one kept on).",
            labels=["result"],
        )
        for result in ("ok", "rolled_back"):
            recycles.add_metric([result], tally.recycles.get(result, 0))
        yield recycles

    @staticmethod
    def _rss(snap: Snapshot, family: type[GaugeMetricFamily]) -> Metric:
        import psutil

        rss = family(
            "swoolish_worker_resident_memory_bytes",
            "Resident memory of each worker process.",
            labels=["slot", "pid"],
        )
        for worker in sorted(snap.workers, key=lambda w: (w.slot, w.pid)):
            with contextlib.suppress(psutil.Error):
                value = psutil.Process(worker.pid).memory_info().rss
                rss.add_metric([str(worker.slot), str(worker.pid)], value)
        return rss


def registry_for(source: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry with the snapshot's collector and the master's own process metrics."""
    from prometheus_client import ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(cast("Collector", _SnapshotCollector(source)))
    ProcessCollector(namespace="swoolish_master", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition of ``registry`` and its content type."""
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


# ---------------------------------------------------------------------- HTTP


def parse_request(head: bytes) -> tuple[str, str] | None:
    """Method and path of an HTTP/1.x request head (RFC 9112 §3), or None if malformed.

    The head is everything before the blank line. Header fields are only checked for
    their colon: nothing here depends on them.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    request_line, *fields = _lines(text)
    if "\r" in text.replace("\r\n", "\n"):
        return None  # a bare CR is invalid (RFC 9112 §2.2)
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method.isalpha() or not method.isupper() or version not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    if any(":" not in line for line in fields):
        return None
    if target.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
        try:
            target = urlsplit(target).path or "/"
        except ValueError:  # e.g. "http://[": an authority urlsplit cannot parse
            return None
    if not target.startswith("/"):
        return None
    return method, target.partition("?")[0]


def _lines(head: str) -> list[str]:
    """The lines of a request head, each ended by CRLF or by a bare LF, which RFC 9112
    §2.2 lets a recipient take as a line terminator (docs/deployment.md)."""
    return [line.removesuffix("\r") for line in head.split("\n")]


def head_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the head of the request in ``buffer`` ends and its blank line ends, or
    None while the blank line has not come; CRLF or bare LF alike (RFC 9112 §2.2)."""
    found = _HEAD_END.search(buffer)
    return None if found is None else found.span()


def response(status: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        + ("Allow: GET, HEAD\r\n" if status == 405 else "")
        + "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


def listen(host: str, port: int) -> socket.socket:
    """The metrics listening socket; a one-line ``SettingError`` if it cannot be bound."""
    return listeners.bind(host, port, BACKLOG, "serve metrics on", "--metrics-port")


class MetricsClient:
    """One scraper's connection: reading its request, waiting for figures, writing."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.out = b""
        self.state = "reading"  # reading -> waiting (for the workers) -> writing
        self.head_only = False  # a HEAD request: the answer without its body
        self.events = 0  # what the selector watches for now
        self.closed = False


class MetricsServer:
    """The metrics endpoint, served from the master's selector.

    ``healthy()`` says whether a generation serves; ``poll(done)`` asks the workers for
    fresh figures and calls ``done`` once they answered or the deadline passed;
    ``snapshot()`` gives the figures to report.
    """

    def __init__(
        self,
        host: str,
        port: int,
        selector: selectors.BaseSelector,
        healthy: Callable[[], bool],
        poll: Callable[[Callable[[], None]], None],
        snapshot: Callable[[], Snapshot],
    ) -> None:
        self.sock = listen(host, port)
        self.selector = selector
        self.healthy = healthy
        self.poll = poll
        self.registry = registry_for(snapshot)
        self.clients: list[MetricsClient] = []  # oldest first
        self.waiting: list[MetricsClient] = []  # scrapes waiting for the workers' figures
        self.paused_until: float | None = None
        self._failures = listeners.AcceptFailures("metrics")
        self._faults = listeners.ClientFaults("metrics")
        selector.register(self.sock, selectors.EVENT_READ, self)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def owns(self, data: Any) -> bool:
        """Whether a selector key's data is this endpoint's (the socket or a client)."""
        return data is self or isinstance(data, MetricsClient)

    def handle(self, data: Any, events: int, now: float) -> None:
        """The selector reported ``events`` on the listening socket or a client."""
        if data is self:
            self._accept(now)
        elif data.closed:
            return  # dropped earlier in the same pass of the loop (to make room)
        elif events & selectors.EVENT_WRITE:
            self._flush(data)
        elif events & selectors.EVENT_READ:
            self._read(data, now)

    def expire(self, now: float) -> None:
        """Drop clients past their deadline; poll the listening socket again after a pause."""
        for client in [c for c in self.clients if now >= c.deadline]:
            self._drop(client)
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            self.selector.register(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        """Close the endpoint and every client (the master, at exit)."""
        for client in list(self.clients):
            self._drop(client)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()

    def forget(self) -> None:
        """Close every socket without touching the selector: a forked worker must hold
        no copy of them (a scraper would never see its connection end)."""
        for client in self.clients:
            with contextlib.suppress(OSError):
                client.sock.close()
        self.clients = []
        self.sock.close()

    # -- accepting

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_PASS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc, now)
                return
            conn.setblocking(False)
            client = MetricsClient(conn, now + REQUEST_TIMEOUT)
            self.clients.append(client)
            self._read(client, now)  # a scraper's request comes right behind it
            if client.closed or client.state != "reading":
                continue
            if self._count("reading") > MAX_READERS:
                self._make_room(now, client)
            self._watch(client, selectors.EVENT_READ)

    def _count(self, *states: str) -> int:
        """Held clients in one of ``states`` (at most MAX_CLIENTS + MAX_READERS)."""
        return sum(1 for c in self.clients if c.state in states)

    def _answers(self) -> int:
        """Answers under way: scrapes waiting for the figures, answers being written."""
        return self._count("waiting", "writing")

    def _make_room(self, now: float, newcomer: MetricsClient | None = None) -> bool:
        """Take the oldest connection whose request has not come (other than
        ``newcomer``) out of the readers; False if there is none.

        It is read first, since what it sent may sit unread in the kernel's buffer: a
        complete request is served or, with every place for answers taken, refused
        like any other. Only a connection that still has sent no complete request is
        turned away for the newcomer, with a 503. Bounded: one read.
        """
        oldest = next((c for c in self.clients if c.state == "reading" and c is not newcomer), None)
        if oldest is None:
            return False
        self._read(oldest, now)
        if not oldest.closed and oldest.state == "reading":
            self._refuse(oldest)
        return True

    def _refuse(self, client: MetricsClient) -> None:
        """Turn ``client`` away with a 503 rather than a bare hang-up, so a scraper knows
        the endpoint is busy (docs/deployment.md); a 503 the socket does not take at
        once is not waited for."""
        with contextlib.suppress(OSError):
            busy = response(503, b"busy\n", "text/plain; charset=utf-8", client.head_only)
            client.sock.send(busy, socket.MSG_DONTWAIT)
        self._drop(client)

    def _accept_failed(self, exc: OSError, now: float) -> None:
        """Keep the master alive whatever ``accept`` raised (listeners.AcceptFailures)."""
        self.paused_until = self._failures.pause_until(exc, lambda: self._make_room(now))
        if self.paused_until is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)

    # -- one client

    def _read(self, client: MetricsClient, now: float) -> None:
        """Read from ``client`` and answer it once its request has come. Whatever goes
        wrong with one client is that client's fault: it is logged and the client hung
        up on, and the master serves on (docs/deployment.md)."""
        try:
            self._read_request(client, now)
        except Exception as exc:
            self._faults.failed(exc)
            self._drop(client)

    def _read_request(self, client: MetricsClient, now: float) -> None:
        try:
            chunk = client.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(client)
            return
        client.buffer += chunk
        end = head_end(client.buffer)
        if end is None:
            if len(client.buffer) > MAX_REQUEST:
                self._answer(client, 400, b"request too large\n")
            return
        head = client.buffer[: end[0]]
        if len(head) > MAX_REQUEST:
            self._answer(client, 400, b"request too large\n")
            return
        client.deadline = now + ANSWER_TIMEOUT
        client.state = "routing"  # out of the readers' count, not yet an answer's
        self._route(client, parse_request(head))

    def _route(self, client: MetricsClient, request: tuple[str, str] | None) -> None:
        if request is None:
            self._answer(client, 400, b"bad request\n")
            return
        method, path = request
        if path not in ("/metrics", "/healthz"):
            self._answer(client, 404, b"not found; try /metrics or /healthz\n")
            return
        if method not in ("GET", "HEAD"):
            self._answer(client, 405, b"method not allowed\n")
            return
        client.head_only = method == "HEAD"
        if path == "/healthz":
            ok = self.healthy()
            self._answer(client, 200 if ok else 503, b"ok\n" if ok else b"not serving\n")
            return
        if self._answers() >= MAX_CLIENTS:
            self._refuse(client)
            return
        client.state = "waiting"
        self._watch(client, 0)
        self.waiting.append(client)
        if len(self.waiting) == 1:  # one poll of the workers serves every scrape waiting
            self.poll(self._figures_in)

    def _figures_in(self) -> None:
        """The workers answered (or the deadline passed): answer every waiting scrape."""
        waiting, self.waiting = self.waiting, []
        live = [c for c in waiting if not c.closed]
        if not live:
            return
        try:
            body, content_type = render(self.registry)
        except Exception:
            log.exception("metrics: could not render the figures")
            for client in live:
                self._answer(client, 503, b"could not render the figures\n")
            return
        for client in live:
            try:
                self._answer(client, 200, body, content_type)
            except Exception as exc:  # one client's fault, as in _read
                self._faults.failed(exc)
                self._drop(client)

    def _answer(
        self,
        client: MetricsClient,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        """Queue the whole response and write what the socket takes now; an answer
        the socket does not take at once waits only in a free place (MAX_CLIENTS)."""
        fits = client.state in ("waiting", "writing") or self._answers() < MAX_CLIENTS
        client.state = "writing"
        client.out = response(status, body, content_type, client.head_only)
        self._flush(client)
        if not fits:
            self._drop(client)

    def _flush(self, client: MetricsClient) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        client.out = client.out[sent:]
        if client.out:
            self._watch(client, selectors.EVENT_WRITE)
        else:
            self._drop(client)

    def _watch(self, client: MetricsClient, events: int) -> None:
        """Have the selector watch ``client`` for ``events`` (0: not at all)."""
        if events == client.events:
            return
        if client.events and events:
            self.selector.modify(client.sock, events, client)
        elif events:
            self.selector.register(client.sock, events, client)
        else:
            self.selector.unregister(client.sock)
        client.events = events

    def _drop(self, client: MetricsClient) -> None:
        """Close ``client``, reading first what it sent and nobody read (_discard_input)."""
        if client.closed:
            return
        client.closed = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._watch(client, 0)
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        _discard_input(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()


def _discard_input(sock: socket.socket) -> None:
    """Read what the client sent and nobody read (past its request, or all of it when
    it is refused): closing a socket with unread input resets the connection, and the
    reset may destroy the answer in flight (RFC 9112 §9.6). Bounded: four reads."""
    with contextlib.suppress(OSError):
        for _ in range(4):
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return
