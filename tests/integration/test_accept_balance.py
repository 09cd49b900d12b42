"""The accept balance on real processes (docs/deployment.md, "How clients are spread over
the workers"): clients that connect one after another spread over every worker, and a
stopped worker never leaves a client waiting on a paused one."""

from __future__ import annotations

import contextlib
import json
from collections import Counter

import psutil
import pytest
from support import Client, run_cli, serving

TARGET = "tests/apps/global_app.py:server"
# The clients live across test steps (a reader thread each), not in a with block.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


@contextlib.contextmanager
def clients(server, count: int):
    made: list[Client] = []
    try:
        for _ in range(count):
            made.append(Client(server))
        yield made
    finally:
        for client in made:
            client.close()


def test_clients_connecting_one_by_one_spread_over_every_worker(tmp_path):
    """Without the balance the scheduler decides: measured 50 / 35 / 33 / 2 of 120."""
    with serving(TARGET, tmp_path, workers=4) as server, clients(server, 100) as made:
        per_worker = Counter(c.worker_id for c in made)
        assert set(per_worker) == {0, 1, 2, 3}
        assert min(per_worker.values()) >= 10, per_worker
        stats = made[0].ask("server_stats")
        assert stats["totals"]["accept_pauses"] > 0
        report = json.loads(run_cli("status", "--port", str(server.port), "--json").stdout)
        shown = {w["slot"]: w["accept_pauses"] for w in report["workers"]}
        # A worker may still pause after the first look (its check runs 5 ms after its
        # last accept): the counter status shows lies between two server_stats() looks.
        after = made[0].ask("server_stats")
        for before_w, after_w in zip(stats["workers"], after["workers"], strict=True):
            slot = before_w["worker_id"]
            assert before_w["accept_pauses"] <= shown[slot] <= after_w["accept_pauses"]


def test_a_stopped_worker_never_leaves_clients_waiting(tmp_path):
    """One of two workers is stopped (SIGSTOP): the other goes over its share, pauses,
    and still takes every client, since they wait in the listen queue."""
    with serving(TARGET, tmp_path, workers=2) as server:
        stopped = server.workers()[0]
        stopped.suspend()
        try:
            with clients(server, 20) as made:
                served_by = {c.worker_id for c in made}
                assert len(served_by) == 1
                stats = made[0].ask("server_stats")
                running = [w for w in stats["workers"] if w["worker_pid"] != stopped.pid]
                assert running[0]["accept_pauses"] > 0
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                stopped.resume()
        assert "Traceback" not in server.log()
