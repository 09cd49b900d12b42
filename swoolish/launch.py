"""Starting a server: the master for an app, and the body of each worker it forks.

Both ways in meet here: ``swoolish serve TARGET`` (the CLI) and ``server.start()`` at the
bottom of a script. The master loads the app once, to read its settings and master
hooks; each worker loads it again after the fork, from the code on disk now, so a reload
runs new code (docs/reload.md).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from . import loader
from .core.errors import SettingError
from .core.settings import settings_from_environ
from .master.supervisor import Master
from .shared.logs import configure_logging
from .shared.setup import WorkerSetup
from .worker.process import App, run_worker

__all__ = ["run_script", "serve", "unsupported_platform"]

EXIT_USAGE = 2


def unsupported_platform() -> str | None:
    """Why this system cannot run a server (one line), or None on Linux.

    Checked before anything is loaded or bound, by ``swoolish serve`` and
    ``server.start()``: the master and workers rely on Linux alone (SO_PEERCRED on the
    control socket, SOCK_SEQPACKET channels carrying descriptors, PR_SET_PDEATHSIG).
    """
    if sys.platform.startswith("linux"):
        return None
    return f"swoolish needs Linux to serve; this system is {sys.platform!r}"


def serve(server: App, spec: loader.AppSpec, overrides: dict[str, Any]) -> int:
    """Run a master for ``server`` in this process; returns the exit code."""
    worker_main = functools.partial(_worker_main, spec, overrides, type(server))
    return Master(server, str(spec), worker_main).run()


def _worker_main(
    spec: loader.AppSpec, overrides: dict[str, Any], expected: type[App], setup: WorkerSetup
) -> int:
    def load_fresh_app() -> App:
        loader.purge_user_modules(loader.app_directory(spec))
        server = loader.load(spec, expected)
        server.settings.update(overrides)
        return server

    return run_worker(load_fresh_app, setup)


def run_script(server: App) -> None:
    """``server.start()``: the calling script becomes the app the workers re-import."""
    problem = unsupported_platform()
    if problem:
        print(f"swoolish: {problem}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        raise RuntimeError("server.start() must be called from a script file")
    attr = next((k for k, v in vars(main).items() if v is server), loader.ANY_SERVER)
    try:
        # The environment overrides the script's own settings (docs/settings.md).
        overrides = settings_from_environ(os.environ)
        server.settings.update(overrides)
        configure_logging(server.settings.log_level, server.settings.log_format)
        code = serve(server, loader.AppSpec("path", os.path.abspath(path), attr), overrides)
    except SettingError as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    sys.exit(code)
