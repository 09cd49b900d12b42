"""A task worker that answers faster than the master reads, on a real ``swoolish serve``
process: its channel to the master must not refuse answers silently (docs/tasks.md,
"Faults").

With small socket buffers (a default Linux), one task worker whose handler returns
1000 KiB at once outruns the master. Before, the answers past ``HARD_LIMIT`` (32 MiB)
in that channel were refused and lost, one log line each: the master's book kept their
tasks as held by the task worker until it exited, and their senders heard nothing
until then (48 tasks: 14 callbacks never ran, the book held 14 tasks until shutdown).
Now a plain-function handler starts no next task while more than ``ANSWERS_AHEAD``
waits for the master, so every answer fits; and an answer still refused (``async def``
handlers finishing together) reaches its sender as a ``TaskError`` once the channel
has drained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import serving, status_of, timeout, wait_until, write_app

from swoolish.shared.ipc import BUFFER_ENV

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

RESULT_BYTES = 1000 * 1024  # under the 1 MiB bound of a result once pickled
TASKS = 64  # 62 MiB of answers from one task worker: far past HARD_LIMIT if unpaced

APP = f"""
    import asyncio
    import json

    from swoolish import WebSocketServer
    from tests.apps.task_replies import push_small_task, pushing_outcome

    server = WebSocketServer()
    arrived = []
    everyone_here = None

    if {{async_handler}}:
        @server.on("task")
        async def on_task(server, task):
            # every task waits for the last one, then all answer in one turn of the loop
            global everyone_here
            if everyone_here is None:
                everyone_here = asyncio.Event()
            arrived.append(task.id)
            if len(arrived) == {TASKS}:
                everyone_here.set()
            await everyone_here.wait()
            return b"r" * {RESULT_BYTES}
    else:
        @server.on("task")
        def on_task(server, task):
            return b"r" * {RESULT_BYTES}

    @server.on("message")
    async def on_message(server, frame):
        command = json.loads(frame.data)
        if command["cmd"] == "figures":
            report = await server.server_stats()
            (figures,) = [w for w in report["workers"] if w.get("kind") == "task"]
            server.push(frame.fd, json.dumps({{"figures": figures}}))
            return
        if command["cmd"] == "wait":
            await push_small_task(server, frame.fd)
            return

        callback = pushing_outcome(frame.fd)
        for n in range({TASKS}):
            assert server.task(n, callback=callback)
"""


def run_tasks(tmp_path: Path, async_handler: bool) -> tuple[list[dict], dict, dict, str]:
    """Send TASKS tasks to one task worker; every callback's answer, the task worker's
    figures, the master's status, and the log, once the sender has heard of every task
    (or at the deadline, when it has not)."""
    write_app(tmp_path, APP.replace("{async_handler}", str(async_handler)), "answers_app.py")
    # Small socket buffers (a default Linux): what the kernel holds is no part of the test.
    env = {BUFFER_ENV: "212992"}
    pid_file = tmp_path / "master.pid"
    extra = ("--task-workers", "1", "--pid-file", str(pid_file))
    with (
        serving("answers_app.py:server", tmp_path, *extra, cwd=tmp_path, env=env) as server,
        server.connect() as ws,
    ):
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        ws.send(json.dumps({"cmd": "tasks"}))
        answers: list[dict] = []
        deadline = time.monotonic() + timeout(30)
        while len(answers) < TASKS and time.monotonic() < deadline:
            try:
                answers.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except TimeoutError:
                break
        assert len(answers) == TASKS, f"{len(answers)} of {TASKS} callbacks ran"

        def book_empty() -> dict | None:
            report = status_of(pid_file)
            held = [w["tasks"] for w in report["workers"] if w["kind"] == "task"]
            return report if held == [0] else None

        # the master's book holds none of them any more
        report = wait_until(book_empty, 10, interval=0.2, what="the master's book to empty")
        ws.send(json.dumps({"cmd": "figures"}))
        figures = json.loads(ws.recv(timeout=timeout(10)))["figures"]
        ws.send(json.dumps({"cmd": "wait"}))  # it takes tasks again
        assert json.loads(ws.recv(timeout=timeout(10))) == {"waited": RESULT_BYTES}
        return answers, figures, report, server.log()


def test_a_task_worker_starts_no_task_while_its_answers_wait_for_the_master(tmp_path):
    """1. one task worker, a plain-function handler, 64 tasks of 1000 KiB answers  2. it
    holds back its next task while more than ANSWERS_AHEAD waits for the master, so no
    answer is refused  3. every callback gets its result, in order, and the master's
    book empties."""
    answers, figures, report, log = run_tasks(tmp_path, async_handler=False)
    assert [a["task_id"] for a in answers] == list(range(1, TASKS + 1))
    assert [a.get("bytes") for a in answers] == [RESULT_BYTES] * TASKS, [
        a for a in answers if "error" in a
    ][:3]
    assert figures["task_answers_refused"] == 0
    assert figures["tasks_held_back"] >= 1, "the master kept up: the bound was never reached"
    assert figures["tasks_done"] == TASKS
    assert report["master"]["task_results_refused"] == 0
    assert "could not be queued" not in log and "answers wait for the master" not in log


def test_answers_the_task_workers_channel_refuses_reach_their_senders_as_errors(tmp_path):
    """1. one task worker, an ``async def`` handler: 64 tasks run at once and answer in
    the same turn of its loop, 62 MiB at once  2. its channel to the master refuses what
    is past HARD_LIMIT; those results are dropped, logged once  3. each of those tasks
    reaches its sender as a TaskError once the channel has drained: every callback runs
    without waiting for the task worker to exit, and the master's book empties."""
    answers, figures, report, log = run_tasks(tmp_path, async_handler=True)
    assert sorted(a["task_id"] for a in answers) == list(range(1, TASKS + 1))
    refused = [a for a in answers if "error" in a]
    assert refused, "nothing was refused: the test did not reach HARD_LIMIT"
    assert all(a["bytes"] == RESULT_BYTES for a in answers if "error" not in a)
    here = [a for a in refused if "could not queue it for the master" in a["message"]]
    assert all(a["error"] == "TaskError" for a in refused)
    assert here, refused[:3]
    assert figures["task_answers_refused"] == len(here)
    assert log.count("answers wait for the master") == 1
    assert "could not be queued" not in log
    assert report["master"]["task_results_dropped"] == 0
