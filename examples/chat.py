"""A chat room over every worker: each message goes to everyone, whoever's worker owns them.

    swoolish serve examples/chat.py:server --workers 4
    open http://127.0.0.1:9501/ in a few browser tabs

A message is JSON ``{"text": "..."}``; everyone (the sender included) gets
``{"from": <session id>, "text": "...", "worker": <worker id>}``. Joins and leaves are
announced the same way with ``"event"``.
"""

import json

from swoolish import WebSocketServer

server = WebSocketServer("127.0.0.1", 9501, worker_num=4)

PAGE = """<!doctype html><meta charset="utf-8"><title>swoolish chat</title>
<ul id="log"></ul><form id="f"><input id="t" autofocus><button>send</button></form>
<script>
const ws = new WebSocket(`ws://${location.host}/chat`);
const log = document.getElementById("log");
ws.onmessage = (e) => {
  const m = JSON.parse(e.data), li = document.createElement("li");
  li.textContent = m.event ? `* ${m.from} ${m.event}` : `${m.from}: ${m.text}`;
  log.appendChild(li);
};
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const t = document.getElementById("t");
  ws.send(JSON.stringify({text: t.value}));
  t.value = "";
};
</script>"""


@server.on("request")
def on_request(request, response):
    response.header("Content-Type", "text/html; charset=utf-8")
    response.end(PAGE)


@server.on("open")
def on_open(server, request):
    server.broadcast(json.dumps({"from": request.fd, "event": "joined"}))


@server.on("message")
def on_message(server, frame):
    try:
        text = str(json.loads(frame.data)["text"])[:2000]
    except (ValueError, KeyError, TypeError):
        server.push(frame.fd, json.dumps({"error": 'send {"text": "..."}'}))
        return
    server.broadcast(json.dumps({"from": frame.fd, "text": text, "worker": server.worker_id}))


@server.on("close")
def on_close(server, fd):
    server.broadcast(json.dumps({"from": fd, "event": "left"}))


server.start()
