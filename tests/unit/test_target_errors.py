"""A TARGET that names no server says which module-level servers there are."""

from __future__ import annotations

import pytest
from support import run_cli, write_app

from swoolish import WebSocketServer, loader
from swoolish.core.errors import TargetError

TWO_SERVERS = """
    from swoolish import WebSocketServer

    app = WebSocketServer()
    ws = WebSocketServer(port=9502)
"""


def load_error(path, target: str) -> str:
    with pytest.raises(TargetError) as raised:
        loader.load(loader.parse_target(target), WebSocketServer)
    return str(raised.value)


def test_no_attr_lists_the_servers_found(tmp_path):
    path = write_app(tmp_path, TWO_SERVERS, "two_servers.py")
    assert load_error(path, str(path)) == (
        f"{path} has no attribute 'server'; module-level servers found: app, ws (use {path}:app)"
    )


def test_no_server_at_all(tmp_path):
    path = write_app(tmp_path, "import swoolish\nvalue = 1\n", "no_server.py")
    assert load_error(path, f"{path}:value") == (
        f"{path}:value is of type int, not a swoolish.WebSocketServer; "
        "no WebSocketServer at module level"
    )
    assert load_error(path, str(path)) == (
        f"{path} has no attribute 'server'; no WebSocketServer at module level"
    )


def test_an_attr_that_is_no_server_lists_the_servers(tmp_path):
    path = write_app(tmp_path, TWO_SERVERS + "    handler = print\n", "with_handler.py")
    assert load_error(path, f"{path}:handler") == (
        f"{path}:handler is of type builtin_function_or_method, not a "
        f"swoolish.WebSocketServer; module-level servers found: app, ws (use {path}:app)"
    )


def test_serve_without_attr_is_one_line_and_exit_2(tmp_path):
    path = write_app(tmp_path, TWO_SERVERS, "app.py")
    result = run_cli("serve", "app.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"swoolish: {path} has no attribute 'server'; module-level servers found: app, ws "
        f"(use {path}:app)\n"
    )
