"""shared/logs.py: log config files, the JSON formatter's extra fields, print() as log
records; worker/access.py: how an access line names its client."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from swoolish.core.errors import SettingError
from swoolish.shared.logs import (
    EXTRA_FIELDS,
    PRINT_LOGGER,
    JsonFormatter,
    PrintToLog,
    capture_print,
    configure_logging,
)
from swoolish.worker.access import client_address, request_client
from swoolish.worker.request import Headers, Request


@pytest.fixture
def root_logging():
    """The root logger as it was, whatever a test configures."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def printed():
    """The records of the swoolish.print logger."""
    logger = logging.getLogger(PRINT_LOGGER)
    handler = Records()
    logger.addHandler(handler)
    saved = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


# -- log_config


def test_json_log_config_is_a_dict_config(tmp_path, root_logging):
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "%(message)s"}},
                "handlers": {"mem": {"class": "logging.NullHandler"}},
                "root": {"level": "WARNING", "handlers": ["mem"]},
            }
        )
    )
    existing = logging.getLogger("swoolish.test.existing")
    configure_logging("debug", "json", str(config))  # level and format do not apply
    (handler,) = root_logging.handlers
    assert isinstance(handler, logging.NullHandler)
    assert root_logging.level == logging.WARNING
    assert not existing.disabled  # disable_existing_loggers is False unless it says so


def test_other_log_config_is_a_file_config(tmp_path, root_logging):
    config = tmp_path / "logging.conf"
    config.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=null\n[formatters]\nkeys=\n"
        "[logger_root]\nlevel=ERROR\nhandlers=null\n"
        "[handler_null]\nclass=NullHandler\nargs=()\n"
    )
    configure_logging("info", "text", str(config))
    (handler,) = root_logging.handlers
    assert isinstance(handler, logging.NullHandler)
    assert root_logging.level == logging.ERROR


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.json", None, "no such file"),
        ("list.json", "[]", "ValueError: a .json log config holds one object (a dictConfig dict)"),
        (
            "nohandler.json",
            '{"version": 1, "root": {"handlers": ["nowhere"]}}',
            "ValueError: Unable to configure root logger (ValueError: ",  # then its cause
        ),
        ("nosections.ini", "[loggers]\nkeys=root\n", "KeyError: 'formatters'"),
    ],
)
def test_a_bad_log_config_is_a_setting_error(tmp_path, root_logging, name, content, reason):
    config = tmp_path / name
    if content is not None:
        config.write_text(content)
    with pytest.raises(SettingError) as raised:
        configure_logging("info", "text", str(config))
    message = str(raised.value)
    assert message.startswith(f"cannot use log config {config}: {reason}")
    assert "\n" not in message


# -- the JSON formatter


def test_json_formatter_writes_the_known_extra_fields():
    record = logging.getLogger("swoolish.access").makeRecord(
        "swoolish.access",
        logging.INFO,
        __file__,
        1,
        "a line",
        (),
        None,
        extra={"client": "127.0.0.1:1", "status": 200, "duration_ms": 0.5, "secret": "x"},
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["client"] == "127.0.0.1:1"
    assert entry["status"] == 200 and entry["duration_ms"] == 0.5
    assert "secret" not in entry  # only the known fields
    assert {"client", "status", "duration_ms", "close_code", "bytes"} <= set(EXTRA_FIELDS)


# -- print() through the log


def test_each_complete_line_is_one_record(printed):
    out = PrintToLog(io.StringIO())
    print("one", 2, file=out)
    print("two\nthree", file=out)
    print("par", end="", file=out)
    print("tial", end="", file=out)
    out.flush()  # a partial line waits for its end
    assert [r.getMessage() for r in printed] == ["one 2", "two", "three"]
    print(" line", file=out)
    assert printed[-1].getMessage() == "partial line"
    assert all(r.levelno == logging.INFO for r in printed)


def test_finish_logs_the_partial_line_once(printed):
    out = PrintToLog(io.StringIO())
    out.write("100% done")
    out.finish()
    out.finish()
    assert [r.getMessage() for r in printed] == ["100% done"]  # no %-formatting either


class Flushed(io.StringIO):
    """A real stream that remembers how often it was flushed."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_a_handler_writing_to_stdout_does_not_recurse(printed):
    real = Flushed()
    out = PrintToLog(real)
    echo = logging.StreamHandler(out)  # a handler on the captured stdout itself
    echo.setFormatter(logging.Formatter("echo: %(message)s"))
    logging.getLogger(PRINT_LOGGER).addHandler(echo)
    try:
        print("hello", file=out)
    finally:
        logging.getLogger(PRINT_LOGGER).removeHandler(echo)
    assert [r.getMessage() for r in printed] == ["hello"]
    assert real.getvalue() == "echo: hello\n"
    assert real.flushes  # the handler's flush reached the real stream


def test_capture_print_wraps_the_real_stream_once(monkeypatch, printed):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    first = capture_print()
    second = capture_print()  # after a fork: a fresh writer over the same real stream
    assert sys.stdout is second and second.stream is real and first.stream is real
    print("through the log")
    assert printed[-1].getMessage() == "through the log"
    assert real.getvalue() == ""


# -- the access log's client


def test_client_address_forms():
    assert client_address(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert client_address(("::1", 5000)) == "[::1]:5000"
    assert client_address(("203.0.113.9", 0)) == "203.0.113.9"
    assert client_address(("", 0)) == "-"


def test_request_client_prefers_a_forwarded_address():
    direct = Request("GET", "/", Headers(), remote_addr="127.0.0.1")
    proxied = Request("GET", "/", Headers(), remote_addr="203.0.113.9")
    assert request_client(("127.0.0.1", 5000), direct) == "127.0.0.1:5000"
    assert request_client(("127.0.0.1", 5000), proxied) == "203.0.113.9"


def doc_log_configs() -> list[tuple[str, str]]:
    """The log config files docs/deployment.md shows, as (suffix, content)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"^```(json|ini)\n(.*?)^```", text, re.M | re.S)
    return [(kind, body) for kind, body in blocks if '"version"' in body or "[loggers]" in body]


def test_the_documented_log_configs_apply(tmp_path, root_logging):
    configs = doc_log_configs()
    assert [kind for kind, _ in configs] == ["json", "ini"]
    access = logging.getLogger("swoolish.access")
    saved = access.handlers[:], access.level, access.propagate
    try:
        for kind, body in configs:
            config = tmp_path / f"logging.{kind}"
            config.write_text(body.replace("/var/log/myapp", str(tmp_path)))
            configure_logging("info", "text", str(config))
            access.info("a request (%s)", kind)
        lines = (tmp_path / "access.log").read_text().splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == ["a request (json)", "a request (ini)"]
    finally:
        for handler in access.handlers:
            handler.close()
        access.handlers[:], access.level, access.propagate = saved
