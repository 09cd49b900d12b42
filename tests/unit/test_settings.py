from __future__ import annotations

import math
from pathlib import Path

import pytest

from swoolish import SettingError, WebSocketServer
from swoolish.core.settings import (
    KINDS,
    SETTINGS,
    Setting,
    Settings,
    render_reference,
    settings_from_environ,
)

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
        ("worker_num", 10_000_000, "worker_num must be at most .* per CPU"),
        ("task_worker_num", 10_000_000, "task_worker_num must be at most .* per CPU"),
        ("port", 70000, "between 0 and 65535"),
        ("max_wait_time", -1, "must be > 0"),
        ("log_level", "loud", "must be one of"),
        ("websocket_compression", "yes", "true or false"),
    ],
)
def test_bad_values_say_what_is_wrong(name, value, fragment):
    with pytest.raises(SettingError, match=fragment):
        Settings({name: value})


SECONDS = [s.name for s in SETTINGS if s.kind == "seconds"]


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [math.inf, 10**400], ids=["inf", "int-past-float"])
def test_seconds_must_be_finite(name, value):
    """Every number-of-seconds setting refuses inf, which had passed its >= 0 / > 0
    check and meant "never"; an int past the largest float was an OverflowError."""
    with pytest.raises(SettingError, match=f"^{name} must be a finite number of seconds, got "):
        Settings({name: value})
    assert Settings({name: 1e9}).as_dict()[name] == 1e9  # large but finite: taken


def test_seconds_settings_are_the_ones_expected():
    """SECONDS above is not empty by accident (a kind renamed)."""
    assert {"max_wait_time", "heartbeat_check_interval", "handshake_timeout"} <= set(SECONDS)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.kind == "list"], ids=lambda s: s.name)
def test_an_empty_item_of_a_list_variable_names_the_variable(setting):
    """SWOOLISH_RELOAD_DIRS=a,,b (any list): one line naming the variable; before, the
    empty item was dropped."""
    with pytest.raises(SettingError) as refused:
        settings_from_environ({setting.env: "a,,b"})
    assert str(refused.value) == (
        f"{setting.env}='a,,b': 'a,,b' has an empty item; write a comma-separated list "
        "without empty items, such as a,b"
    )


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


def test_cli_flags_keep_their_spellings_and_derive_the_rest():
    kept = {
        "host": "--host",
        "port": "--port",
        "worker_num": "--workers",
        "max_wait_time": "--max-wait-time",
        "pid_file": "--pid-file",
        "log_level": "--log-level",
        # as uvicorn spells them
        "ssl_cert_file": "--ssl-certfile",
        "ssl_key_file": "--ssl-keyfile",
        "ssl_ca_file": "--ssl-ca-certs",
        "reload_on_change": "--reload",
        "reload_dirs": "--reload-dir",
        "task_worker_num": "--task-workers",
    }
    for setting in SETTINGS:
        assert setting.cli == kept.get(setting.name, "--" + setting.name.replace("_", "-"))
    flags = [flag for setting in SETTINGS for flag in setting.flags]
    assert len(flags) == len(set(flags))


def test_every_setting_says_how_the_cli_spells_its_value():
    by_name = {setting.name: setting for setting in SETTINGS}
    assert by_name["reload_handoff"].flags == ("--reload-handoff", "--no-reload-handoff")
    assert by_name["max_wait_time"].kind == "seconds"
    assert by_name["pid_file"].kind == "path"
    assert by_name["log_level"].choices == ("debug", "info", "warning", "error", "critical")
    for setting in SETTINGS:
        assert setting.kind in KINDS
        assert (setting.kind == "bool") == (setting.parse is None)
        assert bool(setting.metavar) == (setting.kind != "bool"), setting.name
        if setting.default not in (None, ()) and setting.parse is not None:
            # The default, written out on the command line, parses back to itself.
            assert setting.validate(setting.name, setting.parse(setting.default_text)) == (
                setting.default
            )


def test_a_setting_whose_default_says_no_kind_must_declare_one():
    with pytest.raises(ValueError, match="declare its kind"):
        Setting("socket_path", None, lambda name, value: value, "Unix socket.")
    assert Setting("socket_path", None, lambda n, v: v, "Unix socket.", kind="path").cli == (
        "--socket-path"
    )
