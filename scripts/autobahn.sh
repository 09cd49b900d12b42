#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing cases against swoolish (SPEC §7: no case FAILED).
#
#   scripts/autobahn.sh [--install] [--quick] [--with-perf] [--cases P,...] [...]
#
# Starts `swoolish serve examples/autobahn_echo.py:server` on a free loopback port,
# runs conformance/wstest.py (the real wstest, pinned in
# conformance/requirements-py27.txt) against it with every other argument passed
# through, and stops the server by pid on exit. Needs a Python 2.7 interpreter (wstest
# is Python 2 code) and PyPI for the one-time --install. Exit status is wstest.py's:
# 0 no case FAILED, 1 some case FAILED, 2 setup error.
#
# Environment: APP (default examples/autobahn_echo.py:server), WORKERS (default 1),
# RELOAD_EVERY (seconds; when set, the master gets SIGUSR1 that often during the run,
# so cases run on connections handed live from worker to worker), AUTOBAHN_VENV, PY27.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
WSTEST=("$PY" "$ROOT/conformance/wstest.py")
APP="${APP:-examples/autobahn_echo.py:server}"
WORKERS="${WORKERS:-1}"

# `--install` alone only builds the wstest venv: no server needed.
if [ "$#" -eq 1 ] && [ "$1" = "--install" ]; then
  exec "${WSTEST[@]}" install
fi
for arg in "$@"; do
  if [ "$arg" = "--install" ]; then "${WSTEST[@]}" install; fi
done
ARGS=()
for arg in "$@"; do
  [ "$arg" = "--install" ] || ARGS+=("$arg")
done

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp /tmp/swoolish-autobahn.XXXXXX.log)"
SERVER_PID=""
TOOL_PID=""
RELOADER_PID=""

# Every process of a tree, by pid (children first found with pgrep -P, never by name).
tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do tree "$child"; done
  echo "$1"
}

stop_tool() {
  [ -n "$TOOL_PID" ] || return 0
  local pids
  pids="$(tree "$TOOL_PID")"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  TOOL_PID=""
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local children
  children="$(pgrep -P "$SERVER_PID" 2>/dev/null || true)"
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  for pid in $children; do kill -KILL "$pid" 2>/dev/null || true; done
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
stop_reloader() {
  [ -n "$RELOADER_PID" ] || return 0
  kill -TERM "$RELOADER_PID" 2>/dev/null || true
  wait "$RELOADER_PID" 2>/dev/null || true
  RELOADER_PID=""
}
cleanup() { stop_reloader; stop_tool; stop_server; rm -f -- "$LOG"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m swoolish serve "$APP" \
  --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" --log-level info >"$LOG" 2>&1 &
SERVER_PID=$!

# Wait (with a deadline) until the port accepts connections.
ready=0
for _ in $(seq 1 150); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  if "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$PORT" 2>/dev/null; then
    ready=1; break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "autobahn.sh: swoolish did not start on 127.0.0.1:$PORT; its log:" >&2
  cat "$LOG" >&2
  exit 2
fi

if [ -n "${RELOAD_EVERY:-}" ]; then
  ( while kill -0 "$SERVER_PID" 2>/dev/null; do
      sleep "$RELOAD_EVERY"
      kill -USR1 "$SERVER_PID" 2>/dev/null || true
    done ) &
  RELOADER_PID=$!
fi

# In the background, so that a TERM/INT to this script runs its trap at once.
set +e
"${WSTEST[@]}" run ${ARGS[@]+"${ARGS[@]}"} "ws://127.0.0.1:$PORT" &
TOOL_PID=$!
wait "$TOOL_PID"
rc=$?
TOOL_PID=""
stop_reloader
set -e
if [ -n "${RELOAD_EVERY:-}" ]; then
  reloads="$(grep -c 'reload to generation .* complete' "$LOG" || true)"
  moved="$(grep -o '[0-9]* moved to the new worker' "$LOG" | awk '{s += $1} END {print s + 0}')"
  echo "reloads during the run: $reloads; connections moved mid-case: $moved"
  # Why a connection could not move (it got the 1012 close of a reload instead).
  grep -o 'fell back to a 1012 close {.*}' "$LOG" | sed 's/^fell back to a 1012 close /fallback: /' \
    | sort | uniq -c || true
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "autobahn.sh: the server exited during the run; its log:" >&2
  tail -n 30 "$LOG" >&2
  [ "$rc" != 0 ] || rc=1
fi
exit "$rc"
