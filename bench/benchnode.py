"""What the role benches share: one container of the test image as the GitLab node, inventories
for it, timed runs of playbooks/deploy-hooks.yml, and the table of ratios they print.

Imported by bench/bench_role.py and bench/bench_methods.py (run as scripts, their directory is
on sys.path). Not a script itself.
"""

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "codo-hooks-node:test"
# The Omnibus storage: the role's codo_hooks_repositories_root default.
STORAGE = "/var/opt/gitlab/git-data/repositories"
# What the role installs outside the projects' hooks.
SERVER_WIDE = [
    "/opt/codo-release",
    "/etc/codo-release",
    "/var/opt/codo-release",
    "/etc/cron.d/codo-release-flush",
]
# The size sets' ids start this far apart: no size may be larger.
ID_STRIDE = 10000
RECAP = re.compile(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)\b")


def hashed_path(project_id):
    """A project's repository in hashed storage, relative to the storage."""
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def ids_for(size, index):
    """Project ids of the index-th size's set, overlapping no other set's: 1..10, 10001..10100,
    20001..21000 for sizes 10, 100, 1000."""
    if size > ID_STRIDE:
        sys.exit("bench: at most {} projects a size, not {}".format(ID_STRIDE, size))
    start = 1 if index == 0 else index * ID_STRIDE + 1
    return list(range(start, start + size))


def docker(*args, stdin=None):
    """Runs `docker ARGS` (stdin: text for its standard input); its output, or the bench stops."""
    run = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        sys.exit(
            "bench: docker {} failed: {}".format(" ".join(args[:3]), (run.stderr or "").strip())
        )
    return run.stdout


def in_container(container, script, stdin=None):
    """Runs a `sh -eu` script as root in the container; its output."""
    interactive = ["-i"] if stdin is not None else []
    return docker("exec", *interactive, container, "sh", "-euc", script, stdin=stdin)


def start_node(container, project_ids):
    """A fresh container of IMAGE, with no network, made like a GitLab node: the git user and
    STORAGE with a repository for each project id (HEAD, objects/ and refs/, what the stand-in
    gitaly checks a repository by: git init is not what is measured)."""
    if subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, check=False
    ).returncode:
        sys.exit("bench: no image {}: run `make image` first".format(IMAGE))
    remove_node(container)
    docker(
        *("run", "-d", "--name", container, "--network", "none"),
        *("--label", "org.codo.scenario=bench", IMAGE, "sleep", "infinity"),
    )
    in_container(
        container,
        "groupadd --system git && useradd --system -g git -d /var/opt/gitlab -s /bin/sh git"
        " && mkdir -p {}".format(STORAGE),
    )
    paths = "".join(
        "{}/{}\n".format(STORAGE, hashed_path(project_id)) for project_id in project_ids
    )
    in_container(
        container,
        'while read -r repo; do mkdir -p "$repo/objects" "$repo/refs";'
        " echo 'ref: refs/heads/main' > \"$repo/HEAD\"; done"
        " && chown -R git:git /var/opt/gitlab",
        stdin=paths,
    )


PLATFORM_PORT = 18099


def start_platform(container):
    """The fake platform (tests/fakes/fake_codo.py, standard library only) in the node's container,
    on its loopback, templates 32 and 33: the role's probe asks it as it would ask the real one.
    Returns the key it accepts."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from fakes.fake_codo import make_auth_key

    key = make_auth_key()
    docker("cp", os.path.join(ROOT, "tests", "fakes", "fake_codo.py"), container + ":/opt/fake_codo.py")
    in_container(container, "umask 077 && cat > /opt/fake_key", stdin=key)
    docker(
        *("exec", "-d", container, "python3", "/opt/fake_codo.py", "--port", str(PLATFORM_PORT)),
        *("--auth-key-file", "/opt/fake_key", "--template", "32:1", "--template", "33:1"),
    )
    in_container(
        container,
        "for i in $(seq 50); do python3 -c 'import urllib.request; urllib.request.urlopen("
        '"http://127.0.0.1:{}/_fake/tasks", timeout=1)\' 2>/dev/null && exit 0; sleep 0.2; done;'
        " echo the fake platform did not start >&2; exit 1".format(PLATFORM_PORT),
    )
    return key


def remove_node(container):
    subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)


def write_inventory(directory, container, project_ids, group_vars, platform_key=None):
    """An inventory in directory: the container alone in the gitlab group, with the projects of
    project_ids (two rules each), the bench's platform settings and group_vars; the directory.
    With platform_key (start_platform's), the role's probe asks that platform, as by default."""
    os.makedirs(os.path.join(directory, "group_vars"), exist_ok=True)
    hosts = {"gitlab": {"hosts": {container: {"ansible_connection": "community.docker.docker"}}}}
    projects = [
        {
            "path": "bench/p{}".format(project_id),
            "id": project_id,
            "git_url": "git@gitlab.example.com:bench/p{}.git".format(project_id),
            "app_name": "P{}".format(project_id),
            "rules": [
                {"tag": r"\Arelease-", "template_id": 32, "hosts": {"1": ["10.0.0.1", "10.0.0.2"]}},
                {
                    "tag": r"\Aqa-",
                    "template_id": 33,
                    "schedule": "new",
                    "hosts": {"1": ["10.0.0.3"]},
                },
            ],
        }
        for project_id in project_ids
    ]
    all_vars = {
        "codo_hooks_codo_url": "http://127.0.0.1:{}".format(PLATFORM_PORT),
        "codo_hooks_auth_key": platform_key
        or "eyJ0eXAiOiJKV1QifQ.eyJkYXRhIjp7InVzZXJfaWQiOjF9fQ.bench-key-not-a-secret",
        "codo_hooks_projects": projects,
        # Without a platform in the container (it has no network), the role's own cost only.
        "codo_hooks_probe_platform": platform_key is not None,
    }
    all_vars.update(group_vars)
    # JSON is YAML: no PyYAML needed here.
    with open(os.path.join(directory, "hosts.yml"), "w", encoding="utf-8") as handle:
        json.dump(hosts, handle)
    with open(os.path.join(directory, "group_vars", "gitlab.yml"), "w", encoding="utf-8") as handle:
        json.dump(all_vars, handle)
    return directory


def find_ansible_playbook():
    """The ansible-playbook next to this Python (.venv's), else the first on PATH."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("ansible-playbook", path=here) or shutil.which("ansible-playbook")
    if not found:
        sys.exit("bench: no ansible-playbook: run it with .venv/bin/python (make venv)")
    return found


def playbook_run(inventory, ansible_playbook, ran=None):
    """Runs playbooks/deploy-hooks.yml on the inventory: (seconds, changed count from the recap,
    names of the changed tasks); a failed run stops the bench. ran: a list given is filled with
    the names of the tasks that ran (reported ok or changed)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"),
        ANSIBLE_PIPELINING="true",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_DISPLAY_SKIPPED_HOSTS="false",
    )
    command = [
        ansible_playbook,
        "-i",
        inventory,
        os.path.join(ROOT, "playbooks", "deploy-hooks.yml"),
    ]
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-6000:] + run.stderr[-2000:])
        sys.exit("bench: ansible-playbook failed ({})".format(inventory))
    recap = [match for match in map(RECAP.match, run.stdout.splitlines()) if match]
    changed = sum(int(match.group(1)) for match in recap) if recap else -1
    if ran is not None:
        ran.extend(ran_tasks(run.stdout))
    return elapsed, changed, changed_tasks(run.stdout)


def ran_tasks(output):
    """The names of the tasks that ran (ok or changed, not skipped), from the default callback."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].split("]")[0]
        elif line.startswith(("ok: [", "changed: [")) and task:
            names.append(task)
    return names


def changed_tasks(output):
    """The names of the tasks that reported a change, from the default callback's output."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].split("]")[0]
        elif line.startswith("changed:") and task and task not in names:
            names.append(task)
    return names


def rerun(inventory, ansible_playbook, what):
    """A run that must change nothing: its seconds; a change stops the bench."""
    elapsed, changed, tasks = playbook_run(inventory, ansible_playbook)
    if changed != 0:
        sys.exit(
            "bench: the rerun of {} changed {} task(s): {} (not idempotent, or files/ changed"
            " during the bench)".format(what, changed, "; ".join(tasks))
        )
    return elapsed


def rerun_ratio(reruns, sizes):
    """The lowest rerun time at the largest (last) size over that at the smallest (first)."""
    return min(reruns[sizes[-1]]) / min(reruns[sizes[0]])


def ratio_table(sizes, results):
    """The lines of a Markdown table: converge and rerun seconds of each size and their ratios to
    the first size's. results maps a name (an install method), or None for no name column, to
    (converge, reruns): converge[size] is (seconds, changed), reruns[size] the rerun seconds."""
    base = sizes[0]
    named = any(name is not None for name in results)
    header = ["method"] if named else []
    header += ["projects", "converge s", "x converge({})".format(base)]
    header += ["rerun s (min)", "rerun s (median)", "x rerun({})".format(base)]
    rule = "|" + "|".join((["---"] if named else []) + ["---:"] * 6) + "|"
    lines = [header]
    for name, (converge, reruns) in results.items():
        for size in sizes:
            best = min(reruns[size])
            lines.append(
                ([name] if named else [])
                + [str(size), "{:.1f}".format(converge[size][0])]
                + ["{:.2f}".format(converge[size][0] / converge[base][0]), "{:.1f}".format(best)]
                + ["{:.1f}".format(statistics.median(reruns[size]))]
                + ["{:.2f}".format(best / min(reruns[base]))]
            )
    rows = ["| " + " | ".join(cells) + " |" for cells in lines]
    return rows[:1] + [rule] + rows[1:]
