"""The log: one JSON line per event in <state_dir>/hook.log, secrets scrubbed, rotated once it
grows past log_max_bytes. Writing it never costs a release.
"""

import os

from .fileio import now_text, private_dir
from .output import SECRETS


def log_event(config, **event):
    """Append one JSON line to <state_dir>/hook.log; the file is rotated once it grows past log_max_bytes."""
    append_log(config.state_dir, config.top["log_max_bytes"], event)


def append_log(state_dir, max_bytes, event):
    """One JSON line, secrets scrubbed, in one write; True if it was written. The log never costs a release."""
    import json

    path = os.path.join(state_dir, "hook.log")
    text = json.dumps(dict(event, time=now_text()), sort_keys=True)
    for secret in SECRETS:
        text = text.replace(secret, "********")
    try:
        private_dir(
            state_dir,
            {os.geteuid()} | ({os.lstat(state_dir).st_uid} if os.path.isdir(state_dir) else set()),
        )
        if os.path.exists(path) and os.path.getsize(path) > max_bytes:
            os.replace(path, path + ".1")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        try:
            os.write(
                fd, (text + "\n").encode("utf-8", "backslashreplace")
            )  # one write: no interleaving
        finally:
            os.close(fd)
    except OSError:
        return False
    return True
