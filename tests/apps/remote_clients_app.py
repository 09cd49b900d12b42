"""Test app for hostile and broken remote clients (tests/adversarial/test_remote_clients.py).

Tests serve a small wrapper, written with ``write_app``, that calls :func:`build` with
the settings they need (a small ``buffer_output_size``, a fast heartbeat, a list of
``websocket_origins`` …) as ``path/to/app.py:server``.

WebSocket (an ``async`` message handler, so that events can queue):

- text ``cmd:whoami``: ``{"fd", "pid"}``; ``cmd:stats``: ``server.stats()``;
  ``cmd:sleep:SECONDS``: ``slept``, that long after (the session's later messages queue);
- text ``cmd:push:FD:OPCODE:KIND``: call ``server.push(FD, data, OPCODE)`` with ``KIND``
  data (``big``: 200 bytes; ``bad-utf8``: bytes that are not UTF-8; ``text``: a short
  str) and answer ``ok True``/``ok False`` or the exception's class name and message;
- any other text is echoed; a binary message is answered ``LENGTH:SHA256``.

HTTP (``request``): ``/n/I`` answers ``I``; ``/big`` 64 KiB; ``/whoami`` the worker pid;
``/handshakes`` how many times the handshake handler ran; ``/bad-header`` sets a header
no HTTP/1.1 response can carry and never calls ``end()``; ``/bad-reason`` sets a reason
phrase with CR/LF; ``/bad-name`` a header name with a space.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from swoolish import WebSocketServer

BIG = b"x" * 65536
handshakes = 0


async def on_message(server: WebSocketServer, frame: Any) -> None:
    await asyncio.sleep(0)
    data = frame.data
    if isinstance(data, bytes):
        server.push(frame.fd, f"{len(data)}:{hashlib.sha256(data).hexdigest()}")
        return
    if data == "cmd:whoami":
        server.push(frame.fd, json.dumps({"fd": frame.fd, "pid": os.getpid()}))
    elif data == "cmd:stats":
        server.push(frame.fd, json.dumps(server.stats()))
    elif data.startswith("cmd:sleep:"):
        await asyncio.sleep(float(data[10:]))
        server.push(frame.fd, "slept")
    elif data.startswith("cmd:push:"):
        fd, opcode, kind = data.split(":")[2:]
        payload: str | bytes = {"big": b"p" * 200, "bad-utf8": b"\xff\xfe", "text": "hi"}[kind]
        try:
            result = f"ok {server.push(int(fd), payload, int(opcode))}"
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        server.push(frame.fd, result)
    else:
        server.push(frame.fd, data)


def on_handshake(request: Any, response: Any) -> bool:
    global handshakes
    handshakes += 1
    return True


def on_request(request: Any, response: Any) -> None:
    path = request.path
    if path.startswith("/n/"):
        response.end(path[3:])
    elif path == "/big":
        response.end(BIG)
    elif path == "/whoami":
        response.end(str(os.getpid()))
    elif path == "/handshakes":
        response.end(str(handshakes))
    elif path == "/bad-header":
        response.status(202)
        response.header("X-Greeting", "grüße \u2603")  # the snowman is not latin-1
    elif path == "/bad-reason":
        response.status(200, "OK\r\nX-Injected: yes")
        response.end("unreachable")
    elif path == "/bad-name":
        response.header("X Bad", "1")
        response.end("unreachable")
    else:
        response.end("hello")


def build(**settings: Any) -> WebSocketServer:
    server = WebSocketServer(**settings)
    server.on("message", on_message)
    server.on("handshake", on_handshake)
    server.on("request", on_request)
    return server
