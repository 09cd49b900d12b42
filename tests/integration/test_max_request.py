"""max_request: workers recycled one at a time through the rolling machinery, on real
processes, with their open WebSockets handed to their successors (docs/reload.md,
"Recycling"): no client notices."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

from support import run_cli, serving, timeout, wait_until, write_app
from websockets.asyncio.client import ClientConnection, connect

APP = """
    import json
    import os
    from swoolish import WebSocketServer

    server = WebSocketServer(max_wait_time=3)

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "who":
            server.push(frame.fd, json.dumps({"slot": server.worker_id, "pid": os.getpid()}))
        else:
            server.push(frame.fd, frame.data)
"""

RECYCLED = r"worker (\d) recycled in [\d.]+s: pid (\d+) replaced by pid (\d+)"
ASKED = r"worker \d \(pid \d+\) handled (\d+) requests: recycling"
DRAINED = r"(\d+) connections closed, (\d+) moved to the new worker .* (\d+) fell back"


def recycles_settled(text: str) -> str | None:
    """The log, once each recycle asked for has finished and its old worker drained."""
    counts = {len(re.findall(p, text)) for p in (ASKED, RECYCLED, DRAINED)}
    return text if len(counts) == 1 else None


def echo_app(tmp_path):
    return write_app(tmp_path, APP, "recycle_app.py")


async def who(ws: ClientConnection) -> dict[str, int]:
    await ws.send("who")
    return json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))


async def balanced_clients(
    port: int, per_slot: int, slots: int
) -> list[tuple[int, ClientConnection]]:
    """Open clients until each slot holds ``per_slot`` of them (the kernel picks the
    accepting worker), so every slot gets its share of the messages."""
    kept: dict[int, list[ClientConnection]] = {slot: [] for slot in range(slots)}
    for _ in range(40 * per_slot * slots):
        if all(len(clients) >= per_slot for clients in kept.values()):
            break
        ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=timeout(5))
        slot = (await who(ws))["slot"]
        if len(kept[slot]) < per_slot:
            kept[slot].append(ws)
        else:
            await ws.close()
    assert all(len(c) >= per_slot for c in kept.values()), {s: len(c) for s, c in kept.items()}
    return [(slot, ws) for slot, clients in kept.items() for ws in clients]


async def numbered_echoes(ws: ClientConnection, count: int, pace: float) -> dict[str, object]:
    """Send ``count`` numbered messages, one at a time; each echo must come back next,
    in order, exactly once; then who serves the connection now. A close is a failure."""
    first = await who(ws)
    echoed = []
    for i in range(count):
        await ws.send(f"n{i}")
        echoed.append(await asyncio.wait_for(ws.recv(), timeout(10)))
        await asyncio.sleep(pace)
    last = await who(ws)  # no duplicate echo in between: the next thing is this answer
    return {"echoed": echoed, "first": first, "last": last, "close_code": ws.close_code}


async def run_clients(
    port: int, per_slot: int, count: int, pace: float, settle: Callable[[], object] | None = None
) -> list[dict]:
    """The clients' echoes; then ``settle`` (in a thread), before the clients close.

    The last recycle is asked for near the end of the messages, and its hand-off may
    still be under way when they are done: a client closing then is a session that
    cannot move (it is closing), which the old worker counts as closed or fallen back.
    ``settle`` waits for the recycles to finish first, so only clients that keep their
    connection take part in them."""
    clients = await balanced_clients(port, per_slot, slots=2)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(numbered_echoes(ws, count, pace) for _, ws in clients)),
            timeout(90),
        )
        if settle is not None:
            await asyncio.to_thread(settle)
        return results
    finally:
        for _, ws in clients:
            await ws.close()


def test_workers_are_recycled_under_load_and_no_client_notices(tmp_path):
    """1. --max-request 200, 2 workers; 20 WebSocket clients, 10 per slot, each sending
    100 numbered messages paced at 30 ms (2,000 messages: 1,000 per slot, so at most 5
    recycles per slot; the old worker keeps serving while its successor boots, so fewer)
    2. every message is echoed exactly once, in order, and no client is closed
    3. each slot was recycled at least twice (5 each on a quick machine, where a
    successor boots in about 25 ms), each asked for at 200; every old worker moved its
    WebSockets and closed none; each client now talks to another process of its slot
    than at first; status counts the recycles; the generation is still 1."""
    target = echo_app(tmp_path)
    with serving(f"{target}:server", tmp_path, "--max-request", "200", workers=2) as server:
        # One reading of the log once every recycle asked for has finished and its old
        # worker drained (the last may still be under way as the clients finish), taken
        # before the clients close (run_clients).
        settled: list[str] = []

        def settle() -> None:
            settled.append(
                wait_until(
                    lambda: recycles_settled(server.log()),
                    15,
                    what="every recycle finished and drained",
                )
            )

        results = asyncio.run(
            run_clients(server.port, per_slot=10, count=100, pace=0.03, settle=settle)
        )
        for result in results:
            assert result["echoed"] == [f"n{i}" for i in range(100)]
            assert result["close_code"] is None
        (text,) = settled
        recycled = re.findall(RECYCLED, text)
        per_slot = {slot: sum(1 for s, _, _ in recycled if s == str(slot)) for slot in (0, 1)}
        assert all(n >= 2 for n in per_slot.values()), per_slot
        asked = re.findall(ASKED, text)
        assert set(asked) == {"200"} and len(asked) >= len(recycled)
        assert "rolled back" not in text
        for result in results:
            first, last = result["first"], result["last"]
            assert last["slot"] == first["slot"]  # handed to the successor of its slot
        moved = sum(1 for r in results if r["last"]["pid"] != r["first"]["pid"])
        assert moved == len(results), "every client was handed over at least once"
        status = json.loads(run_cli("status", "--port", str(server.port), "--json").stdout)
        assert status["master"]["recycles_total"].get("ok", 0) >= len(recycled)
        assert status["master"]["generation"] == 1  # a recycle is not a reload
        drained = re.findall(DRAINED, text)
        assert len(drained) == len(recycled)
        assert all(closed == "0" and fell_back == "0" for closed, _, fell_back in drained), [
            line for line in text.splitlines() if "drained" in line or "fell back" in line
        ]
        assert sum(int(moved) for _, moved, _ in drained) >= 20 * 2


def test_with_a_grace_each_worker_asks_at_its_own_count(tmp_path):
    """1. --max-request 100 --max-request-grace 50, 2 workers, 4 clients x 150 messages
    2. every ask is between 100 and 150, and not all the same (drawn per worker)
    3. every message is echoed in order, no client closed."""
    target = echo_app(tmp_path)
    extra = ("--max-request", "100", "--max-request-grace", "50")
    with serving(f"{target}:server", tmp_path, *extra, workers=2) as server:
        results = asyncio.run(run_clients(server.port, per_slot=2, count=150, pace=0.01))
        for result in results:
            assert result["echoed"] == [f"n{i}" for i in range(150)]
            assert result["close_code"] is None
        asked = [
            int(n)
            for n in re.findall(r"worker \d \(pid \d+\) handled (\d+) requests", server.log())
        ]
        assert len(asked) >= 3, asked
        assert all(100 <= n <= 150 for n in asked), asked
        assert len(set(asked)) > 1, asked
