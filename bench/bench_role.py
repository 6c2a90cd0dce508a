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
Not a timed test: CI does not run it. Shared with bench_methods.py: bench/benchnode.py.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import benchnode
from benchnode import IMAGE, SERVER_WIDE

CONTAINER = "codo-bench-node"
TARGET_RATIO = 3.0


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
    ansible_playbook = benchnode.find_ansible_playbook()
    project_sets = {size: benchnode.ids_for(size, index) for index, size in enumerate(sizes)}
    workdir = tempfile.mkdtemp(prefix="codo-bench-")
    print(
        "bench: {} ({}), node {} from {}".format(
            ansible_playbook, _version(ansible_playbook), CONTAINER, IMAGE
        )
    )
    try:
        benchnode.start_node(
            CONTAINER, [project_id for ids in project_sets.values() for project_id in ids]
        )
        inventories = {
            size: benchnode.write_inventory(os.path.join(workdir, str(size)), CONTAINER, ids, {})
            for size, ids in project_sets.items()
        }
        converge = {}
        for size in sizes:
            benchnode.in_container(CONTAINER, "rm -rf " + " ".join(SERVER_WIDE))
            converge[size] = benchnode.playbook_run(inventories[size], ansible_playbook)[:2]
            print(
                "  converge {:>4} projects: {:6.1f} s, changed={}".format(size, *converge[size]),
                flush=True,
            )
        reruns = {size: [] for size in sizes}
        for turn in range(args.reruns):
            for size in sizes:
                what = "{} projects".format(size)
                reruns[size].append(benchnode.rerun(inventories[size], ansible_playbook, what))
            print(
                "  rerun turn {}/{}: {}".format(turn + 1, args.reruns, _times(sizes, reruns)),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            benchnode.remove_node(CONTAINER)
    return report(sizes, converge, reruns, args.strict)


def report(sizes, converge, reruns, strict):
    print()
    print("\n".join(benchnode.ratio_table(sizes, {None: (converge, reruns)})))
    ratio = benchnode.rerun_ratio(reruns, sizes)
    met = ratio <= TARGET_RATIO
    print()
    print(
        "target: the {}-project rerun within {:.0f}x of the {}-project rerun: {:.2f}x, {}".format(
            sizes[-1], TARGET_RATIO, sizes[0], ratio, "met" if met else "NOT MET"
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
