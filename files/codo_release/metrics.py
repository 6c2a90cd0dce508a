"""Metrics: what flush counts from the log, for node_exporter's textfile collector and status.

A push pays nothing for them: every release a hook stage decides is already one hook.log line.
Each flush folds the lines written since the last one into <state_dir>/metrics-state.json (the
counters, and where in the log it stopped) and, with --metrics-dir, writes codo_release.prom for
node_exporter's textfile collector. Counters survive the spool's pruning and the log's rotation.
"""

import os
import time

from . import FAILED, PENDING, SENT, SKIPPED, UNCERTAIN, VERSION
from .config import ConfigError, no_constant
from .fileio import create_private, open_own_file, private_dir, unlink_quietly
from .keys import key_exp, read_auth_key
from .output import say
from .spool import SPOOL_STATES, installed_config

METRICS_STATE = "metrics-state.json"


METRICS_FILE = "codo_release.prom"


METRICS_STATE_LIMIT = 8 * 1024 * 1024


METRICS_PROJECTS_LIMIT = 1000  # more projects are counted together, as OTHER_PROJECTS


OTHER_PROJECTS = "(other)"  # no GitLab path holds parentheses


RELEASE_OUTCOMES = (
    "submitted",
    "spooled",
    "refused",
    "uncertain",
    "settled",
    "deployed",
    "failed",
    "stuck",
    "skipped",
    "shadow",
)


HOOK_RUN_STAGES = ("pre-receive", "update", "post-receive")


PUSH_OUTCOMES = {
    SENT: "submitted",
    SKIPPED: "skipped",
    PENDING: "spooled",
    UNCERTAIN: "uncertain",
    FAILED: "failed",
    "refused": "refused",
    "shadow": "shadow",
}


# A resend that is still pending was counted as spooled when the push kept it.
FLUSH_OUTCOMES = {SENT: "submitted", SKIPPED: "skipped", UNCERTAIN: "uncertain", FAILED: "failed"}


FOLLOW_OUTCOMES = ("deployed", "failed", "stuck")


def counted_outcome(event):
    """The releases_total outcome a hook.log event counts as, or None."""
    stage, outcome = event.get("stage"), event.get("outcome")
    if not isinstance(stage, str) or not isinstance(outcome, str):
        return None
    if stage in HOOK_RUN_STAGES:
        return PUSH_OUTCOMES.get(outcome)
    if stage == "flush" and outcome == "settled":
        settled_as = str(event.get("detail") or "").partition(":")[0]
        return "settled" if settled_as in (SENT, PENDING, FAILED) else None
    if stage == "flush":
        return FLUSH_OUTCOMES.get(outcome)
    if stage == "follow" and outcome in FOLLOW_OUTCOMES:
        return outcome
    return None


def new_tally():
    return {
        "log": None,  # {"inode", "offset"}: where the last flush stopped reading hook.log
        "releases": {},  # project: {outcome: count}
        "internal_errors": 0,
        "last_run": None,
        "last_submission": None,
        "last_flush": None,
        "metrics_dir": None,  # where the last flush that was told wrote codo_release.prom
    }


def _is_count(value):
    return type(value) is int and value >= 0


def _is_epoch(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11


def checked_tally(raw):
    """The tally as metrics-state.json holds it, any part that is not well formed started afresh."""
    tally = new_tally()
    if not isinstance(raw, dict):
        return tally
    log = raw.get("log")
    if isinstance(log, dict) and _is_count(log.get("inode")) and _is_count(log.get("offset")):
        tally["log"] = {"inode": log["inode"], "offset": log["offset"]}
    releases = raw.get("releases")
    if isinstance(releases, dict):
        for project, counts in list(releases.items())[: METRICS_PROJECTS_LIMIT + 1]:
            if isinstance(counts, dict):
                tally["releases"][project] = {
                    outcome: counts[outcome]
                    for outcome in RELEASE_OUTCOMES
                    if _is_count(counts.get(outcome))
                }
    if _is_count(raw.get("internal_errors")):
        tally["internal_errors"] = raw["internal_errors"]
    for name in ("last_run", "last_submission", "last_flush"):
        if _is_epoch(raw.get(name)):
            tally[name] = raw[name]
    where = raw.get("metrics_dir")
    if isinstance(where, str) and where.startswith("/") and "\0" not in where and len(where) < 4096:
        tally["metrics_dir"] = where
    return tally


def load_tally(state_dir, owners):
    """The tally the last flush kept; a fresh one when there is none or it is not the hook's."""
    import json

    handle = open_own_file(os.path.join(state_dir, METRICS_STATE), owners, METRICS_STATE_LIMIT)
    if handle is None:
        return new_tally()
    with handle:
        try:
            raw = json.loads(handle.read(METRICS_STATE_LIMIT + 1), parse_constant=no_constant)
        except (ValueError, RecursionError):
            raw = None
    return checked_tally(raw)


def save_tally(state_dir, tally):
    """metrics-state.json replaced whole (temp file and rename), owned like the state directory."""
    import json

    path = os.path.join(state_dir, METRICS_STATE)
    tmp = path + ".tmp"
    try:
        with create_private(tmp) as handle:
            json.dump(tally, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        if os.geteuid() == 0:  # an admin's root shell: the git user's next flush must read it
            info = os.lstat(state_dir)
            os.chown(tmp, info.st_uid, info.st_gid)
        os.rename(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise


def new_log_lines(state_dir, position, owners):
    """(complete lines of hook.log past `position`, the position after them), following a rotation
    to hook.log.1. With no position (the first flush), or one lost to two rotations, both files
    are read whole."""
    log = os.path.join(state_dir, "hook.log")
    current = open_own_file(log, owners)
    rotated = open_own_file(log + ".1", owners)
    inode = {
        name: os.fstat(handle.fileno()).st_ino if handle else None
        for name, handle in (("current", current), ("rotated", rotated))
    }
    if rotated is not None and inode["rotated"] == inode["current"]:
        rotated.close()  # renamed between the two opens: one file
        rotated = None
    position = position or {}
    if current is not None and position.get("inode") == inode["current"]:
        sources = [(current, position["offset"])]
    elif rotated is not None and position.get("inode") == inode["rotated"]:
        sources = [(rotated, position["offset"]), (current, 0)]
    else:
        sources = [(rotated, 0), (current, 0)]
    lines, after = [], position or None
    for handle, offset in sources:
        if handle is None:
            continue
        with handle:
            size = os.fstat(handle.fileno()).st_size
            offset = offset if offset <= size else 0  # truncated by hand: read it again
            handle.seek(offset)
            data = handle.read(size - offset)
            complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            lines.extend(complete.split(b"\n")[:-1])
            after = {"inode": os.fstat(handle.fileno()).st_ino, "offset": offset + len(complete)}
    for handle in (current, rotated):
        if handle is not None:
            handle.close()
    return lines, after


def _event_time(text):
    """Epoch seconds of a log event's `time` (%Y-%m-%dT%H:%M:%S%z), or None."""
    import datetime

    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def tally_events(tally, lines):
    """Count each log line's release outcome by project, internal errors, and the last run and submission."""
    import json

    for line in lines:
        try:
            event = json.loads(line.decode("utf-8", "replace"), parse_constant=no_constant)
        except (ValueError, RecursionError):
            continue
        if not isinstance(event, dict):
            continue
        when = _event_time(event.get("time"))
        if event.get("stage") in HOOK_RUN_STAGES and when is not None:
            tally["last_run"] = max(tally["last_run"] or 0, when)
        if event.get("outcome") == "internal_error":
            tally["internal_errors"] += 1
        outcome = counted_outcome(event)
        if outcome is None:
            continue
        project = event.get("project") if isinstance(event.get("project"), str) else ""
        releases = tally["releases"]
        if project not in releases and len(releases) >= METRICS_PROJECTS_LIMIT:
            project = OTHER_PROJECTS
        counts = releases.setdefault(project, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "submitted" and when is not None:
            tally["last_submission"] = max(tally["last_submission"] or 0, when)


def update_tally(spool, now, metrics_dir=None):
    """Fold the log's new lines into the kept tally, under a lock (two flushes may run at once).

    metrics_dir: where this flush writes the metrics ("" for nowhere; None: not said, as in a
    flush run by hand). When that is not where the last flush that was told wrote them, the file
    left there is removed: turned off or moved, the metrics do not go stale in node_exporter."""
    import fcntl

    private_dir(spool.state_dir, spool.owners)  # ours, no one else writes it
    fd = os.open(
        os.path.join(spool.state_dir, "metrics.lock"),
        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
        0o640,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tally = load_tally(spool.state_dir, spool.owners)
        lines, tally["log"] = new_log_lines(spool.state_dir, tally["log"], spool.owners)
        tally_events(tally, lines)
        tally["last_flush"] = now
        if metrics_dir is not None:
            if tally["metrics_dir"] and tally["metrics_dir"] != metrics_dir:
                remove_metrics(tally["metrics_dir"], spool.owners)
            tally["metrics_dir"] = metrics_dir or None
        save_tally(spool.state_dir, tally)
    finally:
        os.close(fd)
    return tally


def current_tally(spool):
    """The kept tally with the log's lines since the last flush counted in; nothing is written."""
    tally = load_tally(spool.state_dir, spool.owners)
    lines, _ = new_log_lines(spool.state_dir, tally["log"], spool.owners)
    tally_events(tally, lines)
    return tally


def entry_created(entry):
    """Epoch seconds an entry was journaled: its id starts with the time in microseconds."""
    return int(entry["id"][:16]) / 1e6


def oldest_age(entries, now):
    """Seconds since the oldest of the entries was journaled; None when there are none."""
    if not entries:
        return None
    return max(0.0, round(now - min(entry_created(entry) for entry in entries), 3))


def known_configs(spool, entries):
    """{config path: (key expiry or None, problem or '')} for each config the spool's entries name
    (each release keeps its config's path), loaded as flush would trust it to send."""
    found = {}
    for entry in entries:
        path = entry.get("config_path")
        if not isinstance(path, str) or path in found:
            continue
        try:
            config = installed_config(spool, entry)
            found[path] = (key_exp(read_auth_key(config.codo)), "")
        except ConfigError as error:
            found[path] = (None, str(error))
    return found


def spool_figures(spool, now, entries=None):
    """What the metrics and `status --json` tell of the spool now."""
    if entries is None:
        entries = {state: spool.entries(state) for state in SPOOL_STATES}
    configs = known_configs(spool, [entry for found in entries.values() for entry in found])
    expiries = [exp for exp, _ in configs.values() if exp is not None]
    return {
        "counts": {state: len(entries[state]) for state in SPOOL_STATES},
        "ignored": len(spool.ignored),
        "oldest": {state: oldest_age(entries[state], now) for state in (PENDING, UNCERTAIN)},
        "key_expires": min(expiries) if expiries else None,
        "config_problems": sum(1 for _, problem in configs.values() if problem),
    }


def label_value(text):
    """A label value in the text exposition format: \\, " and line feeds escaped, valid UTF-8."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name, labels, value):
    inside = ",".join('{}="{}"'.format(key, label_value(labels[key])) for key in sorted(labels))
    number = str(value) if type(value) is int else repr(float(value))
    return "{}{} {}".format(name, "{" + inside + "}" if inside else "", number)


def metrics_text(tally, figures):
    """The whole textfile: HELP and TYPE for each family, no timestamps, nothing secret."""
    families = []

    def family(name, kind, text, samples):
        families.append(
            "\n".join(
                [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                + [_sample(name, labels, value) for labels, value in samples]
            )
        )

    family(
        "codo_release_releases_total",
        "counter",
        "Release tags by project and outcome, counted by flush from hook.log.",
        [
            ({"project": project, "outcome": outcome}, counts.get(outcome, 0))
            for project, counts in sorted(tally["releases"].items())
            for outcome in RELEASE_OUTCOMES
        ],
    )
    family(
        "codo_release_internal_errors_total",
        "counter",
        "Errors of the hook's own (each one an internal_error event in hook.log).",
        [({}, tally["internal_errors"])],
    )
    family(
        "codo_release_spool_entries",
        "gauge",
        "Entries in the spool by state.",
        [({"state": state}, figures["counts"][state]) for state in SPOOL_STATES],
    )
    family(
        "codo_release_spool_ignored_files",
        "gauge",
        "Files in the spool the hook did not write (ignored; codo_release_hook.py status lists them).",
        [({}, figures["ignored"])],
    )
    family(
        "codo_release_spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest pending or uncertain release in the spool; 0 when there is none.",
        [({"state": state}, figures["oldest"][state] or 0) for state in (PENDING, UNCERTAIN)],
    )
    for key, text in (
        ("last_submission", "Last time a release was submitted; 0: never."),
        ("last_flush", "Last time flush ran."),
        ("last_run", "Last time a push stage handled a release tag; 0: never."),
    ):
        family(f"codo_release_{key}_timestamp_seconds", "gauge", text, [({}, tally[key] or 0)])
    if figures["key_expires"] is not None:
        family(
            "codo_release_key_expiry_timestamp_seconds",
            "gauge",
            "When the platform key expires (its exp claim), from the configs the spool names.",
            [({}, figures["key_expires"])],
        )
    family(
        "codo_release_config_problems",
        "gauge",
        "Configs named by the spool's entries that flush cannot use (unreadable, invalid, untrusted, key unreadable).",
        [({}, figures["config_problems"])],
    )
    family(
        "codo_release_build_info",
        "gauge",
        "The installed hook's version.",
        [({"version": VERSION}, 1)],
    )
    return "\n".join(families) + "\n"


def write_metrics(directory, text):
    """<directory>/codo_release.prom replaced whole: a temp file node_exporter ignores (not *.prom),
    made without following links, 0644, then renamed over it."""
    import stat

    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(0, f"{directory} is not a directory")
    path = os.path.join(directory, METRICS_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    unlink_quietly(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, 0o644)
            handle.write(text)
            handle.flush()
            os.fsync(fd)
        os.rename(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise


def remove_metrics(directory, owners):
    """Remove the codo_release.prom an earlier flush wrote in `directory`: only a regular file of
    this user's by that name, never through a link."""
    import stat

    path = os.path.join(directory, METRICS_FILE)
    try:
        info = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid in owners:
        unlink_quietly(path)


def record_metrics(spool, metrics_dir):
    """After a flush: the tally brought up to date and, with a metrics directory, the textfile.
    metrics_dir: None, not said; "", metrics off. A failure costs no release: one line says what
    is wrong."""
    now = time.time()
    try:
        if os.path.isdir(spool.state_dir):
            tally = update_tally(spool, now, metrics_dir)
        else:  # nothing has run here yet (or a typo): nothing to count, nothing made
            tally = dict(new_tally(), last_flush=now)
    except OSError as error:
        say(f"metrics: cannot keep the counters in {spool.state_dir}: {error.strerror or error}")
        return
    if not metrics_dir:
        return
    try:
        write_metrics(metrics_dir, metrics_text(tally, spool_figures(spool, now)))
    except OSError as error:
        say(
            f"metrics: cannot write {os.path.join(metrics_dir, METRICS_FILE)}: "
            f"{error.strerror or error} (the git user must be able to write that directory)"
        )
