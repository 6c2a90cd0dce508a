#!/usr/bin/python3
"""GitLab server hook: a pushed release tag becomes an OpenDevOps (CODO) task.

Link it into a project's custom_hooks as `pre-receive.d/`, `update.d/` or
`post-receive.d/` (or name it after the stage); run it by its own name for the
admin commands (`check-config`, `match`, `flush`, `status`).

This file stays tiny on purpose: Python compiles the script it runs on every
start but caches the bytecode of the modules it imports. Refs that are not
new or moved tags are dismissed here, before any config is read; the rest of
the program is codo_release.py, found beside this file's real path.
"""

import os
import sys

HOOK_STAGES = ("pre-receive", "update", "post-receive")


def invoked_stage(argv0):
    """The stage is the name we run under, or that of the `<stage>.d` chain."""
    name = os.path.basename(argv0)
    if name in HOOK_STAGES:
        return name
    chain = os.path.basename(os.path.dirname(argv0))
    if chain.endswith(".d") and chain[:-2] in HOOK_STAGES:
        return chain[:-2]
    return None


def tag_updates(stage, argv):
    """`old new ref` triples of tags created or moved; branches and deletions never count."""
    if stage == "update":
        lines = [" ".join(argv[2:4] + argv[1:2])]
    else:
        lines = sys.stdin.buffer.read().decode("utf-8", "surrogateescape").splitlines()
    updates = (line.split() for line in lines if "refs/tags/" in line)
    return [u for u in updates if len(u) == 3 and u[2].startswith("refs/tags/") and u[1].strip("0")]


def config_path(argv0):
    """$CODO_HOOK_CONFIG, else codo-release.json in the custom_hooks dir we run from (links not resolved)."""
    if os.environ.get("CODO_HOOK_CONFIG"):
        return os.environ["CODO_HOOK_CONFIG"]
    hook_dir = os.path.dirname(os.path.abspath(argv0))
    if hook_dir.endswith(".d"):
        hook_dir = os.path.dirname(hook_dir)
    return os.path.join(hook_dir, "codo-release.json")


def served_otherwise(config, stage):
    """Server-wide install (an index beside the config): a project missing from the index costs no
    config read, and one that still links the hook in its own custom_hooks is left to that link."""
    try:
        with open(os.path.splitext(config)[0] + ".projects", "rb") as index:
            listed = index.read().split(b"\n")
    except OSError:
        return False
    project = os.environ.get("GL_PROJECT_PATH")
    if project and project.encode() not in listed:
        return True
    own_dir = os.path.abspath("custom_hooks")  # Gitaly runs hooks in the repository directory
    if os.path.dirname(os.path.abspath(config)) == own_dir:
        return False
    # Gitaly runs only what the git user can execute: a dangling or stale link runs nothing.
    return os.access(os.path.join(own_dir, stage + ".d", "codo-release"), os.X_OK)


def main():
    stage = os.environ.get("CODO_HOOK_STAGE") or invoked_stage(sys.argv[0])
    config = config_path(sys.argv[0])
    updates = None
    if stage in HOOK_STAGES:
        updates = tag_updates(stage, sys.argv)
        if not updates or served_otherwise(config, stage):
            return 0
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    import codo_release

    return codo_release.main(stage, updates, sys.argv, config)


if __name__ == "__main__":
    sys.exit(main())
