#!/bin/sh
# Start or stop the fake CODO platform on 127.0.0.1:18081 inside the test node.
#   fake-codo start | stop | restart
set -eu
dir=/opt/codo-test
port=${CODO_FAKE_PORT:-18081}

up() {
    python3 - "$port" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
}

start() {
    if [ -s "$dir/fake.pid" ] && kill -0 "$(cat "$dir/fake.pid")" 2>/dev/null; then
        return 0
    fi
    setsid python3 "$dir/fake_codo.py" --port "$port" --auth-key-file "$dir/auth_key" \
        --template 32:1 --state-file "$dir/tasks.json" </dev/null >"$dir/fake.log" 2>&1 &
    echo $! >"$dir/fake.pid"
    for _ in $(seq 50); do
        up && return 0
        sleep 0.1
    done
    echo "fake-codo: the fake platform did not start; see $dir/fake.log" >&2
    exit 1
}

stop() {
    [ -s "$dir/fake.pid" ] || return 0
    pid=$(cat "$dir/fake.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$dir/fake.pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: fake-codo start|stop|restart" >&2; exit 2 ;;
esac
