"""The Timer API used from handlers of a real `swoolish serve` process."""

from __future__ import annotations

import contextlib
import json

from support import serving, wait_until

TARGET = "tests/apps/timer_app.py:server"


def recv_json(ws):
    return json.loads(ws.recv(timeout=10))


def test_after_passes_its_args_once(tmp_path):
    """1. after(20, cb, "x", 42)  2. one call with those args  3. nothing more fires."""
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("after")
        assert recv_json(ws) == {"event": "after", "args": ["x", 42]}
        ws.send("count")
        assert recv_json(ws)["timers"] == 0


def test_tick_cleared_in_its_own_callback_fires_exactly_three_times(tmp_path):
    """1. tick(10) that clears itself on run 3  2. three ticks, clear() True  3. no 4th."""
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("tick3")
        events = [recv_json(ws) for _ in range(4)]
        assert events == [
            {"event": "tick", "n": 1},
            {"event": "tick", "n": 2},
            {"event": "tick", "n": 3},
            {"event": "cleared", "result": True},
        ]
        # The next message is answered after several more intervals would have passed:
        # a fourth tick would have arrived first.
        ws.send("after")
        assert recv_json(ws) == {"event": "after", "args": ["x", 42]}


def test_bad_timer_arguments_raise_at_the_call(tmp_path):
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("bad")
        assert recv_json(ws) == {
            "event": "bad",
            "tick0": "ValueError",
            "after-1": "ValueError",
            "noncallable": "TypeError",
            "clear_unknown": False,
        }


def test_clear_all_of_100k_timers_leaves_none(tmp_path):
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("mass:100000")
        result = recv_json(ws)
        assert result["cleared"] == 100_000 and result["left"] == 0


def test_bound_timers_are_gone_once_their_clients_close(tmp_path):
    """1. 5 clients each bind a 20 ms tick  2. ticks arrive  3. 3 clients close
    4. only 2 bound timers remain, and no push to a closed session was attempted."""
    with (
        serving(TARGET, tmp_path) as server,
        server.connect() as observer,
        contextlib.ExitStack() as stack,
    ):
        clients = [stack.enter_context(server.connect()) for _ in range(5)]
        for ws in clients:
            ws.send("bind")
            assert recv_json(ws) == {"event": "bound"}
            assert ws.recv(timeout=5) == "tick"
        for ws in clients[:3]:
            ws.close()

        def remaining():
            observer.send("count")
            counts = recv_json(observer)
            return counts if counts["timers"] == 2 else None

        counts = wait_until(remaining, 10, what="bound timers of closed clients cleared")
        assert counts["server"]["push_to_closed"] == 0
        for ws in clients[3:]:
            assert ws.recv(timeout=5) == "tick"
            ws.close()
        wait_until(lambda: (observer.send("count") or recv_json(observer))["timers"] == 0, 10)
