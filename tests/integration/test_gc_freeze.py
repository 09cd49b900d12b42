"""A worker leaves what it booted with out of later garbage collections
(swoolish/worker/process.py, freeze_what_booted), and still collects what it makes
afterwards; ``gc_freeze=False`` leaves the collector alone: on a real server."""

from __future__ import annotations

import json
import urllib.request

from support import serving, timeout, write_app

# GET /: the worker's collector as the app sees it. A cycle made in a handler must
# still be collected: only the boot's objects are frozen.
APP = """
    import gc, json, weakref
    from swoolish import WebSocketServer

    server = WebSocketServer(gc_freeze={freeze})


    class Node:
        pass


    @server.on("request")
    def request(request, response):
        node = Node()
        node.me = node  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        del node
        gc.collect()
        response.end(json.dumps({{
            "frozen": gc.get_freeze_count(),
            "enabled": gc.isenabled(),
            "cycle_collected": gone() is None,
        }}))
"""


def frozen_and_collected(tmp_path, freeze: bool) -> dict:
    app = write_app(tmp_path, APP.format(freeze=freeze))
    with serving(f"{app}:server", tmp_path) as server:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/", timeout=timeout(10)
        ) as answer:
            return json.loads(answer.read())


def test_a_worker_freezes_its_boot_objects_and_collects_later_ones(tmp_path) -> None:
    seen = frozen_and_collected(tmp_path, freeze=True)
    assert seen["frozen"] > 1000  # modules, the app, settings: thousands of objects
    assert seen["enabled"]
    assert seen["cycle_collected"]


def test_gc_freeze_false_leaves_the_collector_alone(tmp_path) -> None:
    seen = frozen_and_collected(tmp_path, freeze=False)
    assert seen["frozen"] == 0
    assert seen["enabled"]
    assert seen["cycle_collected"]
