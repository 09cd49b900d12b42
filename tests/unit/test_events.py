from __future__ import annotations

import pytest

from swoolish import WebSocketServer
from swoolish.core.events import ALL_EVENTS, canonical_event_name


@pytest.mark.parametrize(
    ("spelling", "event"),
    [
        ("worker_start", "worker_start"),
        ("WorkerStart", "worker_start"),
        ("workerStart", "worker_start"),
        ("onWorkerExit", "worker_exit"),
        ("workerExit", "worker_exit"),
        ("Message", "message"),
        ("open", "open"),
        ("PipeMessage", "pipe_message"),
        ("BeforeReload", "before_reload"),
    ],
)
def test_swoole_spellings_are_accepted(spelling, event):
    assert canonical_event_name(spelling) == event


def test_unknown_event_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown event 'mesage'; valid events are: .*message"):
        WebSocketServer().on("mesage")


def test_on_as_decorator_and_as_call():
    server = WebSocketServer()

    @server.on("Message")
    def handler(server, frame):
        pass

    async def opener(server, request):
        pass

    assert server.on("open", opener) is opener
    assert server._handlers.get("message") is handler
    assert server._handlers.get("open") is opener


def test_non_callable_handler_is_rejected():
    with pytest.raises(TypeError, match="must be callable"):
        WebSocketServer().on("message", 42)


def test_every_event_has_one_canonical_name():
    assert len(set(ALL_EVENTS)) == len(ALL_EVENTS)
    for event in ALL_EVENTS:
        assert canonical_event_name(event) == event


def test_session_methods_outside_a_worker_say_so():
    with pytest.raises(RuntimeError, match="only inside a worker"):
        WebSocketServer().push(1, "x")
