"""swoolish: Swoole's server model for Python.

A master process forks worker processes over one shared listening socket; each worker
runs a uvloop event loop serving WebSocket and HTTP clients, with Swoole's Timer API.
"""

from __future__ import annotations

from .connection import BINARY, TEXT, Frame
from .errors import SettingError, SwoolishError, TargetError
from .http import Request, Response
from .server import WebSocketServer
from .timers import Timer

__all__ = [
    "BINARY",
    "TEXT",
    "Frame",
    "Request",
    "Response",
    "SettingError",
    "SwoolishError",
    "TargetError",
    "Timer",
    "WebSocketServer",
]

__version__ = "0.1.0"
