"""Test app: echo, plus a few commands that exercise the server API from a handler."""

import asyncio
import json

from swoolish import Timer, WebSocketServer

server = WebSocketServer()
state = {"started": 0}


@server.on("worker_start")
def on_worker_start(server, worker_id):
    state["started"] += 1


@server.on("open")
def on_open(server, request):
    if request.path == "/hello":
        server.push(request.fd, json.dumps({"fd": request.fd, "query": request.query}))


@server.on("message")
async def on_message(server, frame):
    data = frame.data
    if not isinstance(data, str) or not data.startswith("cmd:"):
        server.push(frame.fd, data)
        return
    command, _, arg = data[4:].partition(":")
    if command == "sleep":  # an awaiting handler; order must still hold
        await asyncio.sleep(float(arg))
        server.push(frame.fd, f"slept {arg}")
    elif command == "raise":
        raise RuntimeError("boom from a handler")
    elif command == "info":
        server.push(frame.fd, json.dumps(server.get_client_info(frame.fd)))
    elif command == "stats":
        server.push(frame.fd, json.dumps(server.stats()))
    elif command == "exists":
        fd = int(arg)
        server.push(
            frame.fd,
            json.dumps({"exists": server.exists(fd), "established": server.is_established(fd)}),
        )
    elif command == "push":
        target, _, text = arg.partition(":")
        server.push(frame.fd, json.dumps({"pushed": server.push(int(target), text)}))
    elif command == "disconnect":
        target, _, code = arg.partition(":")
        server.push(
            frame.fd, json.dumps({"disconnected": server.disconnect(int(target), int(code), "bye")})
        )
    elif command == "connections":
        server.push(frame.fd, json.dumps(sorted(server.connections)))
    elif command == "whoami":
        server.push(
            frame.fd,
            json.dumps(
                {
                    "fd": frame.fd,
                    "pid": server.worker_pid,
                    "worker_id": server.worker_id,
                    "generation": server.generation,
                    "master_pid": server.master_pid,
                    "timers": len(Timer.list()),
                }
            ),
        )
