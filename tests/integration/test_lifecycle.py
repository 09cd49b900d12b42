"""Lifecycle, signals and the serve CLI on real processes (docs/lifecycle.md, docs/cli.md)."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from support import (
    ServerProcess,
    free_port,
    run_cli,
    serving,
    timeout,
    wait_until,
    write_app,
)
from websockets.exceptions import ConnectionClosed

HOOKS_APP = """
    import sys
    from swoolish import Timer, WebSocketServer

    server = WebSocketServer()

    def say(text):
        print(text, file=sys.stderr, flush=True)

    @server.on("WorkerStart")
    def start(server, worker_id):
        say(f"hook worker_start {worker_id}")

    @server.on("workerStop")
    def stop(server, worker_id):
        say(f"hook worker_stop {worker_id} timers={len(Timer.list())}")

    @server.on("worker_exit")
    def exit_(server, worker_id):
        say(f"hook worker_exit {worker_id} timers={len(Timer.list())}")

    @server.on("message")
    def message(server, frame):
        # three timers the app forgets: the framework clears them after worker_exit
        for _ in range(3):
            Timer.tick(50, lambda timer_id: server.push(frame.fd, "tick"))
        server.push(frame.fd, "armed")
"""


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no/such/file.py:server", "no such file"),
        ("nosuchmodule:server", "no module named 'nosuchmodule'"),
        (
            "tests/apps/echo_app.py:missing",
            "has no attribute 'missing'; module-level servers found: server",
        ),
        ("tests/apps/echo_app.py:1x", "is not a Python name"),
    ],
)
def test_bad_target_is_one_line_and_exit_2(target, message):
    result = run_cli("serve", target, "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_app_that_fails_to_import_is_one_line_and_exit_2(tmp_path):
    app = write_app(tmp_path, "import swoolish\nvalue = 1 / 0\n")
    result = run_cli("serve", f"{app}:server")
    assert result.returncode == 2
    assert "ZeroDivisionError" in result.stderr and f"{app}:2" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("source", "raised"),
    [
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("class Escape(BaseException):\n    pass\nraise Escape('out')\n", "Escape: out"),
    ],
    ids=["sys.exit", "BaseException"],
)
def test_an_import_that_exits_is_one_line_and_exit_2(tmp_path, source, raised):
    """An app whose import calls sys.exit() or raises a BaseException that is not an
    Exception: one line naming it, exit status 2. Before, sys.exit(3) ended swoolish
    serve with status 3 and printed nothing; the other, a traceback and status 1."""
    app = write_app(tmp_path, source)
    result = run_cli("serve", f"{app}:server", "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"importing the app raised {raised}" in line


BLOCKED_IMPORT_APP = """
    import os, time
    from swoolish import WebSocketServer

    server = WebSocketServer()
    deadline = time.monotonic() + 60
    while not os.access({release!r}, os.F_OK) and time.monotonic() < deadline:
        time.sleep(0.02)  # module-level code blocked until the test releases it
"""


def test_an_import_still_running_gets_one_warning_and_goes_on(tmp_path):
    """The master's import of the app still running past the threshold (shortened
    here through SWOOLISH_IMPORT_WARNING_AFTER): one warning naming the app and the
    line it is at, and the server starts once the import finishes. Before, nothing
    was printed for as long as the import blocked."""
    release = tmp_path / "release"
    app = write_app(tmp_path, BLOCKED_IMPORT_APP.format(release=str(release)))
    port = free_port()
    args = ["serve", f"{app}:server", "--port", str(port)]
    env = {"SWOOLISH_IMPORT_WARNING_AFTER": "0.2"}
    server = ServerProcess(args, port, tmp_path, tmp_path / "server.log", env=env)
    try:
        (line,) = server.wait_for_log(r".*still importing the app.*")
        assert f"WARNING swoolish.loader: still importing the app {app}:server after 0.2s; " in line
        assert "its module-level code may be blocked; now at " in line
        assert f"{app}:" in line.split("now at ", 1)[1]  # the app's line, not the watcher's
        assert not server.workers()  # the master is still importing: nothing forked
        release.touch()
        server.wait_ready(1)
        assert server.log().count("still importing") == 1  # the workers' imports: none
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "worker_num must be >= 1"),
        (["--max-wait-time", "-1"], "max_wait_time must be > 0"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(args, message):
    result = run_cli("serve", "tests/apps/echo_app.py:server", *args)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with serving("tests/apps/echo_app.py:server", tmp_path) as server:
        result = run_cli("serve", "tests/apps/echo_app.py:server", "--port", str(server.port))
        assert result.returncode == 2 and "Address already in use" in result.stderr


def test_unwritable_pid_file_is_a_clear_error(tmp_path):
    result = run_cli(
        "serve",
        "tests/apps/echo_app.py:server",
        "--port",
        str(free_port()),
        "--pid-file",
        "/proc/no/such/dir/x.pid",
    )
    assert result.returncode == 2 and "cannot write pid_file" in result.stderr


def test_sigterm_runs_hooks_in_order_closes_1001_and_exits_0(tmp_path):
    """1. serve an app whose handler leaves 3 timers running  2. SIGTERM the master
    3. the client gets 1001  4. worker_stop, worker_exit ran in that order, then the
    forgotten timers were cleared with one log line  5. the master exits 0."""
    app = write_app(tmp_path, HOOKS_APP)
    pid_file = tmp_path / "master.pid"
    with serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file)) as server:
        assert int(pid_file.read_text()) == server.pid
        with server.connect() as ws:
            ws.send("go")
            assert ws.recv(timeout=5) == "armed"
            assert ws.recv(timeout=5) == "tick"
            server.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert server.wait_exit() == 0
        log = server.log()
        order = [
            log.index(x)
            for x in (
                "hook worker_start 0",
                "hook worker_stop 0 timers=3",
                "hook worker_exit 0 timers=3",
                "3 timers still active after worker_exit, cleared",
            )
        ]
        assert order == sorted(order)
        assert log.count("timers still active") == 1
        assert not pid_file.exists()


def test_killed_worker_is_replaced_without_touching_the_others(tmp_path):
    """1. 3 workers  2. SIGKILL one  3. worker_error logged, a new worker takes its slot
    4. the other two pids are unchanged and the server still serves."""
    with serving("tests/apps/echo_app.py:server", tmp_path, workers=3) as server:
        before = {p.pid for p in server.workers()}
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(r"died: killed by SIGKILL")
        after = wait_until(
            lambda: (
                {p.pid for p in server.workers()}
                if len(server.workers()) == 3 and victim not in {p.pid for p in server.workers()}
                else None
            ),
            10,
            what="a replacement worker",
        )
        assert before - {victim} <= after and victim not in after
        with server.connect() as ws:
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"


def test_no_worker_survives_a_sigkilled_master(tmp_path):
    """1. 2 workers  2. SIGKILL the master  3. every worker is gone within 3 s."""
    with serving("tests/apps/echo_app.py:server", tmp_path, workers=2) as server:
        workers = server.workers()
        assert len(workers) == 2
        server.signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(workers, timeout=timeout(3))
        assert alive == []


def test_sigquit_is_immediate(tmp_path):
    with serving("tests/apps/echo_app.py:server", tmp_path, workers=2) as server:
        workers = server.workers()
        server.signal(signal.SIGQUIT)
        assert server.wait_exit() == 0
        _, alive = psutil.wait_procs(workers, timeout=timeout(3))
        assert alive == []


def test_a_stop_signal_that_reaches_the_workers_first_is_no_death(tmp_path):
    """Ctrl-C, ``kill -- -PGID`` and systemd's default KillMode=control-group signal every
    process of the group, and a worker with nothing to drain may exit before the master
    has its own signal. Made certain here: 1. the master is frozen (SIGSTOP)  2. both
    workers get SIGINT and exit  3. the master resumes and reaps them, then gets its
    SIGINT  4. nothing logged as died, no replacement forked, exit 0, and one line per
    worker saying the signal reached it first."""

    def exited(proc: psutil.Process) -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def reaped(proc: psutil.Process) -> bool:
        try:
            proc.status()
        except psutil.NoSuchProcess:
            return True
        return False

    with serving("tests/apps/echo_app.py:server", tmp_path, workers=2) as server:
        workers = server.workers()
        server.signal(signal.SIGSTOP)
        try:
            for worker in workers:
                worker.send_signal(signal.SIGINT)
            wait_until(lambda: all(exited(w) for w in workers), 10, what="the workers' exits")
        finally:
            server.signal(signal.SIGCONT)
        wait_until(lambda: all(reaped(w) for w in workers), 10, interval=0.002, what="reaped")
        server.signal(signal.SIGINT)
        assert server.wait_exit() == 0
        log = server.log()
    assert "died" not in log
    assert log.count(") serving") == 2, log
    assert log.count("as the server stopped: the stop signal reached it before the master") == 2


def test_script_with_start_at_the_bottom_serves(tmp_path):
    """``python app.py`` with ``server.start()`` unguarded at module level."""
    port = free_port()
    app = write_app(
        tmp_path,
        f"""
        from swoolish import WebSocketServer

        server = WebSocketServer("127.0.0.1", {port})

        @server.on("message")
        def echo(server, frame):
            server.push(frame.fd, "script:" + frame.data)

        server.start()
        """,
    )
    server = ServerProcess([], port, tmp_path, tmp_path / "script.log", script=app)
    try:
        server.wait_ready(1)
        with server.connect() as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "script:hi"
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    finally:
        server.stop()


def test_a_worker_that_keeps_crashing_at_boot_is_restarted_with_growing_back_off(tmp_path):
    """1. an app whose worker_start always raises  2. the master keeps the slot filled
    but waits longer after each failure (0.1 s, 0.2 s, 0.4 s …), never a hot loop
    3. worker_error fires for each failure; the master itself stays up and exits 0."""
    app = write_app(
        tmp_path,
        """
        import sys
        from swoolish import WebSocketServer
        server = WebSocketServer()

        @server.on("worker_start")
        def start(server, worker_id):
            raise RuntimeError("the database is down")

        @server.on("worker_error")
        def error(server, worker_id, pid, exit_code, signal):
            print("hook worker_error", worker_id, exit_code, file=sys.stderr, flush=True)
        """,
    )
    with serving(f"{app}:server", tmp_path, wait=False) as server:
        delays = server.wait_for_log(
            r"failed to boot \d+ times? in a row; next try in ([\d.]+)s", 20, count=4
        )
        assert [float(d) for d in delays[:4]] == [0.1, 0.2, 0.4, 0.8]
        assert server.log().count("hook worker_error 0 3") >= 4
        assert "the database is down" in server.log()
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0


def test_sighup_reloads_like_sigusr1(tmp_path):
    """The gunicorn/nginx habit: SIGHUP starts the same rolling reload as SIGUSR1."""
    with serving("tests/apps/echo_app.py:server", tmp_path, workers=2) as server:
        old = {w.pid for w in server.workers()}
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"SIGHUP: reload to generation 2 started")
        server.wait_for_log(r"reload to generation 2 complete")
        wait_until(
            lambda: len(server.workers()) == 2 and not old & {w.pid for w in server.workers()}
        )


def test_command_line_options_override_the_apps_settings(tmp_path):
    """The app asks for 3 workers and a 9 s drain; ``--workers 1 --max-wait-time 0.5``
    wins: one worker serves, and the worker's settings say 0.5."""
    app = write_app(
        tmp_path,
        """
        from swoolish import WebSocketServer
        server = WebSocketServer(worker_num=3, max_wait_time=9)

        @server.on("message")
        def on_message(server, frame):
            server.push(frame.fd, str(server.settings.max_wait_time))
        """,
    )
    with serving(f"{app}:server", tmp_path, "--max-wait-time", "0.5", workers=1) as server:
        assert len(server.workers()) == 1
        assert "with 1 worker\n" in server.log()  # one worker, in the singular
        with server.connect() as ws:
            ws.send("?")
            assert ws.recv(timeout=5) == "0.5"
