"""An event worker whose own channel to the master is over its bound refuses tasks, on
a real ``swoolish serve`` process, and says so: ``taskwait`` raises ``TaskQueueFull``
naming the channel and the bytes waiting in it, not the task workers' load
(docs/tasks.md, "Faults").

The master is stopped (SIGSTOP) while the event worker sends tasks of 1000 KiB: the
kernel takes less than one of them (small socket buffers, as a default Linux), the rest
waits in the worker's queue until it holds more than ipc.QUEUE_LIMIT (8 MiB). Before,
the refusal said "every task worker holds task_queue_size (1024) tasks already" with
nine tasks sent and the task worker idle.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from support import serving, timeout, write_app

from swoolish.shared.ipc import BUFFER_ENV, QUEUE_LIMIT

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

PAD_BYTES = 1000 * 1024  # a task's data, under the 1 MiB bound once pickled
MOST = 2 * QUEUE_LIMIT // PAD_BYTES  # tasks tried at most before one is refused

APP = f"""
    import json

    from swoolish import TaskQueueFull, WebSocketServer

    server = WebSocketServer()

    @server.on("task")
    def on_task(server, task):
        return b"done"

    @server.on("message")
    async def on_message(server, frame):
        pad = b"x" * {PAD_BYTES}
        sent = 0
        while sent < {MOST} and server.task(pad) is not False:
            sent += 1
        try:
            await server.taskwait(pad, timeout=10)
            refusal = None
        except TaskQueueFull as exc:
            refusal = str(exc)
        server.push(frame.fd, json.dumps({{"sent": sent, "refusal": refusal}}))
"""


def test_a_task_refused_by_the_senders_channel_says_so(tmp_path):
    """1. one event worker, one task worker; the master stopped  2. the event worker
    sends tasks of 1000 KiB until task() gives False, then one taskwait  3. it is
    refused with TaskQueueFull naming this worker's channel and the bytes in it."""
    write_app(tmp_path, APP, "channel_full_app.py")
    env = {BUFFER_ENV: "212992"}  # a default Linux: the kernel takes less than one task
    with serving(
        "channel_full_app.py:server", tmp_path, "--task-workers", "1", cwd=tmp_path, env=env
    ) as server:
        server.wait_for_log(r"task worker 1 gen 1 \(pid \d+\) ready in")
        with server.connect() as ws:
            os.kill(server.pid, signal.SIGSTOP)
            try:
                ws.send("flood")
                answer = json.loads(ws.recv(timeout=timeout(15)))
            finally:
                os.kill(server.pid, signal.SIGCONT)
    assert 0 < answer["sent"] < MOST, answer  # refused by the channel, well under 1024
    refusal = answer["refusal"]
    assert refusal is not None, "taskwait was not refused"
    assert refusal.startswith("this worker's channel to the master holds "), refusal
    queued = int(refusal.split(" holds ", 1)[1].split(" ", 1)[0])
    assert queued > QUEUE_LIMIT - PAD_BYTES, refusal
    assert "bytes not yet taken" in refusal and refusal.endswith("; the task was not sent")
    assert "task_queue_size" not in refusal
