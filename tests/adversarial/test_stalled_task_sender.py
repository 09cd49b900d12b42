"""An event worker that sends tasks with large results and then blocks its own loop, on
a real ``swoolish serve`` process: the master's queue for it reaches ``HARD_LIMIT`` and
refuses the rest of its results (bounded memory), and each of those tasks still gets an
answer, a ``TaskError``, once the worker reads again (docs/tasks.md, "Faults").

Before: the refused results were counted as if their sender had exited
(``task_results_dropped``), nothing was logged, and their callbacks never ran (a
``taskwait`` waited for its timeout).
"""

from __future__ import annotations

import json
import time

import pytest
from support import serving, status_of, timeout, wait_until, write_app

from swoolish.shared.ipc import BUFFER_ENV, HARD_LIMIT

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

RESULT_BYTES = 1000 * 1024  # under the 1 MiB bound of a result once pickled
TASKS = 48  # 47 MiB of results: more than HARD_LIMIT (32 MiB) waits for the sender
# Half to each of two task workers: what one sends the master (23 MiB) stays under
# HARD_LIMIT on its own channel, so only the sender's queue refuses.
TASK_WORKERS = 2

APP = f"""
    import json
    import time
    from pathlib import Path

    from swoolish import WebSocketServer
    from tests.apps.task_replies import push_small_task, pushing_outcome

    server = WebSocketServer()

    @server.on("task")
    def on_task(server, task):
        return b"r" * {RESULT_BYTES}

    @server.on("message")
    async def on_message(server, frame):
        command = json.loads(frame.data)
        if command["cmd"] == "wait":
            await push_small_task(server, frame.fd)
            return
        directory = Path(command["dir"])

        callback = pushing_outcome(frame.fd)
        for n in range(command["count"]):
            assert server.task(n, n % {TASK_WORKERS}, callback=callback)
        (directory / "dispatched").write_text("")
        # The loop is blocked: the results wait in the master, then it refuses them.
        deadline = time.monotonic() + 60
        while not (directory / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""


def test_results_refused_for_a_stalled_sender_reach_it_as_errors(tmp_path):
    """1. one event worker sends 48 tasks whose results are 1000 KiB each, then blocks
    its loop  2. every result reaches the master, which queues 32 MiB of them for the
    worker and refuses the rest: counted in task_results_refused, not as a sender that
    exited, logged once  3. released, the worker gets every result it was sent and a
    TaskError for each refused one: every callback runs  4. it takes tasks again."""
    write_app(tmp_path, APP, "stall_app.py")
    # Small socket buffers (a default Linux): what the kernel holds is no part of the test.
    env = {BUFFER_ENV: "212992"}
    pid_file = tmp_path / "master.pid"
    extra = ("--task-workers", str(TASK_WORKERS), "--pid-file", str(pid_file))
    with (
        serving("stall_app.py:server", tmp_path, *extra, cwd=tmp_path, env=env) as server,
        server.connect() as ws,
    ):
        server.wait_for_log(r"task worker \d gen 1 \(pid \d+\) ready in", count=TASK_WORKERS)
        ws.send(json.dumps({"cmd": "tasks", "dir": str(tmp_path), "count": TASKS}))
        wait_until((tmp_path / "dispatched").exists, 15, what="the tasks sent")

        def answered() -> dict | None:
            report = status_of(pid_file)
            held = [w["tasks"] for w in report["workers"] if w["kind"] == "task"]
            return report if held == [0] * TASK_WORKERS else None

        # Every task answered at the master while the sender still blocks.
        report = wait_until(answered, 30, interval=0.2, what="every task answered")
        (sender,) = [w for w in report["workers"] if w["kind"] == "event"]
        assert sender["channel_queued"] <= HARD_LIMIT
        (tmp_path / "release").write_text("")

        answers: list[dict] = []
        deadline = time.monotonic() + timeout(30)
        while len(answers) < TASKS and time.monotonic() < deadline:
            try:
                answers.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except TimeoutError:
                break
        assert len(answers) == TASKS, f"{len(answers)} of {TASKS} callbacks ran"
        assert sorted(a["task_id"] for a in answers) == list(range(1, TASKS + 1))
        refused = [a for a in answers if "error" in a]
        assert refused, "the stall refused no result: the test did not reach HARD_LIMIT"
        assert all(a["bytes"] == RESULT_BYTES for a in answers if "error" not in a)
        for a in refused:
            assert a["error"] == "TaskError"
            assert "did not read its channel from the master" in a["message"]

        master = status_of(pid_file)["master"]
        assert master["task_results_refused"] == len(refused)
        assert master["task_results_dropped"] == 0
        assert len(server.wait_for_log(r"task results for it are dropped")) == 1

        ws.send(json.dumps({"cmd": "wait"}))
        assert json.loads(ws.recv(timeout=timeout(10))) == {"waited": RESULT_BYTES}
