#!/bin/sh
# Redis's own Tcl tests (tag 7.0.15) against `postoffice command serve --store-dir`, in
# external-server mode; prints one "unit ok err exception" line per unit and the total.
# COMPAT_REMOTE=1 runs them against `command serve --store HOST:PORT` instead, the keys
# held by a `store serve` process of their own (the remote keyspace).
# The checkout is cached in $COMPAT_CACHE (a shallow clone, never part of this repository).
set -eu
CACHE=${COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postoffice/redis-7.0.15}
PYTHON=${PYTHON:-python3}
PORT=${COMPAT_PORT:-16399}
UNITS="unit/type/incr unit/type/string unit/keyspace unit/expire unit/protocol unit/quit"
command -v tclsh >/dev/null || { echo "tclsh is missing: apt-get install -y tcl" >&2; exit 2; }
if [ ! -x "$CACHE/runtest" ]; then
    git clone --quiet --depth 1 --branch 7.0.15 https://github.com/redis/redis "$CACHE"
fi
if "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; then
    echo "port $PORT is taken: set COMPAT_PORT to a free one" >&2
    exit 2
fi
WORK=$(mktemp -d)
STORE=""
trap 'kill $SERVER $STORE 2>/dev/null; wait $SERVER $STORE 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
if [ "${COMPAT_REMOTE:-0}" = 1 ]; then
    "$PYTHON" -m postoffice store serve --port 0 --metrics-port 0 --data-dir "$WORK/keys" \
        --ready-file "$WORK/store.ready" >"$WORK/store.log" 2>&1 &
    STORE=$!
    tries=0
    until [ -s "$WORK/store.ready" ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || { echo "the store server did not start" >&2; cat "$WORK/store.log" >&2; exit 1; }
        sleep 0.5
    done
    STORE_PORT=$("$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); \
print(next(p for n, (h, p) in r['listeners'].items() if n != 'metrics'))" "$WORK/store.ready")
    KEYS="--store 127.0.0.1:$STORE_PORT"
else
    KEYS="--store-dir $WORK/keys"
fi
# shellcheck disable=SC2086 # KEYS is two words on purpose
"$PYTHON" -m postoffice command serve --port "$PORT" --metrics-port 0 $KEYS \
    >"$WORK/server.log" 2>&1 &
SERVER=$!
# Wait for the port (at most 30 s): a fixed pause lost the first unit on a busy machine.
tries=0
until "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "the server did not open port $PORT" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.5
done
total=0
for unit in $UNITS; do
    (cd "$CACHE" && ./runtest --host 127.0.0.1 --port "$PORT" --clients 1 --timeout 120 \
        --tags -needs:debug --tags -needs:repl --tags -needs:save --single "$unit") \
        >"$WORK/unit.log" 2>&1 || true
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/unit.log" >"$WORK/unit.txt"
    ok=$(grep -c '^\[ok\]' "$WORK/unit.txt" || true)
    err=$(grep -c '^\[err\]' "$WORK/unit.txt" || true)
    exc=$(grep -c '^\[exception\]' "$WORK/unit.txt" || true)
    echo "$unit ok=$ok err=$err exception=$exc"
    grep '^\[err\]\|^\[exception\]' "$WORK/unit.txt" || true
    total=$((total + ok))
done
echo "passed $total (redis-server 7.0.15 passes 230)"
