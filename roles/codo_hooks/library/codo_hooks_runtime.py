#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The hook program, its directories and the flush schedule on a GitLab node, in one call."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_runtime
short_description: Install the CODO release hook program, its directories and the flush schedule
description:
  - In one call, makes what the hook needs on a GitLab (Gitaly) node and changes only what differs,
    root-owned unless said otherwise.
  - The install directory (0755) with the hook's entry (0755, its first line naming I(python)) and
    the program's modules (0644), their bytecode compiled by I(python) so the git user never needs
    to write it, and readable by the git user whatever root's umask is.
  - The platform key (C(<git_user>:<git_group>) 0600, never shown, also under C(--diff)) in its
    directory (C(root:<git_group>) 0750), and the state directory for the spool and log
    (C(<git_user>:<git_group>) 0750).
  - Whether I(python) runs and imports C(requests) (C(interpreter_ready)); when it does not, the
    bytecode is left for a second call once the packages are installed.
  - What runs C(flush) every minute, by I(scheduler). C(systemd) writes the service and timer units
    (enabling and starting the timer is left to C(ansible.builtin.systemd_service), told by
    C(units_changed)); C(cron) writes an C(/etc/cron.d) entry; C(auto) chooses C(systemd) when systemd
    is running (C(/run/systemd/system)), else C(cron). Any choice but C(cron) removes the cron entry.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  install_dir:
    description: Where the program is installed.
    type: path
    required: true
  python:
    description: Absolute interpreter named in the entry's first line, which also compiles the bytecode.
    type: path
    required: true
  entry:
    description: The entry's file name and its source (its first line is replaced).
    type: dict
    required: true
    suboptions:
      name:
        description: File name in I(install_dir).
        type: str
        required: true
      source:
        description: The file's text.
        type: str
        required: true
  modules:
    description:
      - The program's modules, path relative to I(install_dir) to text (C(codo_release/config.py)).
        A directory they name is made (C(root:root) 0755).
      - In such a directory, a C(.py) file that is not listed (a module a newer version dropped)
        is removed, with its bytecode.
    type: dict
    default: {}
  obsolete:
    description:
      - Paths relative to I(install_dir) that an older version installed and this one does not (the
        single-file C(codo_release.py) before the program became a package); removed with their bytecode.
    type: list
    elements: str
    default: []
  key_dir:
    description: The directory of the platform key file.
    type: path
    required: true
  auth_key:
    description: The platform's key, written to I(auth_key_file) when I(manage_auth_key).
    type: str
    default: ""
  auth_key_file:
    description: Where the key is kept.
    type: path
  manage_auth_key:
    description: Write I(auth_key) to I(auth_key_file).
    type: bool
    default: false
  auth_key_from:
    description:
      - Where an older release of the role kept the key. When the key is not managed
        (I(manage_auth_key) false) and I(auth_key_file) does not exist, the key there is copied to
        it (C(codo_hooks_migrate) removes the old one later), so that the projects' configs can
        name the new place at once.
    type: path
  retired:
    description: Paths an older release of the role installed; those that exist are returned in C(retired_found).
    type: list
    elements: path
    default: []
  state_dir:
    description: The hook's spool and log directory.
    type: path
    required: true
  git_user:
    description: User Gitaly runs hooks as.
    type: str
    default: git
  git_group:
    description: Group of I(git_user).
    type: str
    default: git
  scheduler:
    description: What runs C(flush) every minute.
    type: str
    choices: [auto, systemd, cron, none]
    default: auto
  units:
    description: The systemd unit files (written when the scheduler is C(systemd)).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The unit file's path.
        type: path
        required: true
      content:
        description: Its text.
        type: str
        required: true
  cron_file:
    description: The C(/etc/cron.d) entry's path.
    type: path
    required: true
  cron:
    description: The cron entry's text (written when the scheduler is C(cron)).
    type: str
    default: ""
  metrics_dir:
    description:
      - node_exporter's textfile collector directory, where C(flush) writes C(codo_release.prom).
        When empty, no metrics. A missing directory is made (C(root:<git_group>) 0775); an existing one is
        left as it is, and the module fails, changing nothing of it, when I(git_user) cannot write it.
    type: path
    default: ""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - The program's modules are not shown in C(--diff) (a thousand-line diff would bury the projects'
    changes; their history is in git), only that they change.
"""

EXAMPLES = r"""
- name: Install the hook program, its directories and the flush schedule
  codo_hooks_runtime:
    install_dir: /opt/codo-release
    python: /usr/bin/python3
    entry:
      name: codo_release_hook.py
      source: "{{ lookup('ansible.builtin.file', 'codo_release_hook.py', rstrip=false) }}"
    modules:
      codo_release/__init__.py: "{{ lookup('ansible.builtin.file', 'codo_release/__init__.py', rstrip=false) }}"
      codo_release/config.py: "{{ lookup('ansible.builtin.file', 'codo_release/config.py', rstrip=false) }}"
    obsolete: [codo_release.py]
    key_dir: /etc/codo-release
    state_dir: /var/opt/codo-release
    cron_file: /etc/cron.d/codo-release-flush
    cron: "* * * * * git /opt/codo-release/codo_release_hook.py flush --state-dir /var/opt/codo-release\n"
"""

RETURN = r"""
scheduler:
  description: What runs flush, C(auto) resolved.
  returned: always
  type: str
  sample: cron
interpreter_ready:
  description: I(python) runs and imports C(requests).
  returned: always
  type: bool
units_changed:
  description: A systemd unit file was (or would be) written.
  returned: always
  type: bool
retired_found:
  description: The paths of I(retired) that exist on the node (C(codo_hooks_migrate) has work to do).
  returned: always
  type: list
  elements: str
done:
  description: What was done (in check mode, what would be), one line each.
  returned: always
  type: list
  elements: str
"""

import grp  # noqa: E402 (after the docs, as Ansible modules are)
import os  # noqa: E402
import pwd  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


class Node:
    """Files and directories brought in line, what was done and the diff."""

    def __init__(self, module):
        self.module = module
        self.check = module.check_mode
        self.done = []
        self.diff = []

    def ids(self, user, group):
        try:
            return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        except KeyError as error:
            self.module.fail_json(
                msg="no user or group {} on this server: is GitLab installed here? "
                "(codo_hooks_git_user, codo_hooks_git_group)".format(error),
                done=self.done,
            )

    def directory(self, path, user, group, mode):
        uid, gid = self.ids(user, group)
        st = lstat(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self.module.fail_json(msg="{} is not a directory: move it away and run again".format(path), done=self.done)
        before = described(st)
        if st is not None and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode):
            return False
        self.diff.append(entry(path, before, dict(path=path, state="directory", owner=user, group=group, mode="%04o" % mode)))
        self.done.append(("created " if st is None else "fixed owner/mode of ") + path)
        if not self.check:
            if st is None:
                os.makedirs(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True

    def file(self, path, text, mode, show=True, user="root", group="root"):
        uid, gid = self.ids(user, group)
        st = lstat(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.module.fail_json(msg="{} is not a file: move it away and run again".format(path), done=self.done)
        data = text.encode("utf-8", "surrogateescape")
        before = b""
        if st is not None:
            with open(path, "rb") as handle:
                before = handle.read()
        same_meta = st is not None and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode)
        differs = st is None or before != data  # an empty file to write differs from none
        if not differs and same_meta:
            return False
        if show and differs:
            self.diff.append({"before_header": path if st else "(absent)", "after_header": path,
                              "before": before.decode("utf-8", "replace"), "after": text})
        else:
            self.diff.append(entry(path, described(st), dict(path=path, state="file", owner=user, group=group, mode="%04o" % mode)))
        self.done.append(("wrote " if differs else "fixed owner/mode of ") + path)
        if not self.check:
            if differs:
                fd, aside = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".codo-release.")
                try:
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.chown(aside, uid, gid)
                    os.chmod(aside, mode)
                    os.rename(aside, path)
                except BaseException:
                    if os.path.lexists(aside):
                        os.unlink(aside)
                    raise
            else:
                os.chown(path, uid, gid)
                os.chmod(path, mode)
        return True

    def writable_dir(self, path, user, group):
        """A directory the git user can write into: made when missing, else only checked (it is
        node_exporter's, shared with other writers)."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return self.directory(path, "root", group, 0o775)
        uid, gid = self.ids(user, group)
        groups = os.getgrouplist(user, gid)
        mode = stat.S_IMODE(st.st_mode)
        can = (
            (st.st_uid == uid and mode & 0o300 == 0o300)
            or (st.st_uid != uid and st.st_gid in groups and mode & 0o030 == 0o030)
            or (st.st_uid != uid and st.st_gid not in groups and mode & 0o003 == 0o003)
        )
        if not stat.S_ISDIR(st.st_mode) or not can:
            self.module.fail_json(
                msg="codo_hooks_metrics_dir {0} is not a directory {1} can write into (flush writes codo_release.prom "
                "there): let the group write it (chgrp {2} {0}; chmod g+w {0}) or choose the directory node_exporter's "
                "--collector.textfile.directory names".format(path, user, group),
                done=self.done,
            )
        return False

    def absent(self, path):
        st = lstat(path)
        if st is None:
            return False
        if stat.S_ISDIR(st.st_mode):
            self.module.fail_json(msg="{} is a directory, where a file was installed: move it away and run again".format(path),
                                  done=self.done)
        self.diff.append(entry(path, described(st), dict(path=path, state="absent")))
        self.done.append("removed " + path)
        if not self.check:
            os.unlink(path)
        return True

    def compiled(self, python, paths):
        """Bytecode by the hook's interpreter, readable by all: compileall says which it compiled."""
        if self.check:
            return
        rc, out, err = self.module.run_command([python, "-m", "compileall", "-q"] + paths)
        if rc != 0:
            self.module.fail_json(msg="{} -m compileall failed: {}".format(python, (err or out).strip()), done=self.done)
        for cache in sorted(set(os.path.join(os.path.dirname(path), "__pycache__") for path in paths)):
            self.readable(cache)

    def readable(self, cache):
        for directory, _, names in os.walk(cache):
            for path in [directory] + [os.path.join(directory, n) for n in names]:
                st = os.lstat(path)
                mode = 0o755 if stat.S_ISDIR(st.st_mode) else 0o644
                if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, 0, mode):
                    os.chown(path, 0, 0)
                    os.chmod(path, mode)
                    self.done.append("made {} readable".format(path))

    def without_bytecode(self, path):
        """Remove a module and its bytecode for any interpreter."""
        self.absent(path)
        cache = os.path.join(os.path.dirname(path), "__pycache__")
        stem = os.path.splitext(os.path.basename(path))[0] + "."
        try:
            names = sorted(os.listdir(cache))
        except OSError:
            names = []
        for name in names:
            if name.startswith(stem) and name.endswith(".pyc"):
                self.absent(os.path.join(cache, name))

    def unlisted(self, directory, listed):
        """The .py files of a program directory that the program no longer has."""
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        return [os.path.join(directory, name) for name in names
                if name.endswith(".py") and os.path.join(directory, name) not in listed]

    def stale(self, paths):
        """Modules whose bytecode for any interpreter is missing or older than the source."""
        found = []
        for path in paths:
            cache = os.path.join(os.path.dirname(path), "__pycache__")
            stem = os.path.splitext(os.path.basename(path))[0] + "."
            try:
                pycs = [os.path.join(cache, n) for n in os.listdir(cache) if n.startswith(stem) and n.endswith(".pyc")]
            except OSError:
                pycs = []
            source = lstat(path)
            if source is None or not pycs or all(os.lstat(p).st_mtime < source.st_mtime for p in pycs):
                found.append(path)
        return found


def inside(name):
    """A relative path that stays below the directory it is relative to."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def parents(top, path):
    """The directories between top (excluded) and path (excluded), outermost first."""
    found = []
    directory = os.path.dirname(path)
    while directory != top and directory.startswith(top + os.sep):
        found.insert(0, directory)
        directory = os.path.dirname(directory)
    return found


def interpreter_ready(module, python):
    if not os.path.isfile(python):
        return False
    rc, _, _ = module.run_command([python, "-c", "import requests"])
    return rc == 0


def lstat(path):
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def described(st):
    if st is None:
        return {"state": "absent"}
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return {"state": kind, "uid": st.st_uid, "gid": st.st_gid, "mode": "%04o" % stat.S_IMODE(st.st_mode)}


def entry(path, before, after):
    return {"before_header": path, "after_header": path, "before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            install_dir=dict(type="path", required=True),
            python=dict(type="path", required=True),
            entry=dict(
                type="dict",
                required=True,
                options=dict(name=dict(type="str", required=True), source=dict(type="str", required=True)),
            ),
            modules=dict(type="dict", default={}),
            obsolete=dict(type="list", elements="str", default=[]),
            key_dir=dict(type="path", required=True),
            auth_key=dict(type="str", default="", no_log=True),
            auth_key_file=dict(type="path"),
            manage_auth_key=dict(type="bool", default=False),
            auth_key_from=dict(type="path"),
            retired=dict(type="list", elements="path", default=[]),
            state_dir=dict(type="path", required=True),
            git_user=dict(type="str", default="git"),
            git_group=dict(type="str", default="git"),
            scheduler=dict(type="str", choices=["auto", "systemd", "cron", "none"], default="auto"),
            units=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(path=dict(type="path", required=True), content=dict(type="str", required=True)),
            ),
            cron_file=dict(type="path", required=True),
            cron=dict(type="str", default=""),
            metrics_dir=dict(type="path", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    node = Node(module)
    install_dir = p["install_dir"]
    node.directory(install_dir, "root", "root", 0o755)
    source = p["entry"]["source"]
    rest = source.split("\n", 1)[1] if "\n" in source else ""
    node.file(os.path.join(install_dir, p["entry"]["name"]), "#!" + p["python"] + "\n" + rest, 0o755)
    paths = []
    for name in sorted(p["modules"]) + sorted(p["obsolete"]):
        if not inside(name):
            module.fail_json(msg="{!r} is not a path inside install_dir: name the module relative to it".format(name),
                             done=node.done)
    for name, text in sorted(p["modules"].items()):
        path = os.path.join(install_dir, os.path.normpath(name))
        for directory in parents(install_dir, path):
            node.directory(directory, "root", "root", 0o755)
        paths.append(path)
        node.file(path, text, 0o644, show=False)
    for directory in sorted(set(os.path.dirname(path) for path in paths) - {install_dir}):
        for path in node.unlisted(directory, paths):
            node.without_bytecode(path)
    for name in sorted(p["obsolete"]):
        node.without_bytecode(os.path.join(install_dir, os.path.normpath(name)))
    ready = interpreter_ready(module, p["python"])
    stale = node.stale(paths) if ready else []
    if stale:
        node.done.append("compiled " + ", ".join(stale))
        node.compiled(p["python"], paths)
    node.directory(p["key_dir"], "root", p["git_group"], 0o750)
    if p["manage_auth_key"]:
        if not p["auth_key_file"]:
            module.fail_json(msg="manage_auth_key needs auth_key_file", done=node.done)
        node.file(p["auth_key_file"], p["auth_key"], 0o600, show=False, user=p["git_user"], group=p["git_group"])
    elif p["auth_key_from"] and p["auth_key_file"] and lstat(p["auth_key_file"]) is None:
        old = lstat(p["auth_key_from"])
        if old is not None and stat.S_ISREG(old.st_mode):
            with open(p["auth_key_from"], "rb") as handle:
                key = handle.read().decode("utf-8", "surrogateescape")
            node.file(p["auth_key_file"], key, 0o600, show=False, user=p["git_user"], group=p["git_group"])
    node.directory(p["state_dir"], p["git_user"], p["git_group"], 0o750)
    if p["metrics_dir"]:
        node.writable_dir(p["metrics_dir"], p["git_user"], p["git_group"])
    scheduler = p["scheduler"]
    if scheduler == "auto":
        scheduler = "systemd" if os.path.isdir("/run/systemd/system") else "cron"
    units_changed = False
    if scheduler == "systemd":
        for unit in p["units"]:
            units_changed = node.file(unit["path"], unit["content"], 0o644) or units_changed
    if scheduler == "cron":
        node.file(p["cron_file"], p["cron"], 0o644)
    else:
        node.absent(p["cron_file"])
    result = dict(changed=bool(node.done), done=node.done, scheduler=scheduler, units_changed=units_changed)
    result["interpreter_ready"] = ready
    result["retired_found"] = [path for path in p["retired"] if lstat(path) is not None]
    # The arguments echoed back without the program's text (it is in git).
    echoed = dict(p, entry=p["entry"]["name"], modules=sorted(p["modules"]))
    result["invocation"] = {"module_args": echoed}
    if module._diff:
        result["diff"] = node.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
