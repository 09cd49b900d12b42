"""The seed scenario: a WebSocket ticker with a small live HTML page.

Each client that sends a message gets a timer ticking into its connection every
``interval`` ms (default 1000). The timer is bound to the session (``bind=frame.fd``):
it dies with the connection, and ``worker_exit`` clears whatever is left before a
reload drains the worker, so no tick ever reaches a gone session.

Run it:  bin/swoolish serve examples/ticker.py:server   then open http://127.0.0.1:9501/
"""

import json
import os

from swoolish import Timer, WebSocketServer

server = WebSocketServer("127.0.0.1", 9501)

PAGE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ticker.html")


@server.on("request")
def on_request(request, response):
    if request.path in ("/", "/index.html"):
        with open(PAGE_PATH, "rb") as page:
            response.header("Content-Type", "text/html; charset=utf-8")
            response.end(page.read())
    else:
        response.status(404)
        response.end("not found\n")


@server.on("open")
def on_open(server, request):
    server.push(request.fd, json.dumps(hello(server, request.fd)))


@server.on("message")
def on_message(server, frame):
    """Any message (re)starts this client's ticker; "stop" stops it."""
    for timer_id in Timer.list():
        info = Timer.info(timer_id)
        if info and info["bind"] == frame.fd:
            Timer.clear(timer_id)
    if frame.data == "stop":
        return
    try:
        interval = max(10, int(frame.data))
    except (TypeError, ValueError):
        interval = 1000
    Timer.tick(interval, tick, frame.fd, {"seq": 0}, bind=frame.fd)


def tick(timer_id, fd, state):
    """A module-level function with plain-data args: on a reload, the timer moves with
    its connection to the new worker, which runs the new code's ``tick``."""
    state["seq"] += 1
    server.push(fd, json.dumps({**hello(server, fd), "seq": state["seq"]}))


@server.on("worker_exit")
def on_worker_exit(server, worker_id):
    # What Swoole's docs advise; swoolish would clear forgotten timers anyway.
    Timer.clear_all()


def hello(server, fd):
    return {"fd": fd, "pid": server.worker_pid, "generation": server.generation}


if __name__ == "__main__":
    server.start()
