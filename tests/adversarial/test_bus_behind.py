"""Cluster mode when a node cannot keep up with what the bus brings (docs/cluster.md,
"Failures"): Redis closes a subscriber that falls 32 MiB behind, and with it every
message of that moment and the node's liveness. A worker's subscriber is read by a
thread of its own, whatever the loop does; what the worker cannot apply in time is
dropped past a bound, counted, and the link stays up.

Real processes: a real ``redis-server`` with its default ``client-output-buffer-limit
pubsub 32mb 8mb 60``, two nodes of one worker each.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from support import Client, nodes, run_cli, wait_until, wait_visible

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

BIG = 1000 * 1000  # characters of each broadcast (under the 1 MiB bus bound)
FLOOD = 48  # broadcasts: 48 MB, well past Redis's 32 MiB for one subscriber


def worker_status(node) -> dict:
    result = run_cli("status", "--port", str(node.port), "--json")
    assert result.returncode == 0, result.stderr
    (worker,) = json.loads(result.stdout)["workers"]
    return worker


def test_a_busy_worker_keeps_its_link_and_drops_what_it_cannot_apply(tmp_path, redis_server):
    """1. node B's only worker blocks its loop (a slow synchronous call)  2. meanwhile
    node A broadcasts 48 messages of 1 MB; once A's own client has them all, B's call
    returns  3. B's link never went down: no "cluster bus down" line, no subscriber
    restart, Redis closed no client  4. B counts the messages it dropped (over its
    16 MiB bound) in ``cluster_dropped`` and logs the episode once  5. B's client got
    the broadcasts B kept, in order, and a push from A reaches it as before (once A
    hears B again: a loop blocked over 3 s is a node declared down)."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1, b2 = Client(a), Client(b), Client(b)
        try:
            wait_visible(a1, [b1.fd, b2.fd])
            gate = tmp_path / "unblock"
            b2.send(f"block:{gate}")
            assert b2.take(1, 5) == ["blocking"]
            for i in range(FLOOD):
                a1.send(f"broadcast:{i:02d}:" + "x" * BIG)
            got = a1.take(FLOOD, 30)  # A applied every one: all were published or refused
            assert [m[:2] for m in got] == [f"{i:02d}" for i in range(FLOOD)]
            gate.touch()
            assert b2.take(1, 30) == ["unblocked"]

            wait_until(
                lambda: a1.ask(f"push:{b1.fd}:after") == {"pushed": True}, 10, what="push to B"
            )
            wait_until(lambda: "after" in b1.received, 10, what="A's push after the flood at B")
            kept = [m[:2] for m in b1.received if m != "after"]
            assert len(b1.received) == len(kept) + 1
            assert kept == sorted(kept), "the broadcasts B kept arrived out of order"
            assert 0 < len(kept) < FLOOD

            assert "cluster bus down" not in b.log()
            worker = worker_status(b)
            assert worker["cluster"]["subscriber_restarts"] == 0
            assert worker["cluster"]["reconnects"] == 0
            late = Client(b)  # b1 and b2 hold the broadcasts: a client with an empty inbox
            try:
                stats = late.ask("server_stats")
            finally:
                late.close()
            assert stats["totals"]["cluster_dropped"] > 0  # type: ignore[index]
            assert b.log().count("cluster_dropped") == 1  # one line for the episode
            redis_log = (tmp_path / f"redis-{redis_server.port}.log").read_text()
            assert "overcoming of output buffer limits" not in redis_log
        finally:
            for client in (a1, b1, b2):
                client.close()
        assert "Traceback" not in a.log() + b.log()


def test_a_publisher_runs_no_further_ahead_of_its_own_subscriber_than_its_bound(
    tmp_path, redis_server
):
    """1. Redis stops (SIGSTOP): nothing published comes back  2. node A's worker
    broadcasts 12 messages of 1 MB in one handler call  3. the first 8 are handed to the
    bus (A's client and B's session: 2 each), the rest reach A's own client only: 8 MiB
    of A's broadcasts not read back by A's own subscriber is the bound (a publisher
    faster than the subscribers filled Redis's buffers for them until Redis closed
    them), below the 16 MiB any publish may wait for  4. Redis back: broadcasts reach B
    again."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                a1.send(f"broadcast_many:12:{BIG}")
                *own, reply = a1.take(13, 30)  # its own 12 broadcasts, then the answer
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            assert [m.split(":")[0] for m in own] == [str(i) for i in range(12)]
            assert json.loads(reply) == {"handed": [2] * 8 + [1] * 4}
            wait_until(lambda: len(b1.received) == 8, 10, what="B's 8 broadcasts")
            assert [m.split(":")[0] for m in b1.received] == [str(i) for i in range(8)]
        finally:
            a1.close()
            b1.close()
        assert "Traceback" not in a.log() + b.log()


def worker_figures(client: Client) -> dict[int, dict]:
    """``server_stats()`` of ``client``'s node, per worker_id."""
    report = client.ask("server_stats")
    return {w["worker_id"]: w for w in report["workers"]}  # type: ignore[index]


def test_only_the_answering_worker_applies_exists_remote_questions(tmp_path, redis_server):
    """Every worker of a node reads its channel, but only slot 0 answers an
    ``exists_remote`` question, and only the asker uses the answer: 1. node A asks 300
    questions about a session of node B  2. all are answered True  3. B's worker 1 did
    not apply them (its ``cluster_in`` grew by far less than 300: a flood of questions
    cost every worker of the node as much as the one answering), worker 0 did."""
    with nodes(tmp_path, redis_server.url, workers=2) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            before = worker_figures(b1)
            assert a1.ask(f"exists_remote_many:{b1.fd}:300") == {"exists": 300}
            after = worker_figures(b1)
            applied = {w: after[w]["cluster_in"] - before[w]["cluster_in"] for w in (0, 1)}
            assert applied[0] >= 300, applied
            assert applied[1] < 100, applied  # heartbeats only (2 a second)
        finally:
            a1.close()
            b1.close()
        assert "Traceback" not in a.log() + b.log()
