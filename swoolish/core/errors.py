"""The one exception hierarchy of swoolish.

User mistakes raise at the call, with a message that says what to do.
"""

from __future__ import annotations

__all__ = ["SettingError", "SwoolishError", "TargetError"]


class SwoolishError(Exception):
    """Base class of every error swoolish raises on purpose."""


class SettingError(SwoolishError, ValueError):
    """A setting has a bad value; raised before anything is forked."""


class TargetError(SwoolishError):
    """``swoolish serve TARGET`` names something that cannot be loaded."""
