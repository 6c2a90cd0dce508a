#!/usr/bin/env python3
"""How each install method of the codo_hooks role scales: converge and no-change rerun.

    .venv/bin/python bench/bench_methods.py [--sizes 10,100,1000] [--methods files,gitaly,global]
                                            [--reruns 3] [--keep]

Runs the real playbooks/deploy-hooks.yml with .venv's ansible-playbook against one container
of the test image (codo-hooks-node:test, `make image`) named codo-bench-methods, with no
network, made like an Omnibus Gitaly node: the git user, a storage whose repositories are
bare enough for the stand-in `gitaly` command (tests/fakes/fake_gitaly.py, installed as
/opt/gitlab/embedded/bin/gitaly) and Gitaly's /var/opt/gitlab/gitaly/config.toml with the
storage `default` and a custom_hooks_dir. The inventory gives the projects by `id` (hashed
storage), sets codo_hooks_install_method to the method benched, and names those paths in
codo_hooks_gitaly_command, codo_hooks_gitaly_config and codo_hooks_gitaly_storage (the role's
defaults); codo_hooks_global_dir stays empty, so the global method reads custom_hooks_dir from
Gitaly's config. Shared with bench_role.py: bench/benchnode.py.

For each method and size: everything any method installed is removed, the size's projects
(ids that do not overlap) are converged from nothing, then rerun with no change --reruns
times; the lowest rerun time of each size is compared (other load only ever adds time). A
rerun that changes anything, or runs `gitaly hooks set`, stops the bench.

Targets (issue 5): the `global` rerun at the largest size within 2x of its rerun at the
smallest; `gitaly` and `files` within 5x. Prints a table; exit 0 whatever the numbers
(--strict: exit 1 if a target is missed). Not a timed test: CI does not run it.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import benchnode
from benchnode import IMAGE, ROOT, SERVER_WIDE, STORAGE

CONTAINER = "codo-bench-methods"
# Where the node's Gitaly things are: the defaults of the role's variables named alongside,
# which the inventory sets all the same, so that the bench and the node agree whatever they become.
GITALY_COMMAND = "/opt/gitlab/embedded/bin/gitaly"  # codo_hooks_gitaly_command
GITALY_DIR = "/var/opt/gitlab/gitaly"
GITALY_CONFIG = GITALY_DIR + "/config.toml"  # codo_hooks_gitaly_config
GITALY_STORAGE = "default"  # codo_hooks_gitaly_storage
GITALY_LOG_DIR = "/var/log/gitlab/gitaly"
# Gitaly's custom_hooks_dir, named only in its config: codo_hooks_global_dir stays "" (read it there).
GLOBAL_DIR = GITALY_DIR + "/custom_hooks"
SETS_LOG = GITALY_LOG_DIR + "/fake-gitaly-hooks-set.log"  # the stand-in's record of `hooks set`
TARGETS = {"global": 2.0, "gitaly": 5.0, "files": 5.0}
GITALY_TOML = """\
bin_dir = "{bin_dir}"
socket_path = "{gitaly}/gitaly.socket"

[logging]
dir = "{log_dir}"

[hooks]
custom_hooks_dir = "{global_dir}"

[[storage]]
name = "{storage_name}"
path = "{storage}"
""".format(
    bin_dir=os.path.dirname(GITALY_COMMAND),
    gitaly=GITALY_DIR,
    log_dir=GITALY_LOG_DIR,
    global_dir=GLOBAL_DIR,
    storage_name=GITALY_STORAGE,
    storage=STORAGE,
)


def start_node(all_ids):
    """The bench's node, then the stand-in gitaly and Gitaly's config.toml on it."""
    benchnode.start_node(CONTAINER, all_ids)
    in_container(
        "mkdir -p {gitaly} {log_dir} {bin_dir} && chown git:git {gitaly} {log_dir}".format(
            gitaly=GITALY_DIR, log_dir=GITALY_LOG_DIR, bin_dir=os.path.dirname(GITALY_COMMAND)
        )
    )
    with open(os.path.join(ROOT, "tests", "fakes", "fake_gitaly.py"), encoding="utf-8") as handle:
        in_container("cat > {0} && chmod 0755 {0}".format(GITALY_COMMAND), stdin=handle.read())
    in_container(
        "cat > {0} && chown root:git {0} && chmod 0640 {0}".format(GITALY_CONFIG),
        stdin=GITALY_TOML,
    )


def in_container(script, stdin=None):
    return benchnode.in_container(CONTAINER, script, stdin=stdin)


def reset_node():
    """Remove what any method installed, so the next converge starts from nothing."""
    in_container(
        "find {storage} -mindepth 4 -maxdepth 5 -name custom_hooks -prune -exec rm -rf {{}} +;"
        " rm -rf {global_dir} {server_wide} {sets_log}".format(
            storage=STORAGE,
            global_dir=GLOBAL_DIR,
            server_wide=" ".join(SERVER_WIDE),
            sets_log=SETS_LOG,
        )
    )


def sets_sent():
    """How many times the stand-in's `hooks set` ran since the last reset."""
    return len(in_container("cat {} 2>/dev/null || true".format(SETS_LOG)).splitlines())


def write_inventory(directory, project_ids, method):
    return benchnode.write_inventory(
        directory,
        CONTAINER,
        project_ids,
        {
            "codo_hooks_install_method": method,
            "codo_hooks_manage_packages": False,
            "codo_hooks_repositories_root": STORAGE,
            "codo_hooks_gitaly_command": GITALY_COMMAND,
            "codo_hooks_gitaly_config": GITALY_CONFIG,
            "codo_hooks_gitaly_storage": GITALY_STORAGE,
            "codo_hooks_global_dir": "",
        },
    )


def bench_method(method, sizes, reruns, workdir, ansible_playbook):
    """Each size from nothing: converge, then its no-change reruns (one server-wide config per node:
    the sizes of the global method cannot be installed side by side, so none are)."""
    converge, times = {}, {}
    for index, size in enumerate(sizes):
        inventory = write_inventory(
            os.path.join(workdir, method, str(size)), benchnode.ids_for(size, index), method
        )
        reset_node()
        converge[size] = benchnode.playbook_run(inventory, ansible_playbook)[:2]
        sent = sets_sent()
        what = "{} projects ({})".format(size, method)
        times[size] = [benchnode.rerun(inventory, ansible_playbook, what) for _ in range(reruns)]
        if sets_sent() != sent:
            sys.exit(
                "bench: the reruns of {} ran `gitaly hooks set` {} time(s)".format(
                    what, sets_sent() - sent
                )
            )
        print(
            "  {:<6} {:>5} projects: converge {:7.1f} s (changed={}), reruns {}".format(
                method,
                size,
                converge[size][0],
                converge[size][1],
                ", ".join("{:.1f}".format(t) for t in times[size]),
            ),
            flush=True,
        )
    return converge, times


def report(results, sizes, strict):
    print()
    print("\n".join(benchnode.ratio_table(sizes, results)))
    print()
    missed = []
    for method, (_, times) in results.items():
        ratio = benchnode.rerun_ratio(times, sizes)
        target = TARGETS.get(method)
        met = target is None or ratio <= target
        if not met:
            missed.append(method)
        print(
            "target {}: rerun at {} within {}x of rerun at {}: {:.2f}x, {}".format(
                method, sizes[-1], target, sizes[0], ratio, "met" if met else "NOT MET"
            )
        )
    return 1 if strict and missed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10,100,1000", help="project counts (default: 10,100,1000)"
    )
    parser.add_argument(
        "--methods", default="files,gitaly,global", help="install methods (default: all three)"
    )
    parser.add_argument(
        "--reruns", type=int, default=3, help="no-change reruns of each size (default: 3)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the container {} running".format(CONTAINER)
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    methods = args.methods.split(",")
    ansible_playbook = benchnode.find_ansible_playbook()
    workdir = tempfile.mkdtemp(prefix="codo-bench-methods-")
    print(
        "bench: {}, node {} from {}, {} CPU(s)".format(
            ansible_playbook, CONTAINER, IMAGE, os.cpu_count()
        )
    )
    results = {}
    started = time.perf_counter()
    try:
        start_node(
            [
                project_id
                for index, size in enumerate(sizes)
                for project_id in benchnode.ids_for(size, index)
            ]
        )
        for method in methods:
            results[method] = bench_method(method, sizes, args.reruns, workdir, ansible_playbook)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            benchnode.remove_node(CONTAINER)
    print("bench: {:.0f} s in all".format(time.perf_counter() - started))
    return report(results, sizes, args.strict)


if __name__ == "__main__":
    sys.exit(main())
