"""Prometheus metrics and /healthz served by the master, on real processes
(docs/deployment.md, "Metrics and health").

Every scrape is a real HTTP request to ``swoolish serve --metrics-port``, parsed with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket

from prometheus_client.parser import text_string_to_metric_families
from support import (
    free_port,
    over_maxmemory,
    run_cli,
    serving,
    start_node,
    timeout,
    wait_linked,
    wait_until,
    write_app,
)

ECHO = "tests/apps/echo_app.py:server"

GATED_APP = """
    import asyncio
    import os
    from swoolish import WebSocketServer

    server = WebSocketServer()
    FLAG = {flag!r}

    @server.on("worker_start")
    async def start(server, worker_id):
        while not os.path.exists(FLAG):  # the test says when this worker may serve
            await asyncio.sleep(0.02)

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, frame.data)
"""


@contextlib.contextmanager
def metrics_serving(tmp_path, *extra, target=ECHO, **kwargs):
    """``serving`` with the metrics endpoint on a free loopback port: (server, port)."""
    port = free_port()
    with serving(target, tmp_path, "--metrics-port", str(port), *extra, **kwargs) as server:
        yield server, port


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout(10))
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (sample name, sorted labels) -> value."""
    status, body, headers = get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the master hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(10)) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_connections_messages_and_generation_are_counted(tmp_path):
    """Three WebSockets over two workers, two messages each: the scrape shows three open
    WebSockets, six messages in and out, generation 1, both workers serving, and the
    resident memory of each worker under its slot and pid."""
    with metrics_serving(tmp_path, workers=2) as (server, port):
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(server.connect()) for _ in range(3)]
            for client in clients:
                for text in ("a", "b"):
                    client.send(text)
                    assert client.recv(timeout=timeout(5)) == text

            def settled():
                samples = scrape(port)
                return samples if value(samples, "swoolish_connections") == 3 else None

            samples = wait_until(settled, what="3 open connections in the scrape")
            assert value(samples, "swoolish_websocket_connections") == 3
            assert value(samples, "swoolish_messages_in_total") == 6
            assert value(samples, "swoolish_messages_out_total") == 6
            assert value(samples, "swoolish_websockets_opened_total") == 3
            opened = value(samples, "swoolish_connections_opened_total")
            assert opened - value(samples, "swoolish_connections_closed_total") == 3
            assert value(samples, "swoolish_generation") == 1
            assert value(samples, "swoolish_workers", state="serving") == 2
            assert value(samples, "swoolish_reloads_total", result="ok") == 0
            rss = {
                dict(labels)["pid"]: (dict(labels)["slot"], v)
                for (name, labels), v in samples.items()
                if name == "swoolish_worker_resident_memory_bytes"
            }
            assert set(rss) == {str(w.pid) for w in server.workers()}
            assert sorted(slot for slot, _ in rss.values()) == ["0", "1"]
            assert all(v > 1_000_000 for _, v in rss.values())
        wait_until(
            lambda: value(scrape(port), "swoolish_connections") == 0,
            what="the closed clients gone from the scrape",
        )


def test_connections_refused_at_max_connections_are_neither_opened_nor_closed(tmp_path):
    """1. max_connections 3, one worker: three WebSockets open  2. five more clients get
    503  3. the scrape counts three open connections, and opened minus closed says three
    too (the refused ones were counted closed, never opened: it said -2)."""
    with metrics_serving(tmp_path, "--max-connections", "3") as (server, port):
        wait_until(
            lambda: value(scrape(port), "swoolish_connections") == 0,
            what="the readiness probe gone",
        )
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(server.connect()) for _ in range(3)]
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", server.port), timeout(10)) as sock:
                    # answered as it is accepted (sent a request, it may be reset unread)
                    assert raw_answer(sock).startswith(b"HTTP/1.1 503 ")
            for client in clients:
                client.send("still here")
                assert client.recv(timeout=timeout(5)) == "still here"

            def settled():
                samples = scrape(port)
                opened = value(samples, "swoolish_connections_opened_total")
                closed = value(samples, "swoolish_connections_closed_total")
                return samples if opened - closed == 3 else None

            samples = wait_until(settled, what="opened minus closed to be 3")
            assert value(samples, "swoolish_connections") == 3


def raw_answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection."""
    sock.settimeout(timeout(10))
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_totals_never_go_down_across_a_reload(tmp_path):
    """Three messages, then a reload (the WebSocket moves to the new worker): every
    scrape during it shows messages_in_total >= 3, and once the old worker is gone,
    reloads_total{result="ok"} is 1, generation 2, the WebSocket was moved, and one more
    message makes 4."""
    with metrics_serving(tmp_path) as (server, port), server.connect() as client:
        for text in ("1", "2", "3"):
            client.send(text)
            assert client.recv(timeout=timeout(5)) == text
        assert value(scrape(port), "swoolish_messages_in_total") == 3
        seen: list[float] = []

        def reloaded():
            samples = scrape(port)
            seen.append(value(samples, "swoolish_messages_in_total"))
            done = (
                value(samples, "swoolish_reloads_total", result="ok") == 1
                and value(samples, "swoolish_generation") == 2
                and value(samples, "swoolish_handoff_moved_total") == 1
                and sum(v for (name, _), v in samples.items() if name == "swoolish_workers") == 1
            )
            return samples if done else None

        server.signal(signal.SIGUSR1)
        samples = wait_until(reloaded, 20, what="the reload finished and the old worker gone")
        assert seen == sorted(seen) and min(seen) >= 3, seen
        assert value(samples, "swoolish_messages_in_total") == 3
        assert value(samples, "swoolish_reloads_total", result="rolled_back") == 0
        assert value(samples, "swoolish_websocket_connections") == 1
        client.send("4")
        assert client.recv(timeout=timeout(5)) == "4"
        assert value(scrape(port), "swoolish_messages_in_total") == 4


def test_healthz_is_503_until_a_generation_serves_then_200(tmp_path):
    """The worker waits in worker_start for a flag file: /healthz says 503 meanwhile
    (and /metrics still answers), then 200 "ok" once the worker serves."""
    flag = tmp_path / "go"
    app = write_app(tmp_path, GATED_APP.format(flag=str(flag)))
    with metrics_serving(tmp_path, target=f"{app}:server", wait=False) as (server, port):
        wait_until(lambda: _status(port, "/healthz") == 503, what="the metrics endpoint up")
        assert value(scrape(port), "swoolish_workers", state="booting") == 1
        flag.touch()
        server.wait_ready()
        wait_until(lambda: _status(port, "/healthz") == 200, what="/healthz 200")
        status, body, _ = get(port, "/healthz")
        assert (status, body) == (200, b"ok\n")


def _status(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:
        return None


def test_other_paths_methods_and_bad_requests(tmp_path):
    """404 for another path, 405 for POST, a HEAD without a body, 400 and a hang-up for
    a malformed request and for an oversized one; the master serves on."""
    with metrics_serving(tmp_path) as (server, port):
        assert get(port, "/")[0] == 404
        assert get(port, "/metrics/extra")[0] == 404
        assert get(port, "/metrics", method="POST")[0] == 405
        status, body, headers = get(port, "/metrics", method="HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) > 0  # the length GET's body would have
        assert get(port, "/metrics?name[]=swoolish_generation")[0] == 200
        assert raw_request(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw_request(port, b"GET /metrics HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        oversized = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"x" * 20_000
        assert raw_request(port, oversized).startswith(b"HTTP/1.1 400 ")
        assert value(scrape(port), "swoolish_generation") == 1
        with server.connect() as client:
            client.send("still serving")
            assert client.recv(timeout=timeout(5)) == "still serving"


def test_a_target_urlsplit_cannot_parse_gets_a_400_and_the_master_serves_on(tmp_path):
    """An absolute-form target with a broken IPv6 literal (``http://[``) made urlsplit
    raise in the master's loop: the master exited and took every worker with it. It is
    a malformed request: a 400, and the master, its workers and its scrapes go on."""
    with metrics_serving(tmp_path) as (server, port):
        with server.connect() as held:  # a WebSocket open across the bad requests
            for target in (b"http://[", b"http://[/metrics", b"https://[::1/healthz"):
                answer = raw_request(port, b"GET " + target + b" HTTP/1.1\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 400 "), (target, answer)
            assert server.proc.poll() is None, server.log()[-3000:]
            held.send("still open")
            assert held.recv(timeout=timeout(5)) == "still open"
        assert get(port, "/healthz")[0] == 200
        assert value(scrape(port), "swoolish_generation") == 1
        assert "Traceback" not in server.log()


def test_a_request_with_bare_lf_line_endings_is_answered(tmp_path):
    """RFC 9112 §2.2 lets a recipient take a bare LF as a line terminator: such a
    request is answered like its CRLF twin (it went unanswered, then was hung up on
    after the request timeout); a bare CR is still a malformed request."""
    with metrics_serving(tmp_path) as (server, port):
        health = raw_request(port, b"GET /healthz HTTP/1.1\nHost: x\n\n")
        assert health.startswith(b"HTTP/1.1 200 ") and health.endswith(b"\r\n\r\nok\n"), health
        mixed = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\n\r\n")
        assert mixed.startswith(b"HTTP/1.1 200 ") and b"swoolish_generation 1" in mixed, mixed
        bare_cr = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\ry: z\r\n\r\n")
        assert bare_cr.startswith(b"HTTP/1.1 400 "), bare_cr
        assert server.proc.poll() is None


def answer_or_reset(sock: socket.socket, seconds: float = 15) -> bytes | None:
    """Everything the master sends until it hangs up; None if it reset the connection."""
    sock.settimeout(timeout(seconds))
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return None
    return data


@contextlib.contextmanager
def master_paused(server):
    """SIGSTOP the master for the block, SIGCONT after whatever happens: connections
    made meanwhile wait, complete, in the kernel's backlog, and the master finds them
    all at once."""
    server.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.signal(signal.SIGCONT)


BUSY = b"HTTP/1.1 503 "


def test_clients_that_never_send_do_not_stop_scrapes(tmp_path):
    """Twenty connections that never send (more than the master holds) and one that
    sends half a request: a scrape is still answered, and every one of them is hung up
    on, the oldest with a 503 to make room and the rest, silently, after the request
    timeout; none with a reset."""
    with metrics_serving(tmp_path) as (server, port):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        try:
            assert value(scrape(port), "swoolish_generation") == 1
            assert get(port, "/healthz")[0] == 200
            answers = [answer_or_reset(sock) for sock in [*idle, half]]
        finally:
            for sock in [*idle, half]:
                sock.close()
        assert None not in answers, answers  # no reset
        busy = [a for a in answers if a]
        assert len(busy) >= 5 and all(a.startswith(BUSY) for a in busy), answers
        assert value(scrape(port), "swoolish_generation") == 1
        assert server.proc.poll() is None


def test_a_burst_of_scrapes_is_all_answered(tmp_path):
    """Two rounds of 40 complete requests reaching the master at once (more than the
    16 answers it keeps under way), every tenth a /healthz: each gets a whole 200 or a
    503, none a reset or a bare hang-up, and every /healthz its 200."""
    with metrics_serving(tmp_path, workers=2) as (server, port):
        for _ in range(2):
            socks, paths = [], []
            with contextlib.ExitStack() as stack:
                with master_paused(server):
                    for i in range(40):
                        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                        paths.append("/healthz" if i % 10 == 9 else "/metrics")
                        sock.sendall(f"GET {paths[-1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                        socks.append(sock)
                answers = [answer_or_reset(sock) for sock in socks]
            statuses = [a.split(b" ", 2)[1] if a else a for a in answers]
            assert set(statuses) <= {b"200", b"503"}, statuses  # None: reset; b"": hang-up
            assert b"200" in statuses
            for path, answer in zip(paths, answers, strict=True):
                if path == "/healthz":
                    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok\n")
                elif answer.startswith(b"HTTP/1.1 200 "):
                    assert b"swoolish_generation 1.0" in answer
                    assert len(answer.partition(b"\r\n\r\n")[2]) == int(
                        answer.split(b"Content-Length: ")[1].split(b"\r\n")[0]
                    )
        assert value(scrape(port), "swoolish_generation") == 1


def test_a_sent_scrape_is_never_pushed_out_by_idle_connections(tmp_path):
    """16 idle connections (all the master holds of those), a complete scrape, then 32
    more idle ones, all waiting for the master at once: the scrape gets its 200; each
    idle connection a 503 (turned away for a newcomer) or a silent hang-up after the
    request timeout, never a reset."""
    with metrics_serving(tmp_path) as (server, port), contextlib.ExitStack() as stack:

        def connect() -> socket.socket:
            return stack.enter_context(socket.create_connection(("127.0.0.1", port)))

        with master_paused(server):
            before = [connect() for _ in range(16)]
            scraper = connect()
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            after = [connect() for _ in range(32)]
        answer = answer_or_reset(scraper)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 "), answer
        assert b"swoolish_generation 1.0" in answer
        answers = [answer_or_reset(sock) for sock in [*before, *after]]
        assert None not in answers, answers
        busy = [a for a in answers if a]
        assert len(busy) >= 32 and all(a.startswith(BUSY) for a in busy), answers


def test_a_killed_worker_counts_as_a_restart_and_its_counts_stay(tmp_path):
    """A WebSocket on one of two workers sends three messages; the test SIGKILLs that
    worker: worker_restarts_total becomes 1 (in `swoolish status --json` too), a
    replacement serves, and messages_in_total stays 3 (the dead worker's last figures
    are kept)."""
    pid_file = tmp_path / "master.pid"
    with metrics_serving(tmp_path, "--pid-file", str(pid_file), workers=2) as (server, port):
        with server.connect() as client:
            client.send("cmd:whoami")
            victim = json.loads(client.recv(timeout=timeout(5)))["pid"]
            for text in ("a", "b"):
                client.send(text)
                assert client.recv(timeout=timeout(5)) == text
            assert value(scrape(port), "swoolish_messages_in_total") == 3
            os.kill(victim, signal.SIGKILL)

            def replaced():
                samples = scrape(port)
                pids = {w.pid for w in server.workers()}
                done = (
                    value(samples, "swoolish_worker_restarts_total") == 1
                    and value(samples, "swoolish_workers", state="serving") == 2
                    and victim not in pids
                )
                return samples if done else None

            samples = wait_until(replaced, 20, what="the killed worker replaced")
        assert value(samples, "swoolish_messages_in_total") == 3
        assert value(samples, "swoolish_websocket_connections") == 0
        result = run_cli("status", "--pid-file", str(pid_file), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["master"]["worker_restarts"] == 1


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path):
    """The metrics port is bound before anything forks: taken, it is one line, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", ECHO, "--port", str(free_port()), "--metrics-port", str(port))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "--metrics-port" in result.stderr


REFUSED = "swoolish_cluster_refused_commands_total"


def refused_in_status(port: int) -> int:
    """The commands Redis refused as `swoolish status --json` sums them over the
    workers' views."""
    result = run_cli("status", "--port", str(port), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["cluster"]["refused_commands"]


def test_commands_redis_refuses_are_a_counter_kept_across_a_reload(tmp_path, redis_server):
    """1. a cluster node of two workers serving metrics: REFUSED is 0  2. Redis over its
    maxmemory (noeviction): each worker's node-key refresh (SET) is refused, once a
    second, and the counter rises past 4  3. memory freed, both workers told it is
    taken again: the counter is what `swoolish status` shows (the workers' sum)  4. a
    reload: the new workers refused none, and the counter keeps the old workers'
    count. Before, the refusals were only in `swoolish status`: no such series."""
    port = free_port()
    node = start_node(tmp_path, redis_server.url, 2, "--metrics-port", str(port))
    try:
        wait_linked(node, 2)
        assert value(scrape(port), REFUSED) == 0
        redis = redis_server.client()
        over_maxmemory(redis)
        wait_until(lambda: value(scrape(port), REFUSED) >= 4, 15, what="refused SETs counted")
        redis.config_set("maxmemory", "0")
        node.wait_for_log("Redis takes SET from the cluster bus again", 20, count=2)
        total = value(scrape(port), REFUSED)
        assert total == refused_in_status(node.port) >= 4

        result = run_cli("reload", "--port", str(node.port), "--wait")
        assert result.returncode == 0, result.stderr

        def old_workers_gone():
            samples = scrape(port)
            workers = sum(v for (name, _), v in samples.items() if name == "swoolish_workers")
            return samples if value(samples, "swoolish_generation") == 2 and workers == 2 else None

        samples = wait_until(old_workers_gone, 20, what="the old workers gone")
        assert value(samples, REFUSED) == total
        assert refused_in_status(node.port) == 0
    finally:
        node.stop()
