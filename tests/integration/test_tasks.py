"""Task workers on real processes: ``swoolish serve --task-workers N``, a real WebSocket
client driving tests/apps/tasks_app.py, real signals. Blocking tasks block on a file the
test creates, so every step waits on an event, never on a duration."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from pathlib import Path

import psutil
import pytest
from support import run_cli, serving, timeout, wait_until, write_app

TARGET = "tests/apps/tasks_app.py:server"
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


class Client:
    """A WebSocket client: commands answered in order, and finish messages kept apart."""

    def __init__(self, server) -> None:
        self.ws = server.connect()
        self.answers: list[dict] = []
        self.finished: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for text in self.ws:
                message = json.loads(text)
                with self._lock:
                    (self.finished if "finished" in message else self.answers).append(message)

    def ask(self, seconds: float = 10, **command) -> dict:
        self.ws.send(json.dumps(command))
        wait_until(lambda: self.answers, seconds, what=f"an answer to {command}")
        with self._lock:
            return self.answers.pop(0)

    def finishes(self, count: int, seconds: float = 10) -> list[dict]:
        wait_until(lambda: len(self.finished) >= count, seconds, what=f"{count} finishes")
        with self._lock:
            return list(self.finished)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self._thread.join(timeout(5))


@contextlib.contextmanager
def client(server):
    c = Client(server)
    try:
        yield c
    finally:
        c.close()


def task_workers(server) -> list[psutil.Process]:
    """The master's live children titled ``swoolish: task worker …``."""
    found = []
    for proc in server.workers():
        with contextlib.suppress(psutil.Error):
            if "task worker" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def wait_file(path: Path, what: str) -> str:
    wait_until(path.exists, 15, what=what)
    return wait_until(lambda: path.read_text(), 5, what=f"{path.name} written")


def test_results_reach_taskwait_finish_callback_and_gather(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "2") as server, client(server) as c:
        server.wait_for_log(r"task worker \d gen 1 \(pid \d+\) ready in", count=2)
        answer = c.ask(cmd="wait", data={"do": "echo", "n": 1})["result"]
        assert answer["n"] == 1 and answer["from"] == 0 and answer["task_worker"] in (1, 2)

        sent = c.ask(cmd="task", data={"do": "echo", "n": 2})
        assert isinstance(sent["task_id"], int)
        assert c.ask(cmd="task", data={"do": "finish", "n": 3}, via="callback")["task_id"]
        done = {f["finished"]: f for f in c.finishes(2)}
        assert done[sent["task_id"]]["via"] == "finish"
        assert done[sent["task_id"]]["result"]["n"] == 2
        callback = next(f for f in done.values() if f["via"] == "callback")
        assert callback["result"] == {"finished": 3}

        items = [{"do": "echo", "n": n} for n in range(6)]
        results = c.ask(cmd="gather", items=items)["results"]
        assert [r["result"]["n"] for r in results] == list(range(6))
        assert {r["result"]["task_worker"] for r in results} == {1, 2}  # least busy: both

        for dst in (0, 1):
            answer = c.ask(cmd="wait", data={"do": "echo"}, dst=dst)["result"]
            assert answer["task_worker"] == 1 + dst  # worker_id after the event workers
        assert c.ask(cmd="wait", data={"do": "none"}) == {"result": None}
        assert "Traceback" not in server.log()


def test_a_raising_handler_reaches_the_sender(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        assert c.ask(cmd="wait", data={"do": "raise", "n": 7}) == {
            "error": "AppError",
            "message": "boom 7",
        }
        assert c.ask(cmd="task", data={"do": "raise", "n": 8})["task_id"]
        (finished,) = c.finishes(1)
        assert finished["error"] == "AppError" and finished["message"] == "boom 8"
        results = c.ask(cmd="gather", items=[{"do": "echo", "n": 1}, {"do": "raise", "n": 9}])
        assert results["results"][1] == {"error": "AppError", "message": "boom 9"}
        assert c.ask(cmd="stats")["task_errors"] == 3
        server.wait_for_log(r"task 1 from worker 0 raised")  # and logged where it ran


def test_a_blocking_task_does_not_stall_the_event_worker(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        sent = c.ask(cmd="task", data={"do": "block", "n": 1, "dir": str(tmp_path)})
        wait_file(tmp_path / "started-1", "the task to start")
        # The task is still running (it waits for the release file): echo answers now.
        assert c.ask(cmd="echo", text="still here") == {"echo": "still here"}
        with client(server) as other:
            assert other.ask(cmd="echo", text="me too") == {"echo": "me too"}
        assert c.finished == []
        (tmp_path / "release").write_text("")
        (finished,) = c.finishes(1)
        assert finished["finished"] == sent["task_id"] and finished["result"]["n"] == 1


def test_full_task_workers_refuse_at_once(tmp_path):
    env = {"SWOOLISH_TASK_QUEUE_SIZE": "1"}
    with (
        serving(TARGET, tmp_path, "--task-workers", "1", env=env) as server,
        client(server) as c,
    ):
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        first = c.ask(cmd="task", data={"do": "block", "n": 1, "dir": str(tmp_path)})
        assert first["task_id"]
        assert c.ask(cmd="task", data={"do": "echo", "n": 2}) == {"task_id": False}
        refused = c.ask(cmd="wait", data={"do": "echo", "n": 3})
        assert refused["error"] == "TaskQueueFull"
        assert "task_queue_size (1)" in refused["message"]
        assert c.ask(cmd="stats")["tasks_refused"] == 2
        (tmp_path / "release").write_text("")
        assert c.finishes(1)[0]["finished"] == first["task_id"]
        assert c.ask(cmd="wait", data={"do": "echo", "n": 4})["result"]["n"] == 4


def test_a_task_worker_killed_mid_task_fails_its_task_and_is_replaced(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        blocking = {"do": "block", "dir": str(tmp_path)}
        c.ws.send(json.dumps({"cmd": "wait", "data": blocking, "timeout": 30}))
        victim = int(wait_file(tmp_path / "started-None", "the task to start"))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: c.answers, 15, what="taskwait to fail")
        failed = c.answers.pop(0)
        assert failed["error"] == "TaskError"
        assert f"task worker 1 (pid {victim}) exited (killed by SIGKILL)" in failed["message"]
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in", count=2)
        answer = c.ask(cmd="wait", data={"do": "echo", "n": 2})["result"]
        assert answer["n"] == 2 and answer["pid"] != victim


def test_a_task_that_exits_with_status_3_is_a_death_not_a_failed_boot(tmp_path):
    """A task handler that ends its task worker with os._exit(3), the status of a failed
    boot: the task gets its TaskError, the master logs a death and forks a replacement
    without the boot-failure back-off, as the worker had reported ready. Before, it
    logged "task worker 1 failed to boot 1 time in a row; next try in 0.1s" and backed
    off, judging by the status alone."""
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        (first,) = server.wait_for_log(r"task worker 1 gen 1 \(pid (\d+)\) ready in")
        failed = c.ask(cmd="wait", data={"do": "exit", "status": 3}, timeout=30)
        assert failed["error"] == "TaskError"
        assert f"task worker 1 (pid {first}) exited (exit status 3)" in failed["message"]
        server.wait_for_log(rf"worker 1 gen 1 \(pid {first}\) died: exit status 3")
        ready = server.wait_for_log(r"task worker 1 gen 1 \(pid (\d+)\) ready in", count=2)
        assert ready[1] != first
        assert "failed to boot" not in server.log()
        assert c.ask(cmd="wait", data={"do": "echo", "n": 5})["result"]["n"] == 5


def test_a_timeout_stops_waiting_and_the_late_result_is_dropped_and_counted(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        data = {"do": "block", "n": 1, "dir": str(tmp_path)}
        late = c.ask(cmd="wait", data=data, timeout=0.2)
        assert late["error"] == "TimeoutError" and "no result within 0.2s" in late["message"]
        (tmp_path / "release").write_text("")
        wait_until(
            lambda: c.ask(cmd="stats")["task_results_late"] == 1, what="the late result counted"
        )
        assert c.finished == []  # dropped: neither the finish handler nor anyone else got it


def test_a_reload_runs_every_task_exactly_once(tmp_path):
    with (
        serving(TARGET, tmp_path, "--task-workers", "2") as server,
        client(server) as c,
    ):
        server.wait_for_log(r"task worker \d gen 1 \(pid \d+\) ready in", count=2)
        old = {p.pid for p in task_workers(server)}
        # Two running (blocked), two queued behind them, on the old task workers.
        for n in range(4):
            data = {"do": "block", "count": True, "n": n, "dir": str(tmp_path)}
            assert c.ask(cmd="task", data=data)["task_id"]
        wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2, 15, what="two tasks running")
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"task worker \d gen 2 \(pid \d+\) ready in", count=2, seconds=20)
        # New tasks go to the new task workers while the old ones still hold theirs.
        for n in range(4, 8):
            answer = c.ask(cmd="wait", data={"do": "count", "n": n, "dir": str(tmp_path)})
            assert answer["result"]["pid"] not in old
        (tmp_path / "release").write_text("")
        finished = c.finishes(4, seconds=20)
        assert sorted(f["result"]["n"] for f in finished) == [0, 1, 2, 3]
        assert all(f["result"]["pid"] in old for f in finished)
        for n in range(8):
            assert len((tmp_path / f"ran-{n}").read_text().splitlines()) == 1, n
        server.wait_for_log(r"task worker \d gen 1 \(pid \d+\) exiting: 2 tasks done", count=2)
        wait_until(lambda: not old & {p.pid for p in task_workers(server)}, what="old gone")
        report = json.loads(run_cli("status", "--port", str(server.port), "--json").stdout)
        assert report["master"]["task_results_dropped"] == 0
        assert report["master"]["tasks_failed"] == 0


def test_status_lists_task_workers(tmp_path):
    with serving(TARGET, tmp_path, "--task-workers", "2") as server:
        server.wait_for_log(r"task worker \d gen 1 \(pid \d+\) ready in", count=2)
        shown = run_cli("status", "--port", str(server.port))
        assert shown.returncode == 0, shown.stderr
        rows = [line.split() for line in shown.stdout.splitlines()]
        kinds = {row[0]: row[1] for row in rows if row and row[0].isdigit()}
        assert kinds == {"0": "event", "1": "task", "2": "task"}
        report = json.loads(run_cli("status", "--port", str(server.port), "--json").stdout)
        tasks = [w for w in report["workers"] if w["kind"] == "task"]
        assert [w["slot"] for w in tasks] == [1, 2] and all(w["tasks"] == 0 for w in tasks)
        reload = run_cli("reload", "--port", str(server.port), "--wait")
        assert reload.returncode == 0, reload.stderr
        for slot in (1, 2):
            assert re.search(rf"task worker {slot} gen 2 \(pid \d+\) ready in", reload.stdout)
            assert re.search(rf"old task worker {slot} \(pid \d+\) drained", reload.stdout)


ASYNC_APP = """
import asyncio
from swoolish import WebSocketServer

server = WebSocketServer()
running = 0

@server.on("task")
async def on_task(server, task):
    global running
    running += 1
    try:
        await asyncio.sleep(0)
        if task.data == "raise":
            raise KeyError("nope")
        return {"echo": task.data, "at_once": running}
    finally:
        running -= 1

@server.on("message")
async def on_message(server, frame):
    try:
        server.push(frame.fd, repr(await server.taskwait(frame.data, 5)))
    except Exception as exc:
        server.push(frame.fd, f"{type(exc).__name__}: {exc}")
"""


def test_async_task_handlers(tmp_path):
    write_app(tmp_path, ASYNC_APP, "async_tasks.py")
    with (
        serving("async_tasks.py:server", tmp_path, "--task-workers", "1", cwd=tmp_path) as server,
        server.connect() as ws,
    ):
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        ws.send("hello")
        assert ws.recv(timeout=timeout(10)) == "{'echo': 'hello', 'at_once': 1}"
        ws.send("raise")
        assert ws.recv(timeout=timeout(10)) == "KeyError: 'nope'"


def test_the_master_keeps_no_payload_of_a_task_it_delivered(tmp_path):
    """1. one task worker, busy with a blocking task  2. 60 tasks of 512 KiB of data each
    queue in it  3. the master, which relayed them, did not grow by them: it keeps only
    who sent a task, to answer for it if its task worker dies (before, it kept every
    payload until the task was answered: 30 MiB here, up to task_queue_size x 1 MiB per
    task worker)  4. released, every task is answered."""
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        master = psutil.Process(server.proc.pid)
        blocking = c.ask(cmd="task", data={"do": "block", "n": 0, "dir": str(tmp_path)})
        wait_file(tmp_path / "started-0", "the blocking task to start")
        (worker,) = task_workers(server)
        rss_before, worker_before = master.memory_info().rss, worker.memory_info().rss
        pad = "p" * (512 * 1024)
        ids = [
            c.ask(cmd="task", data={"do": "echo", "n": n, "pad": pad})["task_id"] for n in range(60)
        ]
        assert all(ids)
        # delivered: the task worker holds them (unpickled, queued behind the blocking one)
        wait_until(lambda: worker.memory_info().rss - worker_before > 25 * 2**20, 15)
        grown = master.memory_info().rss - rss_before
        (tmp_path / "release").write_text("")
        finished = c.finishes(61, 30)
        assert {f["finished"] for f in finished} == {blocking["task_id"], *ids}
    assert grown < 10 * 1024 * 1024, f"the master grew {grown / 2**20:.0f} MiB"


def test_tasks_queued_behind_a_blocking_one_wait_as_the_bytes_they_came_in(tmp_path):
    """1. one task worker, busy with a blocking task  2. 40 tasks queue behind it, each
    512 KiB of text that begins with an emoji (UTF-8: about a byte a character; a
    Python str with one character beyond U+FFFF: 4 bytes every character)  3. the task
    worker grew by about what it was sent, not four times that: their data is unpickled
    when their turn comes (before: on arrival, 80 MiB here)  4. released, every task is
    answered, each from its own data."""
    with serving(TARGET, tmp_path, "--task-workers", "1") as server, client(server) as c:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        blocking = c.ask(cmd="task", data={"do": "block", "n": 0, "dir": str(tmp_path)})
        wait_file(tmp_path / "started-0", "the blocking task to start")
        (worker,) = task_workers(server)
        worker_before = worker.memory_info().rss
        pad = "\U0001f600" + "p" * (512 * 1024)
        ids = [
            c.ask(cmd="task", data={"do": "echo", "n": n, "pad": pad})["task_id"] for n in range(40)
        ]
        assert all(ids)
        wait_until(lambda: c.ask(cmd="received")["received"] == 41, 15, what="all delivered")
        grown = worker.memory_info().rss - worker_before
        (tmp_path / "release").write_text("")
        finished = c.finishes(41, 30)
        assert {f["finished"] for f in finished} == {blocking["task_id"], *ids}
        assert sorted(f["result"]["n"] for f in finished if f["finished"] in ids) == list(range(40))
    assert grown < 40 * 2**20, f"the task worker grew {grown / 2**20:.0f} MiB"
