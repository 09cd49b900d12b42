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
from .master import watch
from .master.supervisor import Master
from .shared import memory
from .shared.logs import capture_print, configure_logging
from .shared.setup import WorkerSetup
from .worker.process import App, Worker, run_worker
from .worker.taskworker import TaskWorker
from .worker.userprocess import UserProcessWorker

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
    watch_dirs = _watch_dirs(server, spec)
    worker_main = functools.partial(_worker_main, spec, overrides, type(server), watch_dirs)
    return Master(server, str(spec), worker_main, watch_dirs).run()


def _watch_dirs(server: App, spec: loader.AppSpec) -> tuple[str, ...]:
    """What ``--reload`` watches: ``reload_dirs``, else the app's directory; nothing
    without ``--reload``. Refused (one line, exit 2) before anything is bound when
    watchfiles is missing or a directory does not exist."""
    settings = server.settings
    if not settings.reload_on_change:
        return ()
    if not watch.available():
        raise SettingError(watch.missing_message())
    dirs = tuple(os.path.abspath(d) for d in settings.reload_dirs or (loader.app_directory(spec),))
    for directory in dirs:
        if not os.path.isdir(directory):
            raise SettingError(f"reload_dirs: {directory} is not a directory")
    return dirs


def _worker_main(
    spec: loader.AppSpec,
    overrides: dict[str, Any],
    expected: type[App],
    watch_dirs: tuple[str, ...],
    setup: WorkerSetup,
) -> int:
    """A forked worker: the app imported afresh, its own modules and those of the
    directories ``--reload`` watches (``watch_dirs``) purged first, so a save in any
    of them is what the new worker runs."""

    def load_fresh_app() -> App:
        memory.enter_worker()  # the app's Tables and Atomics attach to the master's
        loader.purge_user_modules(loader.app_directory(spec), watch_dirs)
        server = loader.load(spec, expected)
        server.settings.update(overrides)
        return server

    output = capture_print()  # print() in the app's code goes through the log
    try:
        return run_worker(load_fresh_app, setup, _worker_type(setup))
    finally:
        output.finish()  # a worker leaves through os._exit: no atexit for it


def _worker_type(setup: WorkerSetup) -> type[Worker]:
    """What the forked process runs: a task worker, a user process, or an event worker."""
    if setup.task_worker:
        return TaskWorker
    if setup.process_index is not None:
        return UserProcessWorker
    return Worker


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
        settings = server.settings
        configure_logging(settings.log_level, settings.log_format, settings.log_config)
        capture_print()  # what the master's hooks print goes through the log
        code = serve(server, loader.AppSpec("path", os.path.abspath(path), attr), overrides)
    except SettingError as exc:
        print(f"swoolish: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    sys.exit(code)
