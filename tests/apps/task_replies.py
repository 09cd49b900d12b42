"""What the task test apps share: a task's outcome pushed to the client that sent it,
and the small task a client waits for (tests/adversarial/test_stalled_task_sender.py,
test_task_worker_backpressure.py)."""

import json


def pushing_outcome(fd):
    """A ``server.task`` callback that pushes the task's result size, or its error, to
    session ``fd`` as JSON."""

    def callback(server, task_id, result):
        if isinstance(result, BaseException):
            answer = {"task_id": task_id, "error": type(result).__name__, "message": str(result)}
        else:
            answer = {"task_id": task_id, "bytes": len(result)}
        server.push(fd, json.dumps(answer))

    return callback


async def push_small_task(server, fd):
    """``taskwait`` of one small task; its result's size pushed to ``fd``."""
    result = await server.taskwait("small", timeout=10)
    server.push(fd, json.dumps({"waited": len(result)}))
