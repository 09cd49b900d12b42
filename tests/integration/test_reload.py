"""Rolling reload (docs/reload.md) on real processes: the seed scenario, rollback, hooks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from support import ROOT, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed

# The seed scenario: a message starts a 50 ms tick pushing into the client's connection.
# VERSION is rewritten on disk between reloads; ADVICE switches between an app that
# follows Swoole's documented advice and one that clears nothing and checks nothing.
TICKER = """
    import json
    from swoolish import Timer, WebSocketServer

    VERSION = {version!r}
    ADVICE = {advice!r}
    server = WebSocketServer(reload_handoff=False)  # the 1012 close of a plain reload

    @server.on("message")
    def on_message(server, frame):
        fd = frame.fd
        def tick(timer_id):
            if ADVICE and not server.exists(fd):
                Timer.clear(timer_id)
                return
            server.push(fd, json.dumps({{"v": VERSION, "gen": server.generation,
                                        "pid": server.worker_pid}}))
        Timer.tick(50, tick)

    if ADVICE:
        @server.on("worker_exit")
        def on_worker_exit(server, worker_id):
            Timer.clear_all()
"""


def ticker_app(tmp_path, version, advice):
    return write_app(tmp_path, TICKER.format(version=version, advice=advice), "ticker.py")


class TickClient(threading.Thread):
    """A client that asks for ticks, and once closed, reconnects and asks again."""

    def __init__(self, server, stop):
        super().__init__(daemon=True)
        self.server, self.stop = server, stop
        self.closes: list[int | None] = []
        self.versions: list[str] = []
        self.errors: list[BaseException] = []

    def run(self):
        while not self.stop.is_set():
            try:
                with self.server.connect() as ws:
                    ws.send("start")
                    while not self.stop.is_set():
                        try:
                            msg = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if not self.versions or self.versions[-1] != msg["v"]:
                            self.versions.append(msg["v"])
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else None)
            except Exception as exc:
                self.errors.append(exc)
                return


@pytest.mark.parametrize("advice", [True, False], ids=["follows-advice", "clears-nothing"])
def test_seed_scenario_reload_closes_each_client_once_with_1012(tmp_path, advice):
    """1. 2 workers, 20 clients each ticked every 50 ms by a timer of their own
    2. the code on disk changes; SIGUSR1  3. every client is closed exactly once, with
    1012, and its reconnection is served by the new code  4. the old workers are gone
    within max_wait_time + 1.5 s, the master is the same process  5. the log has no
    line per failed push: no warning flood."""
    app = ticker_app(tmp_path, "v1", advice)
    stop = threading.Event()
    with serving(f"{app}:server", tmp_path, "--max-wait-time", "1", workers=2) as server:
        old_workers = server.workers()
        clients = [TickClient(server, stop) for _ in range(20)]
        for c in clients:
            c.start()
        wait_until(lambda: all(c.versions == ["v1"] for c in clients), 15, what="all ticking")
        ticker_app(tmp_path, "v2", advice)
        server.signal(signal.SIGUSR1)
        wait_until(lambda: all(c.versions == ["v1", "v2"] for c in clients), 15, what="all on v2")
        _, alive = psutil.wait_procs(old_workers, timeout=timeout(1 + 1.5 + 1))
        stop.set()
        for c in clients:
            c.join(10)
        assert alive == []
        assert [c.errors for c in clients] == [[]] * 20
        assert [c.closes for c in clients] == [[1012]] * 20
        assert psutil.Process(server.pid).is_running()
        assert {w.pid for w in server.workers()}.isdisjoint({w.pid for w in old_workers})
        log = server.log()
        assert "reload to generation 2 complete" in log
        assert "does not exist" not in log and log.count("\n") < 60
        if not advice:
            # The app forgot its timers: the framework cleared them, one line per worker.
            lines = [x for x in log.splitlines() if "timers still active after worker_exit" in x]
            assert 1 <= len(lines) <= 2


def test_no_timer_of_a_stopped_worker_fires_after_worker_exit(tmp_path):
    """1. worker_exit records the time it returned  2. a forgotten 5 ms tick records
    every run  3. after a reload, no run is later than worker_exit's return."""
    marks = tmp_path / "marks"
    app = write_app(
        tmp_path,
        f"""
        import time
        from swoolish import Timer, WebSocketServer

        server = WebSocketServer()
        MARKS = {str(marks)!r}

        def note(text):
            with open(MARKS, "a") as f:
                f.write(f"{{text}} {{time.monotonic()}}\\n")

        @server.on("worker_start")
        def start(server, worker_id):
            if server.generation == 1:
                Timer.tick(5, lambda timer_id: note("tick"))

        @server.on("worker_exit")
        def exit_(server, worker_id):
            note("exit")
        """,
    )
    with serving(f"{app}:server", tmp_path) as server:
        wait_until(lambda: marks.exists() and marks.read_text().count("tick") > 3, 10)
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"drained")
        lines = [line.split() for line in marks.read_text().splitlines()]
        exit_at = [float(t) for kind, t in lines if kind == "exit"]
        ticks = [float(t) for kind, t in lines if kind == "tick"]
        assert len(exit_at) == 1
        assert ticks and max(ticks) < exit_at[0]


def reload_wait(pid_file) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swoolish", "reload", "--pid-file", str(pid_file), "--wait"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )


BROKEN_APPS = {
    "import-error": "raise ImportError('broken deploy')\n",
    "worker-start-raises": """
        from swoolish import WebSocketServer
        server = WebSocketServer()
        @server.on("worker_start")
        def start(server, worker_id):
            raise RuntimeError("cannot reach the database")
    """,
    "never-ready": """
        import time
        from swoolish import WebSocketServer
        server = WebSocketServer(worker_start_timeout=1.0)
        @server.on("worker_start")
        def start(server, worker_id):
            time.sleep(30)
    """,
    "syntax-error": "from swoolish import WebSocketServer\nserver = WebSocketServer(\n",
}

# What `reload --wait` says of each (docs/reload.md, "Why a reload was rolled back"):
# the cause and the file:line in the app, and the line of the app it points at.
BROKEN_CAUSES = {
    "import-error": (
        r"failed to boot: ImportError: broken deploy \(\S*app\.py:(?P<line>\d+)\)",
        "raise ImportError",
    ),
    "worker-start-raises": (
        r"failed to boot: RuntimeError: cannot reach the database "
        r"\(\S*app\.py:(?P<line>\d+)\)",
        "raise RuntimeError",
    ),
    "never-ready": (
        r"was not ready within 1s \(worker_start_timeout\), "
        r"stuck at \S*app\.py:(?P<line>\d+): time\.sleep\(30\)",
        "time.sleep(30)",
    ),
    "syntax-error": (
        r"failed to boot: SyntaxError: '\(' was never closed \(\S*app\.py:(?P<line>\d+)\)",
        "WebSocketServer(",
    ),
}

GOOD_APP = """
    from swoolish import WebSocketServer
    server = WebSocketServer(worker_start_timeout=1.0, reload_handoff=False)
    VERSION = {version!r}

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, VERSION)
"""


@pytest.mark.parametrize("breakage", sorted(BROKEN_APPS))
def test_broken_deploy_is_rolled_back_and_the_fixed_one_then_served(tmp_path, breakage):
    """1. v1 serving with 2 workers, a client connected  2. broken code on disk
    3. `reload --wait` exits non-zero and says rolled back; the old workers are the
    same processes and the client still gets answers from v1; the CLI's last line and
    the master's log line give the cause (the exception and the file:line of the app,
    or where a worker was stuck)  4. fixed code on disk, `reload --wait` exits 0 and new
    clients get v3."""
    app = write_app(tmp_path, GOOD_APP.format(version="v1"))
    pid_file = tmp_path / "master.pid"
    with (
        serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file), workers=2) as server,
        server.connect() as client,
    ):
        before = {w.pid for w in server.workers()}
        write_app(tmp_path, BROKEN_APPS[breakage])
        result = reload_wait(pid_file)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "reload rolled back" in result.stdout
        assert "generation 1 keeps serving" in server.log()
        cause, marker = BROKEN_CAUSES[breakage]
        last = result.stdout.splitlines()[-1]
        found = re.fullmatch(
            rf"reload rolled back: new worker [01] {cause}; generation 1 keeps serving", last
        )
        assert found, result.stdout
        source = app.read_text().splitlines()
        assert marker in source[int(found["line"]) - 1]
        assert re.search(rf"rolled back after [\d.]+s: new worker [01] {cause}", server.log())
        wait_until(lambda: {w.pid for w in server.workers()} == before, 10, what="new killed")
        client.send("still there?")
        assert client.recv(timeout=5) == "v1"

        write_app(tmp_path, GOOD_APP.format(version="v3"))
        result = reload_wait(pid_file)
        assert result.returncode == 0, result.stdout + result.stderr
        # The rolled-back reload had generation 2; its number is not given again.
        assert "reload complete: generation 3 serving" in result.stdout
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=10)
        assert closed.value.rcvd.code == 1012
        with server.connect() as fresh:
            fresh.send("version?")
            assert fresh.recv(timeout=5) == "v3"


def test_master_hooks_and_server_reload_from_a_worker(tmp_path):
    """1. a message handler calls server.reload()  2. the master's before_reload and
    after_reload hooks run around the reload, start before it, shutdown at the end
    3. a crashed worker fires worker_error with its slot and signal."""
    app = write_app(
        tmp_path,
        """
        import os, sys
        from swoolish import WebSocketServer
        server = WebSocketServer()

        def say(*words):
            print("hook", *words, file=sys.stderr, flush=True)

        for event in ("start", "shutdown", "before_reload", "after_reload"):
            server.on(event, lambda server, *args, event=event: say(event))

        @server.on("worker_error")
        def worker_error(server, worker_id, pid, exit_code, signal):
            say("worker_error", worker_id, exit_code, signal)

        @server.on("message")
        def on_message(server, frame):
            if frame.data == "reload":
                server.push(frame.fd, f"requested {server.reload()}")
            else:
                server.push(frame.fd, f"gen {server.generation} pid {os.getpid()}")
        """,
    )
    with serving(f"{app}:server", tmp_path) as server:
        with server.connect() as ws:
            ws.send("reload")
            assert ws.recv(timeout=5) == "requested True"
        server.wait_for_log("hook after_reload")
        with server.connect() as ws:
            ws.send("who")
            answer = ws.recv(timeout=5)
        assert answer.startswith("gen 2 ")
        os.kill(int(answer.split()[-1]), signal.SIGKILL)
        server.wait_for_log(r"hook worker_error 0 -9 9")
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        log = server.log()
        order = [
            log.index(f"hook {e}")
            for e in ("start", "before_reload", "after_reload", "worker_error", "shutdown")
        ]
        assert order == sorted(order)


def test_script_started_with_server_start_reloads_new_code(tmp_path):
    """`python app.py` (server.start() at the bottom) picks up new code on SIGUSR1."""
    from support import ServerProcess, free_port

    port = free_port()
    source = """
        from swoolish import WebSocketServer
        server = WebSocketServer("127.0.0.1", {port})

        @server.on("message")
        def on_message(server, frame):
            server.push(frame.fd, {version!r})

        server.start()
    """
    app = write_app(tmp_path, source.format(port=port, version="old"))
    server = ServerProcess([], port, tmp_path, tmp_path / "script.log", script=app)
    try:
        server.wait_ready(1)
        with server.connect() as ws:
            ws.send("?")
            assert ws.recv(timeout=5) == "old"
        write_app(tmp_path, source.format(port=port, version="new"))
        server.signal(signal.SIGUSR1)
        server.wait_for_log("reload to generation 2 complete")

        def answer():
            with contextlib.suppress(Exception), server.connect() as ws:
                ws.send("?")
                return ws.recv(timeout=5) == "new"
            return False

        wait_until(answer, 10, interval=0.1, what="new code answering")
    finally:
        server.stop()


def test_reload_is_fast_with_four_workers(tmp_path):
    """Not a timing assertion: records the reload duration the log reports, so it can
    be quoted; the assertion is only that the reload completed."""
    with serving("tests/apps/echo_app.py:server", tmp_path, workers=4) as server:
        started = time.monotonic()
        server.signal(signal.SIGUSR1)
        line = server.wait_for_log(r"reload to generation 2 complete in ([\d.]+)s")[0]
        print(f"reload of 4 workers: {line}s (log), {time.monotonic() - started:.3f}s (observed)")
