"""What the hook costs a push, as ratios measured side by side in one run.

  python3 bench/bench_hook.py [--runs N]

Each case runs alternately with its baseline (hook, bare, bare, hook, ...) so
that load on the machine hits both alike, and compares low quantiles: other
load only ever adds time. Targets (issue 2):
  - a branch through the update stage: at most 1.3x `python3 -c pass` (the seed: about 9x)
  - post-receive with 1,000 refs, half of them non-release tags: at most 2x `python3 -c pass`
  - one release tag against the fake platform on loopback: wall time and peak memory
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fakes.fake_codo import FakeCodo, make_auth_key

PYTHON = sys.executable
SEED = os.path.join(ROOT, "tests", "seed", "new_hook_for_update.py")
ZERO, SHA = "0" * 40, "a" * 40
KEY = make_auth_key()


def config(url, state_dir):
    return {
        "codo": {
            "url": url,
            "auth_key_file": os.path.join(state_dir, "key"),
            "task_link": url + "/#/task/{list_id}",
        },
        "state_dir": state_dir,
        "projects": {
            "ops/dbtt": {
                "git_url": "git@gitlab.example.com:ops/dbtt.git",
                "app_name": "DBTT",
                "rules": [
                    {"tag": r"\Aqa-dbtt[\w]*", "template_id": 32, "hosts": {"1": ["127.0.0.1"]}},
                    {
                        "tag": r"\Arelease-dbtt[\w]*",
                        "template_id": 32,
                        "hosts": {"1": ["127.0.0.1"]},
                    },
                ],
            }
        },
    }


def install(directory):
    """As the role installs it: the entry and the package in one place, bytecode compiled (hooks
    cannot write it)."""
    os.makedirs(directory)
    shutil.copy(os.path.join(ROOT, "files", "codo_release_hook.py"), directory)
    shutil.copytree(
        os.path.join(ROOT, "files", "codo_release"),
        os.path.join(directory, "codo_release"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run([PYTHON, "-m", "compileall", "-q", directory], check=True)
    return os.path.join(directory, "codo_release_hook.py")


def timed(command, stdin=b"", env=None):
    started = time.perf_counter()
    subprocess.run(
        command,
        input=stdin,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - started


def measured_once(command, stdin, env):
    """Wall time and peak RSS (KiB) of one run, measured in a fresh parent so no earlier run counts."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), stdout=subprocess.DEVNULL); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [PYTHON, "-c", probe] + command, input=stdin, env=env, stdout=subprocess.PIPE, check=True
    )
    wall, peak = out.stdout.split()
    return float(wall), int(peak)


def side_by_side(case, baseline, runs):
    """Alternate the two (ABBA order) and return their low quantiles."""
    ours, bare = [], []
    for index in range(runs):
        pair = [(ours, case), (bare, baseline)]
        for samples, run in pair if index % 2 == 0 else reversed(pair):
            samples.append(run())
    quantile = max(1, runs // 10)
    return sorted(ours)[quantile], sorted(bare)[quantile]


def report(name, ours, bare, target):
    ratio = ours / bare
    verdict = (
        ""
        if target is None
        else ("  target <= {:.1f}x: {}".format(target, "met" if ratio <= target else "MISSED"))
    )
    print(f"{name:<58} {ours * 1e3:6.1f} ms vs {bare * 1e3:6.1f} ms = {ratio:4.2f}x{verdict}")
    return target is None or ratio <= target


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=60)
    runs = parser.parse_args().runs
    bare = [PYTHON, "-c", "pass"]
    with tempfile.TemporaryDirectory() as state_dir, FakeCodo(auth_key=KEY) as fake:
        entry = install(os.path.join(state_dir, "opt"))
        with open(os.path.join(state_dir, "key"), "w") as handle:
            handle.write(KEY)
        os.chmod(os.path.join(state_dir, "key"), 0o600)
        config_path = os.path.join(state_dir, "codo-release.json")
        with open(config_path, "w") as handle:
            json.dump(config(fake.url, state_dir), handle)
        env = dict(
            os.environ,
            CODO_HOOK_CONFIG=config_path,
            GL_PROJECT_PATH="ops/dbtt",
            GL_USERNAME="bench",
        )
        update_env = dict(env, CODO_HOOK_STAGE="update")
        post_env = dict(env, CODO_HOOK_STAGE="post-receive")
        branch = ["refs/heads/main", SHA, SHA]
        refs = "".join(
            f"{ZERO} {SHA} refs/tags/v1.{n}\n{SHA} {SHA} refs/heads/feature-{n}\n"
            for n in range(500)
        ).encode()

        met = [
            report(
                "update stage, one branch ref, vs python3 -c pass",
                *side_by_side(
                    lambda: timed([PYTHON, entry] + branch, env=update_env),
                    lambda: timed(bare),
                    runs,
                ),
                target=1.3,
            ),
            report(
                "the seed hook, same branch ref, vs python3 -c pass",
                *side_by_side(
                    lambda: timed([PYTHON, SEED] + branch), lambda: timed(bare), max(runs // 3, 10)
                ),
                target=None,
            ),
            report(
                "post-receive, 1,000 refs (500 non-release tags), vs bare",
                *side_by_side(
                    lambda: timed([PYTHON, entry], stdin=refs, env=post_env),
                    lambda: timed(bare),
                    runs,
                ),
                target=2.0,
            ),
        ]
        release = f"{ZERO} {SHA} refs/tags/release-dbtt-server-20190320-02\n".encode()
        wall, peak_kib = measured_once([PYTHON, entry], release, post_env)
        print(
            "{:<58} {:6.1f} ms wall, peak RSS {:.1f} MiB, {} task(s) created".format(
                "one release tag submitted to the fake platform (loopback)",
                wall * 1e3,
                peak_kib / 1024,
                len(fake.tasks),
            )
        )
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
