"""A reload under adverse conditions: a generation that fails half-way, a worker that
stalls in the middle of a hand-off. Real `swoolish serve` processes, real clients.

What must hold (docs/reload.md): a rolled-back reload closes no client, its generation
number is never used again, and every wall-clock expiry of the hand-off (a stalled
worker) is logged and counted, never silent.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading

import pytest
from support import run_cli, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed

ANSWERS_GENERATION = """
    from swoolish import WebSocketServer

    server = WebSocketServer(worker_start_timeout=10.0)

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, str(server.generation))
"""

# The new code: slot 0 is ready at once, slot 1 takes a while and then fails, so the
# new worker of slot 0 is ready (and, before the fix, accepting) for that whole while.
FAILS_IN_SLOT_1 = """
    import time
    from swoolish import WebSocketServer

    server = WebSocketServer(worker_start_timeout=10.0)

    @server.on("worker_start")
    def start(server, worker_id):
        if worker_id == 1:
            time.sleep(2.0)
            raise RuntimeError("slot 1 cannot reach its database")

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, str(server.generation))
"""


class Opener(threading.Thread):
    """Opens a WebSocket every 40 ms and keeps it, until told to stop (bounded)."""

    def __init__(self, server, limit: int = 80) -> None:
        super().__init__(daemon=True)
        self.server, self.limit = server, limit
        self.stop = threading.Event()
        self.clients: list = []
        self.first_answers: list[str] = []
        self.errors: list[BaseException] = []
        self.open = contextlib.ExitStack()  # closes every client at the end of the test

    def run(self) -> None:
        while not self.stop.is_set() and len(self.clients) < self.limit:
            try:
                ws = self.open.enter_context(self.server.connect())
                ws.send("generation?")
                self.first_answers.append(ws.recv(timeout=timeout(10)))
                self.clients.append(ws)
            except Exception as exc:
                self.errors.append(exc)
            self.stop.wait(0.04)


def test_clients_opened_during_a_failing_reload_all_stay_with_the_old_generation(tmp_path):
    """1. generation 1 serves with 2 workers  2. new code whose slot 1 fails after 2 s of
    worker_start; SIGUSR1  3. a client opens a WebSocket every 40 ms throughout  4. the
    reload is rolled back  5. every one of those clients was served by generation 1 and
    is still open and answering; none was closed  6. the next reload is generation 3."""
    app = write_app(tmp_path, ANSWERS_GENERATION)
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        opener = Opener(server)
        opener.start()
        try:
            wait_until(lambda: len(opener.clients) >= 3, 10, what="first clients")
            write_app(tmp_path, FAILS_IN_SLOT_1)
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 rolled back", 30)
        finally:
            opener.stop.set()
            opener.join(timeout(20))
        clients = opener.clients
        try:
            assert opener.errors == []
            assert len(clients) >= 20, "too few clients opened during the reload"
            assert set(opener.first_answers) == {"1"}, "a client was served by generation 2"
            for ws in clients:
                ws.send("still there?")
                assert ws.recv(timeout=timeout(10)) == "1"
        except ConnectionClosed as closed:
            pytest.fail(f"a client was closed by the rollback: {closed!r}")
        finally:
            opener.open.close()

        write_app(tmp_path, ANSWERS_GENERATION)
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 3 complete", 30)
        assert "reload to generation 2 complete" not in server.log()


# A receiver on one worker, a sender on another: every message the sender's handler
# gets is pushed, numbered, to the receiver (routed through the master). The new
# worker's `resume` hook stalls it for 4 s (longer than the 3 s the hand-off waits for
# an announcement) when the receiver's session is adopted.
STALLS_ON_ADOPTION = """
    import time
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "who":
            server.push(frame.fd, f"{server.worker_id} {frame.fd}")
        elif frame.data.startswith("to "):
            _, target, number = frame.data.split()
            server.push(int(target), number)

    @server.on("resume")
    def resume(server, fd, state):
        if server.worker_id == 0:
            time.sleep(4.0)
"""


def connect_to_worker(server, stack, worker_id, attempts=40):
    """A client served by worker ``worker_id``, and its session id (bounded retries);
    ``stack`` closes it at the end of the test."""
    for _ in range(attempts):
        ws = stack.enter_context(server.connect())
        ws.send("who")
        slot, sid = ws.recv(timeout=timeout(5)).split()
        if int(slot) == worker_id:
            return ws, int(sid)
        ws.close()
    raise AssertionError(f"no connection landed on worker {worker_id}")


def test_a_worker_stalled_mid_handoff_under_routed_traffic_is_logged_and_counted(tmp_path):
    """1. a receiver on worker 0, a sender on worker 1 sending numbered messages that
    worker 1 routes to the receiver  2. reload; the new worker 0 stalls 4 s while
    adopting the receiver  3. the receiver gets the numbers in increasing order with
    none lost, or the master logged and counted the hand-off expiry that allowed it;
    here the stall outlasts the 3 s wait, so the expiry is logged and counted."""
    app = write_app(tmp_path, STALLS_ON_ADOPTION)
    pid_file = tmp_path / "master.pid"
    with serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file), workers=2) as server:
        stack = contextlib.ExitStack()
        receiver, receiver_sid = connect_to_worker(server, stack, 0)
        sender, _ = connect_to_worker(server, stack, 1)
        received: list[int] = []
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    received.append(int(receiver.recv(timeout=0.5)))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        sent = 0
        try:
            for number in range(1, 4001):
                sender.send(f"to {receiver_sid} {number}")
                sent = number
                if number == 500:
                    server.signal(signal.SIGUSR1)
                if number % 200 == 0:
                    wait_until(lambda n=number: len(received) >= n - 400, 30, what="receiver")
            wait_until(lambda: len(received) >= sent, 30, what="every number received")
        finally:
            done.set()
            reader.join(timeout(10))
            stack.close()
        server.wait_for_log(r"reload to generation 2 complete", 30)
        result = run_cli("status", "--json", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        forced = json.loads(result.stdout)["master"]["handoff_forced_releases"]
        assert forced >= 1, "a 4 s stall outlasted the 3 s wait, yet nothing was counted"
        assert "released after 3s without their new worker's announcement" in server.log()
        # Nothing lost or doubled; the order may differ only where the expiry above
        # was reported (docs/reload.md).
        assert sorted(received) == list(range(1, sent + 1))
