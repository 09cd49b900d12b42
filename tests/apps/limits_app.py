"""Test app for bad input and limits (docs/quickstart.md): echo plus commands that misbehave on cue.

Tests build a tiny wrapper with ``write_app`` that calls :func:`build` with the small
limits they need (``max_message_size=1000``, ``handshake_timeout=0.5`` …), and serve
that wrapper as ``path/to/app.py:server``.

WebSocket commands (text messages):

- ``cmd:raise:TEXT``: the handler raises ``RuntimeError(TEXT)``;
- ``cmd:whoami``: ``{"fd", "pid"}`` of this session and its worker;
- ``cmd:stats``: ``server.stats()``;
- ``cmd:flood:TOTAL:CHUNK``: push ``TOTAL`` bytes to this session in ``CHUNK``-byte
  binary messages without waiting for the client, recording each push's result;
- ``cmd:flood_result``: what the last flood recorded (``accepted``, ``refused``,
  ``done``).

Anything else is echoed. With ``http=True`` a ``request`` handler answers plain HTTP
(see :func:`on_request`); without it the server is WebSocket-only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from swoolish import Timer, WebSocketServer

flood_result: dict[str, Any] = {"accepted": 0, "refused": 0, "done": False}


async def flood(server: WebSocketServer, fd: int, total: int, chunk_size: int) -> None:
    chunk = b"\x00" * chunk_size
    flood_result.update(accepted=0, refused=0, done=False)
    for _ in range(total // chunk_size):
        if server.push(fd, chunk):
            flood_result["accepted"] += 1
        else:
            flood_result["refused"] += 1
        await asyncio.sleep(0)  # let the loop write what the socket takes
    flood_result["done"] = True


def on_message(server: WebSocketServer, frame: Any) -> Any:
    data = frame.data
    if not isinstance(data, str) or not data.startswith("cmd:"):
        server.push(frame.fd, data)
        return None
    command, _, arg = data[4:].partition(":")
    if command == "raise":
        raise RuntimeError(arg)
    if command == "whoami":
        server.push(frame.fd, json.dumps({"fd": frame.fd, "pid": server.worker_pid}))
    elif command == "stats":
        server.push(frame.fd, json.dumps(server.stats()))
    elif command == "flood":
        total, _, chunk_size = arg.partition(":")
        return flood(server, frame.fd, int(total), int(chunk_size))
    elif command == "flood_result":
        server.push(frame.fd, json.dumps(flood_result))
    return None


late_ends: list[bool] = []  # what end() returned when /late-end's timers called it


def on_request(request: Any, response: Any) -> Any:
    """Plain HTTP, by path.

    ``/info``: JSON of what the request carried; ``/echo``: the body back;
    ``/missing``: 404 with a custom header; ``/no-end``: 202 and a header, never
    calls ``end()``; ``/late-end``: calls it from a timer, after returning
    (``/late-ends``: what those calls returned); ``/raise``: raises; ``/async``,
    ``/async-raise``: the same from a coroutine; anything else: ``hello``.
    """
    path = request.path
    if path == "/info":
        response.header("Content-Type", "application/json")
        response.end(
            json.dumps(
                {
                    "fd": request.fd,
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "x_test_lower": request.headers.get("x-test"),
                    "x_test_upper": request.headers.get("X-TEST"),
                    "body_length": len(request.body),
                }
            )
        )
    elif path == "/echo":
        response.header("Content-Type", "application/octet-stream")
        response.end(request.body)
    elif path == "/missing":
        response.status(404)
        response.header("X-Reason", "nothing here")
        response.end("not found\n")
    elif path == "/no-end":
        response.status(202)
        response.header("X-Handled", "yes")
    elif path == "/late-end":  # Swoole's habit: end it later, from a timer
        Timer.after(20, lambda: late_ends.append(response.end("late\n")))
    elif path == "/late-ends":
        response.end(json.dumps(late_ends))
    elif path == "/raise":
        raise RuntimeError("request handler failed on purpose")
    elif path in ("/async", "/async-raise"):
        return answer_later(request, response)
    else:
        response.end("hello\n")
    return None


async def answer_later(request: Any, response: Any) -> None:
    await asyncio.sleep(0.01)
    if request.path == "/async-raise":
        raise RuntimeError("async request handler failed on purpose")
    response.end("later\n")


def build(http: bool = False, **settings: Any) -> WebSocketServer:
    server = WebSocketServer(**settings)
    server.on("message", on_message)
    if http:
        server.on("request", on_request)
    return server
