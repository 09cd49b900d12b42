"""Table and Atomic in a real server: shared by every worker, kept across reloads.

A real ``swoolish serve`` with several workers, real HTTP clients, real signals. The
app keeps a module-level Table and Atomic; every request to ``/hit`` increments one
key and answers ``pid n`` (the worker and the key's new value), sleeping a little so
concurrent clients are spread over the workers.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from pathlib import Path

from support import serving, timeout, wait_until, write_app

APP = """
    import os
    import time

    from swoolish import Atomic, Table, WebSocketServer

    server = WebSocketServer(reload_handoff=False)
    hits = Table(1024, {{"n": int, "who": (str, 16)}})
    total = Atomic()
    VERSION = {version!r}

    @server.on("request")
    def on_request(request, response):
        if request.path == "/hit":
            n = hits.incr("counter", "n")
            hits.incr(f"worker-{{os.getpid()}}", "n")
            hits.set("last", {{"who": str(os.getpid())}})
            total.add()
            time.sleep(0.01)  # holds this worker, so concurrent clients reach the others
            response.end(f"{{os.getpid()}} {{n}}")
        elif request.path == "/read":
            workers = sum(row["n"] for key, row in hits if key.startswith("worker-"))
            response.end(f"{{VERSION}} {{hits.get('counter', 'n')}} {{total.get()}} {{workers}}")
        elif request.path == "/make":
            try:
                Table(8, {{"x": int}})
            except RuntimeError as exc:
                response.status(500)
                response.end(f"{{type(exc).__name__}}: {{exc}}")
"""


def get(port: int, path: str) -> str | None:
    """The body of a GET on a fresh connection, or None if it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout(10))
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        return conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Hitters:
    """Threads sending ``/hit`` until stopped; every answer kept as (pid, n)."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answers: list[tuple[int, int]] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            body = get(self.port, "/hit")
            with self._lock:
                if body is None:
                    self.failures += 1
                else:
                    pid, n = body.split()
                    self.answers.append((int(pid), int(n)))

    def pids(self) -> set[int]:
        with self._lock:
            return {pid for pid, _ in self.answers}

    def __enter__(self) -> Hitters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout(15))


def read(port: int) -> tuple[str, int, int, int]:
    body = wait_until(lambda: get(port, "/read"), 10, what="an answer to /read")
    version, counter, total, workers = body.split()
    return version, int(counter), int(total), int(workers)


def test_every_worker_increments_one_key_and_the_values_survive_a_reload(tmp_path: Path):
    """1. 3 workers, 4 clients hitting /hit until every worker has answered  2. the
    answers' values are exactly 1..N (no increment lost or repeated), and the Atomic and
    the per-worker rows add up to N  3. a Table made in a handler is a clear error
    4. SIGUSR1 with new code: after "reload to generation 2 complete" the new workers
    read the same values, and increment on from there."""
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, workers=3) as server:
        workers = {w.pid for w in server.workers()}
        with Hitters(server.port) as hitters:
            wait_until(lambda: hitters.pids() >= workers, 30, what="every worker answering")
        values = sorted(n for _, n in hitters.answers)
        assert hitters.failures == 0
        assert values == list(range(1, len(values) + 1))
        assert read(server.port) == ("v1", len(values), len(values), len(values))

        body = get(server.port, "/make")
        assert body is not None and body.startswith("NotCreatedByMaster: Table #2 of ")
        assert "was not created by the master" in body and "module level" in body

        write_app(tmp_path, APP.format(version="v2"))
        server.signal(signal.SIGUSR1)
        server.wait_for_log("reload to generation 2 complete")
        assert read(server.port) == ("v2", len(values), len(values), len(values))
        body = get(server.port, "/hit")
        assert body is not None and body.split()[1] == str(len(values) + 1)


def test_a_worker_killed_under_load_leaves_the_table_to_its_replacement(tmp_path: Path):
    """1. 2 workers under load  2. one SIGKILLed by pid mid-load  3. its replacement boots,
    attaches and answers; every value any worker answered is distinct (no update lost
    or repeated across the kill), and the replacement counts on from the same data."""
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        victim, survivor = (w.pid for w in server.workers())
        with Hitters(server.port) as hitters:
            wait_until(lambda: len(hitters.answers) >= 20, 30, what="load running")
            os.kill(victim, signal.SIGKILL)
            before = len(hitters.answers)
            new = wait_until(
                lambda: {w.pid for w in server.workers()} - {victim, survivor},
                30,
                what="a replacement worker",
            )
            wait_until(lambda: hitters.pids() & new, 30, what="the replacement answering")
        values = [n for _, n in hitters.answers]
        assert len(values) == len(set(values))
        replacement = [n for pid, n in hitters.answers if pid in new]
        assert min(replacement) > before
        _, counter, total, workers = read(server.port)
        assert counter >= max(values) and workers >= counter - 1
        assert abs(total - counter) <= 1  # the kill may fall between the two increments


def test_a_reload_that_changes_a_tables_columns_is_rolled_back_with_the_cause(
    tmp_path: Path,
):
    """New code declaring the table with another column: the new worker fails to boot,
    the reload is rolled back, the log names both schemas, and the old workers keep the
    data."""
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        assert get(server.port, "/hit") is not None
        changed = APP.format(version="v2").replace(
            '{"n": int, "who": (str, 16)}', '{"n": int, "who": (str, 32)}'
        )
        assert changed != APP.format(version="v2")
        write_app(tmp_path, changed)
        server.signal(signal.SIGUSR1)
        line = server.wait_for_log(r"rolled back after [^\n]*")[0]
        assert "SchemaMismatch: Table #1 of " in line
        assert "the master created Table(1024, {'n': int, 'who': (str, 16)})" in line
        assert "this code declares Table(1024, {'n': int, 'who': (str, 32)})" in line
        assert read(server.port) == ("v1", 1, 1, 1)


TASK_APP = """
    import os

    from swoolish import Atomic, Table, WebSocketServer

    server = WebSocketServer(task_worker_num=2)
    seen = Table(64, {"n": int})
    done = Atomic()

    @server.on("task")
    def on_task(server, task):
        seen.incr(f"task-worker-{os.getpid()}", "n")
        return done.add()

    @server.on("request")
    async def on_request(request, response):
        if request.path == "/task":
            response.end(str(await server.taskwait("count", timeout=5)))
        else:
            workers = {key: row["n"] for key, row in seen}
            response.end(f"{done.get()} {sum(workers.values())} {len(workers)}")
"""


def test_task_workers_share_the_table_and_atomic_with_event_workers(tmp_path: Path) -> None:
    """1. 2 task workers count their tasks in a module-level Table and Atomic  2. 40
    taskwaits from the event worker  3. the event worker reads 40 in both, written by
    both task workers: task workers attach to the master's memory as event workers do."""
    app = write_app(tmp_path, TASK_APP)
    with serving(f"{app}:server", tmp_path) as server:
        wait_until(lambda: len(server.workers()) == 3, 15, what="1 event + 2 task workers")
        answers = [get(server.port, "/task") for _ in range(40)]
        assert sorted(int(a) for a in answers if a is not None) == list(range(1, 41)), answers
        assert get(server.port, "/read") == "40 40 2"
