#!/bin/sh
# Start the seed-scenario demo: a WebSocket ticker with a live page. Ctrl-C stops it.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
PORT="${PORT:-9501}"
echo "swoolish demo: open http://127.0.0.1:$PORT/ in a browser"
echo "  reload it from another terminal:  bin/swoolish reload --wait   (or kill -USR1 <master pid>)"
echo "  stop it: Ctrl-C"
exec "$VENV/bin/swoolish" serve examples/ticker.py:server --port "$PORT" --workers 2 "$@"
