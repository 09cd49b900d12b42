"""``swoolish serve --reload`` (docs/quickstart.md, "Developing with --reload"): a
developer edits, breaks and fixes the app while a client stays connected."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from support import ROOT, serving, timeout, wait_until, write_app

APP = """
    from swoolish import WebSocketServer
    server = WebSocketServer()
    VERSION = {version!r}

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, f"{{VERSION}} {{frame.fd}}")
"""

SYNTAX_ERROR = "from swoolish import WebSocketServer\nserver = WebSocketServer(\n"
RAISES_AT_IMPORT = (
    "from swoolish import WebSocketServer\nserver = WebSocketServer()\nVERSION = 1 / 0\n"
)
FILES = r"\(\S*app\.py:(\d+)\)"


def ask(ws) -> tuple[str, str]:
    """The version that answers on this connection, and the session id it answers for."""
    ws.send("version?")
    version, sid = ws.recv(timeout=timeout(5)).split()
    return version, sid


def save_like_an_editor(path, text: str) -> None:
    """Write a temporary file next to ``path``, then rename it over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(textwrap.dedent(text))
    os.replace(temporary, path)


def reloads(log: str) -> list[str]:
    """What each reload the watcher started was for, in order."""
    return re.findall(r"\] INFO swoolish\.master: (.*) changed: reload to generation", log)


def test_edit_break_fix_with_a_client_connected(tmp_path):
    """1. v1 served with --reload, a client connected  2. saved v2: the same connection
    (same session, never closed) is answered by v2  3. a save with a syntax error, then
    one that raises at import: each is rolled back, the log line gives the cause and
    file:line, and the client is still answered by v2  4. the fixed v3, saved through a
    temporary file and a rename: v3 answers on the same connection  5. files that are
    not the app's (a .txt, a .py in __pycache__, the .pyc files of the imports) start no
    reload; a .css does  6. one save, one reload."""
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, "--reload") as server:
        server.wait_for_log(rf"watching {re.escape(str(tmp_path))} for changes")
        with server.connect() as ws:
            version, sid = ask(ws)
            assert version == "v1"

            write_app(tmp_path, APP.format(version="v2"))
            server.wait_for_log(r"reload to generation 2 complete")
            server.wait_for_log(r"worker 0 gen 1 \(pid \d+\) drained.* 1 moved to the new worker")
            assert ask(ws) == ("v2", sid)

            write_app(tmp_path, SYNTAX_ERROR)
            [line] = server.wait_for_log(
                r"reload to generation 3 rolled back after [\d.]+s: new worker 0 failed to "
                rf"boot: SyntaxError: '\(' was never closed {FILES}; generation 2 keeps serving"
            )
            assert line == "2"
            assert ask(ws) == ("v2", sid)

            write_app(tmp_path, RAISES_AT_IMPORT)
            [line] = server.wait_for_log(
                r"reload to generation 4 rolled back after [\d.]+s: new worker 0 failed to "
                rf"boot: ZeroDivisionError: division by zero {FILES}; generation 2 keeps serving"
            )
            assert line == "3"
            assert ask(ws) == ("v2", sid)

            save_like_an_editor(app, APP.format(version="v3"))
            server.wait_for_log(r"reload to generation 5 complete")
            server.wait_for_log(r"worker 0 gen 2 \(pid \d+\) drained.* 1 moved to the new worker")
            assert ask(ws) == ("v3", sid)

            (tmp_path / "notes.txt").write_text("not the app's\n")
            (tmp_path / "__pycache__").mkdir(exist_ok=True)
            (tmp_path / "__pycache__" / "stray.py").write_text("# not the app's either\n")
            (tmp_path / "style.css").write_text("body { color: black }\n")
            server.wait_for_log(r"reload to generation 6 complete")
            assert ask(ws) == ("v3", sid)
            assert ws.close_code is None  # never closed, by any of the six reloads

        log = server.log()
        # The watcher's batches arrive in order: an ignored file would have started a
        # reload of its own before the .css one, or been named with it.
        assert reloads(log) == ["app.py"] * 4 + ["style.css"]
        assert "reload to generation 7" not in log


LIBRARY_APP = """
    from swoolish import WebSocketServer
    from common import helper

    server = WebSocketServer()

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, f"{helper.VERSION} {frame.fd}")
"""


def test_a_save_in_a_reload_dir_outside_the_apps_directory_is_what_runs(tmp_path):
    """A project whose app (services/api/app.py) imports a module of another directory
    on PYTHONPATH (common/helper.py), watched with --reload-dir: a save of the helper
    starts a reload, and the new worker runs the saved helper. Before, the new worker
    kept the helper the master had imported at start: "helper.py changed: reload to
    generation 2 complete", and the client was still answered v1."""
    (tmp_path / "services" / "api").mkdir(parents=True)
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text("")
    helper = tmp_path / "common" / "helper.py"
    helper.write_text("VERSION = 'v1'\n")
    app = write_app(tmp_path / "services" / "api", LIBRARY_APP)
    dirs = f"{tmp_path / 'services'},{tmp_path / 'common'}"
    pythonpath = os.pathsep.join([str(ROOT), str(tmp_path)])
    with serving(
        f"{app}:server",
        tmp_path,
        "--reload",
        "--reload-dir",
        dirs,
        cwd=tmp_path,
        env={"PYTHONPATH": pythonpath},
    ) as server:
        server.wait_for_log(r"watching .* for changes")
        with server.connect() as ws:
            version, sid = ask(ws)
            assert version == "v1"
            save_like_an_editor(helper, "VERSION = 'v2'\n")
            server.wait_for_log(r"helper\.py changed: reload to generation 2 started")
            server.wait_for_log(r"worker 0 gen 1 \(pid \d+\) drained.* 1 moved to the new worker")
            assert ask(ws) == ("v2", sid)


def watcher_of(server) -> psutil.Process:
    def find():
        return next(
            (p for p in server.workers() if "swoolish: watcher" in " ".join(p.cmdline())), None
        )

    return wait_until(find, 10, what="the watcher process")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_watcher_goes_with_the_master(tmp_path, sig):
    """The watcher is stopped by pid when the master exits (SIGTERM), and dies with a
    master that is SIGKILLed (PR_SET_PDEATHSIG)."""
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, "--reload") as server:
        server.wait_for_log(r"watching .* for changes")
        watcher = watcher_of(server)
        server.signal(sig)
        _, alive = psutil.wait_procs([watcher], timeout=timeout(5))
        assert alive == []
        if sig == signal.SIGTERM:
            assert server.wait_exit() == 0
            assert "file watcher" not in server.log()  # its exit was expected


def test_without_watchfiles_reload_says_what_to_install(tmp_path):
    """watchfiles missing (an import of it fails): one line naming the package to
    install, exit status 2, nothing started."""
    stub = tmp_path / "stub" / "watchfiles"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named watchfiles')\n")
    app = write_app(tmp_path, APP.format(version="v1"))
    result = subprocess.run(
        [sys.executable, "-m", "swoolish", "serve", f"{app}:server", "--port", "0", "--reload"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent), str(ROOT)])),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "swoolish: --reload needs watchfiles: pip install watchfiles "
        "(or pip install 'swoolish[reload]')"
    ]


@pytest.mark.parametrize("given", [",", "a,,b", "a,", ""])
@pytest.mark.parametrize("where", ["option", "environment"])
def test_an_empty_reload_dir_is_refused_before_anything_is_forked(tmp_path, where, given):
    """--reload-dir (or SWOOLISH_RELOAD_DIRS) with an empty item, a and b being real
    directories: one line naming the option (or variable) and the text given, exit
    status 2, no worker and no watcher. Before, the empty items were dropped and the
    server served: ',' and '' left no directory, so the app's directory was watched."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app = write_app(tmp_path, APP.format(version="v1"))
    problem = "is empty" if given == "" else "has an empty item"
    error = f"{given!r} {problem}; write a comma-separated list without empty items, such as a,b"
    if where == "option":
        extra, env = ["--reload-dir", given], None
        expected = [
            f"swoolish serve: argument --reload-dir: {error}",
            "run 'swoolish serve --help' for the options",
        ]
    else:
        extra, env = [], {"SWOOLISH_RELOAD_DIRS": given}
        expected = [f"swoolish: SWOOLISH_RELOAD_DIRS={given!r}: {error}"]
    target = f"{app}:server"
    with serving(target, tmp_path, "--reload", *extra, cwd=tmp_path, env=env, wait=False) as server:
        try:
            code = server.wait_exit(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running with {where} {given!r}: {server.log()[-300:]}")
        assert code == 2
        assert server.log().splitlines() == expected
