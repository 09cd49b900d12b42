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

from . import loader
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
    return parser


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
    except (TargetError, SettingError) as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
