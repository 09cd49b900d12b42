"""Logging to stderr, the same in the master and every worker: text lines or JSON objects.

Or, with ``log_config``, whatever a logging configuration file says. ``print()`` in the
app's code goes through the log too (:class:`PrintToLog`), so every line of output has a
time and a pid (docs/deployment.md, "Logs").
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import logging.config
import os
import sys
import time
from typing import Any, TextIO

from ..core.errors import SettingError
from ..core.settings import LOG_FORMATS

__all__ = [
    "ACCESS_LOGGER",
    "EXTRA_FIELDS",
    "LOG_FORMATS",
    "PRINT_LOGGER",
    "JsonFormatter",
    "PrintToLog",
    "capture_print",
    "configure_logging",
]

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "swoolish.access"  # one record per HTTP request, WebSocket open and close
PRINT_LOGGER = "swoolish.print"  # one record per line the app's code prints

#: Attributes a record may carry (``extra=``) that the JSON formatter writes as fields of
#: their own: those of the access log (docs/deployment.md, "Logs").
EXTRA_FIELDS = (
    "event",
    "client",
    "method",
    "path",
    "http_version",
    "status",
    "bytes",
    "duration_ms",
    "close_code",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, message, the record's
    :data:`EXTRA_FIELDS` (the access log's client, status …) and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = record.__dict__
        for name in EXTRA_FIELDS:
            if name in attributes:
                entry[name] = attributes[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 with milliseconds and the UTC offset: 2024-05-01T12:00:00.123+02:00."""
        local = time.localtime(record.created)
        offset = time.strftime("%z", local)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
        return f"{stamp}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}"


def configure_logging(level: str, log_format: str = "text", log_config: str | None = None) -> None:
    """Log to stderr: ``text`` lines with time, pid and logger name, or ``json`` objects.

    With ``log_config``, that file configures logging instead (``level`` and
    ``log_format`` then do not apply); a file that is missing or invalid is a
    :class:`SettingError`, so the server stops with one line before anything forks.
    ``server.start()`` scripts call this with the default, text.
    """
    if log_config is not None:
        apply_log_config(log_config)
        return
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        handlers=[handler],
        force=True,
    )


def apply_log_config(path: str) -> None:
    """Configure logging from ``path``: a ``.json`` file holds a ``logging.config.dictConfig``
    dictionary, any other file is a ``logging.config.fileConfig`` (INI) file.

    Loggers that exist already (swoolish's own) stay enabled unless the file says
    otherwise: ``disable_existing_loggers`` is False by default here.
    """
    if not os.path.isfile(path):
        raise SettingError(f"cannot use log config {path}: no such file")
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                config = json.load(file)
            if not isinstance(config, dict):
                raise ValueError("a .json log config holds one object (a dictConfig dict)")
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as exc:
        raise SettingError(f"cannot use log config {path}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """One line: what failed, and the cause logging.config chained to it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
    return " ".join(text.split())


class PrintToLog(io.TextIOBase):
    """``sys.stdout`` in swoolish's processes: each complete line printed becomes one
    INFO record of the ``swoolish.print`` logger, with the time and pid every record
    has (as text or JSON), instead of a bare line that says neither.

    A partial line waits for its end, or for :meth:`finish` at exit. What is written
    while a line is being logged (by a logging handler on ``sys.stdout``, or by another
    thread meanwhile) goes to the real stream, so a handler on stdout cannot recurse.
    Standard error is left alone (tracebacks keep their own lines).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream  # the real standard output
        self._logger = logging.getLogger(PRINT_LOGGER)
        self._partial = ""
        self._logging = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if self._logging:  # a handler writing to sys.stdout: not through the log again
            return self.stream.write(text)
        if "\n" not in text:
            self._partial += text
            return len(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        """Flush the real stream (what handlers wrote there); a partial line still waits
        for its end (one line, one record)."""
        with contextlib.suppress(ValueError, OSError):  # closed or gone: nothing to lose
            self.stream.flush()

    def finish(self) -> None:
        """Log the partial line left, if any: at the exit of the process."""
        if self._partial:
            line, self._partial = self._partial, ""
            self._emit([line])

    def _emit(self, lines: list[str]) -> None:
        self._logging = True
        try:
            for line in lines:
                self._logger.info(line)
        finally:
            self._logging = False


def capture_print() -> PrintToLog:
    """Replace ``sys.stdout`` with a fresh :class:`PrintToLog` over the real stream.

    Called in the master before the app is loaded and in each worker after the fork
    (a fresh one: nothing the master had not finished is printed twice). The master's
    partial line is logged at exit; a worker calls :meth:`PrintToLog.finish` itself,
    as it leaves through ``os._exit``.
    """
    current = sys.stdout
    stream = current.stream if isinstance(current, PrintToLog) else current
    writer = PrintToLog(stream)
    sys.stdout = writer
    atexit.register(writer.finish)
    return writer
