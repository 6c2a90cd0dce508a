#!/usr/bin/env python3
"""What a no-change rerun of playbooks/deploy-hooks.yml costs: against the least play, and by size.

    .venv/bin/python bench/bench_rerun.py [--sizes 1,200,1000] [--turns 3] [--keep]

Runs the real playbooks/deploy-hooks.yml (files method) with .venv's ansible-playbook against one
container of the test image (codo-hooks-node:test, `make image`) named codo-bench-rerun, with no
network. Each size gets its own projects; each is converged from nothing (the first install of the
largest size is timed, with the task results it made on the node). Then, in turns so that other
load on the machine hits each alike:
  - the least play that reaches the node: `setup` with gather_subset [min] and one `stat`;
  - the no-change rerun at each size.
The lowest time of each is compared (load only ever adds time).

Targets (issue 12): the 1-project rerun within 2x of the least play; the 1,000-project rerun
within 1.5x of the 1-project one, the 200-project one within 1.2x.
Prints a table; exit 0 whatever the numbers (--strict: exit 1 if a target is missed).
Not a timed test: CI does not run it. Shared with the other benches: bench/benchnode.py.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import benchnode
from benchnode import IMAGE, ROOT, SERVER_WIDE

CONTAINER = "codo-bench-rerun"
LEAST_PLAY = """\
- name: The least play that reaches the node
  hosts: gitlab
  gather_facts: false
  tasks:
    - name: Gather the minimal facts
      ansible.builtin.setup:
        gather_subset: [min]
    - name: Look at one path
      ansible.builtin.stat:
        path: /etc/hostname
"""
TARGETS = {"least": 2.0, 200: 1.2, 1000: 1.5}


def least_run(inventory, playbook, ansible_playbook):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_PIPELINING="true")
    started = time.perf_counter()
    run = subprocess.run(
        [ansible_playbook, "-i", inventory, playbook], env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit("bench: the least play failed:\n" + run.stdout[-3000:] + run.stderr[-2000:])
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,200,1000", help="project counts, smallest first (default: 1,200,1000)")
    parser.add_argument("--turns", type=int, default=3, help="timed turns (default: 3)")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="no fake platform in the container: the runs without the role's probe (on by default)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    ansible_playbook = benchnode.find_ansible_playbook()
    project_sets = {size: benchnode.ids_for(size, index) for index, size in enumerate(sizes)}
    workdir = tempfile.mkdtemp(prefix="codo-bench-rerun-")
    print("bench: {}, node {} from {}, tree {}".format(ansible_playbook, CONTAINER, IMAGE, ROOT))
    try:
        benchnode.start_node(CONTAINER, [i for ids in project_sets.values() for i in ids])
        key = None if args.no_probe else benchnode.start_platform(CONTAINER)
        print("bench: the role's probe is {}".format("off" if args.no_probe else "on (fake platform in the node)"))
        inventories = {
            size: benchnode.write_inventory(os.path.join(workdir, str(size)), CONTAINER, ids, {}, key)
            for size, ids in project_sets.items()
        }
        least = os.path.join(workdir, "least.yml")
        with open(least, "w", encoding="utf-8") as handle:
            handle.write(LEAST_PLAY)
        converge = {}
        for size in sizes:
            benchnode.in_container(CONTAINER, "rm -rf " + " ".join(SERVER_WIDE))
            ran = []
            seconds, changed, _ = benchnode.playbook_run(inventories[size], ansible_playbook, ran)
            converge[size] = seconds
            print("  converge {:>5} projects: {:6.1f} s, changed={}".format(size, seconds, changed), flush=True)
            # Tasks that ran (skipped ones not): each that reaches the node is one round trip.
            print("    {} tasks ran: {}".format(len(ran), "; ".join(ran)), flush=True)
        times = {"least": []}
        times.update({size: [] for size in sizes})
        for turn in range(args.turns):
            times["least"].append(least_run(inventories[sizes[0]], least, ansible_playbook))
            for size in sizes:
                times[size].append(benchnode.rerun(inventories[size], ansible_playbook, "{} projects".format(size)))
            print(
                "  turn {}/{}: ".format(turn + 1, args.turns)
                + ", ".join("{}: {:.1f} s".format(k, v[-1]) for k, v in times.items()),
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            benchnode.remove_node(CONTAINER)
    return report(sizes, converge, times, args.strict)


def report(sizes, converge, times, strict):
    best = {key: min(values) for key, values in times.items()}
    one = sizes[0]
    print()
    print("| run | converge s | no-change rerun s (min) | ratio | target |")
    print("|---|---:|---:|---:|---|")
    print("| least play (setup min + stat) | | {:.1f} | 1.00 | |".format(best["least"]))
    missed = []
    ratio = best[one] / best["least"]
    met = ratio <= TARGETS["least"]
    missed += [] if met else ["least"]
    print("| deploy-hooks.yml, {} project(s) | {:.1f} | {:.1f} | {:.2f} x least | 2x: {} |".format(
        one, converge[one], best[one], ratio, "met" if met else "NOT MET"))
    for size in sizes[1:]:
        ratio = best[size] / best[one]
        target = TARGETS.get(size)
        verdict = ""
        if target:
            met = ratio <= target
            verdict = "{}x: {}".format(target, "met" if met else "NOT MET")
            missed += [] if met else [size]
        print("| deploy-hooks.yml, {} projects | {:.1f} | {:.1f} | {:.2f} x {} project | {} |".format(
            size, converge[size], best[size], ratio, one, verdict))
    return 1 if strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
