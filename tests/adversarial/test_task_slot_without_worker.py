"""A task worker SIGKILLed whose replacement cannot boot, on a real ``swoolish serve``
process: tasks go to the task worker that is up, and a task sent to the empty slot gets
a TaskError once the slot has had no task worker for SLOT_WAIT (docs/tasks.md,
"Faults").

Before, the senders picked by the load alone: half of 10 tasks went to the empty slot
while the other task worker was idle, and none of them got an answer, an error
included, while the replacement failed to boot (the hunt's t12: 5 of 10 callbacks after
10 s, 0 errors); a ``taskwait`` sent to that slot waited for its own timeout.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from support import serving, timeout, write_app

from swoolish.master.tasks import SLOT_WAIT

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

TASKS = 10

APP = """
    import json
    import os

    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("worker_start")
    def on_worker_start(server, worker_id):
        if worker_id >= server.settings.worker_num and os.path.exists(os.environ["NO_BOOT"]):
            raise RuntimeError("this task worker cannot boot (the test's flag)")

    @server.on("task")
    def on_task(server, task):
        return server.worker_id

    @server.on("message")
    async def on_message(server, frame):
        command = json.loads(frame.data)
        if command["cmd"] == "spread":

            def callback(server, task_id, result):
                if isinstance(result, BaseException):
                    result = type(result).__name__
                server.push(frame.fd, json.dumps({"ran_in": result}))

            for n in range(command["count"]):
                assert server.task(n, callback=callback)
            return
        try:
            result = await server.taskwait("one", 600, command["dst"])
        except Exception as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        else:
            answer = {"ran_in": result}
        server.push(frame.fd, json.dumps(answer))
"""


def receive(ws, count: int, seconds: float) -> list[dict]:
    """Up to ``count`` messages, as many as came within ``seconds``."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout(seconds)
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except TimeoutError:
            break
    return got


def test_tasks_pass_over_a_slot_whose_worker_cannot_boot_and_its_waiters_fail(tmp_path):
    """1. one event worker, task workers 1 and 2; task worker 1 is SIGKILLed and its
    replacement fails to boot  2. 10 tasks with dst=-1 all run in task worker 2, the one
    up  3. a taskwait for task worker 1 (dst 0, timeout 600 s) gets a TaskError once
    the slot has had no task worker for SLOT_WAIT  4. once it boots again, it runs
    tasks."""
    write_app(tmp_path, APP, "slot_app.py")
    flag = tmp_path / "no-boot"
    extra = ("--task-workers", "2")
    env = {"NO_BOOT": str(flag)}
    with serving("slot_app.py:server", tmp_path, *extra, cwd=tmp_path, env=env) as server:
        ready = r"task worker 1 gen 1 \(pid (\d+)\) ready in"
        (first,) = server.wait_for_log(ready)
        server.wait_for_log(r"task worker 2 gen 1 \(pid \d+\) ready in")
        flag.write_text("")
        server.workers()  # remembered, so it is stopped whatever happens
        os.kill(int(first), signal.SIGKILL)
        server.wait_for_log(r"worker 1 failed to boot 1 time in a row")

        with server.connect() as ws:
            ws.send(json.dumps({"cmd": "spread", "count": TASKS}))
            ran = receive(ws, TASKS, 15)
            assert len(ran) == TASKS, f"{len(ran)} of {TASKS} tasks answered"
            assert [r["ran_in"] for r in ran] == [2] * TASKS

            ws.send(json.dumps({"cmd": "wait", "dst": 0}))
            (answer,) = receive(ws, 1, 10 * SLOT_WAIT)
            assert answer["error"] == "TaskError", answer
            assert "task worker 1 is not up" in answer["message"]
            assert len(server.wait_for_log(r"task worker 1 has not been up for")) == 1

            flag.unlink()
            server.wait_for_log(ready, 60, count=2)  # back-off: up to BACKOFF_MAX
            ws.send(json.dumps({"cmd": "wait", "dst": 0}))
            assert receive(ws, 1, 15) == [{"ran_in": 1}]
