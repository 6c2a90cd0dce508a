#!/usr/bin/python
# -*- coding: utf-8 -*-
"""What an older release of the role installed under other names, moved to today's, in one call."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_migrate
short_description: Move what the CODO release hook's older install left under retired names
description:
  - The role once installed the hook under C(codo-hooks) names (C(/opt/codo-hooks),
    C(/var/opt/codo-hooks), C(/etc/codo-hooks/auth_key), C(codo-hooks-flush)); they are
    C(codo-release) now. Run after every project's config names the new places, this moves what is
    left, losing nothing, and is idempotent (a second run finds nothing to do).
  - The old flush timer is stopped and disabled and its units removed (with a C(daemon-reload)),
    the old cron entry removed, so that nothing flushes the old spool while it moves.
  - Everything in the old state directory (spool entries, C(hook.log), the platform-down mark)
    is moved into the new one by rename, keeping owner and mode; a name the new directory already
    has is kept as C(<name>.from-<old directory's name>). A spool entry locked by a hook still
    sending it is left for the next run. The old directories are removed once empty.
  - The old key file is removed once the new one exists (it is moved there when the role does not
    write the key), and its directory once empty.
  - The old install directory's program (the entry, its modules and their bytecode) is removed,
    and the directory once empty. Links to it in projects are relinked by C(codo_hooks_projects).
  - Check mode says what would move and moves nothing; C(--diff) lists each move.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  state_dir:
    description: The retired and the current state directory.
    type: dict
    required: true
    suboptions:
      old:
        description: The retired path.
        type: path
        required: true
      new:
        description: Today's path.
        type: path
        required: true
  auth_key_file:
    description: The retired and the current key file.
    type: dict
    required: true
    suboptions:
      old:
        description: The retired path.
        type: path
        required: true
      new:
        description: Today's path.
        type: path
        required: true
  install_dir:
    description: The retired and the current install directory.
    type: dict
    required: true
    suboptions:
      old:
        description: The retired path.
        type: path
        required: true
      new:
        description: Today's path.
        type: path
        required: true
  program:
    description: The program's file names in the install directory.
    type: list
    elements: str
    default: [codo_release_hook.py, codo_release.py]
  flush_units:
    description: The retired flush units' files (the C(.timer) is stopped and disabled first).
    type: list
    elements: path
    default: []
  cron_file:
    description: The retired cron entry.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - A pair whose old and new paths are the same (a path set in the inventory) is left alone.
  - The key is never read into the result or the diff.
"""

EXAMPLES = r"""
- name: Move what the codo-hooks install left to the codo-release names
  codo_hooks_migrate:
    state_dir: {old: /var/opt/codo-hooks, new: /var/opt/codo-release}
    auth_key_file: {old: /etc/codo-hooks/auth_key, new: /etc/codo-release/auth_key}
    install_dir: {old: /opt/codo-hooks, new: /opt/codo-release}
    flush_units: [/etc/systemd/system/codo-hooks-flush.timer, /etc/systemd/system/codo-hooks-flush.service]
    cron_file: /etc/cron.d/codo-hooks-flush
"""

RETURN = r"""
changed:
  description: Whether anything was (or in check mode would be) moved or removed.
  returned: always
  type: bool
moved:
  description: What was (or would be) moved, C(old -> new), one line each.
  returned: always
  type: list
  elements: str
removed:
  description: What was (or would be) removed.
  returned: always
  type: list
  elements: str
kept:
  description: What was left for the next run, and why.
  returned: always
  type: list
  elements: str
"""

import contextlib  # noqa: E402 (after the docs, as Ansible modules are)
import errno  # noqa: E402
import fcntl  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

PAIR = dict(old=dict(type="path", required=True), new=dict(type="path", required=True))


def lstat(path):
    try:
        return os.lstat(path)
    except OSError:
        return None


def locked(path):
    """A spool entry a hook holds (it flocks what it is sending)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class Migration:
    def __init__(self, module):
        self.module = module
        self.check = module.check_mode
        self.moved, self.removed, self.kept, self.diff = [], [], [], []
        self.gone = set()  # paths moved or removed (or, in check mode, that would be)
        self.made = set()  # directories made (or that would be)

    def say_moved(self, old, new):
        self.gone.add(old)
        self.moved.append("{} -> {}".format(old, new))
        self.diff.append(
            {"before_header": old, "after_header": new, "before": {"path": old}, "after": {"path": new}}
        )

    def say_removed(self, path):
        self.gone.add(path)
        self.removed.append(path)
        self.diff.append(
            {"before_header": path, "after_header": path, "before": {"path": path, "state": "present"},
             "after": {"path": path, "state": "absent"}}
        )

    # --- the flush schedule -------------------------------------------------------------

    def schedule(self, units, cron_file):
        found = [unit for unit in units if lstat(unit) is not None]
        timers = [os.path.basename(u) for u in found if u.endswith(".timer")]
        systemd = os.path.isdir("/run/systemd/system")
        if timers and systemd and not self.check:
            self.module.run_command(["systemctl", "disable", "--now"] + timers)
        for unit in found:
            self.remove(unit)
        if found and systemd and not self.check:
            self.module.run_command(["systemctl", "daemon-reload"])
        if cron_file and lstat(cron_file) is not None:
            self.remove(cron_file)

    def remove(self, path):
        self.say_removed(path)
        if not self.check:
            os.unlink(path)

    # --- the state directory ------------------------------------------------------------

    def state(self, old, new):
        st = lstat(old)
        if old == new or st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.kept.append("{}: not a directory, left as it is".format(old))
            return
        suffix = ".from-" + os.path.basename(old.rstrip("/"))
        self.merge(old, new, st, suffix, top=True)

    def merge(self, old, new, st, suffix, top=False):
        """Moves old's entries into new (made like old when absent), one by one so that an entry
        a hook holds stays; old removed once empty. At the top, the entries move as the owner of
        new (the git user, who can write in both): a link it puts in the way mid-move then
        leads nowhere it could not write itself."""
        if lstat(new) is None:
            self.made.add(new)
            self.diff.append(
                {"before_header": new, "after_header": new, "before": {"state": "absent"},
                 "after": {"state": "directory", "like": old}}
            )
            if not self.check:
                os.makedirs(os.path.dirname(new) or "/", 0o755, exist_ok=True)
                os.mkdir(new, 0o700)
                own(new, st)
        with acting_as((lstat(new) or st) if top else None):
            left = self.entries(old, new, suffix)
        if not left:
            self.say_removed(old)
            if not self.check:
                try:
                    os.rmdir(old)
                except OSError as error:  # something new appeared in it: the next run moves it
                    self.kept.append("{}: {}".format(old, error.strerror))
                    left = True
        return left

    def entries(self, old, new, suffix):
        """Moves old's entries into new; whether any stayed."""
        left = False
        for name in sorted(os.listdir(old)):
            source, target = os.path.join(old, name), os.path.join(new, name)
            source_st = lstat(source)
            if source_st is None:
                continue
            target_st = None if new in self.made and self.check else lstat(target)
            if stat.S_ISDIR(source_st.st_mode) and (
                target_st is None or stat.S_ISDIR(target_st.st_mode)
            ):
                left = self.merge(source, target, source_st, suffix) or left
                continue
            if stat.S_ISREG(source_st.st_mode) and locked(source):
                self.kept.append("{}: a hook is sending it; moved on the next run".format(source))
                left = True
                continue
            if target_st is not None:
                target += suffix
                if lstat(target) is not None:
                    self.kept.append("{}: {} is taken".format(source, target))
                    left = True
                    continue
            self.say_moved(source, target)
            if not self.check:
                self.rename(source, target, source_st)
        return left

    def rename(self, source, target, st):
        try:
            os.rename(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            # Another file system: copied with its owner and mode, then the old removed.
            if stat.S_ISDIR(st.st_mode):
                shutil.copytree(source, target, symlinks=True)
                for directory, dirs, names in os.walk(source, topdown=False):
                    for name in dirs + names:
                        path = os.path.join(directory, name)
                        copy = os.path.join(target, os.path.relpath(path, source))
                        own(copy, os.lstat(path))
                shutil.rmtree(source)
            else:
                shutil.copy2(source, target, follow_symlinks=False)
                own(target, st)
                os.unlink(source)
            own(target, st)

    # --- the key and the program ----------------------------------------------------------

    def key(self, old, new):
        st = lstat(old)
        if old == new or st is None:
            return
        if lstat(new) is None:
            self.say_moved(old, new)
            if not self.check:
                os.makedirs(os.path.dirname(new), 0o750, exist_ok=True)
                self.rename(old, new, st)
        else:
            self.remove(old)
        self.remove_empty(os.path.dirname(old))

    def program(self, old, new, names):
        if old == new or lstat(old) is None:
            return
        for name in names:
            path = os.path.join(old, name)
            if lstat(path) is not None:
                self.remove(path)
        cache = os.path.join(old, "__pycache__")
        stems = tuple(os.path.splitext(name)[0] + "." for name in names)
        if lstat(cache) is not None:
            for name in sorted(os.listdir(cache)):
                if name.startswith(stems) and name.endswith(".pyc"):
                    self.remove(os.path.join(cache, name))
            self.remove_empty(cache)
        self.remove_empty(old)

    def remove_empty(self, directory):
        try:
            entries = os.listdir(directory)
        except OSError:
            return
        if all(os.path.join(directory, entry) in self.gone for entry in entries):
            self.say_removed(directory)
            if not self.check:
                os.rmdir(directory)
        else:
            self.kept.append("{}: holds files the role did not install".format(directory))


@contextlib.contextmanager
def acting_as(st):
    """The block run as st's owner and group when this is root and st is not root's."""
    if st is None or os.geteuid() != 0 or st.st_uid == 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([st.st_gid])
    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def own(path, st):
    os.lchown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="dict", required=True, options=PAIR),
            auth_key_file=dict(type="dict", required=True, options=PAIR),
            install_dir=dict(type="dict", required=True, options=PAIR),
            program=dict(type="list", elements="str", default=["codo_release_hook.py", "codo_release.py"]),
            flush_units=dict(type="list", elements="path", default=[]),
            cron_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    migration = Migration(module)
    try:
        migration.schedule(p["flush_units"], p["cron_file"])
        migration.state(p["state_dir"]["old"], p["state_dir"]["new"])
        migration.key(p["auth_key_file"]["old"], p["auth_key_file"]["new"])
        migration.program(p["install_dir"]["old"], p["install_dir"]["new"], p["program"])
    except OSError as error:
        module.fail_json(
            msg="moving the retired install stopped at {}: {}; what was moved is listed, run again "
            "once that is fixed".format(error.filename, error.strerror),
            moved=migration.moved,
            removed=migration.removed,
            kept=migration.kept,
        )
    result = dict(
        changed=bool(migration.moved or migration.removed),
        moved=migration.moved,
        removed=migration.removed,
        kept=migration.kept,
    )
    if module._diff:
        result["diff"] = migration.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
