"""``swoolish serve --reload``: a watcher process tells the master when the app's files
change, and the master runs its ordinary rolling reload (docs/quickstart.md,
"Developing with --reload").

The watcher is a process of its own, started by the master at start and stopped by pid
when it exits. Not a thread of the master: the master forks workers, and a fork copies
only the forking thread, with whatever locks the others held. It is a fresh
interpreter (``subprocess``: fork and exec), so it holds none of the master's
descriptors (the listening socket, the control socket, the pid file's lock), and it
dies with the master (``PR_SET_PDEATHSIG``, as the workers do).

It watches with watchfiles (the optional dependency ``swoolish[reload]``) the files a
save of the app changes: ``*.py``, ``*.html``, ``*.js`` and ``*.css``, ignoring
``__pycache__``, ``.git``, virtualenvs and editor temporaries (watchfiles'
``DefaultFilter``). watchfiles gathers the changes of one save (an editor may write,
rename and delete several files for it) into one batch, so one save is one reload.

It talks to the master in text lines on its stdout, a pipe the master reads from its
selector: ``ready`` once it watches, then one ``changed`` line per batch, the changed
paths after it, tab-separated.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from setproctitle import setproctitle

__all__ = ["SUFFIXES", "Watcher", "available", "main", "missing_message", "parse"]

SUFFIXES = (".py", ".html", ".js", ".css")  # what a save of the app changes
TICK_MS = 500  # the watcher wakes this often, to notice a master that is gone
STOP_TIMEOUT = 2.0  # seconds the watcher gets to exit after SIGTERM
_PR_SET_PDEATHSIG = 1


def available() -> bool:
    """Whether watchfiles can be imported (``pip install 'swoolish[reload]'``)."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


def missing_message() -> str:
    """The one line ``--reload`` exits 2 with when watchfiles cannot be imported."""
    return "--reload needs watchfiles: pip install watchfiles (or pip install 'swoolish[reload]')"


# ---------------------------------------------------------------------- the master's side


class Watcher:
    """The master's handle on its watcher process: a pipe to read, a pid to stop."""

    def __init__(self, dirs: Sequence[str]) -> None:
        self.dirs = tuple(dirs)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        path = os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, path) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(os.getpid()), *self.dirs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        self.pipe = self.proc.stdout.fileno()
        os.set_blocking(self.pipe, False)
        self._buffer = b""
        self.closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.pipe

    def read(self) -> list[str] | None:
        """The complete lines the watcher wrote since the last read; None once it is
        gone (end of file)."""
        try:
            chunk = os.read(self.pipe, 65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def stop(self) -> None:
        """Stop the watcher by its pid (SIGTERM, then SIGKILL) and collect it."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        self.forget()

    def forget(self) -> None:
        """Close our end of the pipe without touching the process (a forked worker's
        copy, or after the watcher is gone)."""
        self.closed = True
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


def parse(line: str) -> tuple[str, list[str]]:
    """A line of the watcher: its kind (``ready``, ``changed``) and the paths after it."""
    kind, *paths = line.split("\t")
    return kind, paths


# ---------------------------------------------------------------------- the watcher process

#: What the watcher runs (``python -c``): imported this way, the module is not run as
#: ``__main__`` a second time.
_BOOT = "import sys; from swoolish.master.watch import main; sys.exit(main(sys.argv[1:]))"


def main(argv: Sequence[str]) -> int:
    """The watcher process: ``MASTER_PID DIR...``; exits when the master is gone."""
    master_pid, dirs = int(argv[0]), list(argv[1:])
    _die_with_master(master_pid)
    setproctitle(f"swoolish: watcher {' '.join(dirs)} (master {master_pid})")
    try:
        import watchfiles
    except ImportError:
        print(f"swoolish: {missing_message()}", file=sys.stderr, flush=True)
        return 2
    accept = _source_filter(watchfiles.DefaultFilter())
    ready = False
    try:
        for changes in watchfiles.watch(
            *dirs,
            watch_filter=accept,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if os.getppid() != master_pid:
                return 0
            if not ready:
                ready = True
                _say("ready")
            if changes:
                _say("\t".join(["changed", *sorted({_name(path, dirs) for _, path in changes})]))
    except (OSError, RuntimeError) as exc:  # a directory gone, no inotify watches left
        print(f"swoolish: --reload: the file watcher failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _die_with_master(master_pid: int) -> None:
    """SIGTERM when the master dies (even by SIGKILL); gone already: exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != master_pid:
        sys.exit(0)


def _source_filter(default: Callable[[Any, str], bool]) -> Callable[[Any, str], bool]:
    """Files a save of the app changes (``SUFFIXES``), minus what watchfiles ignores by
    default (``__pycache__``, ``.git``, editor temporaries …)."""

    def accept(change: Any, path: str) -> bool:
        return path.endswith(SUFFIXES) and default(change, path)

    return accept


def _name(path: str, dirs: Sequence[str]) -> str:
    """``path`` relative to the watched directory that holds it, for the log line."""
    for directory in dirs:
        root = os.path.join(os.path.realpath(directory), "")
        real = os.path.realpath(path)
        if real.startswith(root):
            return real[len(root) :]
    return path


def _say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the master is gone
        sys.exit(0)
