"""The pure parts of the master's metrics endpoint and systemd notifier: request
parsing, the retired-workers tally, NOTIFY_SOCKET addresses (master/metrics.py,
master/notify.py); and the endpoint's catch-alls, on a real loopback socket. The
served endpoint is tested in tests/integration/test_metrics.py."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import read_to_eof, timeout, wait_until

from swoolish.master import metrics
from swoolish.master.metrics import (
    WORKER_STATES,
    MetricsServer,
    Snapshot,
    Tally,
    WorkerSample,
    head_end,
    parse_request,
    registry_for,
    render,
)
from swoolish.master.notify import Notifier, address_of


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", ("GET", "/metrics")),
        (b"GET /metrics?name[]=a HTTP/1.0", ("GET", "/metrics")),
        (b"HEAD /healthz HTTP/1.1\r\nA: b\r\nC:d", ("HEAD", "/healthz")),
        (b"GET http://host:9109/metrics HTTP/1.1", ("GET", "/metrics")),
        (b"GET /metrics HTTP/2.0", None),
        (b"GET  /metrics HTTP/1.1", None),
        (b"GET /metrics", None),
        (b"get /metrics HTTP/1.1", None),
        (b"GET metrics HTTP/1.1", None),
        (b"GET /metrics HTTP/1.1\r\nno colon here", None),
        (b"GET /m\xe9trics HTTP/1.1", None),
        (b"", None),
        (b"GET http://[/metrics HTTP/1.1", None),  # urlsplit: "Invalid IPv6 URL"
        (b"GET https://[::1/healthz HTTP/1.1", None),
        (b"GET http://[::1]:9109/healthz HTTP/1.1", ("GET", "/healthz")),
        (b"GET /metrics HTTP/1.1\nHost: x", ("GET", "/metrics")),  # bare LF (RFC 9112 §2.2)
        (b"GET /metrics HTTP/1.1\r\nHost: x\ny: z", ("GET", "/metrics")),
        (b"GET /metrics HTTP/1.1\rHost: x", None),  # a bare CR is invalid
        (b"GET /metrics HTTP/1.1\r\nHost: x\ry", None),
    ],
)
def test_parse_request(head, expected):
    assert parse_request(head) == expected


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", (23, 27)),
        (b"GET / HTTP/1.1\nHost: x\n\nrest", (22, 24)),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", (23, 26)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
        (b"GET / HTTP/1.1\r\n\r", None),
    ],
)
def test_head_end_takes_crlf_and_bare_lf(buffer, expected):
    assert head_end(buffer) == expected


def test_totals_keep_exited_workers_and_never_go_down():
    tally = Tally()
    old = WorkerSample(0, 10, 1, "stopping", {"messages_in": 5, "connections": 2})
    new = WorkerSample(0, 11, 2, "serving", {"messages_in": 1, "connections": 2})
    before = Snapshot(2, (old, new), tally, 0)
    assert (before.total("messages_in"), before.now("connections")) == (6, 4)
    tally.retire(old.figures)
    after = Snapshot(2, (new,), tally, 0)
    assert (after.total("messages_in"), after.now("connections")) == (6, 2)
    tally.retire({"messages_in": True, "connections": 7})  # not counters: ignored
    assert after.total("messages_in") == 6 and tally.retired["connections"] == 0


def test_exposition_parses_with_prometheus_client():
    tally = Tally()
    tally.reloads["rolled_back"] += 1
    tally.handed_off({"moved": 3, "fell_back": 1})
    snap = Snapshot(4, (WorkerSample(0, 1, 4, "serving", {"push_too_large": 2}),), tally, 7)
    body, content_type = render(registry_for(lambda: snap))
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("swoolish_generation", ())] == 4
    assert samples[("swoolish_reloads_total", (("result", "rolled_back"),))] == 1
    assert samples[("swoolish_reloads_total", (("result", "ok"),))] == 0
    assert samples[("swoolish_handoff_moved_total", ())] == 3
    assert samples[("swoolish_push_failures_total", (("reason", "too_large"),))] == 2
    assert samples[("swoolish_routed_dropped_total", ())] == 7


def test_cluster_refused_commands_are_a_counter_summed_and_kept():
    """Commands Redis refused (each worker's cluster_refused_commands) are
    swoolish_cluster_refused_commands_total: the live workers' sum plus those of the
    workers that exited, with its HELP. Before, the figure was only in swoolish
    status, and no such series was served."""
    tally = Tally()
    tally.retire({"cluster_refused_commands": 4})  # a worker gone in a reload
    workers = (
        WorkerSample(0, 1, 2, "serving", {"cluster_refused_commands": 3}),
        WorkerSample(1, 2, 2, "serving", {"cluster_refused_commands": 2}),
    )
    body, _ = render(registry_for(lambda: Snapshot(2, workers, tally, 0)))
    (family,) = (
        f
        for f in text_string_to_metric_families(body.decode())
        if f.name == "swoolish_cluster_refused_commands"
    )
    assert family.type == "counter"
    assert "Redis answered with an error" in family.documentation
    assert [(s.name, s.value) for s in family.samples if s.name.endswith("_total")] == [
        ("swoolish_cluster_refused_commands_total", 9)
    ]


def test_notify_socket_addresses():
    assert address_of("/run/systemd/notify") == "/run/systemd/notify"
    assert address_of("@abstract/name") == b"\0abstract/name"
    assert address_of("vsock:2:1234") is None


def test_notifier_takes_the_variable_out_of_the_environment():
    environ = {"NOTIFY_SOCKET": "@x", "OTHER": "1"}
    notifier = Notifier.from_environ(environ)
    try:
        assert environ == {"OTHER": "1"} and notifier.active
    finally:
        notifier.close()
    silent = Notifier.from_environ({})
    assert not silent.active
    silent.ready("nothing to tell")  # no socket: a no-op


def test_a_worker_gone_with_connections_counts_them_closed():
    """A worker killed between two polls held connections by its last figures: they
    went with it, so opened minus closed stays what the live workers hold (before, it
    stayed off by them for good)."""
    tally = Tally()
    killed = WorkerSample(0, 10, 1, "serving", {"accepted": 10, "closed": 7, "connections": 3})
    tally.retire(killed.figures)
    snap = Snapshot(1, (), tally, 0)
    assert snap.total("accepted") - snap.total("closed") == 0


def test_every_worker_state_is_reported_even_at_zero():
    """``swoolish_workers{state}`` has a sample for every state, 0 where no worker is in
    it: with the only worker killed, serving reads 0 (before: the series vanished, and
    an alert on serving < 1 never fired)."""
    snap = Snapshot(1, (WorkerSample(0, 1, 1, "booting", {}),), Tally(), 0)
    body, _ = render(registry_for(lambda: snap))
    workers = {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "swoolish_workers"
    }
    assert workers == {state: 0 for state in WORKER_STATES} | {"booting": 1}


# -- one scraper's fault (listeners.ClientFaults): on a real socket, with a real selector


class Endpoint:
    """A MetricsServer on a free loopback port, served from a selector the test turns
    as the master's loop does; the workers' figures it polls for come when the test
    calls the poll's ``done`` (``polls``)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.polls: list[Callable[[], None]] = []
        snapshot = Snapshot(1, (WorkerSample(0, 1, 1, "serving", {"accepted": 3}),), Tally(), 0)
        self.server = MetricsServer(
            "127.0.0.1", 0, self.selector, lambda: True, self.polls.append, lambda: snapshot
        )

    def turn_until(self, predicate: Callable[[], Any], what: str) -> None:
        """Run the endpoint's part of the master's loop until ``predicate`` holds. What
        the endpoint raises comes out here, as it would end the master's loop (and the
        master's end is every worker's)."""

        def turned() -> Any:
            for key, events in self.selector.select(0.02):
                self.server.handle(key.data, events, time.monotonic())
            return predicate()

        wait_until(turned, what=what)

    def scrape(self) -> socket.socket:
        """A scraper's connection, its request for /metrics sent."""
        sock = socket.create_connection(self.server.address, timeout=timeout(5))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return sock

    def close(self) -> None:
        self.server.close()
        self.selector.close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    try:
        yield served
    finally:
        served.close()


def fail_first_call(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the first call to master/metrics.py's ``name`` raise RuntimeError, as a bug
    that one client's request reaches would; later calls do what it does."""
    original = getattr(metrics, name)
    calls = 0

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError(f"a fault in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, name, failing_once)


FAULT_LOGGED = "metrics: serving a client failed (RuntimeError: a fault in {name})"


def test_a_fault_reading_one_scrape_hangs_up_on_that_scraper_alone(endpoint, monkeypatch, caplog):
    """1. parsing the first scraper's request raises  2. that scraper is hung up on
    (EOF, no answer) and the fault is logged  3. the endpoint raised nothing out of
    its loop, and the next scraper gets its figures. Without the catch-all in
    MetricsServer._read the RuntimeError leaves the master's loop: the master ends,
    and every worker with it, because of one request."""
    fail_first_call(monkeypatch, "parse_request")
    logged = FAULT_LOGGED.format(name="parse_request")
    with endpoint.scrape() as faulty:
        endpoint.turn_until(lambda: logged in caplog.text, "the fault to be logged")
        assert read_to_eof(faulty) == b""
    assert not endpoint.server.clients
    with endpoint.scrape() as next_scraper:
        endpoint.turn_until(lambda: endpoint.polls, "the next scrape to wait for figures")
        endpoint.polls.pop()()
        answer = read_to_eof(next_scraper)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"swoolish_generation 1.0" in answer


def test_a_fault_answering_one_of_two_waiting_scrapes_spares_the_other(
    endpoint, monkeypatch, caplog
):
    """1. two scrapes wait for one poll of the workers' figures  2. building the first
    one's answer raises  3. that scraper is hung up on (EOF) and the fault is logged;
    the other gets its figures from the same poll. Without the catch-all in
    MetricsServer._figures_in the RuntimeError leaves the master's loop (ending the
    master), and the second scrape is never answered."""
    with endpoint.scrape() as first, endpoint.scrape() as second:
        endpoint.turn_until(lambda: len(endpoint.server.waiting) == 2, "both scrapes waiting")
        assert len(endpoint.polls) == 1, "one poll serves every scrape waiting"
        fail_first_call(monkeypatch, "response")
        endpoint.polls.pop()()
        assert read_to_eof(first) == b""
        answer = read_to_eof(second)
    assert FAULT_LOGGED.format(name="response") in caplog.text
    assert answer.startswith(b"HTTP/1.1 200 ") and b"swoolish_generation 1.0" in answer
    assert not endpoint.server.clients
