"""Fault injection and leaks, on real processes (docs/lifecycle.md, docs/reload.md).

A worker SIGKILLed under load, thousands of clients that never finish their handshake,
a handler that blocks its worker's loop, and fifty rolling reloads with clients
connected. Every process is started through ``support.serving`` and cleaned up by pid;
every wait is on a condition with a deadline; assertions compare counts and the order
of events, never durations.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import signal
import socket
import threading
import time
from collections import Counter

import psutil
from support import HttpLoad, ServerProcess, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

LOAD_APP = "tests/apps/reload_load_app.py:server"  # answers name the worker pid
TITLE = re.compile(r"^swoolish: worker (\d+) gen (\d+)$")
ABNORMAL = 1006  # RFC 6455 §7.1.5: the connection dropped without a close frame

# A message handler that blocks its worker's whole loop (a synchronous sleep).
BLOCKING_APP = """
    import json
    import time

    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("message")
    def on_message(server, frame):
        command, _, arg = frame.data.partition(":")
        if command == "whoami":
            server.push(frame.fd, json.dumps({"pid": server.worker_pid}))
        elif command == "block":
            server.push(frame.fd, "blocking")
            time.sleep(float(arg))
            server.push(frame.fd, "unblocked")
        else:
            server.push(frame.fd, frame.data)
"""


# ---------------------------------------------------------------------------- helpers


class EchoClient(threading.Thread):
    """Sends and checks echoes of ``reload_load_app`` (``text|pid|generation``) on one
    WebSocket, paced, until stopped; after a drop it reconnects (if asked to).

    ``pid`` and ``generation`` are those of the worker that answered last; ``closes``
    holds ``(pid, code)`` for every connection that ended, ``code`` being the close
    code the server sent or 1006 when the TCP connection dropped without one."""

    def __init__(
        self, name: str, url: str, stop: threading.Event, pace: float, reconnect: bool = True
    ) -> None:
        super().__init__(daemon=True, name=name)
        self.url, self.stop, self.pace, self.reconnect = url, stop, pace, reconnect
        self.pid = 0
        self.generation = 0
        self.echoes = 0
        self.connections = 0
        self.closes: list[tuple[int, int]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set():
            try:
                ws = connect(self.url, open_timeout=timeout(5), close_timeout=timeout(5))
            except Exception as exc:
                self.errors.append(f"connect: {exc!r}")
                self.stop.wait(0.05)
                continue
            self.connections += 1
            with ws:
                try:
                    while not self.stop.is_set():
                        sent += 1
                        text = f"{self.name}-{sent}"
                        ws.send(text)
                        echoed, pid, generation = ws.recv(timeout=timeout(5)).split("|")
                        if echoed != text:
                            self.errors.append(f"sent {text!r}, echo {echoed!r}")
                        self.pid, self.generation = int(pid), int(generation)
                        self.echoes += 1
                        self.stop.wait(self.pace)
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else ABNORMAL
                    self.closes.append((self.pid, code))
                except Exception as exc:
                    self.errors.append(f"while echoing: {exc!r}")
            if not self.reconnect:
                return


def pid_of(body: bytes) -> int:
    """Which worker answered (the app's /who answers its pid and generation)."""
    return json.loads(body)["pid"]


def progressing(loads: list[HttpLoad], clients: list[EchoClient], seconds: float = 15) -> None:
    """Wait until every load thread and every client made progress since this call."""
    requests = [t.ok for t in loads]
    echoes = [c.echoes for c in clients]
    wait_until(
        lambda: (
            all(t.ok >= n + 10 for t, n in zip(loads, requests, strict=True))
            and all(c.echoes >= n + 5 for c, n in zip(clients, echoes, strict=True))
        ),
        seconds,
        what="every load thread and client making progress",
    )


def children_by_title(server: ServerProcess) -> dict[int, tuple[int, int]] | None:
    """pid -> (slot, generation) of every child of the master; None while one of them
    is exiting or exited and not yet reaped."""
    server.workers()  # remembered for the teardown
    found = {}
    try:
        for proc in psutil.Process(server.pid).children():
            match = TITLE.match(proc.cmdline()[0])
            if match is None:
                return None
            found[proc.pid] = (int(match[1]), int(match[2]))
    except (psutil.Error, IndexError):
        return None
    return found


def all_on(server: ServerProcess, generation: int, workers: int) -> dict[int, tuple[int, int]]:
    found = children_by_title(server)
    if found is None or sorted(found.values()) != [(s, generation) for s in range(workers)]:
        return {}
    return found


def open_fds(pids: list[int]) -> int:
    return sum(psutil.Process(pid).num_fds() for pid in pids)


def stalled_clients_wrapper(tmp_path) -> str:
    source = (
        "from tests.apps.limits_app import build\n\n"
        "server = build(handshake_timeout=1.0, max_connections=20000)\n"
    )
    return f"{write_app(tmp_path, source)}:server"


# ---------------------------------------------------------------------------- tests


def test_worker_sigkilled_under_load_is_replaced_and_only_its_clients_notice(tmp_path):
    """1. 4 workers; 3 threads send HTTP requests, each on a fresh connection; WebSocket
    clients echo continuously (reconnecting after a drop), opened until they sit on at
    least two workers  2. SIGKILL the worker holding the most clients
    3. the master logs the death and forks a replacement: 4 workers again, the other
    3 pids unchanged  4. the killed worker's clients saw their connection drop without
    a close frame (1006) and reconnected to another worker; every other client saw no
    close at all and no error  5. HTTP keeps succeeding on fresh connections.

    A request already accepted by the killed worker when the signal lands dies with it
    (the client sees a reset or an empty answer): each load thread has at most one
    request in flight, so at most one failure per thread is allowed, and no failure
    of any other kind. Requests still queued on the listening socket are not lost: the
    socket is shared, so the other workers accept them."""
    workers = 4
    with serving(LOAD_APP, tmp_path, workers=workers) as server:
        before = {p.pid for p in server.workers()}
        assert len(before) == workers
        stop = threading.Event()
        loads = [HttpLoad(server.port, stop, key=pid_of) for _ in range(3)]
        clients: list[EchoClient] = []
        try:
            for load in loads:
                load.start()
            # Open clients one at a time until they sit on at least two workers.
            while len(clients) < 8 or len({c.pid for c in clients}) < 2:
                assert len(clients) < 32, Counter(c.pid for c in clients)
                client = EchoClient(f"ws{len(clients)}", server.url("/"), stop, pace=0.02)
                client.start()
                clients.append(client)
                wait_until(lambda c=client: c.echoes, 10, what=f"{client.name} echoing")
            progressing(loads, clients)

            per_worker = Counter(c.pid for c in clients)
            victim = per_worker.most_common(1)[0][0]
            victims = [c for c in clients if c.pid == victim]
            others = [c for c in clients if c.pid != victim]
            failures_before = [len(t.failures) for t in loads]
            ok_before = sum(t.ok for t in loads)
            os.kill(victim, signal.SIGKILL)

            server.wait_for_log(rf"\(pid {victim}\) died: killed by SIGKILL")
            after = wait_until(
                lambda: (
                    pids
                    if len(pids := {p.pid for p in server.workers()}) == workers
                    and victim not in pids
                    else None
                ),
                15,
                what="a replacement worker",
            )
            wait_until(
                lambda: all(c.closes and c.pid not in (0, victim) for c in victims),
                15,
                what="every client of the killed worker echoing again on another worker",
            )
            progressing(loads, clients)
            ok_after_kill = sum(t.ok for t in loads) - ok_before
        finally:
            stop.set()
            for thread in [*loads, *clients]:
                thread.join(timeout(10))

        new = after - before
        failures = [t.failures[n:] for t, n in zip(loads, failures_before, strict=True)]
        print(
            f"\nworkers {sorted(before)} -> {sorted(after)}; killed {victim} holding "
            f"{len(victims)} of {len(clients)} clients {dict(per_worker)}"
        )
        print(
            f"killed worker's clients: closes {[c.closes for c in victims]}, "
            f"connections {[c.connections for c in victims]}; others' closes "
            f"{[c.closes for c in others]}"
        )
        print(
            f"HTTP answered {sum(t.ok for t in loads)} ({ok_after_kill} after the kill, "
            f"{sum(t.answers[p] for t in loads for p in new)} by the replacement); "
            f"failed at the kill: {failures}"
        )

        assert not any(t.is_alive() for t in [*loads, *clients])
        assert before - {victim} == after - new and len(new) == 1
        assert re.search(rf"worker \d gen 1 \(pid {victim}\) died: killed by SIGKILL", server.log())
        assert others, "no client on another worker"
        for client in others:
            assert client.closes == [] and client.errors == [], client.name
            assert client.connections == 1
        for client in victims:
            assert client.closes == [(victim, ABNORMAL)], (client.name, client.closes)
            assert client.errors == [], (client.name, client.errors)
            assert client.connections == 2 and client.pid in after - {victim}
        assert all(n == 0 for n in failures_before), [t.failures for t in loads]
        assert all(len(f) <= 1 for f in failures), failures
        assert ok_after_kill > 0
        assert server.proc.poll() is None


class StalledClients:
    """Non-blocking TCP connections that never finish a request, watched with one
    selector: each is connected, half of them then send half a request line, and each
    ends with what the server did: ``"408"``, ``"eof"`` (closed without an answer),
    ``"reset"``, or a description of anything else."""

    PARTIAL = b"GET /chat HT"

    def __init__(self, port: int, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.connected = 0
        self.received: dict[int, bytes] = {}
        self.outcome: dict[int, str] = {}
        for i in range(count):
            sock = socket.socket()
            self.socks.append(sock)
            sock.setblocking(False)
            err = sock.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
            self.selector.register(sock, selectors.EVENT_WRITE, i)

    def partial(self, i: int) -> bool:
        return i % 2 == 1

    def _end(self, i: int, sock: socket.socket, outcome: str) -> None:
        self.outcome[i] = outcome
        self.selector.unregister(sock)

    def poll(self) -> None:
        for key, _ in self.selector.select(timeout=0.05):
            i, sock = key.data, key.fileobj
            if key.events == selectors.EVENT_WRITE:  # the connect finished
                status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if status:
                    self._end(i, sock, f"connect failed: {os.strerror(status)}")
                    continue
                self.connected += 1
                if self.partial(i):
                    try:
                        sock.send(self.PARTIAL)
                    except OSError as exc:
                        self._end(i, sock, f"send failed: {exc!r}")
                        continue
                self.selector.modify(sock, selectors.EVENT_READ, i)
                continue
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                self._end(i, sock, "reset")
                continue
            if chunk:
                self.received[i] = self.received.get(i, b"") + chunk
                continue
            data = self.received.get(i, b"")
            if not data:
                self._end(i, sock, "eof")
            elif data.startswith(b"HTTP/1.1 408 "):
                self._end(i, sock, "408")
            else:
                self._end(i, sock, f"answer {data[:60]!r}")

    def run_until(self, predicate, seconds: float) -> bool:
        """Serve the selector until ``predicate()`` holds; False at the deadline."""
        deadline = time.monotonic() + timeout(seconds)
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.poll()
        return True

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()


def test_five_thousand_stalled_handshakes_are_dropped_while_a_client_is_served(tmp_path):
    """1. 2 workers, handshake_timeout=1.0, max_connections=20000; a WebSocket client
    echoes continuously  2. 5,000 non-blocking TCP connections from this process: every
    other one sends half a request line, the rest send nothing  3. once all are
    connected, a fresh WebSocket client connects and echoes  4. the server closes each
    of the 5,000 (408, or a bare close), none is left open  5. the echoing client never
    failed and kept echoing throughout  6. the workers' open fds come back to their
    baseline."""
    count = 5000
    with serving(stalled_clients_wrapper(tmp_path), tmp_path, workers=2) as server:
        pids = [p.pid for p in server.workers()]
        stop = threading.Event()
        echoes = [0]
        errors: list[str] = []

        def echo_loop(ws: ClientConnection) -> None:
            try:
                while not stop.is_set():
                    ws.send("served meanwhile")
                    if ws.recv(timeout=timeout(5)) != "served meanwhile":
                        errors.append("wrong echo")
                    echoes[0] += 1
                    stop.wait(0.01)
            except Exception as exc:
                errors.append(repr(exc))

        with server.connect() as ws:
            echoer = threading.Thread(target=echo_loop, args=(ws,), daemon=True)
            echoer.start()
            wait_until(lambda: echoes[0] >= 3, 10, what="the client echoing")
            baseline = open_fds(pids)
            stalled = StalledClients(server.port, count)
            try:
                echoes_at_open = echoes[0]
                all_connected = stalled.run_until(
                    lambda: stalled.connected + len(stalled.outcome) >= count, 60
                )
                peak = open_fds(pids)
                with server.connect() as fresh:
                    fresh.send("fresh client")
                    fresh_echoed = fresh.recv(timeout=timeout(5)) == "fresh client"
                echoes_mid = echoes[0]
                all_closed = stalled.run_until(lambda: len(stalled.outcome) >= count, 60)
                echoes_end = echoes[0]
                wait_until(
                    lambda: open_fds(pids) <= baseline + 4,
                    20,
                    what="the workers' open fds back near their baseline",
                )
                after = open_fds(pids)
                wait_until(lambda: echoes[0] >= echoes_end + 3, 10, what="still echoing")
            finally:
                stop.set()
                echoer.join(timeout(10))
                stalled.close()

        by_kind = Counter(
            ("partial" if stalled.partial(i) else "silent", stalled.outcome.get(i, "open"))
            for i in range(count)
        )
        print(
            f"\n{count} stalled clients: {dict(by_kind)}; workers' fds: baseline {baseline}, "
            f"all connected {peak}, after {after}; echoes of the other client: "
            f"{echoes_at_open} at the start, {echoes_mid} once all were connected, "
            f"{echoes_end} once all were closed"
        )
        assert all_connected and all_closed, dict(by_kind)
        assert set(stalled.outcome.values()) <= {"408", "eof"}, dict(by_kind)
        assert errors == []
        assert fresh_echoed
        # the echoing client kept being served while the stalled ones were open
        assert echoes_end >= echoes_at_open + 5
        assert after <= baseline + 4
        assert server.proc.poll() is None


def test_handler_blocking_one_worker_does_not_stall_the_other(tmp_path):
    """1. 2 workers; clients opened until two sit on worker A and one on worker B
    2. client A1 sends a message whose handler blocks A's loop for 2 s (time.sleep)
    3. meanwhile client B echoes in a loop, and client A2 sends a message too
    4. B completed at least 5 round trips after the blocking message was sent and
    before its reply came back, and before A2's answer came back (A was blocked)."""
    app = write_app(tmp_path, BLOCKING_APP)
    with serving(f"{app}:server", tmp_path, workers=2) as server, contextlib.ExitStack() as stack:
        by_pid: dict[int, list[ClientConnection]] = {}
        while True:
            assert sum(map(len, by_pid.values())) < 40, {p: len(c) for p, c in by_pid.items()}
            ws = stack.enter_context(server.connect())
            ws.send("whoami")
            by_pid.setdefault(json.loads(ws.recv(timeout=timeout(5)))["pid"], []).append(ws)
            crowded = [pid for pid, conns in by_pid.items() if len(conns) >= 2]
            if crowded and len(by_pid) == 2:
                break
        blocked_pid = crowded[0]
        (free_pid,) = set(by_pid) - {blocked_pid}
        a1, a2 = by_pid[blocked_pid][:2]
        b = by_pid[free_pid][0]

        events: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[str] = []

        def note(event: str) -> None:
            with lock:
                events.append(event)

        def other_worker() -> None:
            n = 0
            try:
                while not stop.is_set() and n < 100_000:
                    n += 1
                    b.send(f"b{n}")
                    assert b.recv(timeout=timeout(5)) == f"b{n}"
                    note("other round trip")
                    stop.wait(0.002)  # pacing: other tests share this machine
            except Exception as exc:
                errors.append(repr(exc))

        def expect(ws: ClientConnection, answer: str, event: str) -> None:
            try:
                got = ws.recv(timeout=timeout(10))
                if got != answer:
                    errors.append(f"{event}: got {got!r}, expected {answer!r}")
                note(event)
            except Exception as exc:
                errors.append(f"{event}: {exc!r}")

        other = threading.Thread(target=other_worker, daemon=True)
        other.start()
        wait_until(lambda: events.count("other round trip") >= 3, 10, what="B echoing")
        note("block sent")
        a1.send("block:2")
        # the handler answers once before it blocks; from then on A's loop is stuck
        assert a1.recv(timeout=timeout(5)) == "blocking"
        a2.send("same worker")
        note("same-worker message sent")
        waiters = [
            threading.Thread(target=expect, args=(a1, "unblocked", "blocked reply")),
            threading.Thread(target=expect, args=(a2, "same worker", "same-worker reply")),
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(timeout(15))
        stop.set()
        other.join(timeout(10))
        with lock:
            order = list(events)

        def rounds_between(start: str, end: str) -> int:
            assert start in order and end in order, order
            return order[order.index(start) : order.index(end)].count("other round trip")

        while_blocked = rounds_between("block sent", "blocked reply")
        while_waiting = rounds_between("same-worker message sent", "same-worker reply")
        print(
            f"\nworker {free_pid} answered {while_blocked} round trips while worker "
            f"{blocked_pid} was blocked; {while_waiting} while a second client of the "
            f"blocked worker waited; {order.count('other round trip')} in all"
        )
        assert errors == []
        assert not other.is_alive() and not any(w.is_alive() for w in waiters)
        assert while_blocked >= 5
        assert while_waiting >= 5
        # the blocked worker serves again afterwards
        a2.send("after")
        assert a2.recv(timeout=timeout(5)) == "after"


def test_fifty_reloads_with_clients_connected_leak_nothing(tmp_path):
    """1. 2 workers; 20 WebSocket clients echo continuously (paced)  2. warm-up
    reloads, then note the master's RSS, open fds and threads  3. 50 reloads, each
    waited for: "reload to generation N complete" and only the new workers left
    4. the master has the same fds and threads, RSS grown by < 5 MiB  5. every client
    is still on its first connection, saw no close and no error, and answers from the
    last generation  6. exactly 2 workers are children of the master; after SIGTERM,
    none of the processes the master ever forked is left.

    The warm-up is three reloads, not one: the shared session table has four regions
    per slot, handed out in turn, and the master clears each one as it hands it out, so
    its RSS grows by about 2 MiB at each of the first reloads (pages of the shared
    mapping touched for the first time) and is flat once every region has been used."""
    workers, reloads, clients_n = 2, 50, 20
    with serving(LOAD_APP, tmp_path, workers=workers) as server:
        master = psutil.Process(server.pid)
        forked: dict[int, psutil.Process] = {}

        def note_children() -> None:
            with contextlib.suppress(psutil.Error):
                for child in master.children():
                    forked.setdefault(child.pid, child)

        def reload_to(generation: int) -> None:
            note_children()
            server.signal(signal.SIGUSR1)
            server.wait_for_log(rf"reload to generation {generation} complete", 20)
            note_children()
            wait_until(
                lambda: all_on(server, generation, workers),
                15,
                what=f"only the workers of generation {generation} left",
            )
            note_children()

        def figures() -> tuple[int, int, int]:
            with master.oneshot():
                return master.memory_info().rss, master.num_fds(), master.num_threads()

        stop = threading.Event()
        clients = [
            EchoClient(f"ws{i}", server.url("/"), stop, pace=0.05, reconnect=False)
            for i in range(clients_n)
        ]
        try:
            for client in clients:
                client.start()
            progressing([], clients)
            warm = 4
            for generation in range(2, warm + 1):
                reload_to(generation)
            progressing([], clients)
            rss_before, fds_before, threads_before = figures()
            for generation in range(warm + 1, warm + 1 + reloads):
                reload_to(generation)
                if generation % 10 == 0:
                    progressing([], clients)
            final = warm + reloads
            wait_until(
                lambda: all(c.generation == final for c in clients),
                10,
                what=f"every client answered by generation {final}",
            )
            progressing([], clients)
            # The master closes an old worker's channel right after reaping it.
            with contextlib.suppress(AssertionError):
                wait_until(lambda: master.num_fds() == fds_before, 5, what="fds at baseline")
            rss_after, fds_after, threads_after = figures()
            alive = [c.name for c in clients if c.is_alive()]
        finally:
            stop.set()
            for client in clients:
                client.join(timeout(10))

        children = all_on(server, final, workers)
        note_children()
        durations = [float(s) for s in re.findall(r"complete in ([0-9.]+)s", server.log())]
        print(
            f"\nmaster over {reloads} reloads with {clients_n} clients: RSS "
            f"{rss_before / 2**20:.2f} -> {rss_after / 2**20:.2f} MiB "
            f"({(rss_after - rss_before) / 2**10:+.0f} KiB), fds {fds_before} -> {fds_after}, "
            f"threads {threads_before} -> {threads_after}; {len(forked)} workers forked; "
            f"echoes {sum(c.echoes for c in clients)}; reload durations (s) min "
            f"{min(durations):.3f} max {max(durations):.3f}"
        )
        assert fds_after == fds_before
        assert threads_after == threads_before
        assert rss_after - rss_before < 5 * 2**20
        assert alive == [c.name for c in clients], "a client stopped early"
        for client in clients:
            assert client.closes == [] and client.errors == [], (client.name, client.errors)
            assert client.connections == 1 and client.generation == final
        assert len(children) == workers, children
        assert len(forked) >= workers * final

        # Stop the master ourselves, so the harness's SIGKILL sweep cannot hide a leftover.
        server.signal(signal.SIGTERM)
        assert server.wait_exit(15) == 0
        left = []
        for proc in forked.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append((proc.pid, proc.cmdline()))
        for proc in psutil.process_iter(["ppid", "cmdline"]):
            cmdline = proc.info["cmdline"] or [""]
            if proc.info["ppid"] == server.pid and cmdline[0].startswith("swoolish:"):
                left.append((proc.pid, cmdline))
        assert left == []
