"""``swoolish serve --log-format json``: one JSON object per line, from every process;
``print()`` through the log; ``--log-config``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from support import ROOT, run_cli, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed

KEYS = {"time", "level", "pid", "logger", "message"}


def json_records(text: str) -> list[dict]:
    """Every line of the log parsed as JSON; fails on the first line that is not."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert set(record) >= KEYS, line
        records.append(record)
    return records


def test_json_log_lines_from_master_and_workers(tmp_path):
    with serving(
        "tests/apps/echo_app.py:server", tmp_path, "--log-format", "json", workers=2
    ) as server:
        with server.connect() as ws:
            ws.send("cmd:raise")  # logged with a traceback, which must stay inside one line
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        wait_until(lambda: "exception" in server.log(), 10, what="the handler's traceback")
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        records = json_records(server.log())

    master = [r for r in records if r["logger"] == "swoolish.master"]
    assert master and {r["pid"] for r in master} == {server.pid}
    serving_lines = [r for r in records if r["message"].endswith(") serving")]
    assert len(serving_lines) == 2
    assert {r["logger"] for r in serving_lines} == {"swoolish.worker.0", "swoolish.worker.1"}
    assert all(r["pid"] != server.pid and r["level"] == "info" for r in serving_lines)
    (failure,) = [r for r in records if "exception" in r]
    assert failure["level"] == "error"
    assert "RuntimeError: boom from a handler" in failure["exception"]
    assert failure["exception"].startswith("Traceback")
    for record in records:
        assert isinstance(record["pid"], int)
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
        assert record["time"][:4].isdigit() and "T" in record["time"]


def test_text_is_the_default(tmp_path):
    with serving("tests/apps/echo_app.py:server", tmp_path) as server:
        lines = server.wait_for_log(r"\[(\d+)\] INFO swoolish\.worker\.0: worker 0 gen 1 .*serving")
        assert int(lines[0]) != server.pid
        assert not server.log().lstrip().startswith("{")


# -- print() through the log

PRINT_APP = """
    from swoolish import WebSocketServer

    print("loading the app")  # in the master, then again in each worker
    server = WebSocketServer()

    @server.on("request")
    def on_request(request, response):
        if request.path == "/partial":
            print("no newline yet", end="")  # logged when the worker exits
        else:
            print("printed by the handler for", request.path)
        response.end("ok")
"""


def get(port: int, path: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout(5)) as reply:
        assert reply.read() == b"ok"


def test_print_goes_through_the_log_as_text(tmp_path):
    target = write_app(tmp_path, PRINT_APP)
    with serving(f"{target}:server", tmp_path) as server:
        (worker,) = server.workers()
        get(server.port, "/hello")
        get(server.port, "/partial")
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        log = server.log()

    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    printed = re.findall(rf"^{stamp} \[(\d+)\] INFO swoolish\.print: (.*)$", log, re.M)
    assert printed == [
        (str(server.pid), "loading the app"),
        (str(worker.pid), "loading the app"),
        (str(worker.pid), "printed by the handler for /hello"),
        (str(worker.pid), "no newline yet"),
    ], log
    assert not re.search(r"^(loading|printed|no newline)", log, re.M)  # no bare line


def test_print_goes_through_the_log_as_json(tmp_path):
    target = write_app(tmp_path, PRINT_APP)
    with serving(f"{target}:server", tmp_path, "--log-format", "json") as server:
        (worker,) = server.workers()
        get(server.port, "/hello")
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        records = json_records(server.log())  # fails on any line that is not JSON

    printed = [(r["pid"], r["message"]) for r in records if r["logger"] == "swoolish.print"]
    assert printed == [
        (server.pid, "loading the app"),
        (worker.pid, "loading the app"),
        (worker.pid, "printed by the handler for /hello"),
    ]
    assert all(r["level"] == "info" for r in records if r["logger"] == "swoolish.print")


# -- --log-config

DICT_CONFIG = {
    "version": 1,
    "formatters": {"custom": {"format": "CUSTOM %(process)d %(name)s | %(message)s"}},
    "handlers": {
        "err": {
            "class": "logging.StreamHandler",
            "formatter": "custom",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["err"]},
}

INI_CONFIG = """\
[loggers]
keys=root

[handlers]
keys=err

[formatters]
keys=ini

[logger_root]
level=INFO
handlers=err

[handler_err]
class=StreamHandler
formatter=ini
args=(sys.stderr,)

[formatter_ini]
format=INI %(process)d %(name)s | %(message)s
"""


@pytest.mark.parametrize(
    ("name", "content", "tag"),
    [
        ("logging.json", json.dumps(DICT_CONFIG), "CUSTOM"),
        ("logging.ini", INI_CONFIG, "INI"),
    ],
)
def test_log_config_file_sets_up_logging(tmp_path, name, content, tag):
    config = tmp_path / name
    config.write_text(content)
    target = write_app(tmp_path, PRINT_APP)
    with serving(f"{target}:server", tmp_path, "--log-config", str(config)) as server:
        (worker,) = server.workers()
        get(server.port, "/hello")
        server.wait_for_log(
            rf"(?m)^{tag} {worker.pid} swoolish\.print \| printed by the handler for /hello$"
        )
        log = server.log()
    assert re.search(rf"^{tag} {server.pid} swoolish\.master \| master \(pid", log, re.M)
    assert re.search(rf"^{tag} {worker.pid} swoolish\.worker\.0 \| worker 0 gen 1 ", log, re.M)
    assert re.search(rf"^{tag} {server.pid} swoolish\.print \| loading the app$", log, re.M)


def bad_config(tmp_path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "nowhere.json")
    path = tmp_path / ("broken.json" if kind == "json" else "broken.ini")
    path.write_text("{not json" if kind == "json" else "[loggers]\nkeys=root\n")
    return str(path)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "no such file"),
        (
            "json",
            "not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        ("ini", "KeyError: 'formatters'"),
    ],
)
def test_bad_log_config_is_one_line_and_exit_2(tmp_path, kind, reason):
    config = bad_config(tmp_path, kind)
    result = run_cli("serve", "tests/apps/echo_app.py:server", "--log-config", config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"swoolish: cannot use log config {config}: " + reason]
    assert result.stdout == ""


def test_bad_log_config_stops_server_start_before_anything_forks(tmp_path):
    script = write_app(
        tmp_path,
        """
        from swoolish import WebSocketServer
        server = WebSocketServer(port=0)
        server.start()
        """,
    )
    config = bad_config(tmp_path, "missing")
    result = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), SWOOLISH_LOG_CONFIG=config),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"swoolish: cannot use log config {config}: no such file"]
