"""Logging to stderr, the same in the master and every worker: text lines or JSON objects."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ..core.settings import LOG_FORMATS

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
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


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr: ``text`` lines with time, pid and logger name, or ``json`` objects.

    ``server.start()`` scripts call this with the default, text.
    """
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
