"""Cluster mode on real processes: two or three swoolish nodes sharing a real
redis-server; sessions of every node reached by id (docs/cluster.md)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time

import pytest
from support import (
    REDIS_SERVER,
    ROOT,
    Client,
    RedisServer,
    ServerProcess,
    free_port,
    nodes,
    run_cli,
    timeout,
    wait_until,
    wait_visible,
)

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def test_push_exists_disconnect_across_nodes(tmp_path, redis_server):
    """1. two nodes, a client on each  2. ids carry the node, below 2**53  3. each pushes
    to the other by id  4. exists/connections agree from both  5. disconnect(4000) from
    the other node closes with 4000 and exists turns False at once."""
    with nodes(tmp_path, redis_server.url) as (a, b):
        alice, bob = Client(a), Client(b)
        try:
            assert alice.node != bob.node and alice.node > 0 and bob.node > 0
            assert alice.fd >> 33 == alice.node and bob.fd >> 33 == bob.node
            assert alice.fd < 2**53 and bob.fd < 2**53
            wait_visible(alice, [bob.fd])
            wait_visible(bob, [alice.fd])
            assert alice.ask(f"push:{bob.fd}:hello bob") == {"pushed": True}
            assert bob.take() == ["hello bob"]
            assert bob.ask(f"push:{alice.fd}:hello alice") == {"pushed": True}
            assert alice.take() == ["hello alice"]
            everyone = alice.ask("connections")
            assert {alice.fd, bob.fd} <= set(everyone["all"])
            assert alice.ask(f"exists_remote:{bob.fd}") == {"exists": True}
            gone = (bob.node << 33) | 999_999
            assert alice.ask(f"exists_remote:{gone}") == {"exists": False}
            assert alice.ask(f"push:{gone}:x") == {"pushed": False}
            assert alice.ask(f"disconnect:{bob.fd}:4000") == {"disconnected": True}
            assert alice.ask(f"exists:{bob.fd}") == {str(bob.fd): [False, False]}
            wait_until(lambda: bob.closed is not None, 10, what="bob closed")
            assert (bob.closed.rcvd.code, bob.closed.rcvd.reason) == (4000, "bye")
            assert alice.ask(f"push:{bob.fd}:late") == {"pushed": False}
        finally:
            alice.close()
            bob.close()
        for node in (a, b):
            assert "Traceback" not in node.log()


class Streamer(threading.Thread):
    """Numbered messages for ``target``, each handled (and pushed by id) by the sender's
    worker, sent without pause until stopped: they span whatever happens meanwhile."""

    def __init__(self, sender: Client, target: int) -> None:
        super().__init__(daemon=True)
        self.sender, self.target = sender, target
        self.sent = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sender.send(f"say:{self.target}:s{self.sent}")
            self.sent += 1
            if self.sent % 20 == 0:
                time.sleep(0.001)  # about 10,000 a second: steady, not a flood

    def finish(self) -> int:
        self._done.set()
        self.join(timeout(10))
        return self.sent


def _check_sequence(received: list[str], total: int) -> None:
    got = [int(m[1:]) for m in received if m.startswith("s")]
    duplicated = len(got) - len(set(got))
    lost = total - len(set(got))
    reordered = sum(1 for x, y in itertools.pairwise(got) if y < x)
    missing = sorted(set(range(total)) - set(got))
    assert (lost, duplicated, reordered) == (0, 0, 0), (lost, duplicated, reordered, missing[:20])


@pytest.mark.parametrize("reloaded", ["receiver", "sender"])
def test_order_across_a_reload_of_either_node(tmp_path, redis_server, reloaded):
    """1. a client on A streams numbered messages to a client on B (A pushes each by id)
    2. meanwhile the receiver's (or the sender's) node reloads: its sessions move to
    the new workers (live hand-off)  3. every message arrives once, in order."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        sender, target = Client(a), Client(b)
        try:
            wait_visible(sender, [target.fd])
            streamer = Streamer(sender, target.fd)
            streamer.start()
            wait_until(lambda: streamer.sent > 300, 10, what="the stream under way")
            node = b if reloaded == "receiver" else a
            node.signal(signal.SIGUSR1)
            node.wait_for_log(r"reload to generation 2 complete", 20)
            node.wait_for_log(r"1 moved to the new worker", 20)
            mark = streamer.sent
            wait_until(lambda: streamer.sent > mark + 300, 10, what="the stream going on")
            total = streamer.finish()
            with contextlib.suppress(AssertionError):  # what is missing is told below
                wait_until(lambda: len(target.received) >= total, 10, what=f"{total} messages")
            got = target.take(len(target.received))
            _check_sequence(got, total)
            assert sender.closed is None and target.closed is None
        finally:
            sender.close()
            target.close()
        for node in (a, b):
            assert "Traceback" not in node.log()


def test_status_shows_the_cluster(tmp_path, redis_server):
    """1. two nodes, clients on both  2. ``swoolish status`` of A names its node, the
    link, and node B with its sessions; ``--json`` has the same figures  3. a broadcast
    from A reaches B's clients and is counted as bus traffic."""
    with nodes(tmp_path, redis_server.url) as (a, b):
        alice, bob, carol = Client(a), Client(b), Client(b)
        try:
            wait_visible(alice, [bob.fd, carol.fd])
            alice.send("broadcast:hello all")
            assert bob.take() == ["hello all"] and carol.take() == ["hello all"]

            def shown() -> dict | None:
                report = json.loads(run_cli("status", "--port", str(a.port), "--json").stdout)
                cluster = report["cluster"]
                seen = cluster["nodes"].get(str(bob.node))
                return report if seen and seen["sessions"] == 2 else None

            report = wait_until(shown, 10, what="node B with 2 sessions in A's status")
            cluster = report["cluster"]
            assert cluster["node"] == alice.node and cluster["link"] == "up"
            assert cluster["workers_linked"] == 2 and cluster["messages_out"] > 0
            assert all(w["cluster"]["link"] == "up" for w in report["workers"])
            text = run_cli("status", "--port", str(a.port)).stdout
            assert f"this is node {alice.node}: link up (2 workers)" in text
            assert f"node {bob.node}: 2 workers, 2 sessions" in text
        finally:
            for client in (alice, bob, carol):
                client.close()


def test_the_chat_example_runs_on_two_nodes_unchanged(tmp_path, redis_server):
    """1. examples/chat.py served by two nodes (only --redis-url added)  2. a client on
    each  3. what one says reaches the other, with its node-carrying session id."""
    started = []
    try:
        for _ in range(2):
            port = free_port()
            args = [
                "serve",
                "examples/chat.py:server",
                "--port",
                str(port),
                "--workers",
                "2",
                "--redis-url",
                redis_server.url,
            ]
            started.append(ServerProcess(args, port, ROOT, tmp_path / f"chat-{port}.log"))
        for node in started:
            node.wait_ready(2)
            node.wait_for_log(r"cluster bus connected", 10, count=2)
        a, b = started
        with a.connect("/chat") as alice, b.connect("/chat") as bob:

            def says(text: str) -> dict | None:
                alice.send(json.dumps({"text": text}))
                with contextlib.suppress(TimeoutError):
                    while True:
                        message = json.loads(bob.recv(timeout=timeout(1)))
                        if message.get("text") == text:
                            return message
                return None

            # Bob's node may hear of Alice's node a moment after both serve.
            heard = wait_until(lambda: says("hello from A"), 10, what="A's text on B")
            assert heard["from"] >> 33 != 0 and heard["from"] < 2**53
    finally:
        for node in started:
            node.stop()


def test_no_redis_at_start_is_one_line_and_exit_2(tmp_path):
    """A node whose Redis does not answer cannot take a node number: it retries for a
    few seconds, then says so in one line and exits 2 (nothing bound is left behind)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli(
        "serve",
        "tests/apps/global_app.py:server",
        "--port",
        str(free_port()),
        "--redis-url",
        dead,
        seconds=30,
    )
    assert result.returncode == 2
    assert f"swoolish: cannot reach Redis at {dead}" in result.stderr
    assert "Traceback" not in result.stderr


def test_send_message_to_a_worker_of_another_node(tmp_path, redis_server):
    """1. a client on A asks its worker to send_message to worker 1 of node B  2. B's
    worker 1 gets it in pipe_message (and pushes to the asker across the nodes)
    3. a node that is not live: False at once."""
    with nodes(tmp_path, redis_server.url) as (a, b):
        alice, bob = Client(a), Client(b)
        try:
            wait_visible(alice, [bob.fd])
            assert alice.ask(f"pipe_node:{bob.node}:1:hi there") == {"sent": True}
            wait_until(lambda: any("pipe" in m for m in alice.received), 10, what="the answer")
            answer = json.loads(next(m for m in alice.take(len(alice.received)) if "pipe" in m))
            assert answer == {"pipe": "hi there", "src": alice.worker_id, "at": 1}
            assert alice.ask(f"pipe_node:{bob.node + 1000}:1:nobody") == {"sent": False}
        finally:
            alice.close()
            bob.close()


def test_a_cluster_over_redis_unix_socket(tmp_path, redis_server):
    """``unix://`` URLs work as ``redis://`` ones: a push crosses two nodes."""
    with nodes(tmp_path, redis_server.unix_url, workers=1) as (a, b):
        alice, bob = Client(a), Client(b)
        try:
            wait_visible(alice, [bob.fd])
            assert alice.ask(f"push:{bob.fd}:over a unix socket") == {"pushed": True}
            assert bob.take() == ["over a unix socket"]
        finally:
            alice.close()
            bob.close()


def test_close_and_broadcast_to_chosen_sessions_across_nodes(tmp_path, redis_server):
    """1. broadcast(data, fds) with sessions of both nodes and a gone one: each listed
    live session gets it once, the count says so  2. close(fd) of another node's session
    closes it with 1000."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        alice, dave, bob, carol = Client(a), Client(a), Client(b), Client(b)
        try:
            wait_visible(alice, [bob.fd, carol.fd])
            gone = (bob.node << 33) | 999_999
            ids = f"{dave.fd},{bob.fd},{carol.fd},{gone}"
            assert alice.ask(f"broadcast_to:{ids}:chosen") == {"handed": 3}
            for client in (dave, bob, carol):
                assert client.take() == ["chosen"]
            assert alice.ask(f"close:{carol.fd}") == {"closed": True}
            wait_until(lambda: carol.closed is not None, 10, what="carol closed")
            assert carol.closed.rcvd is not None and carol.closed.rcvd.code == 1000
            wait_until(
                lambda: not alice.ask(f"exists:{carol.fd}")[str(carol.fd)][0],
                10,
                what="carol's close seen on node A",
            )
            assert bob.closed is None
        finally:
            for client in (alice, dave, bob, carol):
                client.close()


def test_a_cluster_over_tls_to_redis(tmp_path):
    """``rediss://`` (Redis over TLS, its CA given in the URL): a push crosses two nodes."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"{REDIS_SERVER} not installed (apt-get install redis-server)")
    redis_tls = RedisServer(tmp_path, tls=True)
    try:
        assert redis_tls.url.startswith("rediss://")
        with nodes(tmp_path, redis_tls.url, workers=1) as (a, b):
            alice, bob = Client(a), Client(b)
            try:
                wait_visible(alice, [bob.fd])
                assert alice.ask(f"push:{bob.fd}:over TLS") == {"pushed": True}
                assert bob.take() == ["over TLS"]
            finally:
                alice.close()
                bob.close()
    finally:
        redis_tls.stop()


def test_pushes_to_a_session_of_another_worker_of_the_node_are_not_counted_as_lost(
    tmp_path, redis_server
):
    """1. two nodes of 2 workers; alice on A pushes 10 messages to bob on B  2. bob gets
    them all  3. B counts none in cluster_to_closed: every worker of B reads a push, and
    the one that does not have bob counted each as a push to a closed session."""
    with nodes(tmp_path, redis_server.url) as (a, b):
        alice, bob = Client(a), Client(b)
        try:
            wait_visible(alice, [bob.fd])
            assert alice.ask(f"count:{bob.fd}:10") == {"refused": 0}
            assert bob.take(10) == [f"n{i}" for i in range(10)]
            assert bob.ask("server_stats")["totals"]["cluster_to_closed"] == 0
        finally:
            alice.close()
            bob.close()
