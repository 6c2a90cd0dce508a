#!/usr/bin/env python3
"""A stand-in for GitLab's `gitaly` command: `gitaly hooks set`, as Gitaly (15.11 to 16.x) does it.

    gitaly hooks set [--storage NAME] --repository REL.git --config CONFIG.toml < hooks.tar
    gitaly --version

The real command streams the archive to the Gitaly server (SetCustomHooks), which does what this
file does on the local disk (Gitaly's internal/gitaly/repoutil/custom_hooks.go):

1. the storage is the `[[storage]]` of the config named by --storage (may be left out when the
   config has exactly one); the repository, `<storage path>/<REL>`, must exist and be a repository;
2. `<repo>/custom_hooks.lock` is created exclusively (another set in flight: "file already
   locked") and removed at the end;
3. an empty stdin is an empty archive; otherwise `tar -xf - -C <tmp> --strip-components 0
   custom_hooks` under `<storage>/+gitaly/tmp/`. When tar says "custom_hooks: Not found in
   archive" (entries named `./custom_hooks/...`, or no custom_hooks at all) that counts as an empty
   archive: **the project ends with no hooks** (the wipe trap);
4. `<tmp>/custom_hooks` is created (0755) if the archive had none, the repository's
   `custom_hooks/` is moved aside and the new one renamed into its place: the archive *replaces*
   every hook the project had.

The work is done as the Gitaly server's user, which here is the owner of the storage directory:
run as root, the stand-in drops to that user first (files end up owned by it, whoever called);
run as anyone else, it refuses as the real command does when it cannot open Gitaly's socket.

When the config has `[logging] dir`, every call appends one JSON line to
`<dir>/fake-gitaly-hooks-set.log`: time, caller uid, storage, repository, the archive's entries
(`tar -tf`), the outcome (`set`, `emptied`: empty archive, `wiped`: a non-empty archive without a
`custom_hooks/` root) and the error if any. Tests read it to see what was sent.

Standard library only; the config is parsed with tomllib where Python has it (3.11+), else with
a reader for the small subset Gitaly's Omnibus config uses (tables, arrays of tables, strings,
numbers, booleans).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

VERSION = "Gitaly, version 16.7.0 (codo-hooks stand-in)"
HOOKS_DIR = "custom_hooks"
NOT_FOUND = "tar: custom_hooks: Not found in archive"
CALLS_LOG = "fake-gitaly-hooks-set.log"
USAGE = (
    "usage: gitaly hooks set --storage <storage_name> --repository <path_on_storage> "
    "--config <gitaly_config_file> < <hooks_tarball>.tar"
)


class GitalyError(Exception):
    """What the real command prints (after its own prefix) and exits 1 for."""


# --- config -------------------------------------------------------------------


def load_config(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise GitalyError(f"load config: open {path}: {error.strerror.lower()}")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return parse_toml_subset(data.decode("utf-8"))
    try:
        return tomllib.loads(data.decode("utf-8"))
    except ValueError as error:
        raise GitalyError(f"load config: {error}")


def parse_toml_subset(text):
    """`[table]`, `[[array]]`, `key = "string" | 'string' | number | true | false`, comments."""
    root = {}
    current = root
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            name = line.strip("[]").strip()
            current = {}
            _table(root, name, array=True).append(current)
        elif line.startswith("["):
            current = _table(root, line.strip("[]").strip(), array=False)
        elif "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            current[key.strip('"')] = _scalar(value, number)
        else:
            raise GitalyError(f"load config: line {number}: cannot parse {raw!r}")
    return root


def _table(root, dotted, array):
    parent = root
    names = dotted.split(".")
    for name in names[:-1]:
        parent = parent.setdefault(name, {})
        if isinstance(parent, list):
            parent = parent[-1]
    return parent.setdefault(names[-1], [] if array else {})


def _scalar(value, number):
    if value.startswith('"'):
        end = value.index('"', 1)
        return value[1:end].replace("\\\\", "\\")
    if value.startswith("'"):
        return value[1 : value.index("'", 1)]
    bare = value.split("#", 1)[0].strip()
    if bare in ("true", "false"):
        return bare == "true"
    try:
        return int(bare)
    except ValueError:
        raise GitalyError(f"load config: line {number}: unsupported value {value!r}")


def storages(config):
    """{name: path} of the config's [[storage]] entries, in order."""
    return {entry["name"]: entry["path"] for entry in config.get("storage", []) if "name" in entry}


# --- hooks set ----------------------------------------------------------------


def repository_path(config, storage, relative):
    found = storages(config)
    if not storage:
        if len(found) != 1:
            raise GitalyError("multiple storages configured: use --storage to target storage explicitly")
        storage = next(iter(found))
    if storage not in found:
        raise GitalyError(f'rpc error: code = InvalidArgument desc = getting repo path: no such storage: "{storage}"')
    root = os.path.realpath(found[storage])
    repo = os.path.realpath(os.path.join(root, relative))
    if os.path.isabs(relative) or not repo.startswith(root + os.sep):
        raise GitalyError("rpc error: code = InvalidArgument desc = getting repo path: relative path escapes root directory")
    if not (os.path.isdir(os.path.join(repo, "objects")) and os.path.isfile(os.path.join(repo, "HEAD"))):
        raise GitalyError(f"rpc error: code = NotFound desc = getting repo path: repository not found: {relative}")
    return storage, root, repo


def become_gitaly_user(storage_root):
    """Do the work as Gitaly's user (the storage's owner); a caller who is neither is refused."""
    owner = os.stat(storage_root)
    if os.geteuid() == owner.st_uid:
        return
    if os.geteuid() != 0:
        raise GitalyError("create connection: dial unix gitaly.socket: connect: permission denied")
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def set_hooks(storage_root, repo, archive):
    """SetCustomHooks: extract, then swap the new custom_hooks/ in. Returns the outcome's name."""
    lock = os.path.join(repo, HOOKS_DIR + ".lock")
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o400))
    except FileExistsError:
        raise GitalyError("locking hooks: file already locked")
    try:
        tmp_root = os.path.join(storage_root, "+gitaly", "tmp")
        os.makedirs(tmp_root, mode=0o700, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="repo", dir=tmp_root)
        try:
            outcome = extract(archive, tmp)
            new_hooks = os.path.join(tmp, HOOKS_DIR)
            if not os.path.isdir(new_hooks):
                os.mkdir(new_hooks, 0o755)
            current = os.path.join(repo, HOOKS_DIR)
            if os.path.lexists(current):
                os.rename(current, os.path.join(tmp, "previous_hooks"))
            os.rename(new_hooks, current)
            return outcome
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.unlink(lock)


def extract(archive, tmp):
    if not archive:
        return "emptied"
    tar = subprocess.run(
        ["tar", "-xf", "-", "-C", tmp, "--strip-components", "0", HOOKS_DIR],
        input=archive,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    stderr = tar.stderr.decode("utf-8", "replace")
    if tar.returncode == 0:
        return "set"
    if stderr.startswith(NOT_FOUND):
        return "wiped"
    raise GitalyError(f"extracting hooks: waiting for tar command completion: exit status {tar.returncode}: {stderr.strip()}")


def archive_entries(archive):
    if not archive:
        return []
    listing = subprocess.run(["tar", "-tf", "-"], input=archive, capture_output=True, check=False)
    return listing.stdout.decode("utf-8", "replace").splitlines()


def log_call(config, record):
    directory = config.get("logging", {}).get("dir")
    if not directory:
        return
    try:
        with open(os.path.join(directory, CALLS_LOG), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as error:
        print(f"gitaly stand-in: cannot log the call: {error}", file=sys.stderr)


def hooks_set(options):
    config = load_config(options["config"])
    caller = os.getuid()
    archive = sys.stdin.buffer.read()
    record = {
        "time": time.time(),
        "uid": caller,
        "storage": options.get("storage", ""),
        "repository": options["repository"],
        "entries": archive_entries(archive),
        "bytes": len(archive),
    }
    try:
        storage, root, repo = repository_path(config, options.get("storage"), options["repository"])
        record["storage"] = storage
        become_gitaly_user(root)
        record["outcome"] = set_hooks(root, repo, archive)
    except GitalyError as error:
        record["outcome"], record["error"] = "error", str(error)
        raise
    finally:
        log_call(config, record)


# --- command line ----------------------------------------------------------------


def parse_flags(args):
    """urfave/cli style: --name value or --name=value; -c is --config."""
    options, rest = {}, list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(print(USAGE) or 0)
        if not arg.startswith("-"):
            raise GitalyError(f"unexpected argument {arg!r}\n{USAGE}")
        name, inline, value = arg.lstrip("-").partition("=")
        name = {"c": "config"}.get(name, name)
        if name not in ("storage", "repository", "config"):
            raise GitalyError(f"flag provided but not defined: -{name}")
        if not inline:
            if not rest:
                raise GitalyError(f"flag needs an argument: -{name}")
            value = rest.pop(0)
        options[name] = value
    missing = [name for name in ("repository", "config") if not options.get(name)]
    if missing:
        raise GitalyError('Required flags "{}" not set'.format(", ".join(missing)))
    return options


def main(argv):
    try:
        if argv[:1] in (["--version"], ["-v"]):
            print(VERSION)
            return 0
        if argv[:2] != ["hooks", "set"]:
            raise GitalyError(f"this stand-in only does `hooks set` and `--version`\n{USAGE}")
        hooks_set(parse_flags(argv[2:]))
        return 0
    except GitalyError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
