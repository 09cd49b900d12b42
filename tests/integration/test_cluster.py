"""Cluster mode on real processes: two or three swoolish nodes sharing a real
redis-server; sessions of every node reached by id (docs/cluster.md)."""

from __future__ import annotations

import contextlib
import json

import pytest
from support import ROOT, Client, ServerProcess, free_port, timeout, wait_until

TARGET = "tests/apps/global_app.py:server"
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def start_node(tmp_path, redis_url: str, workers: int = 2, *extra: str) -> ServerProcess:
    port = free_port()
    args = ["serve", TARGET, "--port", str(port), "--workers", str(workers),
            "--redis-url", redis_url, *extra]
    return ServerProcess(args, port, ROOT, tmp_path / f"node-{port}.log")


@contextlib.contextmanager
def nodes(tmp_path, redis_url: str, count: int = 2, workers: int = 2):
    """``count`` nodes of one cluster, each serving and linked to Redis."""
    started: list[ServerProcess] = []
    try:
        for _ in range(count):
            started.append(start_node(tmp_path, redis_url, workers))
        for node in started:
            node.wait_ready(workers)
            node.wait_for_log(r"cluster bus connected", 10, count=workers)
        yield started
    finally:
        for node in started:
            node.stop()


def client_on(node: ServerProcess, worker_id: int | None = None) -> Client:
    """A client of ``node`` (of its worker ``worker_id``, if given)."""
    spare = []
    try:
        for _ in range(200):
            client = Client(node)
            if worker_id is None or client.worker_id == worker_id:
                return client
            spare.append(client)
        raise AssertionError(f"no client landed on worker {worker_id}")
    finally:
        for client in spare:
            client.close()


def wait_visible(asker: Client, fds: list[int], seconds: float = 10.0) -> None:
    """Until ``asker``'s worker sees every one of ``fds`` as existing."""
    ids = ",".join(str(fd) for fd in fds)
    wait_until(
        lambda: all(v[0] for v in asker.ask(f"exists:{ids}").values()),
        seconds,
        what=f"{fds} visible from worker {asker.worker_id} of node {asker.node}",
    )


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
