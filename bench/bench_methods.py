#!/usr/bin/env python3
"""How each install method of the codo_hooks role scales: converge and no-change rerun.

    .venv/bin/python bench/bench_methods.py [--sizes 10,100,1000] [--methods files,gitaly,global]
                                            [--reruns 3] [--keep]

Runs the real playbooks/deploy-hooks.yml with .venv's ansible-playbook against one container
of the test image (codo-hooks-node:test, `make image`) named codo-bench-methods, with no
network, made like an Omnibus Gitaly node: the git user, a storage whose repositories are
bare enough for the stand-in `gitaly` command (tests/fakes/fake_gitaly.py, installed as
/opt/gitlab/embedded/bin/gitaly) and Gitaly's config.toml with a custom_hooks_dir.

For each method and size: everything any method installed is removed, the size's projects
(ids that do not overlap) are converged from nothing, then rerun with no change --reruns
times; the lowest rerun time of each size is compared (other load only ever adds time). A
rerun that changes anything, or runs `gitaly hooks set`, stops the bench.

Targets (issue 5): the `global` rerun at the largest size within 2x of its rerun at the
smallest; `gitaly` and `files` within 5x. Prints a table; exit 0 whatever the numbers
(--strict: exit 1 if a target is missed). Not a timed test: CI does not run it.
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
CONTAINER = "codo-bench-methods"
STORAGE = "/var/opt/gitlab/git-data/repositories"
GITALY_DIR = "/var/opt/gitlab/gitaly"
GLOBAL_DIR = GITALY_DIR + "/custom_hooks"
TARGETS = {"global": 2.0, "gitaly": 5.0, "files": 5.0}
GITALY_CONFIG = """\
bin_dir = "/opt/gitlab/embedded/bin"
socket_path = "{gitaly}/gitaly.socket"

[logging]
dir = "/var/log/gitlab/gitaly"

[hooks]
custom_hooks_dir = "{global_dir}"

[[storage]]
name = "default"
path = "{storage}"
""".format(gitaly=GITALY_DIR, global_dir=GLOBAL_DIR, storage=STORAGE)


def hashed_path(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def ids_for(size, index):
    """Project ids of one size's set: 1..10, 1001..1100, 2001..3000 for sizes 10, 100, 1000."""
    start = 1 if index == 0 else index * 10000 + 1
    return list(range(start, start + size))


def docker(*args, stdin=None):
    run = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit("bench: docker {} failed: {}".format(" ".join(args[:3]), (run.stderr or "").strip()))
    return run.stdout


def in_container(script, stdin=None):
    return docker("exec", "-i", CONTAINER, "sh", "-euc", script, stdin=stdin)


def start_node(all_ids):
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        sys.exit("bench: no image {}: run `make image` first".format(IMAGE))
    remove_node()
    docker("run", "-d", "--name", CONTAINER, "--network", "none", "--label", "org.codo.scenario=bench",
           IMAGE, "sleep", "infinity")
    in_container(
        "groupadd --system git && useradd --system -g git -d /var/opt/gitlab -s /bin/sh git"
        " && mkdir -p {storage} {gitaly} /var/log/gitlab/gitaly /opt/gitlab/embedded/bin"
        " && chown -R git:git /var/opt/gitlab /var/log/gitlab/gitaly".format(storage=STORAGE, gitaly=GITALY_DIR)
    )
    with open(os.path.join(ROOT, "tests", "fakes", "fake_gitaly.py"), encoding="utf-8") as handle:
        in_container("cat > /opt/gitlab/embedded/bin/gitaly && chmod 0755 /opt/gitlab/embedded/bin/gitaly",
                     stdin=handle.read())
    in_container("cat > {0}/config.toml && chown root:git {0}/config.toml && chmod 0640 {0}/config.toml".format(GITALY_DIR),
                 stdin=GITALY_CONFIG)
    # What the stand-in checks a repository by (HEAD and objects/): git init is not what is measured.
    paths = "\n".join(STORAGE + "/" + hashed_path(project_id) for project_id in all_ids)
    in_container(
        "while read -r repo; do mkdir -p \"$repo/objects\" \"$repo/refs\";"
        " echo 'ref: refs/heads/main' > \"$repo/HEAD\"; done && chown -R git:git {}".format(STORAGE),
        stdin=paths + "\n",
    )


def reset_node():
    """Remove what any method installed, so the next converge starts from nothing."""
    in_container(
        "find {storage} -mindepth 4 -maxdepth 5 -name custom_hooks -prune -exec rm -rf {{}} +;"
        " rm -rf {global_dir} /opt/codo-hooks /etc/codo-hooks /var/opt/codo-hooks /etc/cron.d/codo-hooks-flush"
        " /var/log/gitlab/gitaly/fake-gitaly-hooks-set.log".format(storage=STORAGE, global_dir=GLOBAL_DIR)
    )


def sets_sent():
    """How many times the stand-in's `hooks set` ran since the last reset."""
    out = in_container("cat /var/log/gitlab/gitaly/fake-gitaly-hooks-set.log 2>/dev/null || true")
    return len(out.splitlines())


def remove_node():
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def write_inventory(directory, project_ids, method):
    os.makedirs(os.path.join(directory, "group_vars"), exist_ok=True)
    hosts = {"gitlab": {"hosts": {CONTAINER: {"ansible_connection": "community.docker.docker"}}}}
    projects = [
        {
            "path": "bench/p{}".format(project_id),
            "id": project_id,
            "git_url": "git@gitlab.example.com:bench/p{}.git".format(project_id),
            "app_name": "P{}".format(project_id),
            "rules": [
                {"tag": r"\Arelease-", "template_id": 32, "hosts": {"1": ["10.0.0.1", "10.0.0.2"]}},
                {"tag": r"\Aqa-", "template_id": 33, "schedule": "new", "hosts": {"1": ["10.0.0.3"]}},
            ],
        }
        for project_id in project_ids
    ]
    group_vars = {
        "codo_hooks_install_method": method,
        "codo_hooks_codo_url": "http://127.0.0.1:18099",
        "codo_hooks_auth_key": "bench-key-not-a-secret",
        "codo_hooks_manage_packages": False,
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
    command = [ansible_playbook, "-i", inventory, os.path.join(ROOT, "playbooks", "deploy-hooks.yml")]
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-6000:] + run.stderr[-2000:])
        sys.exit("bench: ansible-playbook failed ({})".format(inventory))
    recap = [line for line in run.stdout.splitlines() if line.startswith(CONTAINER + " ")]
    changed = int(recap[-1].split("changed=")[1].split()[0]) if recap else -1
    return elapsed, changed


def bench_method(method, sizes, reruns, workdir, ansible_playbook):
    """Each size from nothing: converge, then its no-change reruns (one server-wide config per node:
    the sizes of the global method cannot be installed side by side, so none are)."""
    converge, times = {}, {}
    for index, size in enumerate(sizes):
        inventory = write_inventory(os.path.join(workdir, method, str(size)), ids_for(size, index), method)
        reset_node()
        converge[size] = playbook_run(inventory, ansible_playbook)
        sent = sets_sent()
        times[size] = []
        for _ in range(reruns):
            elapsed, changed = playbook_run(inventory, ansible_playbook)
            if changed != 0:
                sys.exit("bench: the {} rerun of {} projects changed {} task(s): not idempotent".format(method, size, changed))
            times[size].append(elapsed)
        if sets_sent() != sent:
            sys.exit("bench: a {} rerun of {} projects ran `gitaly hooks set` {} time(s)".format(method, size, sets_sent() - sent))
        print("  {:<6} {:>5} projects: converge {:7.1f} s (changed={}), reruns {}".format(
            method, size, converge[size][0], converge[size][1], ", ".join("{:.1f}".format(t) for t in times[size])),
            flush=True)
    return converge, times


def report(results, sizes, strict):
    small, large = sizes[0], sizes[-1]
    print()
    print("| method | projects | converge s | x converge({0}) | rerun s (min) | rerun s (median) | x rerun({0}) |".format(small))
    print("|---|---:|---:|---:|---:|---:|---:|")
    missed = []
    for method, (converge, times) in results.items():
        for size in sizes:
            print("| {} | {} | {:.1f} | {:.2f} | {:.1f} | {:.1f} | {:.2f} |".format(
                method, size, converge[size][0], converge[size][0] / converge[small][0], min(times[size]),
                statistics.median(times[size]), min(times[size]) / min(times[small])))
    print()
    for method, (_, times) in results.items():
        ratio = min(times[large]) / min(times[small])
        target = TARGETS.get(method)
        met = target is None or ratio <= target
        if not met:
            missed.append(method)
        print("target {}: rerun at {} within {}x of rerun at {}: {:.2f}x, {}".format(
            method, large, target, small, ratio, "met" if met else "NOT MET"))
    return 1 if strict and missed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="project counts (default: 10,100,1000)")
    parser.add_argument("--methods", default="files,gitaly,global", help="install methods (default: all three)")
    parser.add_argument("--reruns", type=int, default=3, help="no-change reruns of each size (default: 3)")
    parser.add_argument("--keep", action="store_true", help="leave the container {} running".format(CONTAINER))
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    methods = args.methods.split(",")
    ansible_playbook = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which(
        "ansible-playbook")
    if not ansible_playbook:
        sys.exit("bench: no ansible-playbook: run it with .venv/bin/python (make venv)")
    workdir = tempfile.mkdtemp(prefix="codo-bench-methods-")
    print("bench: {}, node {} from {}, {} CPU(s)".format(ansible_playbook, CONTAINER, IMAGE, os.cpu_count()))
    results = {}
    started = time.perf_counter()
    try:
        start_node([project_id for index, size in enumerate(sizes) for project_id in ids_for(size, index)])
        for method in methods:
            results[method] = bench_method(method, sizes, args.reruns, workdir, ansible_playbook)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            remove_node()
    print("bench: {:.0f} s in all".format(time.perf_counter() - started))
    return report(results, sizes, args.strict)


if __name__ == "__main__":
    sys.exit(main())
