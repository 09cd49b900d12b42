from __future__ import annotations

from pathlib import Path

import pytest

from swoolish import SettingError, WebSocketServer
from swoolish.core.settings import SETTINGS, Settings, render_reference

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_defaults_are_valid_and_documented():
    settings = Settings()
    for setting in SETTINGS:
        assert getattr(settings, setting.name) == setting.default
        assert setting.doc.endswith(".")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("worker_num", 0, "worker_num must be >= 1"),
        ("worker_num", "4", "positive integer"),
        ("port", 70000, "between 0 and 65535"),
        ("max_wait_time", -1, "must be > 0"),
        ("log_level", "loud", "must be one of"),
        ("websocket_compression", "yes", "true or false"),
    ],
)
def test_bad_values_say_what_is_wrong(name, value, fragment):
    with pytest.raises(SettingError, match=fragment):
        Settings({name: value})


def test_unknown_setting_lists_known_ones():
    with pytest.raises(SettingError, match=r"unknown setting 'worker_count'.*worker_num"):
        WebSocketServer(worker_count=4)


def test_server_set_validates():
    server = WebSocketServer()
    server.set(worker_num=3)
    assert server.settings.worker_num == 3
    with pytest.raises(SettingError):
        server.set(max_connections=0)


def test_settings_reference_in_docs_is_current():
    """docs/settings.md is generated; regenerate with python -m swoolish.core.settings."""
    assert DOCS.read_text() == render_reference()
