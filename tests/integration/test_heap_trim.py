"""A worker gives the heap memory its work left free back to the system
(swoolish/worker/heaptrim.py, the ``memory_trim`` setting): on a real server, its
resident size read by psutil.

How much of a burst of large messages glibc keeps varies from run to run (the first
buffers of a size are mappings of their own, given back when freed; later ones come from
the heap), so the app here leaves a known amount free between live blocks, as a burst
does at its worst; ``benchmarks/burst_memory.py`` measures the messages themselves."""

from __future__ import annotations

import json
import urllib.request

from support import serving, timeout, wait_until, write_app

MiB = 1024 * 1024

# GET /burst: 96 MiB in 96 KiB blocks (below glibc's mmap threshold: heap), touched, all
# but every eighth freed at once. GET /stats: the worker's counters.
APP = """
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer(memory_trim={trim})
    kept = []


    @server.on("request")
    def request(request, response):
        if request.path == "/burst":
            blocks = [bytearray(96 * 1024) for _ in range(1024)]
            for block in blocks:
                block[::4096] = b"x" * len(block[::4096])
            kept.extend(blocks[::8])
            response.end("done")
        else:
            response.end(json.dumps(server.stats()))
"""


def _get(server, path: str) -> bytes:
    url = f"http://127.0.0.1:{server.port}{path}"
    with urllib.request.urlopen(url, timeout=timeout(10)) as answer:
        return answer.read()


def test_free_heap_memory_goes_back_to_the_system(tmp_path) -> None:
    """1. a request leaves 84 MiB free in the worker's heap between live blocks
    2. within a look or two (10 s apart) the worker trims: counted in heap_trims and
    heap_trimmed_bytes, and its resident size falls by most of what was left free."""
    app = write_app(tmp_path, APP.format(trim=16 * MiB))
    with serving(f"{app}:server", tmp_path) as server:
        (worker,) = server.workers()
        before = worker.memory_info().rss
        assert _get(server, "/burst") == b"done"
        left = worker.memory_info().rss - before
        assert left > 64 * MiB, f"the request left only {left // MiB} MiB"
        stats = wait_until(
            lambda: (s := json.loads(_get(server, "/stats")))["heap_trims"] >= 1 and s,
            seconds=30,
            interval=0.5,
            what="a heap trim",
        )
        kept = worker.memory_info().rss - before
    assert stats["heap_trimmed_bytes"] > 48 * MiB
    assert kept < 32 * MiB, f"{left // MiB} MiB left free, {kept // MiB} MiB kept"
