"""The pure parts of the master's metrics endpoint and systemd notifier: request
parsing, the retired-workers tally, NOTIFY_SOCKET addresses (master/metrics.py,
master/notify.py). The served endpoint is tested in tests/integration/test_metrics.py."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swoolish.master.metrics import (
    WORKER_STATES,
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
