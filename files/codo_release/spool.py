"""The spool: every release journaled before it is sent, claimed by rename.

<state_dir>/spool/<state>/<id>.json for the states pending, inflight, uncertain, failed and sent.
A release is written (locked) into inflight/ before the request leaves and settled into its
state after; whoever renames an entry out of pending/ owns it, so concurrent pushes and flushes
never send one release twice. A spool entry is another user's input until checked: it names
only a config and a project, and the URL and key come from that config if it is trusted.
"""

import os
import time

from . import FAILED, PENDING, SENT, UNCERTAIN
from .config import DIGITS, Config, UntrustedConfig, is_absolute_path, no_constant
from .fileio import create_private, fsync_dir, now_text, private_dir, unlink_quietly, untrusted_file

SPOOL_STATES = (PENDING, "inflight", UNCERTAIN, FAILED, SENT)


SENT_KEPT = 500


ENTRY_LIMIT = 64 * 1024


ENTRY_FIELDS = ("id", "old", "new", "ref", "tag")


class SpoolError(Exception):
    pass


class Claim:
    """An entry being worked on: its inflight file stays locked until it is settled."""

    def __init__(self, spool, entry, handle):
        self.spool, self.entry, self.handle = spool, entry, handle

    def settle(self, state, **fields):
        """Record the entry's new state durably, then let go of it.

        With no room for the new record (a full disk), the journal itself is moved into the new
        state: a rename needs no space. SpoolError only when even that fails: the entry then stays
        in flight, and the next flush counts it uncertain."""
        self.entry.update(fields, state=state, updated=now_text())
        inflight = self.spool.path("inflight", self.entry["id"])
        try:
            if state is None:
                os.unlink(inflight)
                return
            try:
                self.spool.write_entry(state, self.entry)
            except OSError:
                os.rename(inflight, self.spool.path(state, self.entry["id"]))
                return
            os.unlink(inflight)
        except OSError as error:
            raise SpoolError(
                f"cannot record the release in {self.spool.root}: {error.strerror or error}"
            )
        finally:
            self.handle.close()

    def drop(self):
        """Forget the entry (a refused release is not kept: it can simply be pushed again)."""
        self.settle(None)


class Spool:
    """Durable journal of releases in <state_dir>/spool/<state>/<id>.json.

    A release is written (locked, in `inflight/`) before it is sent, and moved
    to `sent/`, `pending/`, `uncertain/` or `failed/` after. Whoever renames
    an entry out of `pending/` owns it: a rename succeeds once, so concurrent
    pushes and flushes never send one release twice. An `inflight/` entry
    whose lock is free belongs to a process that died mid-send: uncertain.

    The spool is the hook's alone: its directories are made 0750 whatever the umask and must
    belong to this user, entries are opened without following links, and an entry that another
    user owns, that others may write, or that is not an entry is ignored and listed by `status`.
    """

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.root = os.path.join(state_dir, "spool")
        self.owners = {os.geteuid(), 0}  # root is above the hook anyway
        if os.geteuid() == 0:  # an admin's root shell reads the git user's spool
            try:
                self.owners.add(os.lstat(state_dir).st_uid)
            except OSError:
                pass
        self.ignored = {}  # path: why it is not trusted

    def path(self, state, entry_id):
        return os.path.join(self.root, state, entry_id + ".json")

    def ensure(self):
        for directory in [self.state_dir, self.root] + [
            os.path.join(self.root, s) for s in SPOOL_STATES + ("tmp",)
        ]:
            private_dir(directory, self.owners)

    def journal(self, entry):
        """Write a new entry straight into `inflight/`, locked by us. Raises SpoolError."""
        import fcntl

        entry = dict(
            entry,
            id=_new_id(),
            created=now_text(),
            updated=now_text(),
            attempts=0,
            state="inflight",
        )
        tmp = os.path.join(self.root, "tmp", entry["id"] + ".json")
        try:
            self.ensure()
            handle = create_private(tmp)
            fcntl.flock(handle, fcntl.LOCK_EX)
            _dump(handle, entry)
            os.rename(tmp, self.path("inflight", entry["id"]))
            fsync_dir(os.path.join(self.root, "inflight"))
        except OSError as error:
            unlink_quietly(tmp)
            raise SpoolError(f"cannot write the spool in {self.root}: {error.strerror or error}")
        return Claim(self, entry, handle)

    def claim(self, state, entry_id):
        """Take an entry out of `state` for sending; None if someone else has it or it is not trusted."""
        import fcntl

        source = self.path(state, entry_id)
        handle = self._open_entry(source)
        if handle is None:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.lstat(source).st_ino:
                raise FileNotFoundError(
                    source
                )  # settled anew while we waited: not the entry we locked
            entry = self._parse(handle, source, entry_id)
            if entry is None:
                raise ValueError(source)
            os.rename(source, self.path("inflight", entry_id))
        except (OSError, ValueError):
            handle.close()
            return None
        return Claim(self, entry, handle)

    def recover_abandoned(self):
        """Inflight entries whose process died mid-send: the task may exist, so uncertain. One
        taken from sent/ to follow its task was not being sent: it goes back to sent/."""
        for entry_id in self.ids("inflight"):
            claim = self.claim("inflight", entry_id)  # renames onto itself: only the lock matters
            if claim is None:
                continue
            if any(
                os.path.lexists(self.path(state, entry_id))
                for state in (SENT, FAILED, PENDING, UNCERTAIN)
            ):
                unlink_quietly(self.path("inflight", entry_id))
                claim.handle.close()
                continue
            try:
                if claim.entry.get("state") == SENT:
                    claim.settle(SENT)
                    continue
                claim.settle(UNCERTAIN, last_error="the process sending it stopped mid-send")
            except SpoolError:
                pass

    def write_entry(self, state, entry):
        tmp = os.path.join(self.root, "tmp", entry["id"] + "." + state)
        try:
            with create_private(tmp) as handle:
                _dump(handle, entry)
            os.rename(tmp, self.path(state, entry["id"]))
            fsync_dir(os.path.join(self.root, state))
        except OSError:
            unlink_quietly(tmp)
            raise

    def ids(self, state):
        try:
            names = os.listdir(os.path.join(self.root, state))
        except OSError:
            return []
        found = []
        for name in names:
            if _is_entry_name(name):
                found.append(name[:-5])
            else:
                self.ignored[os.path.join(self.root, state, name)] = "not a spool entry's name"
        return sorted(found)

    def entries(self, state):
        found = []
        for entry_id in self.ids(state):
            path = self.path(state, entry_id)
            handle = self._open_entry(path)
            if handle is None:
                continue
            with handle:
                entry = self._parse(handle, path, entry_id)
            if entry is not None:
                found.append(dict(entry, state=state))
        return found

    def prune_sent(self, keep=SENT_KEPT):
        for entry_id in self.ids(SENT)[:-keep]:
            unlink_quietly(self.path(SENT, entry_id))

    def _open_entry(self, path):
        """A handle on an entry file, or None (noted in self.ignored) when it is not one the hook wrote."""
        import errno

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:
            self.ignored[path] = (
                "a symbolic link"
                if error.errno == errno.ELOOP
                else (error.strerror or "unreadable")
            )
            return None
        why = untrusted_file(os.fstat(fd), self.owners, ENTRY_LIMIT)
        if why:
            os.close(fd)
            self.ignored[path] = why
            return None
        return os.fdopen(fd, encoding="utf-8")

    def _parse(self, handle, path, entry_id):
        import json

        try:
            entry = json.loads(handle.read(ENTRY_LIMIT + 1), parse_constant=no_constant)
        except (ValueError, RecursionError):
            entry = None
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(field), str) for field in ENTRY_FIELDS)
            and entry["id"] == entry_id
            and entry["ref"] == "refs/tags/" + entry["tag"]
            and isinstance(entry.get("project"), (str, type(None)))
            and isinstance(entry.get("attempts", 0), int)
        ):
            self.ignored[path] = "not a spool entry"
            return None
        return entry


def _is_entry_name(name):
    # <16 digits>-<pid>-<6 hex>.json, as _new_id makes it
    stem, dot, suffix = name.rpartition(".")
    parts = stem.split("-")
    return (
        suffix == "json"
        and len(parts) == 3
        and len(parts[0]) == 16
        and set(parts[0]) <= DIGITS
        and 0 < len(parts[1]) <= 10
        and set(parts[1]) <= DIGITS
        and len(parts[2]) == 6
        and set(parts[2]) <= frozenset("0123456789abcdef")
    )


def _new_id():
    # Sorts by time; unique across processes.
    return f"{int(time.time() * 1e6):016d}-{os.getpid()}-{os.urandom(3).hex()}"


def _dump(handle, entry):
    import json

    json.dump(entry, handle, sort_keys=True)
    handle.flush()
    os.fsync(handle.fileno())


class DownMarker:
    """Remembers briefly that the platform failed, so the next refs of a push go straight to the spool."""

    def __init__(self, state_dir, seconds):
        self.path = os.path.join(state_dir, "platform-down")
        self.seconds = seconds

    def recent(self):
        try:
            return time.time() - os.lstat(self.path).st_mtime < self.seconds
        except OSError:
            return False

    def set(self, detail):
        try:
            with create_private(self.path) as handle:
                handle.write(detail + "\n")
        except OSError:
            pass

    def clear(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


def installed_config(spool, entry):
    """The config a spool entry names, if it is trustworthy for this spool; else UntrustedConfig."""
    path = entry.get("config_path")
    if not is_absolute_path(path):
        raise UntrustedConfig("the entry names no config file: not sent")
    try:
        config = Config.load(path, entry["project"], owners=spool.owners)
    except UntrustedConfig as error:
        raise UntrustedConfig(f"{error}: not sent (a spool entry cannot choose where the key goes)")
    if os.path.realpath(config.state_dir) != os.path.realpath(spool.state_dir):
        raise UntrustedConfig(
            f"config {path} keeps its releases in {config.state_dir}, not in this spool: not sent"
        )
    return config
