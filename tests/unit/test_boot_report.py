"""What a worker that cannot boot says (worker/boot.py), what --reload watches
(master/watch.py), and the counted nouns of log lines (core/words.py)."""

from __future__ import annotations

import os
import select
import socket
import sysconfig
import traceback
from pathlib import Path

import pytest
import watchfiles

import swoolish
from swoolish.core.errors import TargetError
from swoolish.core.messages import BootFailed, BootStalled
from swoolish.core.words import plural
from swoolish.master.watch import _source_filter, parse
from swoolish.shared import ipc
from swoolish.worker.boot import BootWatch, boot_failure, innermost_app_frame, stall_delay


@pytest.mark.parametrize(
    ("count", "noun", "many", "text"),
    [
        (0, "worker", None, "0 workers"),
        (1, "worker", None, "1 worker"),
        (2, "worker", None, "2 workers"),
        (1, "batch", "batches", "1 batch"),
        (3, "batch", "batches", "3 batches"),
    ],
)
def test_plural(count, noun, many, text):
    assert plural(count, noun, many) == text


def run_app(tmp_path: Path, source: str, name: str = "app.py") -> dict:
    """Execute ``source`` as the app file ``name`` in ``tmp_path`` (its frames are the
    app's), returning its namespace."""
    path = tmp_path / name
    path.write_text(source)
    namespace: dict = {"__name__": "app"}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


def failure_of(call) -> BaseException:
    with pytest.raises(BaseException) as caught:
        call()
    return caught.value


def test_an_exception_of_the_app_is_described_with_its_file_and_line(tmp_path):
    exc = failure_of(lambda: run_app(tmp_path, "x = 1\ny = x / 0\n"))
    report = boot_failure(exc)
    assert report == BootFailed("ZeroDivisionError: division by zero", f"{tmp_path}/app.py:2")


def test_the_line_is_the_apps_own_even_when_a_library_raised(tmp_path):
    exc = failure_of(lambda: run_app(tmp_path, "import json\n\njson.loads('{')\n"))
    report = boot_failure(exc)
    assert report.error.startswith("JSONDecodeError: Expecting property name")
    assert report.where == f"{tmp_path}/app.py:3"


def test_the_loaders_wrapper_is_seen_through(tmp_path):
    def load():
        try:
            run_app(tmp_path, "raise RuntimeError('cannot reach the database')\n")
        except Exception as exc:
            raise TargetError("app.py:server: importing the app raised …") from exc

    report = boot_failure(failure_of(load))
    assert report == BootFailed("RuntimeError: cannot reach the database", f"{tmp_path}/app.py:1")


def test_a_syntax_error_points_at_its_own_line(tmp_path):
    exc = failure_of(lambda: run_app(tmp_path, "import os\nserver = f(\n"))
    assert boot_failure(exc) == BootFailed(
        "SyntaxError: '(' was never closed", f"{tmp_path}/app.py:2"
    )


def test_a_file_below_the_working_directory_is_shown_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exc = failure_of(lambda: run_app(tmp_path, "\n\nraise KeyError('user')\n"))
    assert boot_failure(exc) == BootFailed("KeyError: 'user'", "app.py:3")


def test_frames_of_libraries_and_of_swoolish_are_not_the_apps(tmp_path):
    library = os.path.join(sysconfig.get_paths()["stdlib"], "json", "decoder.py")
    ours = os.path.join(os.path.dirname(swoolish.__file__), "shared", "tls.py")
    app = str(tmp_path / "app.py")
    frames = [(app, 3, "<module>", "load()"), (library, 355, "raw_decode", ""), (ours, 9, "f", "")]
    assert innermost_app_frame(traceback.StackSummary.from_list(frames)).filename == app
    assert innermost_app_frame(traceback.StackSummary.from_list(frames[1:])) is None
    # An error with no frame of the app (none at all, here) has no place to show.
    assert boot_failure(FileNotFoundError(2, "No such file or directory")) == BootFailed(
        "FileNotFoundError: [Errno 2] No such file or directory", ""
    )


def test_a_long_message_is_cut():
    report = boot_failure(ValueError("x" * 1000))
    assert len(report.error) < 400 and report.error.endswith("…")


def test_the_watch_reports_where_the_boot_is_stuck(tmp_path):
    """The main thread is stuck in the app's code; the watch, a thread, reports the
    app's line; a cancelled watch reports nothing."""
    master, worker = ipc.channel_pair()
    with master, worker:
        stuck = run_app(
            tmp_path,
            "import select\n"
            "def start(sock):\n"
            "    while not select.select([sock], [], [], 0.01)[0]:  # stuck until reported\n"
            "        pass\n",
        )
        watch = BootWatch(worker, 0.01)
        watch.start()
        stuck["start"](master)
        [(message, fds)] = ipc.Channel(master).receive()
        assert message == BootStalled(
            0.01,
            "while not select.select([sock], [], [], 0.01)[0]:  # stuck until reported",
            f"{tmp_path}/app.py:3",
        )
        assert fds == []

        cancelled = BootWatch(worker, 0.01)
        cancelled.start()
        cancelled.cancel()
        cancelled._timer.join()
        assert select.select([master], [], [], 0)[0] == []


def test_the_watch_reports_before_the_masters_deadline():
    assert stall_delay(10.0) == 9.5
    assert stall_delay(1.0) == 0.5
    assert all(stall_delay(t) < t for t in (0.2, 1.0, 3.0, 60.0))


def test_a_packet_that_does_not_fit_is_not_sent():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        big = BootFailed("x" * (ipc.FRAGMENT_BYTES + 1), "")
        assert ipc.send_packet(a, big) is False
        assert ipc.send_packet(a, BootFailed("small", "app.py:1")) is True
        [(message, _)] = ipc.Channel(b).receive()
        assert message == BootFailed("small", "app.py:1")


@pytest.mark.parametrize(
    ("path", "watched"),
    [
        ("/srv/app/app.py", True),
        ("/srv/app/templates/index.html", True),
        ("/srv/app/static/app.js", True),
        ("/srv/app/static/site.css", True),
        ("/srv/app/notes.txt", False),
        ("/srv/app/__pycache__/app.cpython-311.pyc", False),
        ("/srv/app/__pycache__/stray.py", False),
        ("/srv/app/.git/hooks/pre-commit.py", False),
        ("/srv/app/.venv/lib/site.py", False),
        ("/srv/app/.app.py.swp", False),
        ("/srv/app/app.py~", False),
        ("/srv/app/.#app.py", False),
        ("/srv/app/app.py.tmp", False),
    ],
)
def test_what_reload_watches(path, watched):
    accept = _source_filter(watchfiles.DefaultFilter())
    assert accept(watchfiles.Change.modified, path) is watched


def test_watcher_lines():
    assert parse("ready") == ("ready", [])
    assert parse("changed\tapp.py\tstatic/site.css") == ("changed", ["app.py", "static/site.css"])
