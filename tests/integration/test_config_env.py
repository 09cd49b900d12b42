"""Settings from ``SWOOLISH_<NAME>`` environment variables, on real ``swoolish serve``
processes: command line > environment > the app's code > default (docs/settings.md)."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT, ServerProcess, free_port, run_cli, write_app

from swoolish import __version__

ECHO = "tests/apps/echo_app.py:server"


@contextlib.contextmanager
def served(target: str, tmp_path: Path, *extra: str, **env: str) -> Iterator[ServerProcess]:
    """``swoolish serve TARGET`` without ``--workers`` (unlike support.serving), so the
    environment and the app's code decide."""
    port = free_port()
    args = ["serve", target, "--port", str(port), *extra]
    server = ServerProcess(args, port, ROOT, tmp_path / f"server-{port}.log", env=env)
    try:
        yield server
    finally:
        server.stop()


def workers_announced(server: ServerProcess) -> int:
    (count,) = server.wait_for_log(r"listening on \S+ with (\d+) workers?\b")
    return int(count)


def assert_serves(server: ServerProcess, workers: int) -> None:
    server.wait_ready(workers)
    assert workers_announced(server) == workers
    assert len(server.workers()) == workers
    assert len(re.findall(r"\) serving", server.log())) == workers


def test_worker_num_from_the_environment(tmp_path):
    with served(ECHO, tmp_path, SWOOLISH_WORKER_NUM="2") as server:
        assert_serves(server, 2)


def test_the_command_line_wins_over_the_environment(tmp_path):
    with served(ECHO, tmp_path, "--workers", "3", SWOOLISH_WORKER_NUM="2") as server:
        assert_serves(server, 3)


def test_the_environment_wins_over_the_apps_code(tmp_path):
    app = write_app(
        tmp_path,
        """
        from swoolish import WebSocketServer
        server = WebSocketServer(worker_num=2)
        """,
    )
    with served(f"{app}:server", tmp_path, SWOOLISH_WORKER_NUM="1") as server:
        assert_serves(server, 1)
    with served(f"{app}:server", tmp_path) as server:  # without it, the code's 2
        assert_serves(server, 2)


def test_a_bad_value_is_one_line_naming_the_variable_and_exit_2():
    result = run_cli("serve", ECHO, SWOOLISH_PORT="abc")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("swoolish: SWOOLISH_PORT='abc': ")
    assert result.stdout == ""


BAD_SECONDS_APP = """
    from swoolish import WebSocketServer
    server = WebSocketServer()
    server.set({name}=float("{value}"))
"""


@pytest.mark.parametrize(
    ("value", "where", "given", "line"),
    [
        (
            "nan",
            "option",
            "max_wait_time",
            "swoolish: max_wait_time must be > 0 seconds, got nan",
        ),
        (
            "nan",
            "environment",
            "worker_start_timeout",
            "swoolish: SWOOLISH_WORKER_START_TIMEOUT='nan': "
            "worker_start_timeout must be > 0 seconds, got nan",
        ),
        (
            "nan",
            "code",
            "handshake_timeout",
            "swoolish: handshake_timeout must be > 0 seconds, got nan",
        ),
        (
            "inf",
            "option",
            "max_wait_time",
            "swoolish: max_wait_time must be a finite number of seconds, got inf",
        ),
        (
            "inf",
            "environment",
            "handshake_timeout",
            "swoolish: SWOOLISH_HANDSHAKE_TIMEOUT='inf': "
            "handshake_timeout must be a finite number of seconds, got inf",
        ),
        (
            "inf",
            "code",
            "heartbeat_check_interval",
            "swoolish: heartbeat_check_interval must be a finite number of seconds, got inf",
        ),
    ],
)
def test_nan_or_infinite_seconds_are_refused_before_anything_is_forked(
    tmp_path, value, where, given, line
):
    """NaN or inf for a number of seconds (the setting ``given``), from an option, a
    variable or the app's code: one line, exit status 2, no worker. Before, NaN passed
    the > 0 check and the server served (a stopping worker then skipped worker_stop and
    worker_exit); inf passed the >= 0 and > 0 checks and meant "never"."""
    target, extra, env = ECHO, [], {}
    if where == "option":
        extra = ["--" + given.replace("_", "-"), value]
    elif where == "environment":
        env = {"SWOOLISH_" + given.upper(): value}
    else:
        app = BAD_SECONDS_APP.format(name=given, value=value)
        target = f"{write_app(tmp_path, app)}:server"
    with served(target, tmp_path, *extra, **env) as server:
        try:
            code = server.wait_exit(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running with {where} {value}: {server.log()[-300:]}")
        assert code == 2
        assert server.log().splitlines() == [line]


TABLE_HINT = "; lower --workers (worker_num) or --max-connections (max_connections)"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        # Petabytes: past any machine and x86-64's 128 TiB of user address space.
        (["--workers", "1000", "--max-connections", "1000000000000"], "Cannot allocate memory"),
        (["--max-connections", "10000000000000"], "Cannot allocate memory"),
        (["--max-connections", "10" + "0" * 20], "larger than this system can map"),
    ],
)
def test_a_session_table_too_big_is_one_line_and_exit_2(tmp_path, extra, reason):
    """Settings whose shared session table the system refuses: one line naming the
    settings that size it, exit status 2, nothing forked (docs/cli.md). Before, a
    traceback of the mmap's OSError (or OverflowError), exit status 1."""
    with served(ECHO, tmp_path, *extra) as server:
        try:
            code = server.wait_exit(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running with {extra}: {server.log()[-300:]}")
        (line,) = server.log().splitlines()
        assert code == 2
        assert line.startswith("swoolish: cannot allocate the session table (")
        assert line.endswith(f" in shared memory: {reason}{TABLE_HINT}")
        setting = {"--workers": "worker_num", "--max-connections": "max_connections"}[extra[0]]
        assert f"{setting} {extra[1]}" in line  # the value that sized it


def test_an_unknown_variable_is_a_warning_and_the_server_serves(tmp_path):
    with served(ECHO, tmp_path, SWOOLISH_WORKERS="2") as server:
        assert_serves(server, 1)
        lines = server.log().splitlines()
    assert lines[0] == "swoolish: warning: SWOOLISH_WORKERS names no setting; ignored"
    assert sum("SWOOLISH_WORKERS" in line for line in lines) == 1


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"swoolish {__version__}\n" == "swoolish 0.1.0\n"
