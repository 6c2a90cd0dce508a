#!/usr/bin/env python3
"""How the codo_hooks role scales with the number of projects: converge and no-change rerun.

    .venv/bin/python bench/bench_role.py [--sizes 1,50,200] [--reruns 5] [--keep]

Runs the real playbooks/deploy-hooks.yml with .venv's ansible-playbook against one
container of the test image (codo-hooks-node:test, `make image`) named codo-bench-node,
with no network. Each size gets its own projects (ids that do not overlap), so each
converge starts from nothing: the server-wide files are removed before it too.
Then the no-change reruns of all sizes are timed in turns (1, 50, 200, 1, 50, ...)
so that other load on the machine hits every size alike; the lowest time of each
size is compared (load only ever adds time).

Target (issue 3): the 200-project rerun within 3x of the 1-project rerun.
Prints a table; exit 0 whatever the numbers (--strict: exit 1 if the target is missed).
Not a timed test: CI does not run it.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "codo-hooks-node:test"
CONTAINER = "codo-bench-node"
STORAGE = "/var/opt/gitlab/git-data/repositories"
TARGET_RATIO = 3.0
SERVER_WIDE = [
    "/opt/codo-hooks",
    "/etc/codo-hooks",
    "/var/opt/codo-hooks",
    "/etc/cron.d/codo-hooks-flush",
]


def hashed_path(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def ids_for(size, index):
    """Project ids of one size's set: 1..1, 1001..1050, 2001..2200 for sizes 1, 50, 200."""
    start = 1 if index == 0 else index * 1000 + 1
    return list(range(start, start + size))


def docker(*args, capture=True):
    run = subprocess.run(
        ["docker", *args],
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        sys.exit(
            "bench: docker {} failed: {}".format(" ".join(args[:2]), (run.stderr or "").strip())
        )
    return run.stdout


def in_container(script):
    return docker("exec", CONTAINER, "sh", "-euc", script)


def start_node(all_ids):
    if subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, check=False
    ).returncode:
        sys.exit("bench: no image {}: run `make image` first".format(IMAGE))
    remove_node()
    docker("run", "-d", "--name", CONTAINER, "--network", "none", IMAGE, "sleep", "infinity")
    in_container(
        "groupadd --system git && useradd --system -g git -d /var/opt/gitlab -s /bin/sh git"
        " && mkdir -p {0} && chown -R git:git /var/opt/gitlab".format(STORAGE)
    )
    # A repository directory is all the role needs to find; git init is not what is measured.
    paths = " ".join("{}/{}".format(STORAGE, hashed_path(project_id)) for project_id in all_ids)
    in_container("mkdir -p {0} && chown -R git:git {1}".format(paths, STORAGE))


def remove_node():
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def write_inventory(directory, project_ids):
    os.makedirs(os.path.join(directory, "group_vars"), exist_ok=True)
    hosts = {
        "gitlab": {
            "hosts": {CONTAINER: {"ansible_connection": "community.docker.docker"}},
        }
    }
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
    group_vars = {
        "codo_hooks_codo_url": "http://127.0.0.1:18099",
        "codo_hooks_auth_key": "bench-key-not-a-secret",
        "codo_hooks_projects": projects,
    }
    # JSON is YAML: no PyYAML needed here.
    with open(os.path.join(directory, "hosts.yml"), "w", encoding="utf-8") as handle:
        json.dump(hosts, handle)
    with open(os.path.join(directory, "group_vars", "gitlab.yml"), "w", encoding="utf-8") as handle:
        json.dump(group_vars, handle)
    return directory


def playbook_run(inventory, ansible_playbook):
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
        sys.stderr.write(run.stdout[-4000:] + run.stderr[-2000:])
        sys.exit("bench: ansible-playbook failed ({})".format(inventory))
    recap = [line for line in run.stdout.splitlines() if line.startswith(CONTAINER + " ")]
    changed = int(recap[-1].split("changed=")[1].split()[0]) if recap else -1
    return elapsed, changed, changed_tasks(run.stdout)


def changed_tasks(output):
    """The names of the tasks that reported a change, from the default callback's output."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].split("]")[0]
        elif line.startswith("changed:") and task and task not in names:
            names.append(task)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,50,200", help="project counts (default: 1,50,200)")
    parser.add_argument(
        "--reruns", type=int, default=5, help="no-change reruns of each size (default: 5)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the container codo-bench-node running"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if the rerun target is missed"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    ansible_playbook = shutil.which(
        "ansible-playbook", path=os.path.dirname(sys.executable)
    ) or shutil.which("ansible-playbook")
    if not ansible_playbook:
        sys.exit("bench: no ansible-playbook: run it with .venv/bin/python (make venv)")
    project_sets = {size: ids_for(size, index) for index, size in enumerate(sizes)}
    workdir = tempfile.mkdtemp(prefix="codo-bench-")
    print(
        "bench: {} ({}), node {} from {}".format(
            ansible_playbook, _version(ansible_playbook), CONTAINER, IMAGE
        )
    )
    try:
        start_node([project_id for ids in project_sets.values() for project_id in ids])
        inventories = {
            size: write_inventory(os.path.join(workdir, str(size)), ids)
            for size, ids in project_sets.items()
        }
        converge = {}
        for size in sizes:
            in_container("rm -rf " + " ".join(SERVER_WIDE))
            converge[size] = playbook_run(inventories[size], ansible_playbook)[:2]
            print(
                "  converge {:>4} projects: {:6.1f} s, changed={}".format(size, *converge[size]),
                flush=True,
            )
        reruns = {size: [] for size in sizes}
        for turn in range(args.reruns):
            for size in sizes:
                elapsed, changed, tasks = playbook_run(inventories[size], ansible_playbook)
                if changed != 0:
                    sys.exit(
                        "bench: the rerun of {} projects changed {} task(s): {} (not idempotent, or files/"
                        " changed during the bench)".format(size, changed, "; ".join(tasks))
                    )
                reruns[size].append(elapsed)
            print(
                "  rerun turn {}/{}: {}".format(turn + 1, args.reruns, _times(sizes, reruns)),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            remove_node()
    return report(sizes, converge, reruns, args.strict)


def report(sizes, converge, reruns, strict):
    base_converge, base_rerun = converge[sizes[0]][0], min(reruns[sizes[0]])
    print()
    print(
        "| projects | converge s | x converge({}) | rerun s (min) | rerun s (median) | x rerun({}) |".format(
            sizes[0], sizes[0]
        )
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        best = min(reruns[size])
        print(
            "| {} | {:.1f} | {:.2f} | {:.1f} | {:.1f} | {:.2f} |".format(
                size,
                converge[size][0],
                converge[size][0] / base_converge,
                best,
                statistics.median(reruns[size]),
                best / base_rerun,
            )
        )
    largest = sizes[-1]
    ratio = min(reruns[largest]) / base_rerun
    met = ratio <= TARGET_RATIO
    print()
    print(
        "target: the {}-project rerun within {:.0f}x of the {}-project rerun: {:.2f}x, {}".format(
            largest, TARGET_RATIO, sizes[0], ratio, "met" if met else "NOT MET"
        )
    )
    return 1 if strict and not met else 0


def _times(sizes, reruns):
    return ", ".join("{}: {:.1f} s".format(size, reruns[size][-1]) for size in sizes)


def _version(ansible_playbook):
    run = subprocess.run(
        [ansible_playbook, "--version"], capture_output=True, text=True, check=False
    )
    return run.stdout.splitlines()[0] if run.stdout else "?"


if __name__ == "__main__":
    sys.exit(main())
