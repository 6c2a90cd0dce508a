#!/usr/bin/env python3
"""What codo_hooks_status (playbooks/status.yml's read of one node) costs, by number of projects.

    sudo .venv/bin/python bench/bench_status.py [--sizes 10,1000] [--turns 3]

On this machine, as root, in a temporary directory: the hook program installed as the role
installs it, one bare repository directory per project (hashed storage), the projects' hooks
written by codo_hooks_projects (files method, this user as the git user), then
codo_hooks_status run the way Ansible runs it (tests/ansible_module.py: a Python process, the
arguments on stdin) at each size, in turns; the lowest time of each is compared (load only
ever adds time). The hook's `status --json` runs too (an empty spool).

Target (issue 15): the 1,000-project read within 3x of the 10-project one (one module call
either way: a Python start and the hook's status dominate; each project adds a few stats and a
read). Prints a table; exit 0 whatever the numbers (--strict: exit 1 if the target is missed).
Not a timed test: CI does not run it.
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ansible_module import run_module  # noqa: E402
from conftest import base_config, install_program  # noqa: E402

TARGET = 3.0


def hashed(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def node_args(top, size, first_id):
    storage = os.path.join(top, "storage")
    config = base_config("https://codo.example.com", os.path.join(top, "var"), "/etc/codo-hooks/auth_key")
    entry = config["projects"]["ops/dbtt"]
    projects = []
    for number in range(first_id, first_id + size):
        os.makedirs(os.path.join(storage, hashed(number)), exist_ok=True)
        projects.append(dict(entry, path="ops/p{}".format(number), id=number))
    return {
        "projects": projects,
        "hook": os.path.join(top, "opt", "codo_release_hook.py"),
        "codo": config["codo"],
        "settings": {"state_dir": os.path.join(top, "var"), "on_failure": "spool"},
        "repositories_root": storage,
        "git_user": "root",
        "git_group": "root",
    }


def prepare(top, size, first_id):
    install_program(os.path.join(top, "opt"))
    os.makedirs(os.path.join(top, "var"), mode=0o750, exist_ok=True)
    args = node_args(top, size, first_id)
    rc, result, stderr = run_module("codo_hooks_projects", args)
    if rc != 0:
        sys.exit("codo_hooks_projects failed: {} {}".format(result.get("msg"), stderr))
    return dict(args, install_dir=os.path.join(top, "opt"), state_dir=os.path.join(top, "var"))


def timed(args):
    started = time.monotonic()
    rc, result, stderr = run_module("codo_hooks_status", args)
    took = time.monotonic() - started
    if rc != 0 or result["differences"] or result["hooked"] != len(args["projects"]):
        sys.exit("codo_hooks_status did not read a matching node: {} {}".format(result, stderr))
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--strict", action="store_true")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_status.py: run it as root (the configs are root-owned, as on a GitLab node)")
    sizes = [int(size) for size in options.sizes.split(",")]
    top = tempfile.mkdtemp(prefix="codo-bench-status-")
    try:
        nodes = {}
        for index, size in enumerate(sizes):
            nodes[size] = prepare(os.path.join(top, str(size)), size, 1 + index * 100000)
        best = {size: float("inf") for size in sizes}
        for _ in range(options.turns):
            for size in sizes:
                best[size] = min(best[size], timed(nodes[size]))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print("{:>9}  {:>8}  {:>6}".format("projects", "seconds", "ratio"))
    for size in sizes:
        print("{:>9}  {:>8.2f}  {:>5.2f}x".format(size, best[size], best[size] / best[sizes[0]]))
    ratio = best[sizes[-1]] / best[sizes[0]]
    met = ratio <= TARGET
    print("target: {} projects within {:g}x of {}: {}".format(sizes[-1], TARGET, sizes[0], "met" if met else "MISSED"))
    return 1 if options.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
