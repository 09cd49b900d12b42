#!/bin/sh
# Cluster mode for a newcomer: one Redis and two swoolish nodes serving examples/chat.py,
# unchanged. Open both pages: a message sent on one node reaches the chat on the other.
# Ctrl-C stops all three (by the pids this script started). Needs redis-server
# (Debian: apt-get install redis-server). See docs/cluster.md.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
REDIS_PORT="${REDIS_PORT:-6390}"
PORT_A="${PORT_A:-9501}"
PORT_B="${PORT_B:-9502}"
REDIS_SERVER="$(command -v redis-server || true)"
if [ -z "$REDIS_SERVER" ]; then
    echo "redis-server not found: apt-get install redis-server" >&2
    exit 1
fi
WORK="$(mktemp -d)"
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
URL="redis://127.0.0.1:$REDIS_PORT/0"
"$VENV/bin/swoolish" serve examples/chat.py:server --port "$PORT_A" --workers 2 \
    --redis-url "$URL" --pid-file "$WORK/a.pid" &
NODE_A=$!
"$VENV/bin/swoolish" serve examples/chat.py:server --port "$PORT_B" --workers 2 \
    --redis-url "$URL" --pid-file "$WORK/b.pid" &
NODE_B=$!
stop() {
    kill -TERM "$NODE_A" "$NODE_B" 2>/dev/null || true
    wait "$NODE_A" "$NODE_B" 2>/dev/null || true
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop INT TERM EXIT
echo "swoolish cluster demo: Redis on $URL, two nodes of examples/chat.py"
echo "  node A: http://127.0.0.1:$PORT_A/    node B: http://127.0.0.1:$PORT_B/"
echo "  the cluster as node A sees it:  bin/swoolish status --port $PORT_A"
echo "  Ctrl-C stops the nodes and Redis"
wait "$NODE_A" "$NODE_B"
