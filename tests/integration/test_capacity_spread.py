"""``max_connections`` with several workers on plain TCP (docs/deployment.md, "How
clients are spread over the workers"): the kernel hands a new client to whichever worker
runs first, so a full worker used to answer 503 to clients another worker had room for.
A full worker now stops accepting while another has room; when none has, a client gets
the 503 (docs/quickstart.md).

Real processes: ``swoolish serve`` of tests/apps/global_app.py, whose first message to a
client names the worker serving it.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json

from support import serving, timeout

TARGET = "tests/apps/global_app.py:server"
WORKERS = 4
LIMIT = 10


def test_every_slot_of_every_worker_is_used_before_a_client_is_refused(tmp_path):
    """1. 4 workers of max_connections 10  2. 40 WebSocket clients connect one after the
    other, each staying: every one is accepted, 10 on each worker  3. the next client
    (an HTTP request) is answered 503, and the 40 are still served."""
    with (
        serving(TARGET, tmp_path, "--max-connections", str(LIMIT), workers=WORKERS) as server,
        contextlib.ExitStack() as stack,
    ):
        clients = []
        worker_ids = []
        for _ in range(WORKERS * LIMIT):
            ws = stack.enter_context(server.connect())  # closed by the stack, also on failure
            clients.append(ws)
            worker_ids.append(json.loads(ws.recv(timeout=timeout(5)))["worker_id"])
        assert collections.Counter(worker_ids) == {w: LIMIT for w in range(WORKERS)}
        refused = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(5))
        try:
            refused.request("GET", "/")
            assert refused.getresponse().status == 503
        finally:
            refused.close()
        for ws in clients:
            ws.send("ping")
            assert ws.recv(timeout=timeout(5)) == "pong"
