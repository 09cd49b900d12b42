"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the harness module, and swoolish from this checkout


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for cluster-mode tests (Debian's; .ci/run installs it)."""
    from support import REDIS_SERVER, RedisServer

    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"{REDIS_SERVER} not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
