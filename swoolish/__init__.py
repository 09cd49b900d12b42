"""swoolish: Swoole's server model for Python.

A master process forks worker processes over one shared listening socket; each worker
runs a uvloop event loop serving WebSocket and HTTP clients, with Swoole's Timer API.

The package is layered; each layer imports only from the layers below it, and
``tests/unit/test_layers.py`` fails on any import that runs upwards or in a circle:

1. ``core``: pure logic and data, no asyncio, sockets or clock reads (frame rules and
   close codes, the message catalogue between processes, the reload plan, the
   switchboard, the timer wheel, settings, events, errors).
2. ``shared``: what the master and the workers both use (framed channels, the shared
   session table, session ids, logging set-up, the app's Table and Atomic).
3. ``worker`` and ``master``: the two sides, which never import each other.
4. ``loader``, ``launch`` and ``server`` (``WebSocketServer``, what the app holds).
5. ``cli``, and this package's public names.
"""

from __future__ import annotations

from .core.errors import SettingError, SwoolishError, TargetError, TaskError, TaskQueueFull
from .core.frames import BINARY, TEXT
from .server import WebSocketServer
from .shared.memory import Atomic, Table, TableFull
from .worker.request import Request, Response
from .worker.timers import Timer
from .worker.userprocess import UserProcess
from .worker.websocket import Frame

__all__ = [
    "BINARY",
    "TEXT",
    "Atomic",
    "Frame",
    "Request",
    "Response",
    "SettingError",
    "SwoolishError",
    "Table",
    "TableFull",
    "TargetError",
    "TaskError",
    "TaskQueueFull",
    "Timer",
    "UserProcess",
    "WebSocketServer",
]

__version__ = "0.1.0"
