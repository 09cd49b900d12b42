#!/bin/sh
# Developing with --reload, start to end (docs/quickstart.md): serve an app with
# `swoolish serve --reload`, keep one WebSocket client connected, then edit the app,
# break it twice (a syntax error, an exception at import) and fix it. Prints each step,
# the master's log line about it, and what the connected client is answered.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" - "$@" <<'PYTHON'
import os, re, shutil, signal, socket, subprocess, sys, tempfile, textwrap, time
from websockets.sync.client import connect

APP = textwrap.dedent("""\
    from swoolish import WebSocketServer

    server = WebSocketServer()
    VERSION = {version!r}

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, f"{{VERSION}} (session {{frame.fd}})")
""")
STEPS = [
    ("edit: VERSION = 'v2'", APP.format(version="v2"), "complete"),
    ("break: a syntax error", APP.format(version="v3").replace("WebSocketServer()", "WebSocketServer("), "rolled back"),
    ("break: raises at import", APP.format(version="v3").replace("VERSION = 'v3'", "VERSION = 1 / 0"), "rolled back"),
    ("fix: VERSION = 'v3'", APP.format(version="v3"), "complete"),
]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_for(log_path, pattern, after=0, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = open(log_path).read().splitlines()[after:]
        for line in lines:
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    sys.exit(f"timed out waiting for /{pattern}/ in {log_path}")

def master_line(line):
    return re.sub(r"^\S+ \S+ \[\d+\] \w+ swoolish\.master: ", "master: ", line)

directory = tempfile.mkdtemp(prefix="swoolish-dev-")
app = os.path.join(directory, "app.py")
log_path = os.path.join(directory, "server.log")
with open(app, "w") as f:
    f.write(APP.format(version="v1"))
port = free_port()
print(f"$ swoolish serve {app}:server --port {port} --reload")
log = open(log_path, "w")
server = subprocess.Popen(
    [sys.executable, "-m", "swoolish", "serve", f"{app}:server", "--port", str(port), "--reload"],
    stderr=log, stdout=log,
)
try:
    print(master_line(wait_for(log_path, r"watching .* for changes")))
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        ws.send("version?")
        print("client (connected):", ws.recv(timeout=5))
        serving = 1
        for generation, (what, source, outcome) in enumerate(STEPS, start=2):
            seen = len(open(log_path).read().splitlines())
            print(f"\n# {what}")
            with open(app, "w") as f:
                f.write(source)
            print(master_line(wait_for(log_path, rf"reload to generation {generation} started", seen)))
            print(master_line(wait_for(log_path, rf"reload to generation {generation} {outcome}", seen)))
            if outcome == "complete":  # the old worker handed the client over
                wait_for(log_path, rf"gen {serving} \(pid \d+\) drained", seen)
                serving = generation
            ws.send("version?")
            print("client (same connection):", ws.recv(timeout=5))
        print(f"\nclient closes seen: {0 if ws.close_code is None else 1}")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=15)
    log.close()
    shutil.rmtree(directory)
PYTHON
