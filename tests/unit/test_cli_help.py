"""``swoolish --help`` and each command's ``--help``: there, with examples that parse."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import support

from swoolish.cli import build_parser
from swoolish.shared.logs import JsonFormatter, configure_logging

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("serve", "reload", "stop", "status")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return support.run_cli(*args, seconds=60, COLUMNS="100")


def examples(help_text: str) -> list[list[str]]:
    """The command lines under ``examples:`` in a help text, without the ``swoolish``."""
    section = help_text.split("examples:\n", 1)[1]
    lines = []
    for line in section.splitlines():
        if not line.startswith("  swoolish "):
            if lines and not line.startswith("  "):
                break
            continue
        command = re.split(r"\s+(?:#|\||2>|>)", line.strip())[0]
        lines.append(shlex.split(command)[1:])
    return lines


def test_main_help_lists_commands_and_examples():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: swoolish")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), f"{command} is not listed"
    shown = examples(out)
    assert {argv[0] for argv in shown} == set(COMMANDS)
    for argv in shown:
        assert build_parser().parse_args(argv).command == argv[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_description_options_and_examples(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"usage: swoolish {command}")
    assert "--pid-file" in out
    assert "exit status:" in out
    shown = examples(out)
    assert shown, f"no examples in `swoolish {command} --help`"
    for argv in shown:
        assert argv[0] == command
        build_parser().parse_args(argv)


def test_serve_help_documents_log_format():
    out = run_cli("serve", "--help").stdout
    assert "--log-format {text,json}" in out
    assert "--log-level {debug,info,warning,error,critical}" in out


def test_no_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    assert "usage: swoolish" in result.stderr


def test_unknown_log_format_is_a_usage_error():
    result = run_cli("serve", "examples/echo.py:server", "--log-format", "xml")
    assert result.returncode == 2
    assert "invalid choice: 'xml'" in result.stderr


def test_json_formatter_writes_one_object_per_line():
    logger = logging.getLogger("swoolish.test")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logger.makeRecord(
            "swoolish.test", logging.ERROR, __file__, 1, "it %s", ("failed",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["pid"] == os.getpid()
    assert entry["logger"] == "swoolish.test"
    assert entry["message"] == "it failed"
    assert "ValueError: bad" in entry["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", entry["time"])


def test_configure_logging_formats():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning")  # what server.start() scripts use: text
        (handler,) = root.handlers
        assert not isinstance(handler.formatter, JsonFormatter)
        assert root.level == logging.WARNING
        configure_logging("debug", "json")
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        with pytest.raises(ValueError, match="log format must be one of text, json"):
            configure_logging("info", "xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
