"""Test app: sessions of any worker addressed by id (push, exists, disconnect, broadcast),
and worker-to-worker messages; with --redis-url, of any node of a cluster too."""

import json
import os
import time

from swoolish import WebSocketServer

server = WebSocketServer()


@server.on("open")
def on_open(server, request):
    hello = {"fd": request.fd, "worker_id": server.worker_id, "node": server.node}
    server.push(request.fd, json.dumps(hello))


@server.on("pipe_message")
def on_pipe_message(server, src_worker_id, message):
    reply = {"pipe": message["text"], "src": src_worker_id, "at": server.worker_id}
    server.push(message["fd"], json.dumps(reply))


@server.on("message")
async def on_message(server, frame):
    command, _, arg = frame.data.partition(":")
    fd = frame.fd
    if command == "say":  # no answer: the target gets the text
        target, _, text = arg.partition(":")
        server.push(int(target), text)
    elif command == "push":
        target, _, text = arg.partition(":")
        server.push(fd, json.dumps({"pushed": server.push(int(target), text)}))
    elif command == "exists":
        ids = [int(x) for x in arg.split(",")]
        answer = {str(i): [server.exists(i), server.is_established(i)] for i in ids}
        server.push(fd, json.dumps(answer))
    elif command == "disconnect":
        target, _, code = arg.partition(":")
        server.push(
            fd, json.dumps({"disconnected": server.disconnect(int(target), int(code), "bye")})
        )
    elif command == "close":
        server.push(fd, json.dumps({"closed": server.close(int(arg))}))
    elif command == "broadcast":
        server.broadcast(arg)
    elif command == "broadcast_to":
        ids, _, text = arg.partition(":")
        server.push(
            fd, json.dumps({"handed": server.broadcast(text, [int(i) for i in ids.split(",")])})
        )
    elif command == "pipe":
        worker_id, _, text = arg.partition(":")
        try:
            server.send_message({"fd": fd, "text": text}, int(worker_id))
        except ValueError as exc:
            server.push(fd, json.dumps({"error": str(exc)}))
    elif command == "info":
        server.push(fd, json.dumps(server.get_client_info(int(arg))))
    elif command == "connections":
        server.push(fd, json.dumps({"all": server.connections, "local": server.local_connections}))
    elif command == "server_stats":
        server.push(fd, json.dumps(await server.server_stats()))
    elif command == "ping":
        server.push(fd, "pong")
    elif command == "broadcast_many":  # n broadcasts of size characters, in one call
        n, _, size = arg.partition(":")
        handed = [server.broadcast(f"{i}:" + "x" * int(size)) for i in range(int(n))]
        server.push(fd, json.dumps({"handed": handed}))
    elif command == "block":  # a slow synchronous call: the loop waits until a file exists
        server.push(fd, "blocking")
        deadline = time.monotonic() + 30
        while not os.path.exists(arg) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.push(fd, "unblocked")
    elif command == "count":  # n numbered pushes to target, back to back: order checks
        target, _, n = arg.partition(":")
        refused = sum(1 for i in range(int(n)) if not server.push(int(target), f"n{i}"))
        server.push(fd, json.dumps({"refused": refused}))
    elif command == "exists_remote":
        server.push(fd, json.dumps({"exists": await server.exists_remote(int(arg))}))
    elif command == "exists_remote_many":  # n questions about one session, in turn
        target, _, n = arg.partition(":")
        answers = [await server.exists_remote(int(target)) for _ in range(int(n))]
        server.push(fd, json.dumps({"exists": answers.count(True)}))
    elif command == "pipe_node":
        node, _, rest = arg.partition(":")
        worker_id, _, text = rest.partition(":")
        sent = server.send_message({"fd": fd, "text": text}, int(worker_id), node=int(node))
        server.push(fd, json.dumps({"sent": sent}))
