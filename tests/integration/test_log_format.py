"""``swoolish serve --log-format json``: one JSON object per line, from every process."""

from __future__ import annotations

import json
import signal

import pytest
from support import serving, wait_until
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
