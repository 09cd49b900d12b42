"""The ``swoolish`` command line (``bin/swoolish``, ``python -m swoolish``).

A bad TARGET or setting prints one line that says what is wrong and how to fix it,
and exits with status 2 before anything is bound or forked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import commands, loader
from .errors import SettingError, TargetError

__all__ = ["configure_logging", "main"]

EXIT_USAGE = 2

SERVE_EXAMPLES = """\
examples:
  swoolish serve examples/ticker.py:server --port 9501
  swoolish serve myapp:server --workers 4 --pid-file /tmp/swoolish.pid
"""


def configure_logging(level: str) -> None:
    """Log lines to stderr, each with time, pid and logger name."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swoolish",
        description="Swoole's server model for Python: prefork uvloop WebSocket/HTTP workers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a server in the foreground",
        description="Run the app's server in the foreground; logs go to stderr. "
        "Options given here override the values the app's code sets.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("target", metavar="TARGET", help="module:attr or path/to/file.py:attr")
    serve.add_argument("--host", help="address to listen on (default: the app's, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: the app's, 9501)")
    serve.add_argument("--workers", type=int, dest="worker_num", help="worker processes")
    serve.add_argument("--max-wait-time", type=float, dest="max_wait_time", help="drain seconds")
    serve.add_argument("--pid-file", dest="pid_file", help="file to write the master's pid to")
    serve.add_argument(
        "--log-level",
        dest="log_level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging threshold (default: info)",
    )
    reload = commands.add_parser(
        "reload",
        help="rolling reload of every worker (new code from disk)",
        description="Send SIGUSR1 to the master. With --wait, follow the reload worker by "
        "worker and exit 0 when it completed, 1 when it was rolled back or timed out.",
        epilog="examples:\n  swoolish reload --pid-file /tmp/swoolish.pid --wait\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(reload)
    reload.add_argument("--wait", action="store_true", help="follow the reload to its end")
    _add_timeout(reload, 30.0)
    stop = commands.add_parser(
        "stop",
        help="graceful shutdown (SIGTERM), waiting for the master to exit",
        epilog="examples:\n  swoolish stop --pid-file /tmp/swoolish.pid --timeout 10\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(stop)
    _add_timeout(stop, 15.0)
    status = commands.add_parser(
        "status",
        help="the master and each worker: pid, generation, state, connections, RSS, CPU",
        epilog="examples:\n  swoolish status\n  swoolish status --json | jq .workers\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_pid_file(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_timeout(status, 5.0)
    return parser


def _add_pid_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pid-file",
        dest="pid_file",
        help="the master's pid file (default: the only swoolish master running)",
    )


def _add_timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout", type=float, default=default, help=f"seconds to wait (default {default:g})"
    )


def _serve(args: argparse.Namespace) -> int:
    from .master import serve

    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("host", "port", "worker_num", "max_wait_time", "pid_file", "log_level")
        if getattr(args, name) is not None
    }
    spec = loader.parse_target(args.target)
    server = loader.load(spec)
    server.settings.update(overrides)
    configure_logging(server.settings.log_level)
    return serve(server, spec, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "reload":
            return commands.reload(args.pid_file, args.wait, args.timeout)
        if args.command == "stop":
            return commands.stop(args.pid_file, args.timeout)
        if args.command == "status":
            return commands.status(args.pid_file, args.json, args.timeout)
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
