"""What one node has installed, read where the role installed it, and what its hook's spool holds.

The engine of library/codo_hooks_status.py, read-only: it finds every project's custom_hooks (or
Gitaly's custom_hooks_dir) with sync.Node, the code that installs them, reads the configs there
and compares them with what the inventory gives this node; digests the hook program; and runs
the installed hook's `status --json` as the git user. The platform key is never read.
Python 3.6+, standard library only.
"""

import datetime
import json
import math
import os
import pwd
import re
import stat
import subprocess
import time

from ansible.module_utils.codo_hooks_core import digest, sync

# A config holding a thousand projects is about 1 MB; anything far bigger is not one of ours.
CONFIG_LIMIT = 64 * 1024 * 1024
PROGRAM_LIMIT = 16 * 1024 * 1024
STATUS_TIMEOUT_S = 120
STATUS_LIMIT = 64 * 1024 * 1024
SPOOL_STATES = ("pending", "uncertain", "failed", "inflight", "sent")
VERSION_TEXT = re.compile(r"\A[\w.+~-]{1,40}\Z")
SERVER_WIDE_LABEL = "custom_hooks_dir"
SHOWN_DIFFERENCES = 50


def read_regular(path, limit):
    """The bytes of a regular file reached without a link, or None: absent, not a regular file,
    over limit bytes or unreadable. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


# --- the program -------------------------------------------------------------------


def read_program(install_dir, entry, modules):
    """{"program": digest or None, "program_missing": [files not there or not regular]}."""
    found, missing = {}, []
    for name in [entry] + list(modules):
        data = read_regular(os.path.join(install_dir, name), PROGRAM_LIMIT)
        if data is None:
            missing.append(os.path.join(install_dir, name))
        found[name] = data
    if missing:
        return {"program": None, "program_missing": missing}
    others = [(name, found[name]) for name in modules]
    return {"program": digest.program(entry, found[entry], others), "program_missing": []}


# --- the configs -------------------------------------------------------------------


def label(target, name):
    """A config's path relative to its storage: the same on every replica of the project."""
    if target.path == sync.SERVER_WIDE:
        return "{}/{}".format(SERVER_WIDE_LABEL, name)
    return "{}/custom_hooks/{}".format(target.relative, name)


def unreadable(path, name):
    if not os.path.lexists(path):
        return "no {}".format(name)
    return "{} is not a regular file of at most {} MiB".format(name, CONFIG_LIMIT // 1024 // 1024)


def our_link(path, hook):
    try:
        return os.readlink(path) == hook
    except OSError:
        return False


class Reading:
    """The configs installed on this node against those the inventory gives it."""

    def __init__(self, want):
        self.want = want
        self.installed = []  # (label, bytes) of the configs found where they belong
        self.expected = []  # (label, bytes) of the configs the inventory gives this node
        self.differences = []  # one line per project that differs
        self.projects = 0
        self.hooked = 0

    def add(self, target):
        if target.state != "present":
            self.leftovers(target)
            return
        if target.path == sync.SERVER_WIDE:
            self.projects += len(target.files[self.want["config_name"]]["projects"])
        else:
            self.projects += 1
        if sync.kind(sync.lstat(target.must_exist)) != "directory":
            self.differences.append(
                "{}: no repository at {}".format(target.path, target.must_exist)
            )
            return
        problems = self.unlinked(target)
        for name, wanted in sorted(target.files.items()):
            path = os.path.join(target.hooks_dir, name)
            found = read_regular(path, CONFIG_LIMIT)
            self.expected.append((label(target, name), canonical(wanted)))
            if found is None:
                problems.append(unreadable(path, name))
                continue
            self.installed.append((label(target, name), canonical_found(found, wanted)))
            if not sync.says_the_same(found.decode("utf-8", "replace"), wanted):
                problems.append("{} differs from the inventory".format(name))
        if problems:
            self.differences.append("{}: {}".format(target.path, ", ".join(problems)))
        if target.path == sync.SERVER_WIDE:
            self.hooked += self.server_wide_projects(target) if not problems else 0
        elif not problems:
            self.hooked += 1

    def unlinked(self, target):
        hook = self.want["hook"]
        return [
            "{} not linked to the hook".format(stage)
            for stage in target.stages
            if not our_link(
                os.path.join(target.hooks_dir, stage + ".d", self.want["link_name"]), hook
            )
        ]

    def leftovers(self, target):
        """What the inventory removes from a project (state absent, or the global method) and is there."""
        if sync.kind(sync.lstat(target.hooks_dir)) != "directory":
            return
        left = [
            stage + ".d/" + self.want["link_name"]
            for stage in self.want["all_stages"]
            if our_link(
                os.path.join(target.hooks_dir, stage + ".d", self.want["link_name"]),
                self.want["hook"],
            )
        ]
        left += [
            name for name in target.files if os.path.lexists(os.path.join(target.hooks_dir, name))
        ]
        if left:
            self.differences.append(
                "{}: still has {} (the inventory removes the hook there)".format(
                    target.path, ", ".join(sorted(left))
                )
            )

    def server_wide_projects(self, target):
        text = dict(self.installed).get(label(target, self.want["config_name"]))
        try:
            return len(json.loads(text.decode("utf-8"))["projects"])
        except (AttributeError, ValueError, KeyError, TypeError):
            return 0

    def as_dict(self, elsewhere):
        return {
            "configs": digest.of_files(self.installed) if self.installed else None,
            "configs_count": len(self.installed),
            "expected_configs": digest.of_files(self.expected) if self.expected else None,
            "projects": self.projects,
            "hooked": self.hooked,
            "elsewhere": elsewhere,
            "differences": len(self.differences),
            "differing": self.differences[:SHOWN_DIFFERENCES],
        }


def canonical(wanted):
    """The bytes a wanted file is digested as: a config (a dict) by what it says, as the role
    compares it (sync.says_the_same), so that its formatting or key order changes no digest."""
    if isinstance(wanted, dict):
        return json.dumps(wanted, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return wanted.encode("utf-8")


def canonical_found(found, wanted):
    """A file read from the node, digested as canonical() digests what is wanted there."""
    if not isinstance(wanted, dict):
        return found
    try:
        return canonical(json.loads(found.decode("utf-8")))
    except (ValueError, AttributeError):
        return found


def read_configs(want):
    """The configs' digests and what differs from the inventory; sync.Problem or KeyError (no
    git user or group) when this node cannot be read."""
    targets, elsewhere = sync.Node(want).targets()
    reading = Reading(want)
    for target in targets:
        reading.add(target)
    return reading.as_dict(elsewhere)


# --- the hook's own status -----------------------------------------------------------


def number(value):
    """A finite number (not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def created_epoch(text):
    """A spool entry's `created` (%Y-%m-%dT%H:%M:%S%z), as epoch seconds, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def oldest_waiting(reported, now):
    """Seconds the oldest pending or uncertain release has waited: the hook's own figures when it
    gives them, else from the entries' creation times."""
    own = [number(reported.get(key)) for key in ("oldest_pending_s", "oldest_uncertain_s")]
    if any(key in reported for key in ("oldest_pending_s", "oldest_uncertain_s")):
        own = [value for value in own if value is not None]
        return max(own) if own else None
    entries = reported.get("entries") if isinstance(reported.get("entries"), list) else []
    created = [
        created_epoch(entry.get("created"))
        for entry in entries
        if isinstance(entry, dict) and entry.get("state") in ("pending", "uncertain")
    ]
    created = [value for value in created if value is not None]
    return max(0, now - min(created)) if created else None


def version_of(reported):
    value = reported.get("version")
    if isinstance(value, str) and VERSION_TEXT.match(value):
        return value
    return None


def spool_figures(reported, now, state_dir):
    """The table's figures from `status --json`'s output; ValueError when it is not that."""
    counts = reported.get("counts")
    if not isinstance(counts, dict):
        raise ValueError("no counts")
    spool = {}
    for state in SPOOL_STATES:
        value = counts.get(state, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("a count that is not a number")
        spool[state] = value
    ignored = reported.get("ignored")
    spool["ignored"] = len(ignored) if isinstance(ignored, dict) else 0
    last_run = number(reported.get("last_run"))
    last_run_from = "hook" if last_run is not None else None
    if "last_run" not in reported:
        last_run = log_time(state_dir)
        last_run_from = "hook.log" if last_run is not None else None
    return dict(
        spool=spool,
        version=version_of(reported),
        oldest_s=oldest_waiting(reported, now),
        key_expires=number(reported.get("key_expires")),
        last_run=last_run,
        last_run_from=last_run_from,
        last_flush=number(reported.get("last_flush")),
    )


def log_time(state_dir):
    """When the hook last wrote its log (until the hook says when it last ran)."""
    try:
        return os.stat(os.path.join(state_dir, "hook.log")).st_mtime
    except OSError:
        return None


def run_status(entry_path, state_dir, git):
    """`status --json` of the installed hook, as the git user: (parsed output, None) or (None, why)."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": pwd.getpwnam(git.user).pw_dir,
        "LC_ALL": "C.UTF-8",
    }
    argv = [entry_path, "status", "--state-dir", state_dir, "--json"]
    try:
        run = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=None if os.geteuid() == git.uid else git.become,
            cwd="/",
            env=env,
            timeout=STATUS_TIMEOUT_S,
        )
    except OSError as error:
        return None, "cannot run {}: {}".format(entry_path, error.strerror or error)
    except subprocess.TimeoutExpired:
        return None, "{} status took over {} s".format(entry_path, STATUS_TIMEOUT_S)
    except subprocess.SubprocessError:  # becoming the git user failed
        return None, "cannot run status as {}: run the play with become (as root)".format(git.user)
    output = run.stdout[:STATUS_LIMIT].decode("utf-8", "replace")
    if run.returncode != 0:
        said = (output.strip().splitlines() or ["no output"])[-1][:300]
        return None, "{} status exited {}: {}".format(entry_path, run.returncode, said)
    try:
        reported = json.loads(output)
    except ValueError:
        return None, "{} status --json printed something that is not JSON".format(entry_path)
    if not isinstance(reported, dict):
        return None, "{} status --json printed something that is not an object".format(entry_path)
    return reported, None


def no_figures(why):
    """The spool's figures when they cannot be read, and why."""
    figures = dict.fromkeys(("version", "oldest_s", "key_expires", "last_run", "last_run_from"))
    figures.update(spool=None, last_flush=None, status_error=why)
    return figures


def read_spool(entry_path, state_dir, git, now):
    """The spool's figures, and why they are missing (status_error None when they are not)."""
    if git is None:
        return no_figures("no git user to run status as")
    if read_regular(entry_path, PROGRAM_LIMIT) is None:
        return no_figures("no hook program at {}".format(entry_path))
    reported, why = run_status(entry_path, state_dir, git)
    if why:
        return no_figures(why)
    try:
        return dict(spool_figures(reported, now, state_dir), status_error=None)
    except ValueError as error:
        return no_figures("{} status --json: {}".format(entry_path, error))


# --- the command -------------------------------------------------------------------


def read(want, program, state_dir):
    """This node's status as library/codo_hooks_status.py returns it.

    want: what sync.run takes (options.node_want); program: {"install_dir", "entry", "modules"}.
    """
    now = time.time()
    result = {"changed": False, "method": want["method"], "now": now, "errors": []}
    result.update(read_program(program["install_dir"], program["entry"], program["modules"]))
    result.update(configs=None, configs_count=0, expected_configs=None, projects=0, hooked=0)
    result.update(elsewhere=[], differences=0, differing=[])
    git = None
    try:
        git = sync.Owner(want["git_user"], want["git_group"])
        result.update(read_configs(want))
    except KeyError as error:
        result["errors"].append(
            "no user or group {} on this server: is GitLab installed here? "
            "(codo_hooks_git_user, codo_hooks_git_group)".format(error)
        )
    except sync.Problem as error:
        result["errors"].append(str(error))
    entry_path = os.path.join(program["install_dir"], program["entry"])
    result.update(read_spool(entry_path, state_dir, git, now))
    return result
