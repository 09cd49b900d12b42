"""The ``Timer`` facade of a worker, and the production wheel on its uvloop loop.

The wheel itself (:class:`swoolish.core.timerwheel.TimerWheel`) is pure scheduling logic with
an injected clock; this module installs one per worker process and drives it with a single
``loop.call_at`` handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from ..core.timerwheel import SessionAlive, Spawn, TimerWheel

__all__ = ["Timer", "current", "install", "uninstall", "uvloop_wheel"]


# -- process-wide installation ---------------------------------------------------------------

_wheel: TimerWheel | None = None
_wheel_pid: int | None = None

_NOT_INSTALLED = (
    "swoolish.Timer can only be used inside a worker (after worker_start); "
    "no timer wheel is running in this process"
)


def install(wheel: TimerWheel) -> None:
    """Make ``wheel`` the one behind :class:`Timer` in this process (done at worker start)."""
    global _wheel, _wheel_pid
    _wheel = wheel
    _wheel_pid = os.getpid()


def uninstall() -> None:
    """Detach the installed wheel; :class:`Timer` calls raise until the next :func:`install`."""
    global _wheel, _wheel_pid
    _wheel = None
    _wheel_pid = None


def current() -> TimerWheel:
    """The wheel installed in this process.

    The pid check matters after ``fork``: a child inherits the parent's module globals, and a
    wheel belonging to the parent's loop would accept timers that never fire.
    """
    wheel = _wheel
    if wheel is None or _wheel_pid != os.getpid():
        raise RuntimeError(_NOT_INSTALLED)
    return wheel


class Timer:
    """Swoole's static Timer API, bound to the current worker's wheel."""

    __slots__ = ()

    @staticmethod
    def tick(ms: float, callback: Callable[..., Any], *args: Any, bind: int | None = None) -> int:
        """Repeat ``callback(timer_id, *args)`` every ``ms`` milliseconds; returns the id."""
        return current().tick(ms, callback, *args, bind=bind)

    @staticmethod
    def after(ms: float, callback: Callable[..., Any], *args: Any, bind: int | None = None) -> int:
        """Run ``callback(*args)`` once after ``ms`` milliseconds; returns the id."""
        return current().after(ms, callback, *args, bind=bind)

    @staticmethod
    def clear(timer_id: int) -> bool:
        """Cancel one timer; True if it was active."""
        return current().clear(timer_id)

    @staticmethod
    def clear_all() -> int:
        """Cancel every timer of this worker; returns how many were active."""
        return current().clear_all()

    @staticmethod
    def list() -> list[int]:
        """Active timer ids of this worker, ascending."""
        return current().list()

    @staticmethod
    def info(timer_id: int) -> dict[str, Any] | None:
        """Details of one active timer, or None."""
        return current().info(timer_id)

    @staticmethod
    def stats() -> dict[str, int]:
        """Timer counters of this worker."""
        return current().stats()

    # Swoole spelling.
    clearAll = clear_all


def uvloop_wheel(
    loop: asyncio.AbstractEventLoop,
    spawn: Spawn | None = None,
    session_alive: SessionAlive | None = None,
    logger: logging.Logger | None = None,
) -> TimerWheel:
    """Build the production wheel on ``loop``: clock ``loop.time`` and one ``call_at`` handle.

    The handle is only cancelled and rescheduled when the requested deadline actually changes,
    so adding timers that fire later than the earliest one costs the loop nothing.
    ``spawn`` defaults to ``loop.create_task``.
    """
    handle: asyncio.TimerHandle | None = None
    handle_when: float | None = None

    def fire() -> None:
        nonlocal handle, handle_when
        handle = None
        handle_when = None
        wheel.run_due()

    def wakeup(deadline: float | None) -> None:
        nonlocal handle, handle_when
        if handle is not None:
            if deadline == handle_when:
                return
            handle.cancel()
            handle = None
            handle_when = None
        if deadline is not None:
            handle = loop.call_at(deadline, fire)
            handle_when = deadline

    wheel = TimerWheel(
        clock=loop.time,
        wakeup=wakeup,
        # loop.time() steps in whole milliseconds (libuv's clock) and call_at rounds to them
        resolution=0.001,
        spawn=spawn if spawn is not None else loop.create_task,
        session_alive=session_alive,
        logger=logger,
    )
    return wheel
