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
HEX_DIGITS = b"0123456789abcdef"
NOT_IN_REF_NAMES = (
    bytes(range(0x21)) + b"\x7f"
)  # controls and the space: git refuses them in ref names


def invoked_stage(argv0):
    """The stage is the name we run under, or that of the `<stage>.d` chain."""
    name = os.path.basename(argv0)
    if name in HOOK_STAGES:
        return name
    chain = os.path.basename(os.path.dirname(argv0))
    if chain.endswith(".d") and chain[:-2] in HOOK_STAGES:
        return chain[:-2]
    return None


def read_updates(stage, argv):
    """(tag updates, malformed records): git's records read exactly as git writes them.

    A record is `<old> SP <new> SP <ref> LF` in bytes (update: argv refname old new). Only LF ends a
    record and only the first two ASCII spaces split it: Unicode line and space separators are part
    of a ref name, never a boundary. Tag updates are (old, new, ref) of tags created or moved;
    branches and deletions never count. A push that names no tag at all is dismissed unread.
    """
    if stage == "update":
        if len(argv) != 4:
            return [], ["update got {} arguments, not refname oldrev newrev".format(len(argv) - 1)]
        records = [b" ".join(os.fsencode(arg) for arg in (argv[2], argv[3], argv[1]))]
    else:
        data = sys.stdin.buffer.read()
        if b"refs/tags/" not in data:
            return [], []
        records = data.split(b"\n")
        if records.pop():
            return [], ["the last record does not end with a line feed"]
    updates, malformed, id_length = [], [], None
    for number, record in enumerate(records, 1):
        fields = record.split(b" ", 2)
        id_length = id_length or len(fields[0])
        if not well_formed(fields, id_length):
            malformed.append(
                "record {} is not `<old> <new> <ref>` with {}-digit ids".format(number, id_length)
            )
        elif fields[2].startswith(b"refs/tags/") and fields[1].strip(b"0"):
            updates.append(
                (
                    fields[0].decode(),
                    fields[1].decode(),
                    fields[2].decode("utf-8", "surrogateescape"),
                )
            )
    return updates, malformed


def well_formed(fields, id_length):
    """Two lowercase hex ids of the push's one hash length (SHA-1 40, SHA-256 64) and a ref name."""
    if len(fields) != 3 or id_length not in (40, 64):
        return False
    old, new, ref = fields
    return (
        len(old) == len(new) == id_length
        and not old.translate(None, HEX_DIGITS)
        and not new.translate(None, HEX_DIGITS)
        and ref.startswith(b"refs/")
        and len(ref.translate(None, NOT_IN_REF_NAMES)) == len(ref)
    )


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
    if project and os.fsencode(project) not in listed:
        return True
    own_dir = os.path.abspath("custom_hooks")  # Gitaly runs hooks in the repository directory
    if os.path.dirname(os.path.abspath(config)) == own_dir:
        return False
    # Gitaly runs only what the git user can execute: a dangling or stale link runs nothing.
    return os.access(os.path.join(own_dir, stage + ".d", "codo-release"), os.X_OK)


def main():
    stage = os.environ.get("CODO_HOOK_STAGE") or invoked_stage(sys.argv[0])
    config = config_path(sys.argv[0])
    updates = malformed = None
    if stage in HOOK_STAGES:
        updates, malformed = read_updates(stage, sys.argv)
        if not (updates or malformed) or served_otherwise(config, stage):
            return 0
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    import codo_release

    return codo_release.main(stage, updates, sys.argv, config, malformed)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (
        Exception
    ) as error:  # codo_release has its own catch-all: this is the entry or the import failing
        stage = os.environ.get("CODO_HOOK_STAGE") or invoked_stage(sys.argv[0])
        sys.stdout.write(
            "codo: the release hook itself failed ({}); tell the GitLab admin.{}\n".format(
                type(error).__name__, " Push refused." if stage in ("pre-receive", "update") else ""
            )
        )
        sys.exit(0 if stage == "post-receive" else 1)
