"""User processes (``server.add_process``) on real processes: a real ``swoolish serve``,
real WebSocket clients, real signals. Every step waits on a log line, a reply or a
process state, with a deadline (docs/lifecycle.md, "User processes")."""

from __future__ import annotations

import json
import re
import signal
import time

import psutil
import pytest
from support import alive, run_cli, serving, wait_until, write_app

from swoolish.master.supervisor import PROCESS_STABLE

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

# A plain-function process and an async one, each answering a worker's ("ping") with
# "<version> from process <pid> <kind>" sent back to that worker, which pushes it to the
# client whose session id came with the ping.
PINGER = """
import os

from swoolish import WebSocketServer

server = WebSocketServer()
VERSION = {version!r}


def answer(process, src, fd, kind):
    reply = f"{{VERSION}} from process {{os.getpid()}} {{kind}} id {{process.id}}"
    process.send_message((fd, reply), src)


def plain(process):
    while (got := process.recv()) is not None:
        src, (fd, _) = got
        answer(process, src, fd, "sync")


async def coroutine(process):
    async for src, (fd, _) in process.messages():
        answer(process, src, fd, "async")


server.add_process(plain, name="sync")
server.add_process(coroutine, name="async")


@server.on("message")
def on_message(server, frame):
    if frame.data in ("sync", "async"):
        server.send_message((frame.fd, frame.data), server.process_id(frame.data))
    else:
        server.push(frame.fd, "echo " + frame.data)


@server.on("pipe_message")
def on_pipe_message(server, src_worker_id, message):
    fd, reply = message
    server.push(fd, f"{{reply}} src {{src_worker_id}}")
"""

STARTED = r"user process {index} '{name}' gen {gen} \(pid (\d+)\) started"


def started_pid(server, index: int, name: str, gen: int, count: int = 1) -> int:
    """The pid of the count-th start of user process ``index``, from the master's log."""
    pattern = STARTED.format(index=index, name=name, gen=gen)
    return int(server.wait_for_log(pattern, 15, count=count)[count - 1])


def wait_running(server) -> None:
    """Both gen 1 processes imported the app (not only forked): a file written next is
    read by the reload's new processes only."""
    server.wait_for_log(r"user process \d '(sync|async)' gen 1 \(pid \d+\) running", count=2)


def ping(ws, kind: str) -> tuple[str, int, int]:
    """(version, the answering process's pid, src_worker_id its reply came with)."""
    ws.send(kind)
    reply = ws.recv(timeout=10)
    match = re.fullmatch(rf"(.+) from process (\d+) {kind} id (\d+) src (\d+)", reply)
    assert match, reply
    assert match[3] == match[4]  # process.id is the src_worker_id workers see
    return match[1], int(match[2]), int(match[4])


def test_processes_answer_are_restarted_replaced_on_reload_and_stopped(tmp_path):
    app = write_app(tmp_path, PINGER.format(version="pong"))
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        sync_pid = started_pid(server, 0, "sync", 1)
        async_pid = started_pid(server, 1, "async", 1)
        assert {sync_pid, async_pid} <= {p.pid for p in server.workers()}
        with server.connect() as ws:
            # Worker ids come after the event workers' (2 of them, no task workers).
            assert ping(ws, "sync") == ("pong", sync_pid, 2)
            assert ping(ws, "async") == ("pong", async_pid, 3)
            ws.send("hi")
            assert ws.recv(timeout=10) == "echo hi"

            # Killed: logged, restarted (a new pid), and answering again.
            psutil.Process(sync_pid).send_signal(signal.SIGKILL)
            server.wait_for_log(rf"user process 0 'sync' gen 1 \(pid {sync_pid}\) died: killed")
            restarted = started_pid(server, 0, "sync", 1, count=2)
            assert restarted != sync_pid
            assert ping(ws, "sync") == ("pong", restarted, 2)

            # A reload replaces both with the new code; the old ones exit.
            write_app(tmp_path, PINGER.format(version="pong v2"))
            server.signal(signal.SIGUSR1)
            new_sync = started_pid(server, 0, "sync", 2)
            new_async = started_pid(server, 1, "async", 2)
            server.wait_for_log(rf"user process 0 'sync' gen 1 \(pid {restarted}\) stopped")
            server.wait_for_log(rf"user process 1 'async' gen 1 \(pid {async_pid}\) stopped")
            for old in (restarted, async_pid):
                wait_until(lambda pid=old: not psutil.pid_exists(pid), what=f"{old} gone")
            assert ping(ws, "sync") == ("pong v2", new_sync, 2)
            assert ping(ws, "async") == ("pong v2", new_async, 3)

        # Shutdown stops them; the master exits 0.
        processes = [psutil.Process(pid) for pid in (new_sync, new_async)]
        server.signal(signal.SIGTERM)
        assert server.wait_exit(15) == 0
        assert not any(alive(p) for p in processes)
        assert "Traceback" not in server.log()


CRASHER = """
from swoolish import WebSocketServer

server = WebSocketServer()


def broken(process):
    raise RuntimeError("no queue to consume")


server.add_process(broken)


@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, "echo " + frame.data)
"""


def test_a_target_that_raises_is_restarted_with_growing_back_off(tmp_path):
    app = write_app(tmp_path, CRASHER)
    with serving(f"{app}:server", tmp_path) as server:
        delays = server.wait_for_log(
            r"user process 0 'broken' gen 1 \(pid \d+\) died: exit status 1; "
            r"restarting in ([\d.]+)s",
            20,
            count=3,
        )
        assert [float(d) for d in delays[:3]] == [0.1, 0.2, 0.4]
        assert "RuntimeError: no queue to consume" in server.log()
        with server.connect() as ws:  # the event worker never noticed
            ws.send("still here")
            assert ws.recv(timeout=10) == "echo still here"


# A process that answers a worker's (fd, text) with "<text> from process <pid>", and
# ends itself with os._exit(3), the exit status of a failed boot, when the text is "exit".
EXITER = """
import os

from swoolish import WebSocketServer

server = WebSocketServer()


def exiter(process):
    while (got := process.recv()) is not None:
        src, (fd, text) = got
        if text == "exit":
            os._exit(3)
        process.send_message((fd, f"{text} from process {os.getpid()}"), src)


server.add_process(exiter, name="exiter")


@server.on("message")
def on_message(server, frame):
    server.send_message((frame.fd, frame.data), server.process_id("exiter"))


@server.on("pipe_message")
def on_pipe_message(server, src_worker_id, message):
    fd, reply = message
    server.push(fd, reply)
"""


def test_a_stable_process_that_exits_with_status_3_is_restarted_at_once(tmp_path):
    """1. a user process runs its target and answers, and has run longer than
    PROCESS_STABLE  2. its own code calls os._exit(3), the status of a failed boot
    3. the master logs a death and restarts it now, not with the back-off of a quick
    death, as the process had reported ready and run past PROCESS_STABLE; the new
    process answers. Before, the status alone made it a failed start: "restarting in
    0.1s (1 quick death in a row)", the back-off growing with each such exit."""
    app = write_app(tmp_path, EXITER)
    with serving(f"{app}:server", tmp_path) as server, server.connect() as ws:
        first = started_pid(server, 0, "exiter", 1)
        ws.send("hello")
        assert ws.recv(timeout=10) == f"hello from process {first}"
        began = psutil.Process(first).create_time()  # to the second or so: 1 s to spare
        wait_until(
            lambda: time.time() - began > PROCESS_STABLE + 1,
            PROCESS_STABLE + 10,
            interval=0.1,
            what=f"user process {first} to run past PROCESS_STABLE",
        )
        ws.send("exit")
        (restart,) = server.wait_for_log(
            rf"user process 0 'exiter' gen 1 \(pid {first}\) died: exit status 3; restarting (.*)"
        )
        assert restart == "now"
        second = started_pid(server, 0, "exiter", 1, count=2)
        assert second != first
        ws.send("again")
        assert ws.recv(timeout=10) == f"again from process {second}"
        assert "quick death" not in server.log()


def test_send_message_names_the_process_ids_when_one_is_unknown(tmp_path):
    app = write_app(
        tmp_path,
        PINGER.format(version="pong")
        + """
@server.on("open")
def on_open(server, request):
    try:
        server.send_message("x", 9)
    except ValueError as exc:
        server.push(request.fd, str(exc))
""",
    )
    with serving(f"{app}:server", tmp_path, workers=2) as server, server.connect() as ws:
        assert ws.recv(timeout=10) == (
            "unknown worker id 9; valid ids are 0, 1 (event workers), 2, 3 (user processes)"
        )


def test_a_new_process_that_cannot_start_leaves_the_old_one_running(tmp_path):
    app = write_app(tmp_path, PINGER.format(version="pong"))
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        sync_pid = started_pid(server, 0, "sync", 1)
        async_pid = started_pid(server, 1, "async", 1)
        wait_running(server)
        # The new code no longer registers "sync": its new process fails to start.
        renamed = (
            PINGER.format(version="pong v2")
            .replace('name="sync"', 'name="renamed"')
            .replace("server.process_id(frame.data)", '2 if frame.data == "sync" else 3')
        )
        write_app(tmp_path, renamed)
        server.signal(signal.SIGUSR1)
        server.wait_for_log(
            r"user process 0 'sync' gen 2 \(pid \d+\) died before it was ready: exit status 3, "
            r"failed to start: SwoolishError: the app no longer registers a user process named "
            rf"'sync'.*; gen 1 \(pid {sync_pid}\) keeps running",
            15,
        )
        new_async = started_pid(server, 1, "async", 2)
        # The old async process stops once the new one serves its id (not at its fork).
        server.wait_for_log(rf"user process 1 'async' gen 1 \(pid {async_pid}\) stopped", 15)
        with server.connect() as ws:
            assert ping(ws, "sync") == ("pong", sync_pid, 2)  # the old code, still running
            assert ping(ws, "async") == ("pong v2", new_async, 3)


def test_a_rolled_back_reload_leaves_the_processes_alone(tmp_path):
    app = write_app(tmp_path, PINGER.format(version="pong"))
    with serving(f"{app}:server", tmp_path, workers=2) as server:
        sync_pid = started_pid(server, 0, "sync", 1)
        wait_running(server)
        write_app(tmp_path, PINGER.format(version="pong v2") + "\n1 / 0\n")
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 2 rolled back", 15)
        with server.connect() as ws:
            assert ping(ws, "sync") == ("pong", sync_pid, 2)
        assert "'sync' gen 2" not in server.log()
        report = json.loads(run_cli("status", "--port", str(server.port), "--json").stdout)
        shown = {(w["kind"], w["name"], w["slot"]) for w in report["workers"]}
        assert shown == {
            ("event", None, 0),
            ("event", None, 1),
            ("process", "sync", 2),
            ("process", "async", 3),
        }
        assert " process " in run_cli("status", "--port", str(server.port)).stdout
