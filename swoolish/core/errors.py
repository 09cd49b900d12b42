"""The one exception hierarchy of swoolish.

User mistakes raise at the call, with a message that says what to do.
"""

from __future__ import annotations

__all__ = ["SettingError", "SwoolishError", "TargetError", "TaskError", "TaskQueueFull"]


class SwoolishError(Exception):
    """Base class of every error swoolish raises on purpose."""


class SettingError(SwoolishError, ValueError):
    """A setting has a bad value; raised before anything is forked."""


class TargetError(SwoolishError):
    """``swoolish serve TARGET`` names something that cannot be loaded."""


class TaskError(SwoolishError):
    """A task got no result: its task worker died, or stopped before running it, or the
    server is shutting down (docs/tasks.md)."""


class TaskQueueFull(TaskError):
    """Every task worker holds ``task_queue_size`` tasks: ``taskwait()`` raises it where
    ``task()`` returns False (docs/tasks.md)."""
