"""A client whose messages the app relays with ``send_message``: what the worker
receiving the relays spends on them stays bounded (swoolish.worker.router, "A fair share
of the loop"), on a real ``swoolish serve`` process.

The app relays each message a client asks for to worker 0 (itself: every relay goes
through the master), whose coroutine ``pipe_message`` handler waits a while, standing in
for a slow upstream call. Each relay was a task at once: 2 MiB of tiny messages grew
such a worker by 300 MiB. Now at most MAX_PIPE_TASKS run, the rest waits in order.
"""

from __future__ import annotations

import json
import signal

import pytest
from support import serving, timeout, write_app

from swoolish.worker.router import MAX_PIPE_TASKS

APP = """
    import asyncio
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer()
    state = {"running": 0, "peak": 0, "order": [], "fd": 0, "total": 0}

    @server.on("message")
    def on_message(server, frame):
        kind, _, arg = frame.data.partition(":")
        if kind == "relay":
            state["fd"], state["total"] = frame.fd, int(arg)
            for n in range(int(arg)):
                server.send_message(n, 0)
            server.push(frame.fd, "relayed")
        else:
            server.push(frame.fd, json.dumps({"started": len(state["order"])}))

    @server.on("pipe_message")
    async def on_pipe_message(server, src, n):
        state["order"].append(n)
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.5)
        state["running"] -= 1
        if len(state["order"]) == state["total"] and not state["running"]:
            in_order = state["order"] == list(range(state["total"]))
            server.push(state["fd"], json.dumps({"peak": state["peak"], "in_order": in_order}))
"""


def test_coroutine_pipe_handlers_run_a_bounded_number_at_once(tmp_path):
    """1. a client asks for 5,000 relays to a coroutine handler that waits 0.5 s  2. the
    worker goes on serving another client meanwhile  3. every relay is handled, in order,
    never more than MAX_PIPE_TASKS at once (before: all 5,000 at once)."""
    total = 5_000
    target = f"{write_app(tmp_path, APP)}:server"
    with serving(target, tmp_path) as server, server.connect() as flooder:
        flooder.send(f"relay:{total}")
        assert flooder.recv(timeout=timeout(10)) == "relayed"
        with server.connect() as other:
            other.send("probe")
            assert json.loads(other.recv(timeout=timeout(10)))["started"] < total
        summary = json.loads(flooder.recv(timeout=timeout(60)))
    assert summary == {"peak": MAX_PIPE_TASKS, "in_order": True}


STUCK_APP = """
    import asyncio
    from swoolish import WebSocketServer

    server = WebSocketServer(max_wait_time=1)
    never = asyncio.Event()

    @server.on("message")
    def on_message(server, frame):
        count, _, size = frame.data.partition(":")
        pad = "x" * int(size or 0)
        for n in range(int(count)):
            server.send_message((n, pad), 0)
        server.push(frame.fd, "relayed")

    @server.on("pipe_message")
    async def on_pipe_message(server, src, message):
        await never.wait()  # an upstream call that never returns

    @server.on("worker_exit")
    def on_worker_exit(server, worker_id):
        print(f"worker_exit ran in gen {server.generation}", flush=True)
"""


@pytest.mark.parametrize(
    ("relays", "times"), [("3000", 1), ("20000:100", 12)], ids=["a-burst", "past-the-read-ahead"]
)
def test_a_worker_whose_relays_wait_behind_stuck_handlers_still_stops_cleanly(
    tmp_path, relays, times
):
    """1. relays to a coroutine pipe_message handler that never returns: 1,024 run, the
    rest waits; the worker reads a bounded way ahead of them from the master (a burst
    of 3,000 fits; 12 x 20,000 of 100 bytes do not, and fill the master's queue too)  2. a
    reload: the worker takes its Stop (read ahead, or read on to it when the master
    says one waits), runs worker_exit and exits within max_wait_time, not killed at the
    deadline (before, the Stop waited behind the relays)."""
    target = f"{write_app(tmp_path, STUCK_APP)}:server"
    with serving(target, tmp_path) as server, server.connect() as ws:
        for _ in range(times):
            ws.send(relays)
            assert ws.recv(timeout=timeout(60)) == "relayed"
        if times > 1:
            server.wait_for_log(r"is not reading its channel", 30)
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"worker_exit ran in gen 1", 10)
        server.wait_for_log(r"worker 0 gen 1 \(pid \d+\) drained in", 10)
        assert "did not exit within max_wait_time" not in server.log()
