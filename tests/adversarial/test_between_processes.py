"""Between processes: a stalled or misbehaving worker, channel buffers of a default Linux,
and the error paths of the channels, on real ``swoolish serve`` processes.

Every server here runs with its channels' socket buffers forced to 212992 bytes
(``SWOOLISH_CHANNEL_BUFFER``), what a default Linux gives whatever swoolish asks for,
so a message larger than a packet the kernel accepts is exercised even on a machine with
a larger ``net.core.wmem_max``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading

import pytest
from support import run_cli, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed

# The clients live across test steps (a reader thread each), not in a with block.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

DEFAULT_LINUX_BUFFER = "212992"

APP = """
    import json
    import os
    import socket

    from swoolish import Timer, WebSocketServer

    try:
        from swoolish.shared import ipc
    except ImportError:  # the flat layout before the packages
        from swoolish import ipc

    VERSION = {version!r}
    BLOB = 250_000  # bytes of app state each session carries through a hand-off
    server = WebSocketServer(max_wait_time=3)
    marked = set()

    def late_tick(fd):
        server.push(fd, json.dumps({{"late": fd, "gen": server.generation}}))

    @server.on("message")
    async def on_message(server, frame):
        command, _, arg = frame.data.partition(":")
        fd = frame.fd
        if command == "who":
            server.push(fd, json.dumps({{"fd": fd, "pid": os.getpid(),
                                        "gen": server.generation, "v": VERSION}}))
        elif command == "echo":
            server.push(fd, arg)
        elif command == "flood":  # count pushes of size bytes to another session
            target, count, size = (int(x) for x in arg.split(":"))
            data = "x" * size
            accepted = sum(server.push(target, data) for _ in range(count))
            server.push(fd, json.dumps({{"accepted": accepted, "count": count}}))
        elif command == "big":
            target, size = (int(x) for x in arg.split(":"))
            server.push(fd, json.dumps({{"pushed": server.push(target, "b" * size)}}))
        elif command == "push":
            target, _, text = arg.partition(":")
            server.push(fd, json.dumps({{"pushed": server.push(int(target), text)}}))
        elif command == "stats":
            figures = server.stats()
            server.push(fd, json.dumps({{k: v for k, v in figures.items()
                                        if isinstance(v, (int, float, str))}}))
        elif command == "server_stats":
            status = await server.server_stats()
            server.push(fd, json.dumps({{"workers": len(status["workers"])}}))
        elif command == "damage":
            # A worker that does not follow the protocol: one packet larger than the
            # master reads in one go (the kernel cuts it), straight on the socket.
            channel = server._worker.channel
            sock = getattr(channel, "sock", channel)
            limit = getattr(ipc, "FRAGMENT_BYTES", None) or ipc.MAX_MESSAGE
            size = limit + 1024
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size + 65536)
            sock.send(b"\\x00" + b"z" * size)
            server.push(fd, json.dumps({{"damaged": size}}))
        elif command == "mark":  # worker_exit binds a timer to this session
            marked.add(fd)
            server.push(fd, "marked")

    @server.on("worker_exit")
    def on_worker_exit(server, worker_id):
        for fd in marked:
            Timer.after(300, late_tick, fd, bind=fd)

    @server.on("handoff")
    def on_handoff(server, fd):
        return {{"blob": "s" * BLOB}}

    @server.on("resume")
    def on_resume(server, fd, state):
        server.push(fd, json.dumps({{"resumed": len(state["blob"]), "gen": server.generation}}))
"""


def app(tmp_path, version="v1"):
    return write_app(tmp_path, APP.format(version=version), "between_app.py")


@pytest.fixture(autouse=True)
def small_channel_buffers(monkeypatch):
    """Every server of this module gets a default Linux's channel buffers."""
    monkeypatch.setenv("SWOOLISH_CHANNEL_BUFFER", DEFAULT_LINUX_BUFFER)


class Client:
    """A WebSocket client whose incoming messages a thread collects."""

    def __init__(self, server) -> None:
        self.ws = server.connect(max_size=None)
        self.received: list[str] = []
        self.closed: ConnectionClosed | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        who = self.ask("who")
        self.fd, self.pid = who["fd"], who["pid"]

    def _read(self) -> None:
        try:
            for message in self.ws:
                with self._lock:
                    self.received.append(message)
        except ConnectionClosed as exc:
            self.closed = exc

    def take(self, seconds: float = 10) -> str:
        """The next message (waiting for it, with a deadline)."""
        wait_until(lambda: self.received, seconds, what="a message")
        with self._lock:
            return self.received.pop(0)

    def ask(self, text: str, seconds: float = 10):
        return json.loads(self.say(text, seconds))

    def say(self, text: str, seconds: float = 10) -> str:
        """Send ``text``; the next message (not JSON-decoded)."""
        self.ws.send(text)
        return self.take(seconds)

    def wait_for(self, predicate, seconds: float = 30, what: str = ""):
        """Drop messages until one satisfies ``predicate``; returns it."""

        def found():
            with self._lock:
                while self.received:
                    message = self.received.pop(0)
                    if predicate(message):
                        return message
            return None

        return wait_until(found, seconds, what=what or "a matching message")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self._thread.join(timeout(5))


@contextlib.contextmanager
def clients(server, want: dict[int, int] | None = None, count: int = 0):
    """Clients until each pid in ``want`` has that many of them, or ``count`` clients."""
    made: list[Client] = []
    try:
        pids = {p.pid for p in server.workers()}
        need = want or {}
        while len(made) < count or any(
            sum(c.pid == pid for c in made) < need.get(pid, 0) for pid in pids
        ):
            assert len(made) < 80, "the kernel never spread clients over the workers"
            made.append(Client(server))
        yield made
    finally:
        for client in made:
            client.close()


@contextlib.contextmanager
def stopped(pid: int):
    """SIGSTOP ``pid`` for the block; SIGCONT it afterwards, even on failure."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def status(pid_file) -> dict:
    result = run_cli("status", "--pid-file", str(pid_file), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------- item 10


def test_a_stopped_worker_does_not_stall_the_others_and_what_cannot_wait_fails_visibly(
    tmp_path,
):
    """1. two workers; A is stopped (SIGSTOP)  2. from B, 100 pushes of 200 KB to a
    session of A, several times  3. an unrelated echo on B answers all along  4. the
    pushes beyond B's bound return False (routed_refused), the master drops what A's full
    queue cannot take (routed_dropped in ``swoolish status``), one log line per episode
    5. SIGCONT: A serves again and a push from B reaches its session."""
    pid_file = tmp_path / "master.pid"
    with serving(f"{app(tmp_path)}:server", tmp_path, "--pid-file", str(pid_file), workers=2) as (
        server
    ):
        pids = [p.pid for p in server.workers()]
        with clients(server, {pids[0]: 1, pids[1]: 2}) as made:
            a = next(c for c in made if c.pid == pids[0])
            b, e = [c for c in made if c.pid == pids[1]][:2]
            with stopped(a.pid):
                refused = []
                for _ in range(6):
                    reply = b.ask(f"flood:{a.fd}:100:200000")
                    refused.append(reply["count"] - reply["accepted"])
                    assert e.say("echo:still here", seconds=5) == "still here"
                    if "is not reading its channel" in server.log():
                        break
                assert refused[0] > 0, "B's bound never refused a push"
                assert all(n < 100 for n in refused)  # some went each time: nothing stalls
                server.wait_for_log(r"is not reading its channel", 10)
                figures = e.ask("stats")
                assert figures["routed_refused"] == sum(refused)
                report = status(pid_file)
                worker_a = next(w for w in report["workers"] if w["pid"] == a.pid)
                assert worker_a["routed_dropped"] > 0
                assert report["master"]["routed_dropped"] >= worker_a["routed_dropped"]
                assert e.say("echo:and still", seconds=5) == "and still"
            log = server.log()
            assert len(re.findall(r"is not reading its channel", log)) == 1
            episodes = sum(1 for n in refused if n)
            assert len(re.findall(r"operations on other workers' sessions are refused", log)) == (
                episodes
            )
            # A runs again: it gets what was queued for it, then a new push, in order.
            assert b.ask(f"push:{a.fd}:after the stop")["pushed"] is True
            a.wait_for(lambda m: m == "after the stop", 60, "the push made after SIGCONT")
            assert a.say("echo:awake") == "awake"
            assert a.closed is None and b.closed is None and e.closed is None


# ---------------------------------------------------------------------- item 11


def test_a_one_mib_push_and_a_hand_off_of_big_states_pass_default_channel_buffers(tmp_path):
    """With 212992-byte channel buffers (at most ~416 KiB per packet): 1. a 1 MiB push to
    another worker's session arrives  2. a reload hands off sessions whose state makes
    a batch of ~1.5 MiB: every one moves, none is closed."""
    with serving(f"{app(tmp_path)}:server", tmp_path, workers=2) as server:
        pids = [p.pid for p in server.workers()]
        with clients(server, {pids[0]: 1, pids[1]: 1}, count=6) as made:
            a = next(c for c in made if c.pid == pids[0])
            b = next(c for c in made if c.pid == pids[1])
            assert b.ask(f"big:{a.fd}:{1024 * 1024}") == {"pushed": True}
            big = a.wait_for(lambda m: m.startswith("b"), 15, "the 1 MiB push")
            assert big == "b" * (1024 * 1024)
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            for client in made:
                resumed = json.loads(client.wait_for(lambda m: "resumed" in m, 15, "resume"))
                assert resumed == {"resumed": 250_000, "gen": 2}
                assert client.ask("who")["gen"] == 2
            assert [c.closed for c in made] == [None] * len(made)
            assert not re.findall(r"fell back to a 1012 close [^\n]*send failed", server.log())


# ---------------------------------------------------------------------- item 13


def test_a_timer_bound_in_worker_exit_moves_with_its_session(tmp_path):
    """worker_exit binds a timer to a session after the hand-off was prepared: it moves
    with the session and fires in the new worker, instead of being cleared."""
    with serving(f"{app(tmp_path)}:server", tmp_path) as server:
        with clients(server, count=1) as [client]:
            client.ws.send("mark")
            assert client.take() == "marked"
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            late = json.loads(client.wait_for(lambda m: "late" in m, 15, "the moved timer"))
            assert late == {"late": client.fd, "gen": 2}
            assert client.closed is None


def test_a_truncated_message_from_a_worker_is_dropped_alone(tmp_path):
    """A worker writes one packet the kernel must cut for the master: the master drops
    it (one log line) and keeps reading that worker's channel: what it asks next is
    answered."""
    with serving(f"{app(tmp_path)}:server", tmp_path) as server:
        with clients(server, count=1) as [client]:
            assert client.ask("damage")["damaged"] > 0
            assert client.ask("server_stats", seconds=8) == {"workers": 1}
            server.wait_for_log(r"dropped a truncated message on the channel of worker 0")
            assert client.ask("server_stats", seconds=8) == {"workers": 1}
