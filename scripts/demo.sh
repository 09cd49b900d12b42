#!/bin/sh
# Start the seed-scenario demo: a WebSocket ticker with a live page. Ctrl-C stops it.
# It writes a pid file, so the reload command it prints names this master even when
# other swoolish masters run (docs/cli.md, "Which master").
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
PORT="${PORT:-9501}"
PID_FILE="${PID_FILE:-${TMPDIR:-/tmp}/swoolish-demo-$PORT.pid}"
echo "swoolish demo: open http://127.0.0.1:$PORT/ in a browser"
echo "  reload it from another terminal:  bin/swoolish reload --pid-file $PID_FILE --wait"
echo "  (or: bin/swoolish reload --port $PORT --wait, or kill -USR1 \$(cat $PID_FILE))"
echo "  stop it: Ctrl-C, or bin/swoolish stop --pid-file $PID_FILE"
echo "  with --reload (sh scripts/demo.sh --reload): edit examples/ticker.py, the page stays connected"
exec "$VENV/bin/swoolish" serve examples/ticker.py:server --port "$PORT" --workers 2 \
  --pid-file "$PID_FILE" "$@"
