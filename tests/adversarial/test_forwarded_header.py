"""A long ``Forwarded`` header (RFC 7239) through a real ``swoolish serve``: answered
from its right-most 32 elements, whatever the client wrote left of them
(docs/deployment.md, "A proxy in front"; docs/security.md, "Remote clients")."""

from __future__ import annotations

import json

from support import raw_connect, read_to_eof, serving, write_app

APP = """
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("request")
    def on_request(request, response):
        response.header("Content-Type", "application/json")
        response.end(json.dumps({"remote_addr": request.remote_addr, "scheme": request.scheme}))
"""


def get(port: int, headers: str) -> dict[str, str]:
    """The JSON answer to one GET carrying ``headers`` (``Name: value`` lines)."""
    request = f"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    with raw_connect(port) as sock:
        sock.sendall(request.encode())
        answer = read_to_eof(sock, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    return json.loads(body)


def test_a_long_forwarded_header_is_answered_as_its_last_elements_say(tmp_path):
    """1. --proxy-headers, the peer (127.0.0.1) trusted  2. a GET whose ``Forwarded``
    holds some 4,000 elements (52 KB), a malformed one among the first, then the client
    a trusted proxy named, then 31 trusted hops  3. the app sees that client and its
    scheme (before, the malformed element voided the whole header: the app saw
    127.0.0.1 over http)."""
    target = f"{write_app(tmp_path, APP)}:server"
    elements = ["for=6.6.6.6", "for=6.6.6.6 junk"] + ["for=6.6.6.6"] * 4_000
    elements += ['for="198.51.100.7:4711";proto=https'] + ["for=127.0.0.1"] * 31
    forwarded = "Forwarded: " + ", ".join(elements) + "\r\n"
    assert len(forwarded) > 50_000
    with serving(target, tmp_path, "--proxy-headers") as server:
        assert get(server.port, forwarded) == {"remote_addr": "198.51.100.7", "scheme": "https"}
        assert get(server.port, "") == {"remote_addr": "127.0.0.1", "scheme": "http"}
