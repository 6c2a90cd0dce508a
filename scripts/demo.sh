#!/usr/bin/env bash
# ./dev demo: the whole job on one machine, in about a minute.
#
#   1. a GitLab-like container (codo-demo-gitlab): the git user, Omnibus' repository
#      storage, project ops/dbtt (id 1) in hashed storage, its hooks run the way Gitaly
#      runs them (tests/fakes/gitaly_runner.py);
#   2. the fake CODO platform on 127.0.0.1:18091 (container codo-demo-codo);
#   3. the real `ansible-playbook playbooks/deploy-hooks.yml`, with a demo inventory
#      whose key sits in an Ansible Vault file, as in inventory.example/;
#   4. a developer pushes release-dbtt-server-20190320-02; the task the platform
#      received is printed; then what to try next.
#
# Needs .venv and the image (./dev demo sets up both) and a running docker engine.
# KEEP=1 leaves both containers running for the things to try; otherwise the script
# removes them (and only them, by name) when it ends.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
IMAGE=${IMAGE:-codo-hooks-node:test}
GITLAB=codo-demo-gitlab
CODO=codo-demo-codo
PORT=${DEMO_PORT:-18091}
STORAGE=/var/opt/gitlab/git-data/repositories
# sha256("1"): where GitLab keeps project 1 in hashed storage (the role computes it too).
REPO=$STORAGE/@hashed/6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b.git
TAG=release-dbtt-server-20190320-02
KEEP=${KEEP:-0}

bold="" plain=""
if [ -t 1 ]; then
    bold=$(tput bold 2>/dev/null || true)
    plain=$(tput sgr0 2>/dev/null || true)
fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() { echo "demo: $*" >&2; exit 1; }
in_gitlab() { docker exec "$GITLAB" "$@"; }
as_git() { docker exec -u git -w /var/opt/gitlab "$GITLAB" "$@"; }

remove_containers() {
    for name in "$GITLAB" "$CODO"; do
        docker rm -f "$name" >/dev/null 2>&1 || true
    done
}

workdir=""
finish() {
    local rc=$?
    [ -n "$workdir" ] && rm -rf "$workdir"
    if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
        echo
        echo "Left running (KEEP=1): containers $GITLAB and $CODO. Remove them with:"
        echo "  docker rm -f $GITLAB $CODO"
    else
        remove_containers
        [ "$rc" = 0 ] || echo "demo: failed (exit $rc); its containers are removed." >&2
    fi
    exit "$rc"
}

[ -x "$VENV_BIN/ansible-playbook" ] || die "no $VENV_BIN/ansible-playbook: run ./dev setup (or ./dev demo)"
docker info >/dev/null 2>&1 || die "the docker engine is not running"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run ./dev setup (or ./dev demo)"
if "$VENV_BIN/python" - "$PORT" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
then
    docker inspect "$CODO" >/dev/null 2>&1 || die "127.0.0.1:$PORT is taken by something else; DEMO_PORT=... ./dev demo"
fi

remove_containers  # a previous KEEP=1 run's, by name
trap finish EXIT
workdir=$(mktemp -d "${TMPDIR:-/tmp}/codo-demo.XXXXXX")

step "The platform's key, in an Ansible Vault file (as inventory.example/ says)"
"$VENV_BIN/python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from fakes.fake_codo import make_auth_key; print(make_auth_key(), end="")' "$ROOT/tests" >"$workdir/auth_key"
"$VENV_BIN/python" -c 'import secrets; print(secrets.token_urlsafe(16))' >"$workdir/vault-pass"
mkdir -p "$workdir/inventory/group_vars/gitlab"
printf 'vault_codo_hooks_auth_key: "%s"\n' "$(cat "$workdir/auth_key")" >"$workdir/inventory/group_vars/gitlab/vault.yml"
"$VENV_BIN/ansible-vault" encrypt --vault-password-file "$workdir/vault-pass" \
    "$workdir/inventory/group_vars/gitlab/vault.yml" >/dev/null
head -1 "$workdir/inventory/group_vars/gitlab/vault.yml"
echo "(ansible-vault encrypt; the playbook runs with --vault-password-file)"

step "The fake CODO platform on 127.0.0.1:$PORT ($CODO)"
docker create --name "$CODO" --network host "$IMAGE" \
    python3 /opt/fake_codo.py --port "$PORT" --auth-key-file /opt/auth_key --template 32:1 >/dev/null
docker cp "$ROOT/tests/fakes/fake_codo.py" "$CODO:/opt/fake_codo.py"
docker cp "$workdir/auth_key" "$CODO:/opt/auth_key"
docker start "$CODO" >/dev/null
for _ in $(seq 50); do
    "$VENV_BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/_fake/tasks', timeout=1)" \
        2>/dev/null && break
    sleep 0.2
done
"$VENV_BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/_fake/tasks', timeout=1)" \
    || die "the fake platform did not start: docker logs $CODO"
echo "listening; it accepts exactly the key above and knows template 32 (host group 1)"

step "A GitLab-like server ($GITLAB): git user, $STORAGE, project ops/dbtt (id 1)"
docker run -d --name "$GITLAB" --network host "$IMAGE" sleep infinity >/dev/null
in_gitlab sh -euc "
    groupadd --system git
    useradd --system -g git -d /var/opt/gitlab -s /bin/sh git
    mkdir -p $STORAGE /opt/demo
    chown -R git:git /var/opt/gitlab
"
docker cp "$ROOT/tests/fakes/gitaly_runner.py" "$GITLAB:/opt/demo/gitaly_runner.py"
as_git git config --global user.name Developer
as_git git config --global user.email dev@example.com
as_git git init --quiet --bare "$REPO"
as_git python3 /opt/demo/gitaly_runner.py install "$REPO" --project-path ops/dbtt --project-id 1
echo "$REPO"

step "ansible-playbook playbooks/deploy-hooks.yml (the real one), demo inventory"
cat >"$workdir/inventory/hosts.yml" <<EOF
gitlab:
  hosts:
    $GITLAB:
      ansible_connection: community.docker.docker
# The playbook's other play (the executor's keys) is not part of this demo.
codo_targets:
  hosts: {}
EOF
cat >"$workdir/inventory/group_vars/gitlab/main.yml" <<EOF
codo_hooks_codo_url: http://127.0.0.1:$PORT
codo_hooks_auth_key: "{{ vault_codo_hooks_auth_key }}"
# The article's DBTT example: both tag families to template 32.
codo_hooks_projects:
  - path: ops/dbtt
    id: 1
    git_url: git@gitlab.example.com:ops/dbtt.git
    app_name: DBTT
    task_name: DBTT
    rules:
      - tag: '\\Aqa-dbtt[\\w]*'
        template_id: 32
        schedule: ready
        hosts: {"1": [118.25.0.10]}
      - tag: '\\Arelease-dbtt[\\w]*'
        template_id: 32
        schedule: ready
        hosts: {"1": [118.25.0.10]}
EOF
sed 's/^/    /' "$workdir/inventory/group_vars/gitlab/main.yml"
(
    cd "$ROOT"
    ANSIBLE_CONFIG="$ROOT/ansible.cfg" ANSIBLE_ROLES_PATH="$ROOT/roles" ANSIBLE_PIPELINING=true \
        ANSIBLE_DISPLAY_SKIPPED_HOSTS=false \
        "$VENV_BIN/ansible-playbook" -i "$workdir/inventory" --vault-password-file "$workdir/vault-pass" \
        playbooks/deploy-hooks.yml
)

step "What the role installed in the project"
in_gitlab ls -l "$REPO/custom_hooks" "$REPO/custom_hooks/pre-receive.d" "$REPO/custom_hooks/post-receive.d"

step "A developer releases: git tag $TAG && git push origin $TAG"
as_git git init --quiet /var/opt/gitlab/work
as_git git -C /var/opt/gitlab/work remote add origin "$REPO"
as_git git -C /var/opt/gitlab/work commit --quiet --allow-empty -m "Release the server"
as_git git -C /var/opt/gitlab/work push --quiet origin HEAD:main
as_git git -C /var/opt/gitlab/work tag "$TAG"
as_git git -C /var/opt/gitlab/work push origin "$TAG"

step "The task the platform received"
"$VENV_BIN/python" - "$PORT" <<'PY'
import json, sys, urllib.request
tasks = json.load(urllib.request.urlopen("http://127.0.0.1:%s/_fake/tasks" % sys.argv[1], timeout=5))
if len(tasks) != 1:
    sys.exit("demo: expected one task, the platform has %d" % len(tasks))
task = tasks[0]
print("task %s, created by POST %s with this body:" % (task["list_id"], task["path"]))
print(json.dumps(json.loads(task["raw_body"]), indent=2, ensure_ascii=False))
PY

hook=/opt/codo-release/codo_release_hook.py
config=$REPO/custom_hooks/codo-release.json
step "What to try next"
if [ "$KEEP" = 1 ]; then
    pre="docker exec -u git $GITLAB"
    cat <<EOF
  Check a project's config (every problem listed, exit 2):
    $pre $hook check-config $config
  See what a tag would send, key masked, sending nothing:
    $pre $hook match --project ops/dbtt --config $config qa-dbtt-20190320-01
  Push a tag a rule matches but whose name would run a command on the execution hosts:
    $pre sh -c 'cd ~/work && t="release-dbtt-\\\$(id)" && git tag "\$t" && git push origin "\$t"'
  What the spool holds (the timer resends it every minute):
    $pre $hook status --state-dir /var/opt/codo-release
  The tasks the platform has:
    curl -s http://127.0.0.1:$PORT/_fake/tasks
EOF
else
    echo "  Run it again as KEEP=1 ./dev demo to keep both containers and try, inside $GITLAB as git:"
    echo "    $hook check-config $config"
    echo "    $hook match --project ops/dbtt --config $config qa-dbtt-20190320-01"
    echo "    an unsafe tag: git tag 'release-dbtt-\$(id)' && git push origin 'release-dbtt-\$(id)' (refused)"
fi
