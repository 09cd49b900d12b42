"""What a booting worker tells the master when it cannot serve: why, and where.

A reload whose new worker fails to boot is rolled back (docs/reload.md); "exit status
3" would leave the operator to dig the cause out of the log. So a worker that cannot
boot sends :class:`BootFailed` (the exception, and the file:line of the innermost frame
of the app's own code) before it exits, and a worker still booting shortly before
``worker_start_timeout`` sends :class:`BootStalled` (the line it is at). The master puts
either into the reload's result: its log line and ``swoolish reload --wait``.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
import threading
import traceback
from types import FrameType

from ..core.errors import TargetError
from ..core.messages import BootFailed, BootStalled
from ..shared import ipc

__all__ = ["BootWatch", "boot_failure", "innermost_app_frame"]

MAX_ERROR = 300  # characters of an exception's message kept for the one-line cause
STALL_MARGIN = 0.5  # seconds before the master's start deadline the watch reports


def _library_dirs() -> tuple[str, ...]:
    """Where code that is not the app's lives: the installation's libraries and
    swoolish itself (a frame there is not where the app went wrong)."""
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # swoolish
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def _is_app_file(filename: str, library: tuple[str, ...]) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    return not os.path.realpath(filename).startswith(library)


def innermost_app_frame(frames: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame of the app's own code in ``frames`` (outermost first); None
    when none is (swoolish's own frames would point the reader away from the app)."""
    library = _library_dirs()
    for frame in reversed(frames):
        if _is_app_file(frame.filename, library):
            return frame
    return None


def _shown(filename: str, lineno: int | None) -> str:
    """``file:line``, the file relative to the working directory when it is below it."""
    path = os.path.abspath(filename)
    cwd = os.path.join(os.getcwd(), "")
    return f"{path[len(cwd) :] if path.startswith(cwd) else path}:{lineno}"


def boot_failure(exc: BaseException) -> BootFailed:
    """The report of a worker that cannot boot because of ``exc``.

    The loader wraps what the app's import raised in a ``TargetError``; the app's own
    exception is the one described. A ``SyntaxError`` points at its own file and line.
    """
    if isinstance(exc, TargetError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc.msg if isinstance(exc, SyntaxError) else exc)
    if len(text) > MAX_ERROR:
        text = text[: MAX_ERROR - 1] + "…"
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return BootFailed(error, _shown(exc.filename, exc.lineno))
    frame = innermost_app_frame(traceback.extract_tb(exc.__traceback__))
    return BootFailed(error, _shown(frame.filename, frame.lineno) if frame else "")


def stall_delay(start_timeout: float) -> float:
    """When the watch reports: shortly before the master's deadline, so the report is
    there when the master rolls the reload back."""
    return max(start_timeout / 2, start_timeout - STALL_MARGIN)


class BootWatch:
    """Reports where this worker is, if it is still booting after ``seconds``.

    A thread, because the one that would report is the stuck one (in the app's import
    or its ``worker_start``). It sends one packet on the channel's socket with
    ``ipc.send_packet``, never through the ``Channel``, whose queue belongs to the main
    thread.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self.seconds = seconds
        self._main = threading.get_ident()
        self._timer = threading.Timer(seconds, self._report)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        """Booted (or failed and said why): nothing to report."""
        self._timer.cancel()

    def _report(self) -> None:
        frame: FrameType | None = sys._current_frames().get(self._main)
        if frame is None:
            return
        summary = innermost_app_frame(traceback.extract_stack(frame))
        if summary is None:
            return
        where = _shown(summary.filename, summary.lineno)
        ipc.send_packet(self.sock, BootStalled(self.seconds, summary.line or "", where))
