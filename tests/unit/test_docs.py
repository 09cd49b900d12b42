"""Every code sample in README.md and docs/*.md is checked.

``python`` blocks are compiled, then executed in a fresh namespace in which
``server.start()`` does nothing and ``Timer`` is backed by a real timer wheel on a
manual clock (as inside a worker), so registering handlers, bad event names, bad
settings and timer calls all run for real. A block may use a few names the prose gives
it (``frame``, ``callback`` …, see ``CONTEXT``). A block that can only run against a
live server says so with a ``# doctest: needs-server`` line, and is only compiled.

``swoolish`` command lines in ``sh``/``console`` blocks are parsed by the real
argument parser, so every documented option exists.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swoolish import Frame, Timer, WebSocketServer
from swoolish.cli import build_parser
from swoolish.core.frames import TEXT
from swoolish.worker import timers

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
NEEDS_SERVER = "# doctest: needs-server"


def blocks(languages: set[str]) -> list[tuple[str, str]]:
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in languages:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


PYTHON_BLOCKS = blocks({"python", "py"})
SHELL_BLOCKS = blocks({"sh", "shell", "bash"})
CONSOLE_BLOCKS = blocks({"console"})  # commands are the lines after "$ "


def test_every_doc_has_been_found():
    names = {path.name for path in DOC_FILES}
    assert {"README.md", "quickstart.md", "cli.md", "porting.md", "lifecycle.md"} <= names
    assert len(PYTHON_BLOCKS) >= 7


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def worker_like(monkeypatch: pytest.MonkeyPatch):
    """What a doc sample sees inside a worker: a Timer wheel; start() does nothing."""
    started: list[WebSocketServer] = []
    monkeypatch.setattr(WebSocketServer, "start", lambda self: started.append(self))
    clock = ManualClock()
    wheel = timers.TimerWheel(clock, lambda deadline: None)
    timers.install(wheel)
    try:
        yield SimpleNamespace(wheel=wheel, clock=clock, started=started)
    finally:
        timers.uninstall()


def context() -> dict[str, Any]:
    """The names doc fragments may use without defining them, as the prose explains."""
    server = WebSocketServer()
    return {
        "__name__": "__doc_sample__",
        "server": server,
        "Timer": Timer,
        "json": json,
        "frame": Frame(1, "hello", TEXT),
        "timer_id": 1,
        "callback": lambda *args: None,
        "push_price": lambda timer_id: None,
        "users": {1: "alice"},
    }


@pytest.mark.parametrize(("where", "source"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_sample_runs(where, source, worker_like):
    code = compile(source, where, "exec")
    if NEEDS_SERVER in source:
        return
    namespace = context()
    exec(code, namespace)
    # Handlers were registered under valid event names (else server.on raised above).
    servers = [v for v in namespace.values() if isinstance(v, WebSocketServer)]
    assert servers, f"{where}: the sample builds or uses no WebSocketServer"
    for name, value in namespace.items():
        if name.startswith("on_") and callable(value):
            assert any(value in s._handlers._handlers.values() for s in servers), (
                f"{where}: {name} is not registered as a handler"
            )


def test_samples_with_start_call_it_once(worker_like):
    for where, source in PYTHON_BLOCKS:
        if "server.start()" in source and NEEDS_SERVER not in source:
            worker_like.started.clear()
            exec(compile(source, where, "exec"), context())
            assert len(worker_like.started) == 1, where


def test_readme_sample_ticks_into_its_connection(worker_like):
    """The README's ticker really arms a timer bound to the frame's session."""
    where, source = next(b for b in PYTHON_BLOCKS if b[0].startswith("README.md"))
    namespace = context()
    namespace.pop("server")
    exec(compile(source, where, "exec"), namespace)
    server = namespace["server"]
    handler = server._handlers._handlers["message"]
    handler(server, Frame(7, "go", TEXT))
    (timer_id,) = Timer.list()
    info = Timer.info(timer_id)
    assert info["bind"] == 7 and info["interval"] == 1000


def swoolish_command_lines() -> list[tuple[str, list[str]]]:
    commands = []
    lines = [(where, line.strip()) for where, src in SHELL_BLOCKS for line in src.splitlines()]
    lines += [
        (where, line[2:].strip())
        for where, src in CONSOLE_BLOCKS
        for line in src.splitlines()
        if line.startswith("$ ")
    ]
    for where, line in lines:
        for prefix in ("bin/swoolish ", "python -m swoolish ", "swoolish "):
            if line.startswith(prefix):
                # Drop what the shell handles: comments, pipes, redirections.
                rest = re.split(r"\s+(?:#|\||2>|>|&&)", line[len(prefix) :])[0]
                commands.append((where, shlex.split(rest)))
                break
    return commands


COMMAND_LINES = swoolish_command_lines()


def test_docs_show_every_command():
    shown = {argv[0] for _, argv in COMMAND_LINES}
    assert {"serve", "reload", "stop", "status"} <= shown


@pytest.mark.parametrize(
    ("where", "argv"), COMMAND_LINES, ids=[f"{w} {' '.join(a)}" for w, a in COMMAND_LINES]
)
def test_documented_command_line_parses(where, argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]
