"""Plain-HTTP server for the HTTP benchmarks: a minimal ASGI app on uvicorn.

Configured as ``uvicorn --loop uvloop --http httptools --workers 1 --log-level warning
--no-access-log`` would be: one process, the httptools parser (the one swoolish uses too), no
per-request logging. The app is raw ASGI with no framework, so the figures are uvicorn's own
cost per request. Lifespan is off: the app has no start-up work, and uvicorn would otherwise
probe for it.
"""

import argparse

import uvicorn

HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"5")]


async def app(scope, receive, send):
    # GET without a body: nothing to receive before answering.
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"hello"})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvicorn.run(
        app,
        host=a.host,
        port=a.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
