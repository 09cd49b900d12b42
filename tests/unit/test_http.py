from __future__ import annotations

import httptools
import pytest

from swoolish.worker.request import Headers, Request, Response, render_response


def test_request_parses_query_and_headers_case_insensitively():
    request = Request("GET", "/a/b?x=1&y=&x2=%20z", Headers([("Content-Type", "text/plain")]))
    assert request.path == "/a/b"
    assert request.query == {"x": "1", "y": "", "x2": " z"}
    assert request.headers["content-type"] == "text/plain"


def test_request_query_is_parsed_once_when_first_read_and_may_be_replaced():
    request = Request("GET", "/?a=1&a=2&b", Headers())
    assert request.query_string == "a=1&a=2&b"
    query = request.query
    assert query == {"a": "2", "b": ""} and request.query is query  # parsed once
    request.query = {"c": "3"}  # an attribute an app could set before: it still can
    assert request.query == {"c": "3"} and request.query_string == "a=1&a=2&b"
    assert Request("GET", "/", Headers()).query == {}


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [("1.1", "", True), ("1.1", "close", False), ("1.0", "", False), ("1.0", "keep-alive", True)],
)
def test_keep_alive_follows_http_version_rules(version, connection, keep):
    headers = Headers([("Connection", connection)] if connection else [])
    assert Request("GET", "/", headers, version=version).keep_alive() is keep


CONNECTION_CASES = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection:  CLOSE \r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: te, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: x-close-later\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive-ish\r\n\r\n",
]


@pytest.mark.parametrize("raw", CONNECTION_CASES)
def test_keep_alive_of_a_built_request_agrees_with_the_parser(raw):
    """A request the connection parses carries llhttp's keep-alive verdict; one an app
    or a test builds computes it from the Connection header's options. Both read the
    options as tokens (RFC 9112 §9.6: "closed" is not "close") and agree on every case."""

    class Fields:
        def __init__(self) -> None:
            self.fields: list[tuple[str, str]] = []
            self.verdict: bool | None = None

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name.decode(), value.decode()))

        def on_message_complete(self) -> None:
            self.verdict = parser.should_keep_alive()

    seen = Fields()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(raw)
    built = Request("GET", "/", Headers(seen.fields), version=parser.get_http_version())
    assert built.keep_alive() is seen.verdict
    parsed = Request("GET", "/", Headers(seen.fields), keep_alive=seen.verdict)
    assert parsed.keep_alive() is seen.verdict


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


def test_header_checks_are_remembered_but_bad_fields_always_raise():
    """The field check is cached per (name, value): a bad field raises on every call, a
    good one is accepted on every call, and the cache stays bounded however many
    distinct values an app sends."""
    from swoolish.worker.request import is_valid_field

    response = Response(lambda resp, body: None)
    for _ in range(3):
        with pytest.raises(ValueError):
            response.header("X-B", "evil\r\nSet-Cookie: a=b")
        with pytest.raises(ValueError):
            response.header("Bad Name", "x")
        response.header("X-A", "1")
    for n in range(5000):
        response.header("X-Request-Id", str(n))
    assert is_valid_field.cache_info().currsize <= is_valid_field.cache_info().maxsize
    assert response.headers[:3] == [("X-A", "1")] * 3


def test_framing_fields_are_the_servers():
    """Transfer-Encoding and a Content-Length that is not a decimal number raise at the
    call, in any case; a decimal Content-Length is accepted (checked at render)."""
    response = Response(lambda resp, body: None)
    for name, value in [
        ("Transfer-Encoding", "chunked"),
        ("transfer-encoding", "identity"),
        ("Content-Length", "abc"),
        ("content-length", "-1"),
        ("Content-Length", "5 "),
        ("Content-Length", "\u00b2"),
    ]:
        with pytest.raises(ValueError, match="Content-Length"):
            response.header(name, value)
    response.header("Content-Length", "5")
    assert response.headers == [("Content-Length", "5")]


def test_connection_is_the_servers_and_close_among_its_options_is_kept():
    """An app's Connection field is not kept among the headers (the server sends its
    own); ``close`` among its options, in any case, marks the response as closing."""
    response = Response(lambda resp, body: None)
    response.header("Connection", "keep-alive")
    assert response.headers == [] and not response.closes
    response.header("connection", "Keep-Alive, CLOSE")
    assert response.headers == [] and response.closes
    response.header("Connection", "keep-alive")
    assert response.closes  # once asked, closing stays


def test_render_response_checks_the_handlers_content_length_against_the_body():
    raw = render_response(200, [("content-length", "5")], b"hello", keep_alive=True)
    assert raw.count(b"ength: 5") == 1 and raw.endswith(b"\r\n\r\nhello")
    with pytest.raises(ValueError, match="Content-Length: 4, but its body is 5 bytes"):
        render_response(200, [("Content-Length", "4")], b"hello", keep_alive=True)
    with pytest.raises(ValueError, match="2 times"):
        render_response(200, [("Content-Length", "5")] * 2, b"hello", keep_alive=True)
    # HEAD: the length a GET would get, no body; a HEAD body that disagrees still raises
    raw = render_response(200, [("Content-Length", "1234")], b"", keep_alive=True, head=True)
    assert b"Content-Length: 1234\r\n" in raw and raw.endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        render_response(200, [("Content-Length", "3")], b"hello", keep_alive=True, head=True)


@pytest.mark.parametrize("status", [100, 103, 204, 304])
def test_render_response_sends_no_body_on_1xx_204_and_304(status):
    raw = render_response(status, [("Content-Length", "18"), ("X-A", "1")], b"x" * 18, True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"" and b"Content-Type" not in head and b"X-A: 1\r\n" in head
    # RFC 9110 §8.6: a 304 may carry its 200's length, a 1xx or 204 none
    assert (b"Content-Length: 18" in head) == (status == 304)
    assert b"Content-Length: 0" not in render_response(status, [], b"", True)
