"""Live hand-off (reload_handoff): WebSockets survive a reload, on real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import threading

import psutil
import pytest
import uvloop
from support import (
    HttpLoad,
    masked_frame,
    raw_connect,
    raw_handshake,
    read_close_code,
    serving,
    timeout,
    upgrade,
    wait_until,
    write_app,
)
from websockets.exceptions import ConnectionClosed

APP = """
    import asyncio
    import json
    from swoolish import Timer, WebSocketServer

    VERSION = {version!r}
    server = WebSocketServer(max_wait_time=3, max_connections={max_connections},
                             buffer_output_size=64 * 1024 * 1024)

    def tick(timer_id, fd, state):
        state["seq"] += 1
        server.push(fd, json.dumps({{"t": state["seq"], "v": VERSION}}))

    @server.on("message")
    async def on_message(server, frame):
        kind, _, arg = frame.data.partition(":")
        if kind == "start":
            Timer.tick(int(arg or 20), tick, frame.fd, {{"seq": 0}}, bind=frame.fd)
        elif kind == "lambda":  # a bound timer that cannot move: a closure
            Timer.tick(20, lambda timer_id: server.push(frame.fd, "closure tick"),
                       bind=frame.fd)
            server.push(frame.fd, "armed")
        elif kind == "slow":
            await asyncio.sleep(float(arg))
            server.push(frame.fd, json.dumps({{"slept": arg, "v": VERSION}}))
        elif kind == "flood":
            chunk = "x" * 1000
            for i in range(int(arg)):
                server.push(frame.fd, f"{{i}}:{{chunk}}")
            server.push(frame.fd, "flood done")
        elif kind == "fill":  # push until this many bytes wait unsent in the worker
            count = fill(frame.fd, int(arg))
            server.push(frame.fd, f"filled:{{count}}")
            print(f"filled {{frame.fd}}", flush=True)
        elif kind == "who":
            server.push(frame.fd, json.dumps({{"gen": server.generation, "fd": frame.fd,
                                              "v": VERSION}}))
        else:
            server.push(frame.fd, json.dumps({{"e": frame.data, "v": VERSION}}))

    def fill(fd, unsent):
        # the worker's own view of the session: how much its transport holds unsent
        transport = server._require_worker("fill").connections.get(fd).transport
        count = 0
        while transport.get_write_buffer_size() < unsent:
            server.push(fd, f"{{count}}:{{'y' * 1000}}")
            count += 1
        return count

    @server.on("worker_exit")
    def on_worker_exit(server, worker_id):
        Timer.clear_all()   # what Swoole's docs advise; bound timers move all the same

    @server.on("request")
    def on_request(request, response):
        response.end(VERSION)

    {extra}
"""


def app(tmp_path, version, max_connections=10000, extra=""):
    return write_app(
        tmp_path,
        APP.format(version=version, max_connections=max_connections, extra=extra),
        "handoff_app.py",
    )


def reload_and_wait(server, generation):
    server.signal(signal.SIGUSR1)
    server.wait_for_log(rf"reload to generation {generation} complete", 20)
    server.wait_for_log(r"moved to the new worker", 20, count=generation - 1)


class Ticked(threading.Thread):
    """A client with a 20 ms bound ticker; records every tick and any close."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.ticks: list[int] = []
        self.versions: list[str] = []
        self.closed: list[BaseException] = []

    def run(self):
        try:
            with self.server.connect() as ws:
                ws.send("start:20")
                while not self.stop.is_set():
                    try:
                        msg = json.loads(ws.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    self.ticks.append(msg["t"])
                    if not self.versions or self.versions[-1] != msg["v"]:
                        self.versions.append(msg["v"])
        except BaseException as exc:  # reported by the test
            self.closed.append(exc)


def test_seed_scenario_with_handoff_no_client_is_closed(tmp_path):
    """1. 2 workers, 20 clients ticked every 20 ms by a connection-bound timer
    2. new code on disk; SIGUSR1  3. no client is closed; every tick sequence is
    continuous (no gap, no duplicate); the new code ticks on the same connections
    4. the old workers are gone; the master moved all 20 connections."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path, workers=2) as server:
        old = server.workers()
        clients = [Ticked(server) for _ in range(20)]
        for c in clients:
            c.start()
        wait_until(lambda: all(len(c.ticks) >= 3 for c in clients), 15, what="ticking")
        app(tmp_path, "v2")
        reload_and_wait(server, 2)
        wait_until(lambda: all(c.versions == ["v1", "v2"] for c in clients), 15, what="v2")
        counts = [len(c.ticks) for c in clients]
        wait_until(
            lambda: all(len(c.ticks) >= n + 3 for c, n in zip(clients, counts, strict=True)),
            10,
            what="more ticks from the new code",
        )
        for c in clients:
            c.stop.set()
            c.join(5)
        assert [c.closed for c in clients] == [[]] * 20
        for c in clients:
            assert c.ticks == list(range(1, len(c.ticks) + 1)), c.ticks
        _, alive = psutil.wait_procs(old, timeout=timeout(5))
        assert alive == []
        log = server.log()
        assert sum(int(n) for n in re.findall(r"(\d+) moved to the new worker", log)) == 20
        assert re.findall(r"(\d+) fell back", log) == ["0", "0"]


class Busy(threading.Thread):
    """Sends a numbered message every few ms; checks each echo comes back once, in order."""

    def __init__(self, server, name):
        super().__init__(daemon=True)
        self.server, self.name = server, name
        self.stop = threading.Event()
        self.sent = 0
        self.echoed: list[int] = []
        self.versions: set[str] = set()
        self.errors: list[BaseException] = []

    def run(self):
        try:
            with self.server.connect() as ws:
                while not self.stop.is_set():
                    ws.send(f"{self.name}-{self.sent}")
                    self.sent += 1
                    reply = json.loads(ws.recv(timeout=timeout(5)))
                    self.echoed.append(int(reply["e"].rsplit("-", 1)[1]))
                    self.versions.add(reply["v"])
                    self.stop.wait(0.003)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


def test_busy_clients_see_no_close_and_no_lost_duplicated_or_reordered_message(tmp_path):
    """1. 6 clients each send a message every ~3 ms and wait for its echo
    2. three reloads, each with new code  3. no client sees a close or an error, every
    echo arrives once and in order, and the last code answers on the same connections."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path, workers=2) as server:
        clients = [Busy(server, f"c{i}") for i in range(6)]
        for c in clients:
            c.start()
        wait_until(lambda: all(len(c.echoed) > 20 for c in clients), 15, what="busy")
        for generation in (2, 3, 4):
            app(tmp_path, f"v{generation}")
            reload_and_wait(server, generation)
            counts = [len(c.echoed) for c in clients]
            wait_until(
                lambda counts=counts: all(
                    len(c.echoed) > n + 10 for c, n in zip(clients, counts, strict=True)
                ),
                15,
                what="echoes after the reload",
            )
        for c in clients:
            c.stop.set()
            c.join(10)
        assert [c.errors for c in clients] == [[]] * 6
        for c in clients:
            assert c.echoed == list(range(len(c.echoed)))
            assert "v4" in c.versions


def test_ten_reloads_under_steady_load_close_nothing_and_fail_nothing(tmp_path):
    """1. 2 workers; 4 busy WebSocket clients and 2 threads of HTTP requests, each on a
    fresh connection  2. ten reloads, each with new code  3. no WebSocket client was
    closed or lost an echo, no HTTP request failed, and the last code answers both."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path, workers=2) as server:
        clients = [Busy(server, f"c{i}") for i in range(4)]
        http = [HttpLoad(server.port, path="/", pace=0.005) for _ in range(2)]
        for t in [*clients, *http]:
            t.start()
        wait_until(lambda: all(len(c.echoed) > 10 for c in clients), 15, what="busy")
        for generation in range(2, 12):
            app(tmp_path, f"v{generation}")
            reload_and_wait(server, generation)
            wait_until(lambda g=generation: all(h.answers.get(f"v{g}") for h in http), 15)
            wait_until(lambda g=generation: all(f"v{g}" in c.versions for c in clients), 15)
        for t in [*clients, *http]:
            t.stop.set()
            t.join(10)
        assert [c.errors for c in clients] == [[]] * 4
        for c in clients:
            assert c.echoed == list(range(len(c.echoed)))
            assert "v11" in c.versions
        assert [h.failures for h in http] == [[]] * 2
        assert sum(sum(h.answers.values()) for h in http) > 50
        print("HTTP answers by version:", [dict(h.answers) for h in http])


def test_ten_thousand_idle_connections_survive_a_reload(tmp_path):
    """1. 10,000 idle WebSockets on 2 workers  2. reload  3. every one of them then
    answers from generation 2 on the same connection, with its session id unchanged."""
    count = 10_000
    target = app(tmp_path, "v1", max_connections=20_000)
    with serving(f"{target}:server", tmp_path, workers=2) as server:

        async def scenario():
            conns = await open_raw_connections(server.port, count)
            try:
                before = await ask_all(conns, "who")
                await asyncio.get_running_loop().run_in_executor(None, reload_and_wait, server, 2)
                after = await ask_all(conns, "who")
            finally:
                for _reader, writer in conns:
                    writer.close()
            return before, after

        before, after = uvloop.run(scenario())
        assert [a["fd"] for a in after] == [b["fd"] for b in before]
        assert {b["gen"] for b in before} == {1}
        assert {a["gen"] for a in after} == {2}
        print(server.log()[-2000:])


async def open_raw_connections(port, count):
    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return reader, writer

    conns = []
    for start in range(0, count, 500):
        conns += await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return conns


async def ask_all(conns, text):
    frame = masked_frame(1, text.encode())

    async def ask(reader, writer):
        writer.write(frame)
        head = await reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        return json.loads(await reader.readexactly(length))

    answers = []
    for start in range(0, len(conns), 500):
        answers += await asyncio.wait_for(
            asyncio.gather(*(ask(r, w) for r, w in conns[start : start + 500])), timeout(60)
        )
    return answers


def test_a_connection_busy_past_the_bound_gets_its_reply_then_one_1012(tmp_path):
    """1. a handler is awaiting for 2 s when the reload comes  2. the connection cannot
    move in time: it stays with the old worker  3. the reply still arrives, then exactly
    one close, 1012."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server, server.connect() as ws:
        ws.send("slow:2")
        server.signal(signal.SIGUSR1)
        assert json.loads(ws.recv(timeout=10)) == {"slept": "2", "v": "v1"}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1012
        server.wait_for_log(r"1 fell back to a 1012 close")


def test_a_client_with_too_much_unsent_data_gets_it_all_then_one_1012(tmp_path):
    """1. the server floods 30 MB to a client that does not read: the kernel's buffers
    hold a few MB, the rest waits in the transport  2. reload  3. more than the cap would
    have to move: the old worker keeps the connection, delivers every byte it owed, in
    order, then closes it with exactly one 1012."""
    count = 30_000
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server:
        sock, rest = raw_handshake(server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(masked_frame(1, f"flood:{count}".encode()))
        wait_until(lambda: worker_rss_grew(server), 10, what="the flood buffered")
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 2 complete", 20)
        messages, code = read_all_messages(sock, rest)
        sock.close()
        assert len(messages) == count + 1
        assert messages[:count] == [f"{i}:{'x' * 1000}" for i in range(count)]
        assert messages[count:] == ["flood done"]
        assert code == 1012
        server.wait_for_log(r"1 fell back to a 1012 close .*over its cap")


def test_clients_each_owed_much_unsent_data_all_move_in_several_messages(tmp_path):
    """1. 20 clients that do not read are each owed 150 KB more than the kernel holds
    (under the 256 KiB a session may carry, 3 MB in all: more than one hand-off message
    holds)  2. reload  3. every one moves: each reads all it was owed, in order, then is
    answered by the new generation; no 1012."""
    clients = 20
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server, contextlib.ExitStack() as stack:
        socks = []
        for _ in range(clients):
            sock, rest = raw_handshake(server.port)
            stack.callback(sock.close)
            assert rest == b""
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(masked_frame(1, b"fill:150000"))
            socks.append(sock)
        server.wait_for_log(r"filled \d+", 30, count=clients)
        reload_and_wait(server, 2)
        server.wait_for_log(rf"{clients} moved to the new worker .* 0 fell back", 10)
        for sock in socks:
            messages, code = read_all_messages(sock, limit=None, until="filled:")
            assert code is None
            count = int(messages[-1].split(":")[1])
            assert messages[:-1] == [f"{i}:{'y' * 1000}" for i in range(count)]
            sock.sendall(masked_frame(1, b"who"))
            (who,), code = read_all_messages(sock, limit=1)
            assert json.loads(who)["gen"] == 2


def worker_rss_grew(server, megabytes=10):
    return any(w.memory_info().rss > megabytes * 2**20 * 3 for w in server.workers())


def read_all_messages(sock, buffer=b"", limit=None, until=None):
    """Read text frames until a close frame (or ``limit`` of them, or one that starts
    with ``until``); returns (messages, close code)."""
    sock.settimeout(timeout(30))
    data = bytearray(buffer)
    pos = 0
    messages = []
    while True:
        while len(data) - pos >= 2:
            opcode, length, offset = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if len(data) - pos < offset + length:
                break
            payload = bytes(data[pos + offset : pos + offset + length])
            pos += offset + length
            if opcode == 8:
                return messages, int.from_bytes(payload[:2], "big")
            messages.append(payload.decode())
            if len(messages) == limit or (until and messages[-1].startswith(until)):
                return messages, None
        if pos > 1 << 20:
            del data[:pos]
            pos = 0
        chunk = sock.recv(1 << 20)
        if not chunk:
            return messages, None
        data += chunk


def test_app_state_that_is_not_plain_data_falls_back_to_one_1012(tmp_path):
    """A handoff hook returning an object of the app's own class cannot move (new code
    may not unpickle it): that client gets exactly one 1012; a plain-data one moves."""
    extra = """
    class Session:
        pass

    @server.on("handoff")
    def on_handoff(server, fd):
        return {"ok": 1} if fd % 2 else Session()
    """
    target = app(tmp_path, "v1", extra=extra)
    with serving(f"{target}:server", tmp_path) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(server.connect()) for _ in range(6)]
        fds = []
        for ws in clients:
            ws.send("who")
            fds.append(json.loads(ws.recv(timeout=5))["fd"])
        reload_and_wait(server, 2)
        for ws, fd in zip(clients, fds, strict=True):
            if fd % 2:
                ws.send("who")
                assert json.loads(ws.recv(timeout=5))["gen"] == 2
            else:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd.code == 1012
        server.wait_for_log(r"fell back to a 1012 close .*not plain data")


def test_resume_hook_gets_the_state_the_handoff_hook_returned(tmp_path):
    extra = """
    @server.on("handoff")
    def on_handoff(server, fd):
        return {"user": f"u{fd}", "generation": server.generation}

    @server.on("resume")
    def on_resume(server, fd, state):
        server.push(fd, json.dumps({"resumed": state, "gen": server.generation}))
    """
    target = app(tmp_path, "v1", extra=extra)
    with serving(f"{target}:server", tmp_path) as server, server.connect() as ws:
        ws.send("who")
        fd = json.loads(ws.recv(timeout=5))["fd"]
        reload_and_wait(server, 2)
        assert json.loads(ws.recv(timeout=5)) == {
            "resumed": {"user": f"u{fd}", "generation": 1},
            "gen": 2,
        }


def test_new_worker_refusing_some_connections_closes_exactly_those_with_1012(tmp_path):
    """New code lowers max_connections to 3: the new worker adopts 3 of 5 clients; the
    other 2 are taken back by the old worker and closed with one 1012 each."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(server.connect()) for _ in range(5)]
        for ws in clients:
            ws.send("who")
            ws.recv(timeout=5)
        app(tmp_path, "v2", max_connections=3)
        reload_and_wait(server, 2)
        moved, closed = 0, []
        for ws in clients:
            try:
                ws.send("who")
                assert json.loads(ws.recv(timeout=5))["v"] == "v2"
                moved += 1
            except ConnectionClosed as exc:
                closed.append(exc.rcvd.code if exc.rcvd else None)
        assert moved == 3 and closed == [1012, 1012]


def test_a_handshake_completed_while_the_old_worker_stops_moves_too(tmp_path):
    """1. a client's TCP connection is accepted by the worker  2. SIGUSR1: that worker
    stops accepting and runs its worker_stop hook (held open here)  3. only now the
    client sends its upgrade: the old worker completes it and the session joins the
    hand-off: it lives on in generation 2, never closed."""
    gate = tmp_path / "gate"
    extra = f"""
    import os, sys

    @server.on("worker_stop")
    async def on_worker_stop(server, worker_id):
        print("worker_stop holding", flush=True)
        while not os.path.exists({str(gate)!r}):
            await asyncio.sleep(0.01)
    """
    target = app(tmp_path, "v1", extra=extra)
    with serving(f"{target}:server", tmp_path) as server:
        sock = raw_connect(server.port)
        try:
            (worker,) = server.workers()
            local = sock.getsockname()
            wait_until(
                lambda: any(c.raddr == local for c in worker.net_connections("tcp")),
                10,
                what="the worker accepted the connection",
            )
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"worker_stop holding", 20)
            rest = upgrade(sock)
            gate.touch()
            server.wait_for_log(r"1 moved to the new worker", 20)
            sock.sendall(masked_frame(1, b"who"))
            messages, code = read_all_messages(sock, rest, limit=1)
            assert code is None
            assert json.loads(messages[0])["gen"] == 2
        finally:
            sock.close()


LATE_ACK_APP = """
    import asyncio, json, os, time
    from swoolish import WebSocketServer

    server = WebSocketServer(max_wait_time=15)

    @server.on("message")
    async def on_message(server, frame):
        if frame.data == "slow":  # keeps the old worker alive past the new one's wake-up
            await asyncio.sleep(11)
        server.push(frame.fd, json.dumps({{"gen": server.generation}}))

    @server.on("request")
    def on_request(request, response):
        if request.path == "/block":  # the whole worker stops for 7 s
            open({blocked!r}, "w").close()
            time.sleep(7)
        figures = server.stats()
        response.end(json.dumps({{k: figures[k] for k in ("adopted", "websocket_connections")}}))

    @server.on("worker_stop")
    async def on_worker_stop(server, worker_id):
        while not os.path.exists({gate!r}):
            await asyncio.sleep(0.01)
"""


def test_a_new_worker_answering_too_late_never_adopts_what_the_old_one_took_back(tmp_path):
    """1. the batch reaches a new worker whose loop is blocked (a handler sleeping 7 s)
    2. no acknowledgement by the batch's deadline: the old worker takes the connection
    back and closes it with one 1012  3. the new worker, awake again while the old one
    still runs, refuses the stale batch: the socket never has two owners."""
    gate, blocked = tmp_path / "gate", tmp_path / "blocked"
    source = LATE_ACK_APP.format(gate=str(gate), blocked=str(blocked))
    target = write_app(tmp_path, source, "late_ack_app.py")
    with (
        serving(f"{target}:server", tmp_path) as server,
        server.connect() as ws,
        server.connect() as busy,
    ):
        ws.send("who")
        assert json.loads(ws.recv(timeout=5)) == {"gen": 1}
        busy.send("slow")
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 2 complete", 20)
        blocker = threading.Thread(target=http_get, args=(server.port, "/block"), daemon=True)
        blocker.start()  # served by the new worker: the old one no longer accepts
        wait_until(blocked.exists, 10, what="the new worker blocked")
        gate.touch()  # the old worker's hand-off starts now
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd.code == 1012
        server.wait_for_log(r"refused: the batch came after its deadline", 20)
        blocker.join(timeout(20))
        assert json.loads(http_get(server.port, "/")) == {
            "adopted": 0,
            "websocket_connections": 0,
        }
        assert json.loads(busy.recv(timeout=20)) == {"gen": 1}  # its reply, then 1012
        with pytest.raises(ConnectionClosed) as closed:
            busy.recv(timeout=20)
        assert closed.value.rcvd.code == 1012
        server.wait_for_log(r"fell back to a 1012 close .*no answer from the new worker")


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(20)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def test_shutdown_does_not_hand_off(tmp_path):
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server:
        sock, _ = raw_handshake(server.port)
        server.signal(signal.SIGTERM)
        assert read_close_code(sock) == 1001
        sock.close()


def test_a_bound_timer_with_a_closure_callback_is_cleared_on_hand_off_and_logged(tmp_path):
    """1. a client's bound timer has a lambda callback  2. reload  3. the connection
    moves (no close) but that timer cannot: the worker says so once, naming the fix."""
    target = app(tmp_path, "v1")
    with serving(f"{target}:server", tmp_path) as server, server.connect() as ws:
        ws.send("lambda")
        assert ws.recv(timeout=5) == "armed"
        assert ws.recv(timeout=5) == "closure tick"
        reload_and_wait(server, 2)
        server.wait_for_log(r"1 timers bound to moving sessions have a lambda or closure")
        ws.send("who")
        while (reply := ws.recv(timeout=5)) == "closure tick":
            pass  # ticks sent before the move
        assert json.loads(reply)["gen"] == 2
