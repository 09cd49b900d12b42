"""Cluster mode when things fail, on real processes: a Redis that is killed and comes
back, a Redis that hangs (SIGSTOP), subscriber connections killed by Redis, a node
killed or stopped, a node restarted; and the order of many pushes to one session of
another node, alone and mixed with broadcasts (docs/cluster.md).

Every node here has one worker unless a test needs more; waits are on conditions with
deadlines, and the only time bounds asserted are the documented ones, with slack.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from support import (
    Client,
    client_on,
    nodes,
    over_maxmemory,
    run_cli,
    start_node,
    timeout,
    wait_linked,
    wait_until,
    wait_visible,
)

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

DOWN = "cluster bus down"
CONNECTED = "cluster bus connected"


def ask_within(asker: Client, text: str, seconds: float) -> object:
    """Send ``text``; its reply must come within ``seconds`` (a push that blocked on the
    bus would hold the worker's loop and miss it)."""
    asker.send(text)
    return json.loads(asker.take(1, seconds)[0])


def pushed(asker: Client, fd: int, text: str, seconds: float = 10) -> bool:
    """``server.push(fd, text)`` on ``asker``'s worker; what it returned."""
    reply = ask_within(asker, f"push:{fd}:{text}", seconds)
    assert isinstance(reply, dict), reply
    return reply["pushed"]


def exists(asker: Client, fd: int) -> list[bool]:
    """``[server.exists(fd), server.is_established(fd)]`` on ``asker``'s worker."""
    return asker.ask(f"exists:{fd}")[str(fd)]  # type: ignore[index]


def received(client: Client, text: str, seconds: float = 10) -> None:
    """Until ``client`` got ``text`` (taken out of its inbox)."""
    wait_until(lambda: text in client.received, seconds, what=f"{text!r} at {client.fd}")
    with client._lock:
        client.received.remove(text)


def log_count(node, text: str) -> int:
    return node.log().count(text)


def check_local(sender: Client, other: Client, tag: str, broadcast: bool = True) -> None:
    """1. a push from ``sender`` to ``other`` (same node) is handed and arrives
    2. a broadcast from ``sender`` reaches both."""
    assert pushed(sender, other.fd, f"{tag}-push") is True
    received(other, f"{tag}-push")
    if not broadcast:
        return
    sender.send(f"broadcast:{tag}-all")
    assert sender.take(1, 5) == [f"{tag}-all"]  # the sender's own inbox holds nothing else
    received(other, f"{tag}-all")


def no_tracebacks(*servers) -> None:
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-3000:]


def test_redis_killed_then_back(tmp_path, redis_server):
    """1. two nodes, each with an asking client (a1, b1) and a target (a2, b2)
    2. Redis is SIGKILLed: a push to the other node returns False once the link sees it
    (within ~2 s)  3. on each node a push and a broadcast among its own clients still
    work  4. 50 pushes and more to the other node while down: all refused, one "cluster
    bus down" line per worker for the whole episode  5. Redis starts again (empty): within
    1.5 s (+ slack) a push to the other node is handed and received, both ways
    6. "cluster bus connected" again, still one "down" line, no traceback."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, a2, b1, b2 = Client(a), Client(a), Client(b), Client(b)
        try:
            wait_visible(a1, [b1.fd, b2.fd])
            wait_visible(b1, [a1.fd, a2.fd])
            assert pushed(a1, b2.fd, "before") is True
            received(b2, "before")

            redis_server.stop()
            wait_until(lambda: not pushed(a1, b2.fd, "lost"), 4, what="A refusing pushes to B")
            wait_until(lambda: not pushed(b1, a2.fd, "lost"), 4, what="B refusing pushes to A")
            check_local(a1, a2, "a-down")
            check_local(b1, b2, "b-down")
            assert a1.ask(f"count:{b2.fd}:50") == {"refused": 50}
            assert b1.ask(f"count:{a2.fd}:50") == {"refused": 50}
            for i in range(10):
                assert pushed(a1, b2.fd, f"down{i}") is False
            assert a1.ask(f"exists:{b2.fd}") == {str(b2.fd): [False, False]}
            # the links have tried again (and failed) since: still one line each
            for asker in (a1, b1):
                wait_until(
                    lambda asker=asker: "refused" in worker_cluster(asker)["reason"].lower(),
                    4,
                    what="a failed reconnection attempt",
                )
            assert (log_count(a, DOWN), log_count(b, DOWN)) == (1, 1)

            redis_server.start()  # returns once Redis answers a PING
            # docs/cluster.md: "within about a second of Redis answering"; with slack
            wait_until(lambda: pushed(a1, b2.fd, "back"), 5, what="A reaching B again")
            received(b2, "back", 5)
            wait_until(lambda: pushed(b1, a2.fd, "back"), 5, what="B reaching A again")
            received(a2, "back", 5)
            check_local(a1, a2, "a-up")
            for node in (a, b):
                assert log_count(node, CONNECTED) == 2
                assert log_count(node, DOWN) == 1
            assert "down0" not in b2.received and "a-down-all" not in b2.received
        finally:
            for client in (a1, a2, b1, b2):
                client.close()
        no_tracebacks(a, b)


def worker_cluster(asker: Client) -> dict:
    """The "cluster" figures of ``asker``'s worker, from ``server.server_stats()``."""
    stats = asker.ask("server_stats")
    assert isinstance(stats, dict), stats
    mine = [w for w in stats["workers"] if w["worker_id"] == asker.worker_id]
    assert mine and "cluster" in mine[-1], stats
    return mine[-1]["cluster"]


def test_redis_hung_never_blocks_a_push(tmp_path, redis_server):
    """1. two nodes; Redis is SIGSTOPped (hung: the TCP connections stay open)  2. every
    push to the other node still answers at once (the ask's reply within 1 s), True
    while the link has not noticed, False once its PING went unanswered for 2 s
    3. pushes and broadcasts among A's own clients work meanwhile  4. SIGCONT: pushes
    to the other node are handed and received again."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        # askers (a1, b2) get only their replies; targets (a2, b1) get the rest, and
        # probes A handed before its link noticed may reach b1 once Redis runs again
        a1, a2, b1, b2 = Client(a), Client(a), Client(b), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            wait_visible(b2, [a2.fd])
            redis_server.signal(signal.SIGSTOP)
            try:
                # (a broadcast now would be handed to the hung Redis, and delivered by it
                # on SIGCONT: on B, only b1 may get anything from A before the end)
                check_local(a1, a2, "stopped", broadcast=False)
                wait_until(
                    lambda: not pushed(a1, b1.fd, "probe", timeout(1)),
                    6,
                    what="A's link declared down",
                )
                assert pushed(a1, b1.fd, "probe", timeout(1)) is False
                a.wait_for_log(DOWN, 2)  # (not only B gone silent: the link itself)
                assert "no answer from Redis" in a.log()
                assert a1.ask(f"count:{b1.fd}:50") == {"refused": 50}
                check_local(a1, a2, "declared")
            finally:
                redis_server.signal(signal.SIGCONT)
            wait_until(lambda: pushed(a1, b1.fd, "again"), 10, what="A reaching B again")
            received(b1, "again", 5)
            wait_until(lambda: pushed(b2, a2.fd, "again"), 10, what="B reaching A again")
            received(a2, "again", 5)
            assert log_count(a, DOWN) == 1
        finally:
            for client in (a1, a2, b1, b2):
                client.close()
        no_tracebacks(a, b)


def test_subscribers_killed_by_redis(tmp_path, redis_server):
    """1. two nodes linked  2. CLIENT KILL TYPE pubsub drops every worker's subscriber
    connection  3. each worker rebuilds its link: pushes to the other node are handed
    and received again, both ways  4. `swoolish status --json` shows, for each worker
    (Cluster.describe()): link up, one reconnect, one subscriber restart, the other node
    heard with its session; and the node's summary says the same."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            wait_visible(b1, [a1.fd])
            killed = redis_server.client().execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed == 2  # one subscriber per worker, two workers
            for node in (a, b):
                node.wait_for_log(rf"{DOWN} \(subscriber connection", 5)
                node.wait_for_log(CONNECTED, 5, count=2)
            wait_until(lambda: pushed(a1, b1.fd, "again"), 5, what="A reaching B again")
            assert b1.take(1, 5) == ["again"]
            wait_until(lambda: pushed(b1, a1.fd, "again"), 5, what="B reaching A again")
            assert a1.take(1, 5) == ["again"]

            for node, mine, other in ((a, a1, b1), (b, b1, a1)):
                report = wait_until(
                    lambda node=node, other=other: linked_status(node, other.node),
                    5,
                    what=f"status of node {mine.node} with its link up, node {other.node} heard",
                )
                (worker,) = report["workers"]
                figures = worker["cluster"]
                assert figures["node"] == mine.node
                assert figures["reconnects"] == 1
                assert figures["subscriber_restarts"] == 1
                assert figures["nodes"][str(other.node)]["sessions"] == 1
                assert figures["nodes"][str(other.node)]["workers"] == 1
                summary = report["cluster"]
                assert summary["node"] == mine.node and summary["link"] == "up"
                assert summary["workers_linked"] == 1
                assert summary["link_losses"] == 1 and summary["subscriber_restarts"] == 1
                assert summary["nodes"][str(other.node)]["sessions"] == 1
                assert log_count(node, DOWN) == 1
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def linked_status(node, other: int) -> dict | None:
    """``swoolish status --json`` of ``node`` once its worker's link is up and has heard
    node ``other`` again (None before)."""
    result = run_cli("status", "--port", str(node.port), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (worker,) = report["workers"]
    figures = worker.get("cluster") or {}
    if figures.get("link") != "up" or str(other) not in figures.get("nodes", {}):
        return None
    return report


def test_node_killed(tmp_path, redis_server):
    """1. two nodes; B's workers and master are SIGKILLed (no word to anyone)  2. from A,
    B's session reads gone within 3.5 s (+ slack): 3 s of silence, checked every second
    3. a push to it returns False, exists_remote too  4. A logs the silence."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            victims = [worker.pid for worker in b.workers()] + [b.pid]
            assert len(victims) == 2
            for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped first: none reacts
                for pid in victims:
                    os.kill(pid, sig)
            wait_until(
                lambda: exists(a1, b1.fd) == [False, False], 3.5 + 1.5, what="B's session gone"
            )
            assert pushed(a1, b1.fd, "anyone?") is False
            assert a1.ask(f"exists_remote:{b1.fd}") == {"exists": False}
            assert a1.ask(f"count:{b1.fd}:5") == {"refused": 5}
            a.wait_for_log(rf"node {b1.node} silent", 2)
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a)


def test_node_stopped_gracefully(tmp_path, redis_server):
    """1. two nodes, B with two workers and a session on each  2. B is stopped (SIGTERM)
    3. from A its sessions read gone at once (well within the 3 s of silence), a push
    returns False  4. A logs that node B left."""
    with (
        nodes(tmp_path, redis_server.url, count=1, workers=1) as (a,),
        nodes(tmp_path, redis_server.url, count=1, workers=2) as (b,),
    ):
        a1 = Client(a)
        mine = [client_on(b, 0), client_on(b, 1)]
        try:
            fds = [c.fd for c in mine]
            wait_visible(a1, fds)
            b.signal(signal.SIGTERM)
            ids = ",".join(str(fd) for fd in fds)
            wait_until(
                lambda: not any(v[0] for v in a1.ask(f"exists:{ids}").values()),
                1.5,
                what="B's sessions gone from A",
            )
            assert pushed(a1, fds[0], "anyone?") is False
            assert b.wait_exit(10) == 0
            a.wait_for_log(rf"cluster: node {mine[0].node} left", 2)
            assert "silent" not in a.log()
        finally:
            a1.close()
            for client in mine:
                client.close()
        no_tracebacks(a, b)


def test_restarted_node_gets_a_new_number(tmp_path, redis_server):
    """1. two nodes, a session on B  2. B stops; a new node process starts in its place
    3. its sessions carry a new, larger node number  4. from A the old session stays
    gone (exists, exists_remote, push) while the new node's session is reached."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, old = Client(a), Client(b)
        fresh = None
        again = start_node(tmp_path, redis_server.url, 1)
        try:
            wait_visible(a1, [old.fd])
            b.stop()
            wait_until(lambda: exists(a1, old.fd) == [False, False], 1.5, what="old B gone")
            wait_linked(again, 1)
            fresh = Client(again)
            assert fresh.node > old.node
            assert fresh.fd >> 33 == fresh.node and fresh.fd != old.fd
            wait_visible(a1, [fresh.fd])
            assert pushed(a1, fresh.fd, "hello new") is True
            assert fresh.take(1, 5) == ["hello new"]
            assert exists(a1, old.fd) == [False, False]
            assert pushed(a1, old.fd, "hello old") is False
            assert a1.ask(f"exists_remote:{old.fd}") == {"exists": False}
            assert old.fd not in a1.ask("connections")["all"]  # type: ignore[index]
        finally:
            a1.close()
            old.close()
            if fresh is not None:
                fresh.close()
            again.stop()
        no_tracebacks(a, again)


def _sequences(got: list[str]) -> tuple[list[list[int]], list[str]]:
    """The runs of numbered pushes (n0, n1 …) between other messages, and those others."""
    runs: list[list[int]] = []
    others: list[str] = []
    run: list[int] | None = None
    for message in got:
        if message.startswith("n") and message[1:].isdigit():
            if run is None:
                run = []
                runs.append(run)
            run.append(int(message[1:]))
        else:
            others.append(message)
            run = None
    return runs, others


def test_order_of_many_pushes_and_broadcasts_to_another_node(tmp_path, redis_server):
    """1. one worker of A pushes 1,000 numbered messages to one session of B: none
    refused, all arrive, in order  2. the same client then sends broadcasts and batches
    of numbered pushes, interleaved: B's session gets every batch whole and in order,
    each broadcast once, and everything in the order A's worker handed it to the bus."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            assert a1.ask(f"count:{b1.fd}:1000") == {"refused": 0}
            got = b1.take(1000, 10)
            runs, others = _sequences(got)
            assert others == [] and runs == [list(range(1000))]

            plan = [
                ("b", 0),
                ("n", 300),
                ("b", 1),
                ("b", 2),
                ("n", 300),
                ("b", 3),
                ("n", 200),
                ("b", 4),
                ("n", 1000),
                ("b", 5),
            ]
            expected: list[str] = []
            for kind, arg in plan:
                if kind == "b":
                    a1.send(f"broadcast:bc{arg}")
                    expected.append(f"bc{arg}")
                else:
                    a1.send(f"count:{b1.fd}:{arg}")
                    expected.extend(f"n{i}" for i in range(arg))
            got = b1.take(len(expected), 10)
            runs, others = _sequences(got)
            assert runs == [list(range(n)) for kind, n in plan if kind == "n"]
            assert others == [f"bc{i}" for i in range(6)]
            assert got == expected
            mine = a1.take(len(plan), 10)  # A's own broadcasts and count replies, in order
            assert mine == [
                f"bc{arg}" if kind == "b" else json.dumps({"refused": 0}) for kind, arg in plan
            ]
            assert pushed(a1, b1.fd, "end") is True
            assert b1.take(1, 5) == ["end"]  # nothing repeated before it
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def test_node_silent_for_a_while_comes_back(tmp_path, redis_server):
    """1. two nodes; B's only worker is SIGSTOPped past the 3 s of silence: A reads B's
    session gone and logs it  2. SIGCONT: B speaks again (heartbeats, a snapshot), and
    from A its session exists again and is reached (silence is not leaving: B never
    said it left and its number is still its own)."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        (worker,) = b.workers()
        try:
            wait_visible(a1, [b1.fd])
            worker.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: exists(a1, b1.fd) == [False, False], 5, what="B's session gone")
                a.wait_for_log(rf"node {b1.node} silent", 2)
            finally:
                worker.send_signal(signal.SIGCONT)
            wait_visible(a1, [b1.fd], 8)
            assert pushed(a1, b1.fd, "welcome back") is True
            received(b1, "welcome back", 5)
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def test_a_malformed_message_on_the_bus_is_counted_and_dropped(tmp_path, redis_server):
    """1. one node; anyone who can reach Redis publishes on its channel, from a node
    number nobody holds, a message of another version and a PUSH cut short (a valid
    header, 2 bytes of body)  2. the worker counts both (cluster_bad_messages) and drops
    them, with no traceback in the log  3. its bus link goes on: a well-formed push
    published next reaches the session."""
    from swoolish.core import bus

    with nodes(tmp_path, redis_server.url, count=1, workers=1) as (a,):
        a1 = Client(a)
        try:
            channel = bus.Channels("swoolish").node(a1.node)
            stranger = 2**20 - 2
            other_version = bytearray(bus.encode(bus.PUSH, stranger, 1, 1, b"\x00" * 9))
            other_version[1] = bus.VERSION + 1
            cut = bus.encode(bus.PUSH, stranger, 1, 2, b"\x00\x01")
            whole = bus.encode(bus.PUSH, stranger, 1, 3, bus.push_body(a1.fd, 1, b"after"))
            redis = redis_server.client()
            for payload in (bytes(other_version), cut, whole):
                assert redis.publish(channel, payload) == 1  # one worker subscribed
            assert a1.take(1, 5) == ["after"]
            stats = a1.ask("server_stats")
            assert stats["workers"][0].get("cluster_bad_messages") == 2  # type: ignore[index]
        finally:
            a1.close()
        no_tracebacks(a)


def test_redis_refusing_a_command_keeps_the_link(tmp_path, redis_server):
    """1. two linked nodes; Redis goes over its maxmemory (noeviction): the node-key
    refresh (SET) is refused with OOM, PUBLISH is not  2. the node keys expire (3 s of
    refused refreshes)  3. meanwhile no link goes down: no "cluster bus down" line, no
    reconnect, no node declared silent; pushes and a broadcast cross both ways and
    arrive, remote sessions exist; one "refuses SET" line per worker; the refusals are
    counted  4. memory freed: the node keys are back, one "takes SET … again" line per
    worker, no refusal left in the worker's view."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            wait_visible(b1, [a1.fd])
            redis = redis_server.client()
            keys = [f"sw:swoolish:node:{c.node}" for c in (a1, b1)]
            over_maxmemory(redis)
            wait_until(lambda: redis.exists(*keys) == 0, 10, what="both node keys expired")

            assert pushed(a1, b1.fd, "a-to-b") is True
            received(b1, "a-to-b")
            assert pushed(b1, a1.fd, "b-to-a") is True
            received(a1, "b-to-a")
            a1.send("broadcast:to-all")
            received(a1, "to-all")
            received(b1, "to-all")
            assert exists(a1, b1.fd) == [True, True] and exists(b1, a1.fd) == [True, True]
            for node, mine in ((a, a1), (b, b1)):
                assert log_count(node, DOWN) == 0, node.log()[-2000:]
                assert "silent" not in node.log()
                assert log_count(node, "Redis refuses SET from the cluster bus (OutOfMemory") == 1
                figures = worker_cluster(mine)
                assert figures["link"] == "up" and figures["reconnects"] == 0
                assert figures["refused_commands"] >= 3  # a refresh a second, 3 s
                assert "OutOfMemoryError" in figures["refusing"]["SET"]

            redis.config_set("maxmemory", "0")
            wait_until(lambda: redis.exists(*keys) == 2, 5, what="both node keys back")
            for node, mine in ((a, a1), (b, b1)):
                node.wait_for_log("Redis takes SET from the cluster bus again", 10)
                assert worker_cluster(mine)["refusing"] == {}
                assert log_count(node, DOWN) == 0
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def test_a_node_blocked_for_seconds_does_not_declare_the_others_down(tmp_path, redis_server):
    """1. two nodes; B's only worker runs a handler that blocks its loop until a file
    exists  2. A declares B silent (B was blocked for 3 s at least, and A kept beating:
    B's reader thread read those heartbeats meanwhile)  3. the handler returns: B's
    first push to A right after is handed and arrives, and B never logged A silent
    (its late health round applied what was read before judging)  4. A hears B again."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        flag = tmp_path / "unblock"
        try:
            wait_visible(a1, [b1.fd])
            wait_visible(b1, [a1.fd])
            b1.send(f"block:{flag}")
            assert b1.take(1, 5) == ["blocking"]
            a.wait_for_log(rf"node {b1.node} silent", 8)
            flag.touch()
            assert b1.take(1, 5) == ["unblocked"]
            assert pushed(b1, a1.fd, "right-after") is True
            received(a1, "right-after")
            assert f"node {a1.node} silent" not in b.log()
            wait_visible(a1, [b1.fd], 8)
        finally:
            flag.touch()
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def test_a_reload_whose_new_worker_links_late_keeps_its_node_up(tmp_path, redis_server):
    """1. two 1-worker nodes fill Redis's maxclients (two connections per worker)
    2. B reloads: its new worker cannot link at boot and serves without the bus; its old
    worker says it leaves (only itself) and exits, which frees the slots  3. the new
    worker links: from A, B's session (moved to it) is reached again; A never logged that
    node B left. Before, A took the worker's leave for the whole node's, for good: 40 of
    40 pushes refused over 20 s (docs/cluster.md, "Reloads")."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        try:
            wait_visible(a1, [b1.fd])
            admin = redis_server.client()
            admin.config_set("maxclients", 4)  # the four links; this one is over it
            admin.close()
            wait_until(
                lambda: "max number of clients" in redis_refusal(redis_server),
                5,
                what="Redis full with the nodes' links",
            )
            b.signal(signal.SIGUSR1)
            b.wait_for_log(r"cluster bus not reachable yet \(MaxClients", 20)
            b.wait_for_log(r"reload to generation 2 complete", 20)
            b.wait_for_log(CONNECTED, 10, count=2)  # the new worker, once the old one left
            wait_until(lambda: pushed(a1, b1.fd, "after"), 10, what="A reaching B again")
            received(b1, "after")
            assert f"node {b1.node} left" not in a.log()
        finally:
            a1.close()
            b1.close()
        no_tracebacks(a, b)


def redis_refusal(redis_server) -> str:
    """What Redis answers a new connection's PING ("" when it is accepted)."""
    client = redis_server.client()
    try:
        client.ping()
        return ""
    except Exception as exc:  # redis.ConnectionError: refused at maxclients
        return str(exc)
    finally:
        client.close()


def test_a_worker_stopped_alone_leaves_alone(tmp_path, redis_server):
    """1. node B has two workers, a session on each  2. B's worker 1 alone gets SIGTERM
    (the master replaces it): it says it leaves, only itself  3. from A, B's session on
    worker 0 stays live and is reached throughout; A never logs that node B left. Before,
    any stop that was not a reload said the whole node leaves (and deleted its node key):
    A refused every push to B's sessions for good."""
    with (
        nodes(tmp_path, redis_server.url, count=1, workers=1) as (a,),
        nodes(tmp_path, redis_server.url, count=1, workers=2) as (b,),
    ):
        a1 = Client(a)
        stays, goes = client_on(b, 0), client_on(b, 1)
        try:
            wait_visible(a1, [stays.fd, goes.fd])
            (pid,) = b.wait_for_log(r"\[(\d+)\] \S+ swoolish.cluster: worker 1: cluster bus con", 1)
            os.kill(int(pid), signal.SIGTERM)
            wait_until(lambda: goes.closed is not None, 10, what="worker 1's session closed")
            b.wait_for_log(CONNECTED, 10, count=3)  # its replacement linked
            for i in range(3):
                assert pushed(a1, stays.fd, f"still{i}") is True
                received(stays, f"still{i}")
            assert redis_server.client().exists(f"sw:swoolish:node:{stays.node}") == 1
            assert f"node {stays.node} left" not in a.log()
        finally:
            a1.close()
            stays.close()
            goes.close()
        no_tracebacks(a, b)


def test_a_node_number_handed_out_again_is_a_new_node(tmp_path, redis_server):
    """1. nodes A and C; C stops (A hears that it left)  2. Redis loses its data while
    A's link stays up (FLUSHALL: no reconnection, no repair), A's node key is back
    3. a new node D starts and is given C's number again  4. from A, D's session is
    visible and reached: a number heard again with another token is a new node. Before,
    A ignored that number for good (docs/cluster.md, "Failures")."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, c):
        a1, c1 = Client(a), Client(c)
        fresh = None
        again = None
        try:
            wait_visible(a1, [c1.fd])
            c.stop()
            a.wait_for_log(rf"cluster: node {c1.node} left", 5)
            redis = redis_server.client()
            redis.flushall()
            wait_until(lambda: redis.exists(f"sw:swoolish:node:{a1.node}"), 5, what="A's key back")
            redis.close()
            again = start_node(tmp_path, redis_server.url, 1)
            wait_linked(again, 1)
            fresh = Client(again)
            assert fresh.node == c1.node  # the number is handed out again
            wait_visible(a1, [fresh.fd], 5)
            assert pushed(a1, fresh.fd, "hello again") is True
            received(fresh, "hello again")
            a.wait_for_log(rf"node {c1.node} is heard again, as a new start", 2)
        finally:
            for client in (a1, c1, fresh):
                if client is not None:
                    client.close()
            if again is not None:
                again.stop()
        no_tracebacks(a, again)


TWIN = "is also held by another node"


def test_two_nodes_holding_one_number_take_no_message_sent_to_it(tmp_path, redis_server):
    """1. nodes A and B; A's worker is SIGSTOPped until its node key expired, and Redis
    loses its data (FLUSHALL), so a new node C is given A's number while A lives (as
    when A is still backing off after a Redis restart)  2. A's worker runs again: A and
    C hear each other's heartbeats (the same number, another token) and each logs one
    error  3. B pushes to A's session id (C's first id is the same) and then broadcasts
    a marker: A's and C's clients get the marker, neither gets the push. Before, both
    got it (docs/cluster.md, "Failures")."""
    with nodes(tmp_path, redis_server.url, workers=1) as (a, b):
        a1, b1 = Client(a), Client(b)
        c = c1 = None
        (worker,) = a.workers()
        redis = redis_server.client()
        try:
            wait_visible(b1, [a1.fd])
            worker.send_signal(signal.SIGSTOP)
            try:
                wait_until(
                    lambda: not redis.exists(f"sw:swoolish:node:{a1.node}"), 6, what="A's key gone"
                )
                redis.flushall()
                wait_until(
                    lambda: redis.exists(f"sw:swoolish:node:{b1.node}"), 5, what="B's key back"
                )
                c = start_node(tmp_path, redis_server.url, 1)
                wait_linked(c, 1)
            finally:
                worker.send_signal(signal.SIGCONT)
            c1 = Client(c)
            assert c1.node == a1.node  # two live nodes with one number
            for node in (a, c):
                node.wait_for_log(TWIN, 5)
            assert pushed(b1, a1.fd, "secret") in (True, False)  # (B's replica merges both)
            b1.send("broadcast:marker")
            assert b1.take(1, 5) == ["marker"]  # B's own copy
            received(a1, "marker")
            received(c1, "marker")
            assert "secret" not in a1.received and "secret" not in c1.received
            assert log_count(a, TWIN) == 1 and log_count(c, TWIN) == 1
        finally:
            redis.close()
            for client in (a1, b1, c1):
                if client is not None:
                    client.close()
            if c is not None:
                c.stop()
        no_tracebacks(a, b, c)
