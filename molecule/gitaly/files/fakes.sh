#!/bin/sh
# Start or stop this scenario's fakes inside codo-gitaly-node1 (host network, 127.0.0.1 only):
#   the CODO platform on 18281 and the GitLab API on 18282.
#   fakes start | stop | restart
set -eu
dir=/opt/codo-test
codo_port=18281
gitlab_port=18282

up() {
    python3 - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
}

# launch NAME PORT COMMAND...: start it in the background unless its pid file names a live process
launch() {
    name=$1 port=$2
    shift 2
    if [ -s "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
        return 0
    fi
    setsid "$@" </dev/null >"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
    for _ in $(seq 50); do
        up "$port" && return 0
        sleep 0.1
    done
    echo "fakes: $name did not start on 127.0.0.1:$port; see $dir/$name.log" >&2
    exit 1
}

halt() {
    [ -s "$dir/$1.pid" ] || return 0
    pid=$(cat "$dir/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$dir/$1.pid"
}

start() {
    launch fake-codo "$codo_port" python3 "$dir/fake_codo.py" --port "$codo_port" \
        --auth-key-file "$dir/auth_key" --template 32:1 --state-file "$dir/tasks.json"
    launch fake-gitlab "$gitlab_port" python3 "$dir/fake_gitlab.py" --port "$gitlab_port" \
        --token-file "$dir/gitlab_token" --project 1:ops/dbtt --project 3:ops/own-hooks --project 5:ops/by-path
}

stop() {
    halt fake-codo
    halt fake-gitlab
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: fakes start|stop|restart" >&2; exit 2 ;;
esac
