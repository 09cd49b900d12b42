"""Test app for reloads under load: every answer names the worker pid and generation.

* ``request``: plain HTTP, answers ``{"pid": ..., "generation": ...}`` as JSON;
* ``message``: echoes ``text|pid|generation`` to the sender.
"""

import json

from swoolish import WebSocketServer

server = WebSocketServer()


@server.on("request")
def on_request(request, response):
    response.header("Content-Type", "application/json")
    response.end(json.dumps({"pid": server.worker_pid, "generation": server.generation}))


@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, f"{frame.data}|{server.worker_pid}|{server.generation}")
