"""Test app: drives the Timer API from message handlers, answering with JSON."""

import json
import time

from swoolish import Timer, WebSocketServer

server = WebSocketServer()


def reply(fd, **fields):
    server.push(fd, json.dumps(fields))


@server.on("message")
def on_message(server, frame):
    command, _, arg = frame.data.partition(":")
    fd = frame.fd
    if command == "after":  # after() passes its args, once
        Timer.after(20, lambda a, b: reply(fd, event="after", args=[a, b]), "x", 42)
    elif command == "tick3":  # a tick that clears itself after its 3rd run
        runs = []

        def tick(timer_id):
            runs.append(timer_id)
            reply(fd, event="tick", n=len(runs))
            if len(runs) == 3:
                reply(fd, event="cleared", result=Timer.clear(timer_id))

        Timer.tick(10, tick)
    elif command == "bad":  # bad arguments raise at the call
        errors = {}
        for name, call in {
            "tick0": lambda: Timer.tick(0, print),
            "after-1": lambda: Timer.after(-1, print),
            "noncallable": lambda: Timer.tick(10, "not callable"),
        }.items():
            try:
                call()
                errors[name] = None
            except Exception as exc:
                errors[name] = type(exc).__name__
        errors["clear_unknown"] = Timer.clear(987654321)
        reply(fd, event="bad", **errors)
    elif command == "mass":  # create and clear_all 100k timers
        n = int(arg)
        t0 = time.perf_counter()
        for _ in range(n):
            Timer.after(60_000, print)
        t1 = time.perf_counter()
        cleared = Timer.clear_all()
        t2 = time.perf_counter()
        reply(
            fd,
            event="mass",
            cleared=cleared,
            left=len(Timer.list()),
            create_s=t1 - t0,
            clear_s=t2 - t1,
        )
    elif command == "bind":  # a connection-bound tick
        Timer.tick(20, lambda timer_id: server.push(fd, "tick"), bind=fd)
        reply(fd, event="bound")
    elif command == "count":
        reply(
            fd, event="count", timers=len(Timer.list()), stats=Timer.stats(), server=server.stats()
        )
