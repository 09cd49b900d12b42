"""Server-wide sessions on real processes: 4 workers, clients addressed by session id
from any worker; broadcast; worker-to-worker messages; a reload in the middle."""

from __future__ import annotations

import contextlib
import json
import signal
from collections import defaultdict

import pytest
from support import Client, serving, timeout, wait_until, write_app

TARGET = "tests/apps/global_app.py:server"
# The clients live across test steps (a reader thread each), not in a with block.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
WORKERS = 4


@contextlib.contextmanager
def clients_on_every_worker(server, count: int):
    """At least ``count`` clients, with every worker owning some of them."""
    clients: list[Client] = []
    try:
        while len(clients) < count or len({c.worker_id for c in clients}) < WORKERS:
            assert len(clients) < 400, "the kernel never spread clients over every worker"
            clients.append(Client(server))
        yield clients
    finally:
        for client in clients:
            client.close()


def one_per_worker(clients: list[Client]) -> dict[int, Client]:
    return {c.worker_id: c for c in reversed(clients)}


def test_clients_on_different_workers_message_each_other_by_id(tmp_path):
    """1. 40+ clients over 4 workers  2. each pushes to the next one's id (another worker's
    session for most)  3. every message arrives at exactly the right client."""
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 40) as clients,
    ):
        ids = [c.fd for c in clients]
        assert len(set(ids)) == len(ids) and all(0 < i < 2**53 for i in ids)
        n = len(clients)
        for round_ in range(3):
            for i, client in enumerate(clients):
                target = clients[(i + 1) % n]
                client.send(f"say:{target.fd}:to {target.fd} from {client.fd} #{round_}")
        for i, client in enumerate(clients):
            sender = clients[(i - 1) % n]
            assert client.take(3) == [f"to {client.fd} from {sender.fd} #{r}" for r in range(3)]
        crossed = sum(clients[i].worker_id != clients[(i + 1) % n].worker_id for i in range(n))
        assert crossed > 0
        assert "Traceback" not in server.log()


def test_exists_and_client_info_agree_from_every_worker(tmp_path):
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 12) as clients,
    ):
        ids = ",".join(str(c.fd) for c in clients)
        for asker in one_per_worker(clients).values():
            answer = asker.ask(f"exists:{ids}")
            assert answer == {str(c.fd): [True, True] for c in clients}
            assert asker.ask("exists:999999999") == {"999999999": [False, False]}
        by_worker = one_per_worker(clients)
        a, b = by_worker[0], by_worker[1]
        info = a.ask(f"info:{b.fd}")
        assert info["fd"] == b.fd and info["worker_id"] == 1 and info["websocket_status"] == 3
        assert info["remote_ip"] == "127.0.0.1" and info["remote_port"] > 0
        everyone = a.ask("connections")
        assert sorted(everyone["all"]) == sorted(c.fd for c in clients)
        assert set(everyone["local"]) == {c.fd for c in clients if c.worker_id == 0}


def test_disconnect_from_another_worker(tmp_path):
    """1. worker 0's client disconnects worker 1's client with 4000  2. it is closed with
    4000 "bye"  3. exists() is False and push returns False, from every worker."""
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 8) as clients,
    ):
        by_worker = one_per_worker(clients)
        asker, victim = by_worker[0], by_worker[1]
        assert asker.ask(f"disconnect:{victim.fd}:4000") == {"disconnected": True}
        wait_until(lambda: victim.closed is not None, 10, what="the victim closed")
        assert victim.closed.rcvd is not None
        assert (victim.closed.rcvd.code, victim.closed.rcvd.reason) == (4000, "bye")
        for client in by_worker.values():
            if client is victim:
                continue
            assert client.ask(f"exists:{victim.fd}") == {str(victim.fd): [False, False]}
            assert client.ask(f"push:{victim.fd}:late") == {"pushed": False}
        assert asker.ask(f"disconnect:{victim.fd}:4000") == {"disconnected": False}


def test_broadcast_reaches_every_client_exactly_once(tmp_path):
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 40) as clients,
    ):
        clients[0].send("broadcast:hello all")
        clients[-1].send("broadcast:marker")  # after it: no second "hello all" may come
        for client in clients:
            got = client.take(2)
            assert sorted(got) == ["hello all", "marker"] or got == ["hello all", "marker"]
        for client in clients:
            client.send("ping")
            assert client.take() == ["pong"]
        some = [c.fd for c in clients[:10]] + [999999999]
        answer = clients[10].ask(f"broadcast_to:{','.join(map(str, some))}:picked")
        assert answer == {"handed": 10}
        for client in clients[:10]:
            assert client.take() == ["picked"]


def test_send_message_and_pipe_message_round_trip(tmp_path):
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 4) as clients,
    ):
        for asker in one_per_worker(clients).values():
            for target in range(WORKERS):
                reply = asker.ask(f"pipe:{target}:hi {target}")
                assert reply == {"pipe": f"hi {target}", "src": asker.worker_id, "at": target}
        error = clients[0].ask("pipe:9:nobody")["error"]
        assert "unknown worker id 9" in error and "0, 1, 2, 3" in error
        stats = clients[0].ask("server_stats")
        assert {w["worker_id"] for w in stats["workers"]} == set(range(WORKERS))
        assert stats["totals"]["websocket_connections"] == len(clients)


def test_reloads_during_cross_worker_traffic(tmp_path):
    """1. 40 clients keep messaging each other by id  2. three reloads (live hand-off:
    senders and receivers move, each to another worker) happen meanwhile  3. no
    exception; every message reaches the client it was addressed to, in order per
    sender; ids stay and stay unique."""
    reloads = {15: 2, 35: 3, 55: 4}  # round -> the generation that reload starts
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 40) as clients,
    ):
        n = len(clients)
        sent: dict[int, int] = defaultdict(int)
        for round_ in range(75):
            if round_ in reloads:
                server.signal(signal.SIGUSR1)
            for i, client in enumerate(clients):
                target = clients[(i * 7 + 3) % n]
                client.send(f"say:{target.fd}:{target.fd}|{client.fd}|{round_}")
                sent[target.fd] += 1
            if round_ - 10 in reloads:
                generation = reloads[round_ - 10]
                server.wait_for_log(rf"reload to generation {generation} complete", 15)
        server.wait_for_log(r"drained", 15, count=WORKERS * len(reloads))
        for client in clients:
            got = client.take(sent[client.fd], seconds=20)
            per_sender: dict[int, list[int]] = defaultdict(list)
            for message in got:
                to, sender, seq = (int(x) for x in message.split("|"))
                assert to == client.fd  # never a message addressed to someone else
                per_sender[sender].append(seq)
            for seqs in per_sender.values():
                assert seqs == sorted(seqs)  # no reordering
        ids = ",".join(str(c.fd) for c in clients)
        answer = clients[0].ask(f"exists:{ids}")
        assert answer == {str(c.fd): [True, True] for c in clients}
        assert "Traceback" not in server.log()


def test_broadcasts_during_reloads_reach_every_client_once_in_order(tmp_path):
    """1. 60 clients over 4 workers; one of them broadcasts a numbered message every
    round (it moves too)  2. two reloads (live hand-off) happen meanwhile  3. every
    client gets every broadcast exactly once, in order: none lost in transit, none
    doubled."""
    reloads = {10: 2, 30: 3}  # round -> the generation that reload starts
    rounds = 50
    with (
        serving(TARGET, tmp_path, workers=WORKERS) as server,
        clients_on_every_worker(server, 60) as clients,
    ):
        for round_ in range(rounds):
            if round_ in reloads:
                server.signal(signal.SIGUSR1)
            clients[0].send(f"broadcast:{round_}")  # one sender: its order must hold
            if round_ - 10 in reloads:
                generation = reloads[round_ - 10]
                server.wait_for_log(rf"reload to generation {generation} complete", 15)
        server.wait_for_log(r"drained", 15, count=WORKERS * len(reloads))
        clients[0].send("broadcast:end")  # a doubled message would come before it
        expected = [str(i) for i in range(rounds)] + ["end"]
        for client in clients:
            wait_until(lambda c=client: "end" in c.received, 20, what="the end marker")
        for client in clients:
            assert client.received == expected, f"client {client.fd}: {client.received}"
        assert "Traceback" not in server.log()


def test_ids_unique_across_several_reloads(tmp_path):
    seen: set[int] = set()
    with serving(TARGET, tmp_path, workers=WORKERS) as server:
        keep: list[Client] = []
        try:
            for generation in range(1, 5):
                fresh = [Client(server) for _ in range(10)]
                assert not {c.fd for c in fresh} & seen
                seen.update(c.fd for c in fresh)
                keep.extend(fresh)
                if generation < 4:
                    server.signal(signal.SIGUSR1)
                    server.wait_for_log(rf"reload to generation {generation + 1} complete", 20)
            server.wait_for_log(r"drained", 20, count=3 * WORKERS)
            ids = ",".join(str(c.fd) for c in keep)
            answer = keep[-1].ask(f"exists:{ids}")
            assert answer == {str(c.fd): [True, True] for c in keep}  # moved, same ids
        finally:
            for client in keep:
                client.close()


def test_sessions_of_a_draining_worker_read_as_gone(tmp_path):
    """Without hand-off a reload closes the old workers' sessions with 1012: once a
    client saw its close, no worker lists its session any more."""
    app = write_app(
        tmp_path,
        """
        import tests.apps.global_app as base

        server = base.server
        server.set(reload_handoff=False)
        """,
    )
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        old = [Client(server) for _ in range(6)]
        try:
            server.signal(signal.SIGUSR1)
            for client in old:
                wait_until(lambda c=client: c.closed is not None, 15, what="a 1012 close")
                assert client.closed.rcvd is not None and client.closed.rcvd.code == 1012
            probe = Client(server)
            ids = ",".join(str(c.fd) for c in old)
            assert probe.ask(f"exists:{ids}") == {str(c.fd): [False, False] for c in old}
            assert probe.ask("connections")["all"] == [probe.fd]
            probe.close()
        finally:
            for client in old:
                client.close()


def test_chat_example_with_four_workers(tmp_path):
    """examples/chat.py: every member gets every message once, whichever worker it is on."""
    with (
        serving("examples/chat.py:server", tmp_path, workers=WORKERS) as server,
        contextlib.ExitStack() as stack,
    ):
        members = []
        while len(members) < 12 or len({m[1] for m in members}) < 2:
            assert len(members) < 200
            ws = stack.enter_context(server.connect("/chat"))
            joined = json.loads(ws.recv(timeout=timeout(5)))  # its own join, at least
            assert joined["event"] == "joined"
            members.append((ws, None, joined["from"]))
            ws.send(json.dumps({"text": "whoami"}))
            while True:
                message = json.loads(ws.recv(timeout=timeout(5)))
                if message.get("text") == "whoami" and message["from"] == joined["from"]:
                    members[-1] = (ws, message["worker"], joined["from"])
                    break
        for ws, _, _ in members:  # drain the join announcements and whoami echoes
            ws.send(json.dumps({"text": "sync"}))
        for ws, _, _ in members:
            wanted = {m[2] for m in members}
            while wanted:
                message = json.loads(ws.recv(timeout=timeout(5)))
                if message.get("text") == "sync":
                    wanted.discard(message["from"])
        first = members[0]
        first[0].send(json.dumps({"text": "hello room"}))
        for ws, _, _ in members:
            message = json.loads(ws.recv(timeout=timeout(5)))
            assert message == {"from": first[2], "text": "hello room", "worker": first[1]}
