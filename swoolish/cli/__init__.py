"""The ``swoolish`` command line (``bin/swoolish``, ``python -m swoolish``).

A bad TARGET or setting prints one line that says what is wrong and how to fix it,
and exits with status 2 before anything is bound or forked.

Every setting of ``swoolish/core/settings.py`` is a ``swoolish serve`` option generated
from its declaration, and so is the options table of docs/cli.md
(:func:`render_serve_options`), so the flags, ``--help`` and the docs cannot disagree.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__, loader
from ..core.errors import SettingError, TargetError
from ..core.settings import (
    SETTINGS,
    Setting,
    Settings,
    settings_from_environ,
    unknown_environ_names,
)
from ..launch import serve, unsupported_platform
from ..server import WebSocketServer
from ..shared.logs import capture_print, configure_logging
from . import commands

__all__ = [
    "Parser",
    "build_parser",
    "main",
    "render_serve_options",
    "serve_overrides",
    "usage_error",
]

EXIT_USAGE = 2

MAIN_EXAMPLES = """\
examples:
  swoolish serve examples/ticker.py:server --workers 2 --pid-file /tmp/swoolish.pid
  swoolish status --pid-file /tmp/swoolish.pid
  swoolish reload --pid-file /tmp/swoolish.pid --wait
  swoolish stop --pid-file /tmp/swoolish.pid

Run `swoolish COMMAND --help` for a command's options. Documentation: docs/cli.md.
"""

SERVE_EXAMPLES = """\
examples:
  swoolish serve examples/ticker.py:server --port 9501
  swoolish serve myapp:server --workers 4 --pid-file /tmp/swoolish.pid
  swoolish serve myapp:server --log-format json 2>> /var/log/myapp.jsonl

exit status: 0 after a graceful shutdown; 2 for a bad TARGET or setting, a pid file a
running master holds, or a system other than Linux (one line on stderr says what is
wrong, before anything is forked).
"""

RELOAD_EXAMPLES = """\
examples:
  swoolish reload --pid-file /tmp/swoolish.pid --wait
  swoolish reload --port 9501 --wait    # the master listening on port 9501
  swoolish reload                 # the only swoolish master running, no waiting

exit status: 0 reload requested (or, with --wait, completed); 1 rolled back, timed out,
no master found (including a stale pid file, which is never signalled), or the master
is another user's (only its user and root may control it).
"""

STOP_EXAMPLES = """\
examples:
  swoolish stop --pid-file /tmp/swoolish.pid --timeout 10
  swoolish stop --port 9501

exit status: 0 the master exited; 1 it is still running after --timeout, no master
was found, or it is another user's.
"""

STATUS_EXAMPLES = """\
examples:
  swoolish status
  swoolish status --port 9501
  swoolish status --pid-file /tmp/swoolish.pid --json | jq .workers

exit status: 0 printed; 1 no master found, another user's, or it did not answer
within --timeout.
"""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in the form of the app's own checks: one line that
    says what is wrong, then where the options are, and exit status 2::

        swoolish serve: argument --workers: invalid int value: 'abc'
        run 'swoolish serve --help' for the options
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, usage_error(self.prog, message))

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Unknown options are the command's error (argparse reports them as the main
        program's): ``swoolish serve: unrecognized arguments: --wokers``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(getattr(parsed, "command", None)) or self
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _command_parser(self, command: str | None) -> argparse.ArgumentParser | None:
        """The parser of the command chosen (``serve``), if any."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                found: argparse.ArgumentParser | None = action.choices.get(command or "")
                return found
        return None


def usage_error(prog: str, message: str) -> str:
    """What a usage error prints: the error on one line, then the ``--help`` to run."""
    return f"{prog}: {message}\nrun '{prog} --help' for the options\n"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="swoolish",
        description="Swoole's server model for Python: prefork uvloop WebSocket/HTTP workers.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"swoolish {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    serve = commands.add_parser(
        "serve",
        help="run a server in the foreground",
        description="Run the app's server in the foreground; logs go to stderr. "
        "Options given here override the values the app's code sets.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("target", metavar="TARGET", help="module:attr or path/to/file.py:attr")
    _add_setting_options(serve)
    reload = commands.add_parser(
        "reload",
        help="rolling reload of every worker (new code from disk)",
        description="Send SIGUSR1 to the master. With --wait, follow the reload worker by "
        "worker and exit 0 when it completed, 1 when it was rolled back or timed out.",
        epilog=RELOAD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(reload)
    reload.add_argument("--wait", action="store_true", help="follow the reload to its end")
    _add_timeout(reload, 30.0)
    stop = commands.add_parser(
        "stop",
        help="graceful shutdown (SIGTERM), waiting for the master to exit",
        description="Ask the master for a graceful shutdown (as SIGTERM does) and wait until "
        "it has exited, showing what it waits for: every worker runs worker_stop and "
        "worker_exit, closes its WebSockets with 1001 and finishes the HTTP requests in "
        "flight. A master that does not answer on its control socket gets SIGTERM.",
        epilog=STOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(stop)
    _add_timeout(stop, 15.0)
    status = commands.add_parser(
        "status",
        help="the master and each worker: pid, generation, state, connections, RSS, CPU",
        description="Ask the master for a table of itself and each worker: pid, slot, "
        "generation, state, connections, timers, messages handled, RSS, CPU and uptime.",
        epilog=STATUS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_timeout(status, 5.0)
    return parser


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, all generated from its declaration in core/settings.py.

    An option not given is absent from the parsed namespace (``SUPPRESS``), so it never
    overrides what the app's code sets.
    """
    group = parser.add_argument_group(
        "settings",
        "Each overrides the value the app's code sets (docs/settings.md).",
    )
    for setting in SETTINGS:
        group.add_argument(setting.cli, dest=setting.name, **_option_spec(setting))


def _option_spec(setting: Setting) -> dict[str, Any]:
    """The ``add_argument`` keywords for a setting: its value type, metavar and help."""
    spec: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(setting)}
    if setting.kind == "bool":
        spec["action"] = argparse.BooleanOptionalAction
    elif setting.choices:
        # No metavar: argparse then lists the choices, as the reader needs them.
        spec.update(type=setting.parse, choices=setting.choices)
    else:
        spec.update(type=_option_type(setting.parse), metavar=setting.metavar)
    return spec


def _option_type(parse: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    """``parse`` as an argparse ``type``: its SettingError (an empty item of a list) is
    the option's usage error in its own words, naming the option and the text given
    (argparse would say only "invalid _comma_list value"). Other errors keep argparse's
    "invalid int value: 'abc'", which takes the name of the function."""
    if parse is None:
        return None

    def parse_option(text: str) -> Any:
        try:
            return parse(text)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse_option.__name__ = parse.__name__
    return parse_option


def _help(setting: Setting) -> str:
    # argparse %-formats help strings, so a literal % must be doubled.
    return f"{setting.doc} (default: {setting.default_text})".replace("%", "%%")


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the ``serve`` command line, validated, by setting name.

    Validated here, before the app is loaded, so a bad value is one line naming the
    setting (``worker_num must be >= 1, got 0``) whatever the TARGET.
    """
    given = vars(args)
    return {s.name: s.validate(s.name, given[s.name]) for s in SETTINGS if s.name in given}


def render_serve_options() -> str:
    """The Markdown table of ``swoolish serve`` options in docs/cli.md, so it never goes stale.

    ``tests/unit/test_cli_help.py`` fails when the table between the ``serve-options``
    markers in docs/cli.md differs from this.
    """
    lines = ["| option | overrides setting | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        meaning = _meaning(s.doc, s.choices, s.default_text)
        lines.append(f"| {_option_cell(s)} | `{s.name}` | {meaning} |")
    return "\n".join(lines) + "\n"


def _option_cell(setting: Setting) -> str:
    if setting.kind == "bool":
        return ", ".join(f"`{flag}`" for flag in setting.flags)
    return f"`{setting.cli} {setting.metavar}`"


def _meaning(doc: str, choices: Sequence[str], default: str) -> str:
    one_of = f" One of {', '.join(f'`{c}`' for c in choices)}." if choices else ""
    return f"{doc}{one_of} Default: `{default}`."


def _add_pid_file(parser: argparse.ArgumentParser) -> None:
    """Which master: ``--pid-file`` or ``--port`` (docs/cli.md, "Which master")."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--pid-file",
        dest="pid_file",
        help="the master's pid file (default: the only swoolish master of your user)",
    )
    which.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="the master of your user listening on this TCP port",
    )


#: The longest --timeout: a socket's timeout past about 9.2e9 s overflows.
MAX_TIMEOUT = 10**9


def _add_timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout",
        type=_timeout_seconds,
        default=default,
        metavar="SECONDS",
        help=f"seconds to wait (default {default:g})",
    )


def _timeout_seconds(text: str) -> float:
    """``--timeout``: seconds > 0, at most MAX_TIMEOUT, checked before any master is
    asked. ``nan``, ``inf`` and ``1e300`` were tracebacks of the control socket's
    settimeout after the request had been sent (a ``stop`` then stopped the master all
    the same), and a negative one reported "no reply within -1s"."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < seconds <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds > 0 and at most {MAX_TIMEOUT} (finite), got {text!r}"
        )
    return seconds


def _serve(args: argparse.Namespace) -> int:
    problem = unsupported_platform()
    if problem:  # before the app is loaded: nothing would run it
        print(f"swoolish: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # Precedence: command line > environment > the app's code > default (docs/settings.md).
    overrides = {**settings_from_environ(os.environ), **serve_overrides(args)}
    for name in unknown_environ_names(os.environ):
        print(f"swoolish: warning: {name} names no setting; ignored", file=sys.stderr)
    spec = loader.parse_target(args.target)
    # Logging as the command line and the environment say, before the app's code runs:
    # what it prints while it loads goes through the log (docs/deployment.md, "Logs").
    early = _log_setup(Settings(overrides))
    configure_logging(*early)
    capture_print()
    with loader.warn_if_import_hangs(spec):
        server = loader.load(spec, WebSocketServer)
    server.settings.update(overrides)
    if _log_setup(server.settings) != early:  # the app's code chose its own
        configure_logging(*_log_setup(server.settings))
    return serve(server, spec, overrides)


def _log_setup(settings: Settings) -> tuple[str, str, str | None]:
    """The arguments of configure_logging: log_level, log_format, log_config."""
    return settings.log_level, settings.log_format, settings.log_config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "reload":
            return commands.reload(args.pid_file, args.wait, args.timeout, port=args.port)
        if args.command == "stop":
            return commands.stop(args.pid_file, args.timeout, port=args.port)
        if args.command == "status":
            return commands.status(args.pid_file, args.json, args.timeout, port=args.port)
    except commands.CommandError as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        return exc.exit_code
    except (TargetError, SettingError) as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `swoolish status --json | head`
        sys.stderr.close()
        return 0
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
