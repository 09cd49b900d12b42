"""Usage errors print one line and the command's ``--help`` hint, and exit 2, like the
app's own checks (docs/cli.md, "Errors")."""

from __future__ import annotations

import pytest
from support import run_cli

from swoolish.cli import usage_error

TARGET = "tests/apps/echo_app.py:server"


def hint(prog: str) -> str:
    return f"run '{prog} --help' for the options"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["serve", TARGET, "--workers", "abc"],
            "swoolish serve: argument --workers: invalid int value: 'abc'",
        ),
        (
            ["serve", TARGET, "--wokers", "2"],
            "swoolish serve: unrecognized arguments: --wokers 2",
        ),
        (["serve"], "swoolish serve: the following arguments are required: TARGET"),
        (
            ["reload", "--timeout", "soon"],
            "swoolish reload: argument --timeout: invalid float value: 'soon'",
        ),
        (["status", "--bogus"], "swoolish status: unrecognized arguments: --bogus"),
        ([], "swoolish: the following arguments are required: COMMAND"),
    ],
)
def test_usage_error_is_one_line_and_the_help_hint(argv, line):
    result = run_cli(*argv)
    assert result.returncode == 2
    assert result.stdout == ""
    prog = line.split(":", 1)[0]
    assert result.stderr == f"{line}\n{hint(prog)}\n"


def test_unknown_command_names_the_choices():
    result = run_cli("bogus")
    assert result.returncode == 2
    first, second = result.stderr.splitlines()
    assert first.startswith("swoolish: argument COMMAND: invalid choice: 'bogus' (choose from")
    assert second == hint("swoolish")


def test_usage_error_text():
    assert usage_error("swoolish stop", "unrecognized arguments: -x") == (
        "swoolish stop: unrecognized arguments: -x\nrun 'swoolish stop --help' for the options\n"
    )
