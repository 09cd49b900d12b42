"""swoolish node for the cluster benchmark: nodes sharing one Redis form one cluster.

The port comes from argv[1] or ``BENCH_PORT``, Redis from ``BENCH_REDIS_URL`` (the
``SWOOLISH_REDIS_URL`` / ``SWOOLISH_CLUSTER_NAME`` variables and the ``swoolish serve``
flags override both, as for every setting). Run either way::

    python benchmarks/servers/cluster_swoolish_app.py 9602
    SWOOLISH_REDIS_URL=redis://127.0.0.1:6379/0 \\
        python -m swoolish serve benchmarks/servers/cluster_swoolish_app.py:server --port 9602

Each client is told its session id (``{"fd": ...}``) at open. Text messages are JSON:

* ``{"op": "bcast", "t": ns, "k": seq}``: ``{"ev": "b", ...}`` to every session of every node.
* ``{"op": "push", "to": fd, "t": ns, "k": seq}``: ``{"ev": "p", ...}`` to that one session,
  which may live on another node.

With ``"ack": true`` in either, the sender is answered ``{"ev": "r", "op": op, "k": seq,
"ret": value}``: what ``broadcast`` (a count) or ``push`` (a bool) returned, so the failure
benchmark sees what the application saw while Redis was down.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from swoolish import WebSocketServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 9501
PORT = int(os.environ.get("BENCH_PORT", PORT))

server = WebSocketServer(
    "127.0.0.1",
    PORT,
    worker_num=1,
    max_connections=40000,
    redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    cluster_name="bench",
)


@server.on("open")
def on_open(server: Any, request: Any) -> None:
    """Tell the client its session id, so the benchmark can address it from another node."""
    server.push(request.fd, json.dumps({"fd": request.fd}))


@server.on("message")
def on_message(server: Any, frame: Any) -> None:
    """Broadcast to the cluster, or push to one session that may be on another node;
    answer the sender with the call's return value when it asks (``"ack": true``)."""
    msg = json.loads(frame.data)
    op = msg.get("op")
    ret: Any = None
    if op == "bcast":
        ret = server.broadcast(json.dumps({"ev": "b", "t": msg["t"], "k": msg["k"]}))
    elif op == "push":
        ret = server.push(msg["to"], json.dumps({"ev": "p", "t": msg["t"], "k": msg["k"]}))
    if msg.get("ack"):
        server.push(frame.fd, json.dumps({"ev": "r", "op": op, "k": msg["k"], "ret": ret}))


if __name__ == "__main__":
    server.start()
