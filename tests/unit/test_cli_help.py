"""``swoolish --help`` and each command's ``--help``: there, with examples that parse."""

from __future__ import annotations

import argparse
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

from swoolish.cli import build_parser, render_serve_options, serve_overrides
from swoolish.core.settings import SETTINGS, Setting
from swoolish.shared.logs import JsonFormatter, configure_logging

ROOT = Path(__file__).resolve().parents[2]
CLI_DOC = ROOT / "docs" / "cli.md"
COMMANDS = ("serve", "reload", "stop", "status")
TARGET = "examples/echo.py:server"


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


def serve_parser() -> argparse.ArgumentParser:
    (subparsers,) = (a for a in build_parser()._actions if isinstance(a.choices, dict))
    return subparsers.choices["serve"]


def overrides(*options: str) -> dict[str, object]:
    return serve_overrides(build_parser().parse_args(["serve", TARGET, *options]))


def squashed(text: str) -> str:
    """``text`` without whitespace, so argparse's line wrapping (even at a hyphen) is moot."""
    return "".join(text.split())


def test_every_setting_has_exactly_one_serve_flag():
    actions = serve_parser()._actions
    flags = [flag for action in actions for flag in action.option_strings]
    assert len(flags) == len(set(flags)), "two serve options share a flag"
    for setting in SETTINGS:
        (action,) = (a for a in actions if a.dest == setting.name)
        assert tuple(action.option_strings) == setting.flags
        assert action.default is argparse.SUPPRESS, f"{setting.cli} would always override"


def invocation(setting: Setting) -> str:
    """How ``--help`` introduces a setting's option."""
    if setting.kind == "bool":
        return ", ".join(setting.flags)
    if setting.choices:
        return f"{setting.cli} {{{','.join(setting.choices)}}}"
    return f"{setting.cli} {setting.metavar}"


def test_serve_help_lists_every_setting_with_its_default():
    out = squashed(run_cli("serve", "--help").stdout)
    for setting in SETTINGS:
        assert squashed(invocation(setting)) in out, setting.name
        assert squashed(f"{setting.doc} (default: {setting.default_text})") in out


def test_serve_overrides_hold_the_options_given_and_nothing_else():
    assert overrides("--max-message-size", "2048", "--no-reload-handoff") == {
        "max_message_size": 2048,
        "reload_handoff": False,
    }
    assert overrides() == {}
    assert overrides("--log-format", "json") == {"log_format": "json"}


#: Items a list setting accepts where an origin is no valid item.
LIST_SAMPLES = {"forwarded_allow_ips": ("10.0.0.0/8", "unix")}
#: Values for settings whose default is None and that take neither a number nor a path.
TEXT_SAMPLES = {"redis_url": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_each_serve_flag_overrides_its_setting_alone(setting):
    if setting.kind == "bool":
        assert overrides(setting.flags[1]) == {setting.name: False}
        assert overrides(setting.cli) == {setting.name: True}
        return
    if setting.kind == "list":  # comma-separated on the command line
        items = LIST_SAMPLES.get(setting.name, ("https://a.example", "http://b.example:8080"))
        assert overrides(setting.cli, " , ".join(items)) == {setting.name: items}
        return
    value = setting.default
    if value is None:
        text = TEXT_SAMPLES.get(setting.name, "/tmp/swoolish.pid")
        value = 9100 if setting.kind == "int" else text
    assert overrides(setting.cli, str(value)) == {setting.name: value}


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (("--workers", "0"), "swoolish: worker_num must be >= 1, got 0"),
        (("--port", "70000"), "swoolish: port must be an integer between 0 and 65535, got 70000"),
        (("--max-wait-time", "-1"), "swoolish: max_wait_time must be > 0 seconds, got -1.0"),
        (("--pid-file", ""), "swoolish: pid_file must be a file path, got ''"),
        (
            ("--redis-url", "localhost:6379"),
            "swoolish: redis_url must be a Redis URL such as redis://127.0.0.1:6379/0 "
            "(also rediss:// and unix://), got 'localhost:6379'",
        ),
        (
            ("--cluster-name", "a b"),
            "swoolish: cluster_name must be 1 to 64 letters, digits, '_', '.' or '-', got 'a b'",
        ),
    ],
)
def test_bad_setting_value_is_one_line_and_exit_2(options, line):
    result = run_cli("serve", TARGET, *options)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (("--workers", "abc"), "argument --workers: invalid int value: 'abc'"),
        (("--handshake-timeout", "soon"), "argument --handshake-timeout: invalid float value"),
        (("--log-level", "loud"), "argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_unparsable_setting_value_is_a_usage_error(options, error, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", TARGET, *options])
    assert exited.value.code == 2
    first, hint = capsys.readouterr().err.splitlines()  # tests/unit/test_cli_errors.py
    assert first.startswith("swoolish serve: argument ")
    assert error in first
    assert hint == "run 'swoolish serve --help' for the options"


LIST_SETTINGS = [s for s in SETTINGS if s.kind == "list"]


@pytest.mark.parametrize("setting", LIST_SETTINGS, ids=lambda s: s.cli)
@pytest.mark.parametrize("given", [",", "x,,y", "x,", ""])
def test_an_empty_item_of_a_list_option_is_a_usage_error(setting, given, capsys):
    """Every comma-separated option refuses an empty item, naming the option and the
    text given; before, empty items were dropped (--reload-dir , was no directory)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", TARGET, setting.cli, given])
    assert exited.value.code == 2
    first, hint = capsys.readouterr().err.splitlines()
    problem = "is empty" if given == "" else "has an empty item"
    assert first == (
        f"swoolish serve: argument {setting.cli}: {given!r} {problem}; write a "
        "comma-separated list without empty items, such as a,b"
    )
    assert hint == "run 'swoolish serve --help' for the options"


def test_a_list_option_still_takes_its_items():
    args = build_parser().parse_args(["serve", TARGET, "--reload-dir", " src, templates "])
    assert serve_overrides(args) == {"reload_dirs": ("src", "templates")}


def test_serve_options_table_in_docs_is_current():
    """docs/cli.md's table is generated; paste in render_serve_options() between its markers."""
    text = CLI_DOC.read_text()
    begin, end = "<!-- serve-options:begin -->\n", "<!-- serve-options:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == render_serve_options()
    assert "| `--log-format FORMAT` | `log_format` |" in table


def test_no_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    assert result.stderr == (
        "swoolish: the following arguments are required: COMMAND\n"
        "run 'swoolish --help' for the options\n"
    )


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
