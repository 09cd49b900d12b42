"""What ``reload --wait`` and ``stop`` print while they wait, and which master
``--port`` picks (docs/cli.md), on real masters, workers and clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from support import ROOT, free_port, run_cli, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed

from swoolish.master import control

# A handler held in flight until the test creates RELEASE: what a drain waits for. It
# writes HELD (its worker's slot and pid) once it holds.
HOLD_APP = """
    import asyncio, os
    from swoolish import WebSocketServer

    HELD, RELEASE = {held!r}, {release!r}
    server = WebSocketServer(reload_handoff=False, max_wait_time=30)

    @server.on("message")
    async def on_message(server, frame):
        with open(HELD, "w") as f:
            f.write(f"{{server.worker_id}} {{server.worker_pid}}")
        while not os.path.exists(RELEASE):
            await asyncio.sleep(0.02)
        server.push(frame.fd, "released")
"""

# A reload that does not finish until the test creates RELEASE: the new generation's
# worker_start waits for it.
SLOW_BOOT_APP = """
    import os, time
    from swoolish import WebSocketServer

    RELEASE = {release!r}
    server = WebSocketServer(worker_start_timeout=60)

    @server.on("worker_start")
    def start(server, worker_id):
        while server.generation > 1 and not os.path.exists(RELEASE):
            time.sleep(0.02)
"""

ECHO = "tests/apps/echo_app.py:server"


class Cli:
    """A ``swoolish`` command running in the background; its lines as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swoolish", *args],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, seconds: float = 15) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := re.fullmatch(pattern, line))), None)

        return wait_until(found, seconds, what=f"a line /{pattern}/ in {self.lines}")

    def finish(self, seconds: float = 30) -> tuple[int, list[str], str]:
        """Exit status, every line printed, and stderr."""
        code = self.proc.wait(timeout=timeout(seconds))
        self._reader.join(timeout(5))
        assert self.proc.stderr is not None
        return code, self.lines, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def cli(*args: str):
    command = Cli(*args)
    try:
        yield command
    finally:
        command.kill()


def hold_app(tmp_path):
    held, release = tmp_path / "held", tmp_path / "release"
    app = write_app(tmp_path, HOLD_APP.format(held=str(held), release=str(release)))
    return app, held, release


def holding_worker(ws, held) -> tuple[int, int]:
    """Send the message that is held; the slot and pid of the worker holding it."""
    ws.send("hold")
    wait_until(held.exists, 10, what="the handler holding")
    slot, pid = held.read_text().split()
    return int(slot), int(pid)


def test_reload_wait_shows_what_the_old_worker_still_has(tmp_path):
    """1. a client's handler is in flight in the only worker (no hand-off)  2. `reload
    --wait`: the new generation serves, then, about every second, a line says what the
    old worker still has and how long until max_wait_time  3. the handler is released:
    the client gets its answer, then the reload's 1012; the last line is the old
    worker's drain, in the singular for one connection."""
    app, held, release = hold_app(tmp_path)
    pid_file = tmp_path / "master.pid"
    with (
        serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file)) as server,
        server.connect() as ws,
    ):
        _, old = holding_worker(ws, held)
        with cli("reload", "--pid-file", str(pid_file), "--wait") as reload:
            waiting = (
                rf"  waiting for old worker 0 \(pid {old}\): 1 connection left, "
                r"1 handler running, ([\d.]+)s to max_wait_time"
            )
            left = float(reload.wait_for(waiting)[1])
            assert 0 < left <= 30
            release.touch()
            assert ws.recv(timeout=timeout(10)) == "released"
            code, lines, stderr = reload.finish()
        assert code == 0, stderr
        output = "\n".join(lines)
        assert re.fullmatch(
            r"reload to generation 2 started\n"
            r"  worker 0 gen 2 \(pid \d+\) ready in [\d.]+s\n"
            r"reload complete: generation 2 serving \([\d.]+s\)\n"
            rf"(?:{waiting}\n)+"
            rf"  old worker 0 \(pid {old}\) drained: 0 timers cleared, 1 connection closed",
            output,
        ), output
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


def test_stop_shows_workers_and_connections_left(tmp_path):
    """1. two workers, a handler in flight in one of them  2. `swoolish stop --port`:
    it says what it stops, the idle worker's drain, then about every second what the
    busy one still has and the workers left  3. the handler is released: the busy
    worker drains, and `stopped` once the master has exited."""
    app, held, release = hold_app(tmp_path)
    with serving(f"{app}:server", tmp_path, workers=2) as server, server.connect() as ws:
        slot, busy = holding_worker(ws, held)
        idle = 1 - slot
        with cli("stop", "--port", str(server.port)) as stop:
            waiting = (
                rf"  waiting for worker {slot} \(pid {busy}\): 1 connection left, "
                r"1 handler running, [\d.]+s to max_wait_time; [12] workers? left"
            )
            stop.wait_for(waiting)
            release.touch()
            assert ws.recv(timeout=timeout(10)) == "released"
            code, lines, stderr = stop.finish()
        assert code == 0, stderr
        assert server.wait_exit() == 0
    expected = {
        "start": rf"stopping master {server.pid}: 2 workers draining \(max_wait_time 30s\)",
        "idle": rf"  worker {idle} \(pid \d+\) drained: 0 timers cleared, "
        r"0 connections closed; 1 worker left",
        "waiting": waiting,
        "busy": rf"  worker {slot} \(pid {busy}\) drained: 0 timers cleared, "
        r"1 connection closed; 0 workers left",
        "end": rf"stopped \(master pid {server.pid}\)",
    }
    kinds = [next((k for k, p in expected.items() if re.fullmatch(p, x)), x) for x in lines]
    assert kinds[0] == "start" and kinds[-2:] == ["busy", "end"], lines
    assert kinds.count("idle") == 1 and "waiting" in kinds, lines
    assert set(kinds) == set(expected), lines  # nothing but these lines


def test_stop_falls_back_to_sigterm_when_the_master_does_not_answer(tmp_path):
    """A master without its control socket (here: its file removed) still stops:
    SIGTERM, one line saying so, and `stopped` once it has exited."""
    with serving(ECHO, tmp_path) as server:
        os.unlink(control.locate(server.pid, os.geteuid(), [dict(os.environ)]))
        result = run_cli("stop", "--port", str(server.port))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"master {server.pid} does not answer on its control socket: sent SIGTERM, "
            "waiting for it to exit",
            f"stopped (master pid {server.pid})",
        ]
        assert server.wait_exit() == 0


def test_reload_wait_that_times_out_says_it_may_still_complete(tmp_path):
    """1. the new generation's worker_start waits for a file  2. `reload --wait
    --timeout 1` exits 1 saying the reload is still in progress and may complete
    3. the file appears: the reload completes."""
    release = tmp_path / "release"
    app = write_app(tmp_path, SLOW_BOOT_APP.format(release=str(release)))
    pid_file = tmp_path / "master.pid"
    with serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file)) as server:
        result = run_cli("reload", "--pid-file", str(pid_file), "--wait", "--timeout", "1")
        assert result.returncode == 1
        assert result.stdout.splitlines() == ["reload to generation 2 started"]
        assert result.stderr.splitlines() == [
            "swoolish: reload: still in progress after 1s; it may still complete — "
            "check with 'swoolish status'"
        ]
        status = run_cli("status", "--pid-file", str(pid_file))
        assert "(reloading)" in status.stdout
        release.touch()
        server.wait_for_log(r"reload to generation 2 complete")


def test_port_picks_the_master_listening_on_it(tmp_path):
    """Two masters: `status --port P` reports the one on P; without --port or
    --pid-file the error names both and both options; `reload --port` and `stop
    --port` act on that master alone; a port no master listens on is one line."""
    with serving(ECHO, tmp_path) as one, serving(ECHO, tmp_path) as two:
        for server in (one, two):
            result = run_cli("status", "--port", str(server.port), "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)["master"]
            assert report["pid"] == server.pid
            assert report["listen"] == f"127.0.0.1:{server.port}"

        result = run_cli("status")  # other masters of this user may run too
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("swoolish: several swoolish masters are running (")
        assert line.endswith("); pass --port PORT or --pid-file PATH")
        assert f"{one.pid} on 127.0.0.1:{one.port}" in line
        assert f"{two.pid} on 127.0.0.1:{two.port}" in line

        result = run_cli("reload", "--port", str(one.port), "--wait")
        assert result.returncode == 0, result.stderr
        assert "reload complete: generation 2 serving" in result.stdout
        assert "reload to generation 2" not in two.log()

        port = free_port()
        result = run_cli("status", "--port", str(port))
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"swoolish: no swoolish master of uid {os.geteuid()} listens on port {port} (running: "
        )

        result = run_cli("stop", "--port", str(one.port), "--pid-file", "x.pid")
        assert result.returncode == 2  # one or the other: a usage error

        result = run_cli("stop", "--port", str(one.port))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == f"stopped (master pid {one.pid})"
        assert one.wait_exit() == 0
        assert two.accepts()


BAD_TIMEOUTS = ["nan", "inf", "1e300", "0", "-1"]


def test_a_bad_timeout_is_a_usage_error_and_asks_the_master_nothing(tmp_path):
    """`status`, `reload --wait` and `stop` with a --timeout that is no number of
    seconds > 0 (nan, inf, one a socket cannot wait, 0, negative): a usage error, exit
    status 2, and the master is not asked: it serves on with the same worker, neither
    reloaded nor stopped. Before, nan, inf and 1e300 were a traceback of the control
    socket's settimeout after the request was sent (a reload ran, a stop stopped), and
    -1 was "no reply within -1s", exit 1."""
    pid_file = tmp_path / "master.pid"
    with serving(ECHO, tmp_path, "--pid-file", str(pid_file)) as server:
        (worker,) = server.workers()
        for command in (["status"], ["reload", "--wait"], ["stop"]):
            for value in BAD_TIMEOUTS:
                argv = [*command, "--pid-file", str(pid_file), "--timeout", value]
                result = run_cli(*argv)
                prog = f"swoolish {command[0]}"
                assert (result.returncode, result.stdout) == (2, ""), (argv, result.stderr)
                assert result.stderr.splitlines() == [
                    f"{prog}: argument --timeout: must be a number of seconds > 0 and at "
                    f"most 1000000000 (finite), got {value!r}",
                    f"run '{prog} --help' for the options",
                ], argv
        assert server.proc.poll() is None
        assert server.workers() == [worker]
        assert "reload" not in server.log()
        assert "stopping" not in server.log()
