from __future__ import annotations

import pytest

from swoolish.worker.request import Headers, Request, Response, render_response


def test_request_parses_query_and_headers_case_insensitively():
    request = Request("GET", "/a/b?x=1&y=&x2=%20z", Headers([("Content-Type", "text/plain")]))
    assert request.path == "/a/b"
    assert request.query == {"x": "1", "y": "", "x2": " z"}
    assert request.headers["content-type"] == "text/plain"


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [("1.1", "", True), ("1.1", "close", False), ("1.0", "", False), ("1.0", "keep-alive", True)],
)
def test_keep_alive_follows_http_version_rules(version, connection, keep):
    headers = Headers([("Connection", connection)] if connection else [])
    assert Request("GET", "/", headers, version=version).keep_alive() is keep


def test_response_end_sends_once_and_rejects_header_injection():
    sent = []
    response = Response(lambda resp, body: sent.append((resp.status_code, body)))
    response.status(404).header("X-A", "1")
    with pytest.raises(ValueError):
        response.header("X-B", "evil\r\nSet-Cookie: a=b")
    assert response.end("gone") is True
    assert response.end("again") is False
    assert sent == [(404, b"gone")]


def test_render_response_adds_length_and_connection():
    raw = render_response(200, [("X-A", "1")], b"hello", keep_alive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 5" in head and b"Connection: close" in head
    assert body == b"hello"
