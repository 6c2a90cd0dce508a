"""`status`: what the spool holds, the recent releases with their outcome and task link, and
the key's expiry; for a person, or as JSON (`--json`) for the role's fleet status.
"""

import time

from . import EXIT_OK, FAILED, PENDING, SENT, UNCERTAIN, VERSION
from .config import CODO_DEFAULTS, ConfigError, read_config, state_dir_of, with_defaults
from .keys import jwt_claims, key_exp, key_expiry, read_auth_key
from .metrics import current_tally, new_tally, spool_figures
from .output import one_line, say, shown
from .platform import STATUS_RECENT
from .spool import Spool


def status_key_expiry(config_path):
    """The key's expiry, when the config can be read here; '' otherwise."""
    try:
        raw = read_config(config_path)
        key = read_auth_key(with_defaults(raw.get("codo") or {}, CODO_DEFAULTS))
    except (ConfigError, AttributeError, TypeError):
        return ""
    problem, warning = key_expiry(key)
    exp = jwt_claims(key).get("exp")
    if problem or warning:
        return "WARNING " + (problem or warning)
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp - exp == 0:
        return "the platform key expires on " + time.strftime(
            "%Y-%m-%d", time.gmtime(min(exp, 253402300799))
        )
    return ""


def status_document(args, spool, entries):
    """`status --json`: the spool's counts, waiting entries and ignored files, and what a fleet
    report needs of a node (every time in epoch seconds, every age in seconds; null when unknown)."""
    now = time.time()
    counts = {state: len(found) for state, found in entries.items()}
    waiting = [entry for state in (PENDING, UNCERTAIN, FAILED) for entry in entries[state]]
    figures = spool_figures(spool, now, entries)
    try:
        tally = current_tally(spool)
    except OSError:
        tally = new_tally()
    key_expires = status_key_exp(args.config)
    return {
        "counts": counts,
        "entries": waiting,
        "ignored": spool.ignored,
        "version": VERSION,
        "key_expires": key_expires if key_expires is not None else figures["key_expires"],
        "last_run": tally["last_run"],
        "last_flush": tally["last_flush"],
        "oldest_pending_s": figures["oldest"][PENDING],
        "oldest_uncertain_s": figures["oldest"][UNCERTAIN],
    }


def status_key_exp(config_path):
    """The expiry of the key of the config `status` was given, or None."""
    try:
        raw = read_config(config_path)
        return key_exp(read_auth_key(with_defaults(raw.get("codo") or {}, CODO_DEFAULTS)))
    except (ConfigError, AttributeError, TypeError):
        return None


def status(args):
    import json

    spool = Spool(state_dir_of(args))
    entries = {
        state: spool.entries(state) for state in (PENDING, UNCERTAIN, FAILED, SENT, "inflight")
    }
    counts = {state: len(found) for state, found in entries.items()}
    waiting = [entry for state in (PENDING, UNCERTAIN, FAILED) for entry in entries[state]]
    if args.json:
        print(json.dumps(status_document(args, spool, entries), sort_keys=True, indent=1))
        return EXIT_OK
    say(
        "spool {}: {} pending, {} uncertain, {} failed, {} sent, {} in flight".format(
            spool.root,
            counts[PENDING],
            counts[UNCERTAIN],
            counts[FAILED],
            counts[SENT],
            counts["inflight"],
        )
    )
    for entry in waiting[-20:]:
        say(
            "  {:<9} {} {} {} (tries {}): {}".format(
                entry["state"],
                one_line(entry.get("updated"), 40),
                one_line(entry.get("project"), 100),
                shown(entry["tag"]),
                entry.get("attempts", 0),
                one_line(entry.get("last_error"), 300)
                + (f" ({one_line(entry['settle_note'], 300)})" if entry.get("settle_note") else ""),
            )
        )
    expiry = status_key_expiry(args.config)
    if expiry:
        say(expiry)
    recent = sorted(entries[SENT], key=lambda entry: entry.get("updated") or "")[-STATUS_RECENT:]
    if recent:
        say("recent releases:")
    for entry in recent:
        say(
            "  {:<16} {} {} {} task {}{}{}".format(
                one_line(
                    entry.get("follow") or ("skipped" if entry.get("skipped") else "submitted"), 16
                ),
                one_line(entry.get("updated"), 40),
                one_line(entry.get("project"), 100),
                shown(entry["tag"]),
                entry.get("task_id"),
                f": {one_line(entry['follow_note'], 200)}" if entry.get("follow_note") else "",
                f" {one_line(entry['link'], 200)}" if entry.get("link") else "",
            )
        )
    for path, why in sorted(spool.ignored.items()):
        say(f"  ignored   {one_line(path, 200)}: {why} (the hook did not write it; remove it)")
    return EXIT_OK
