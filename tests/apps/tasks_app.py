"""Test app: task workers driven by JSON commands over a WebSocket.

Commands (one JSON object per message; the answer is one JSON object):
``wait`` (taskwait), ``task`` (fire and forget; the result is pushed later by the
``finish`` handler or a callback), ``gather`` (task_gather), ``stats``, ``echo``. The task
handler does what its data says: ``echo``, ``raise``, ``none``, ``finish`` (task.finish),
``block`` (writes ``<dir>/started-<n>`` and blocks until ``<dir>/release`` exists),
``count`` (or ``"count": true``: appends a line to ``<dir>/ran-<n>`` per execution, for
exactly-once checks).
"""

import json
import os
import time
from pathlib import Path

from swoolish import WebSocketServer

server = WebSocketServer()
owners: dict[int, int] = {}  # task id -> the session to push its result to


class AppError(Exception):
    pass


def described(value):
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    return {"result": value}


@server.on("task")
def on_task(server, task):
    data = task.data
    do = data.get("do")
    if do == "raise":
        raise AppError(f"boom {data.get('n')}")
    if do == "none":
        return None
    if do == "exit":  # the app's own code ends the task worker (tests/integration/test_tasks.py)
        os._exit(data["status"])
    if do == "finish":
        task.finish({"finished": data.get("n")})
        return None
    if data.get("count") or do == "count":
        with open(Path(data["dir"]) / f"ran-{data['n']}", "a") as f:
            f.write(f"{os.getpid()}\n")
    if do == "block":
        directory = Path(data["dir"])
        (directory / f"started-{data.get('n')}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 30
        while not (directory / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return {
        "n": data.get("n"),
        "task_worker": server.worker_id,
        "pid": os.getpid(),
        "from": task.worker_id,
        "task_id": task.id,
    }


@server.on("finish")
def on_finish(server, task_id, result):
    fd = owners.pop(task_id, None)
    if fd is not None:
        server.push(fd, json.dumps({"finished": task_id, "via": "finish", **described(result)}))


def callback(server, task_id, result):
    fd = owners.pop(task_id, None)
    if fd is not None:
        server.push(fd, json.dumps({"finished": task_id, "via": "callback", **described(result)}))


@server.on("message")
async def on_message(server, frame):
    command = json.loads(frame.data)
    cmd = command["cmd"]
    if cmd == "echo":
        server.push(frame.fd, json.dumps({"echo": command["text"]}))
    elif cmd == "wait":
        try:
            result = await server.taskwait(
                command["data"], command.get("timeout", 5), command.get("dst", -1)
            )
        except Exception as exc:
            server.push(frame.fd, json.dumps(described(exc)))
        else:
            server.push(frame.fd, json.dumps(described(result)))
    elif cmd == "task":
        via = callback if command.get("via") == "callback" else None
        task_id = server.task(command["data"], command.get("dst", -1), via)
        if task_id is not False:
            owners[task_id] = frame.fd
        server.push(frame.fd, json.dumps({"task_id": task_id}))
    elif cmd == "gather":
        results = await server.task_gather(command["items"], command.get("timeout", 5))
        server.push(frame.fd, json.dumps({"results": [described(r) for r in results]}))
    elif cmd == "received":  # tasks the task workers have taken from the master
        figures = (await server.server_stats())["workers"]
        received = sum(f.get("tasks_received", 0) for f in figures)
        server.push(frame.fd, json.dumps({"received": received}))
    elif cmd == "stats":
        stats = server.stats()
        names = ("tasks_sent", "tasks_refused", "task_results_late", "task_errors")
        server.push(frame.fd, json.dumps({name: stats.get(name, 0) for name in names}))
