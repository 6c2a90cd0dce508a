"""Bring the hooks of many projects to what the inventory wants, in one pass, on the node.

The engine of the module library/codo_hooks_projects.py: one module call, however many
projects, compares every project's custom_hooks (or Gitaly's custom_hooks_dir) with the wanted
state and makes only the changes that differ; in check mode it says what it would change.

The install methods (codo_hooks_install_method) differ only in where the wanted
entries go and who writes them:

  files   each project's custom_hooks/, written here directly;
  gitaly  each project's custom_hooks/, sent with `gitaly hooks set` as the git
          user: a copy of the project's whole hook set with our entries changed,
          archived with custom_hooks/ at its root (checked with `tar -tf`), and
          compared with what Gitaly left once sent. Only projects that differ are
          sent, and only those in a storage this node's Gitaly has;
  global  Gitaly's custom_hooks_dir: one link per stage, one config holding every
          project and an index of their paths; our entries leave the projects.

It touches only the paths it owns: the chain directories, the `<stage>.d/codo-release`
links, `codo-release.json` and `codo-release.projects`. A link is removed only when
it points at the installed hook; a directory only when empty. A project whose custom_hooks
is a symbolic link, or whose `<stage>.d` is not a directory, is a conflict: never written
or cleaned through. Python 3.6+, standard library only.
"""

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile

from ansible.module_utils.codo_hooks_core.config import CONTROL, combined, config_text

SERVER_WIDE = "(server-wide)"
GITALY_TIMEOUT_S = 300


class Problem(Exception):
    """Why nothing can be done on this node, in one line that says what to change."""


class Refused(Exception):
    """Why apply stopped; what was done before it is in the report."""


# --- reading the node ---------------------------------------------------------


def lstat(path):
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def kind(st):
    if st is None:
        return "absent"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


def permissions(st):
    """rwx for user, group and others: a set-group-id storage (Omnibus' 2770) passes its bit on."""
    return stat.S_IMODE(st.st_mode) & 0o777


def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):
        return None


def read_own_text(path):
    """A file in a project's custom_hooks, which the git user can change between our lstat and
    open: opened without following a link (nor blocking on a FIFO), read only if regular."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, encoding="utf-8") as handle:
            fd = None
            return handle.read()
    except (OSError, ValueError):
        return None
    finally:
        if fd is not None:
            os.close(fd)


TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*([\w.-]+)\s*\]\]?\s*(#.*)?$")
TOML_STRING = re.compile(r"""^\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(#.*)?$""")


def gitaly_settings(path):
    """The `[[storage]]` names and paths and `[hooks] custom_hooks_dir` of Gitaly's config.toml.

    Reads just those string keys (Python 3.6 has no TOML reader); everything else is skipped.
    """
    text = read_text(path)
    if text is None:
        raise Problem(
            "cannot read Gitaly's config {}: is this a Gitaly node? Set codo_hooks_gitaly_config "
            "to its config.toml".format(path)
        )
    storages, hooks_dir, table, entry = {}, None, None, {}
    for line in text.splitlines():
        header = TOML_TABLE.match(line)
        if header:
            table, entry = header.group(2), {}
            if table == "storage" and header.group(1) == "[[":
                storages[len(storages)] = entry
            continue
        pair = TOML_STRING.match(line)
        if not pair:
            continue
        value = pair.group(3) if pair.group(2) is None else pair.group(2).replace("\\\\", "\\")
        if table == "storage":
            entry[pair.group(1)] = value
        elif table == "hooks" and pair.group(1) == "custom_hooks_dir":
            hooks_dir = value
    named = {s["name"]: s["path"] for s in storages.values() if "name" in s and "path" in s}
    return named, hooks_dir


class Owner:
    """A user and group by name, and whether a file already has them (and a mode)."""

    def __init__(self, user, group):
        self.user, self.group = user, group
        self.uid = pwd.getpwnam(user).pw_uid
        self.gid = grp.getgrnam(group).gr_gid

    def differs(self, st, mode=None):
        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
            return True
        return mode is not None and permissions(st) != mode

    def become(self):
        """For subprocess' preexec_fn: run the child as this user, with its groups."""
        os.initgroups(self.user, self.gid)
        os.setgid(self.gid)
        os.setuid(self.uid)


# --- what is wanted where -------------------------------------------------------


class Target:
    """One custom_hooks directory, the entries we want in it and who owns them."""

    def __init__(self, path, hooks_dir, state, stages, files, **how):
        self.path = path  # the project's path, or SERVER_WIDE
        self.hooks_dir = hooks_dir
        self.state = state
        self.stages = stages
        # name -> wanted text, or a config (dict) written as config_text; with state absent,
        # the names to remove
        self.files = files
        self.dir_owner = how["dir_owner"]
        self.file_owner = how["file_owner"]
        self.must_exist = how.get("must_exist", os.path.dirname(hooks_dir))
        self.manage_top = how.get("manage_top", True)  # fix the top directory's owner and mode
        self.keep_top = how.get("keep_top", False)  # never remove the top directory
        self.storage = how.get("storage")
        self.relative = how.get("relative")
        self.how = how

    def moved(self, hooks_dir, must_exist):
        """The same wants in another directory (a staging copy)."""
        how = dict(self.how, must_exist=must_exist)
        return Target(self.path, hooks_dir, self.state, self.stages, self.files, **how)


class Node:
    """This node's Gitaly settings, owners and method: which Targets the projects make."""

    def __init__(self, want):
        self.want = want
        self.method = want["method"]
        self.git = Owner(want["git_user"], want["git_group"])
        self.root = Owner(want["file_owner"], want["git_group"])
        self.storages, self.global_dir = {}, want["global_dir"] or None
        gitaly_config = want["gitaly"]["config"]
        if self.method == "files":
            if os.path.exists(gitaly_config):  # only to clean up a server-wide install
                self.global_dir = gitaly_settings(gitaly_config)[1] or self.global_dir
            return
        self.storages, found = gitaly_settings(gitaly_config)
        if self.method == "global":
            self.global_dir = self.check_global_dir(found, gitaly_config)
        else:
            self.global_dir = found or self.global_dir

    def check_global_dir(self, found, gitaly_config):
        wanted = self.want["global_dir"]
        if not found:
            raise Problem(
                "Gitaly's config {} sets no custom_hooks_dir, which the global method needs: set "
                "gitaly['configuration'] = {{ hooks: {{ custom_hooks_dir: '{}' }} }} in "
                "/etc/gitlab/gitlab.rb and run gitlab-ctl reconfigure".format(
                    gitaly_config, wanted or "/var/opt/gitlab/gitaly/custom_hooks"
                )
            )
        if wanted and os.path.normpath(wanted) != os.path.normpath(found):
            raise Problem(
                "codo_hooks_global_dir is {} but Gitaly's custom_hooks_dir is {} ({}): make them "
                "the same, or leave codo_hooks_global_dir empty to use Gitaly's".format(
                    wanted, found, gitaly_config
                )
            )
        return found

    def repository(self, project):
        """(the storage's directory, or None when this node lacks it; the storage's name)."""
        storage = project.get("storage") or self.want["gitaly"]["storage"]
        root = self.want["repositories_root"]
        if self.method == "gitaly":
            root = self.storages.get(storage)
        elif self.method == "global":
            root = self.storages.get(storage, root)
        return root, storage

    def targets(self):
        """The Targets of every project on this node, and the paths of those elsewhere."""
        targets, elsewhere = [], []
        for project in self.want["projects"]:
            if project["repo"] is None:  # by path only, not looked up (global method)
                continue
            root, storage = self.repository(project)
            if root is None:
                elsewhere.append(project["path"])
                continue
            targets.append(self.project_target(project, root, storage))
        server = [t for t in [self.server_wide()] if t]
        # Never a moment with no hook: the new place is filled before the old is emptied.
        # (The hook run server-wide steps aside for a project that still links it itself.)
        if self.method == "global":
            return server + targets, elsewhere
        return targets + server, elsewhere

    def project_target(self, project, root, storage):
        repo = os.path.join(root, project["repo"])
        state = "absent" if self.method == "global" else project["state"]
        through_gitaly = self.method == "gitaly"
        return Target(
            project["path"],
            os.path.join(repo, "custom_hooks"),
            state,
            project["stages"],
            {self.want["config_name"]: project["config"]},
            dir_owner=self.git,
            file_owner=self.git if through_gitaly else self.root,
            keep_top=through_gitaly,
            storage=storage,
            relative=project["repo"],
        )

    def server_wide(self):
        """Gitaly's custom_hooks_dir: everything with the global method, to clean up without it."""
        if not self.global_dir:
            return None
        present = [p for p in self.want["projects"] if p["state"] == "present"]
        names = [self.want["config_name"], self.want["index_name"]]
        files = dict.fromkeys(names, "")
        state = "absent"
        if self.method == "global" and present:
            state, files = "present", self.server_wide_files(present)
        elif kind(lstat(self.global_dir)) != "directory":
            return None
        return Target(
            SERVER_WIDE,
            self.global_dir,
            state,
            self.want["stages"],
            files,
            dir_owner=self.root,
            file_owner=self.root,
            manage_top=False,
            keep_top=True,
        )

    def server_wide_files(self, present):
        config = combined([project["config"] for project in present])
        index = "".join(path + "\n" for path in sorted(config["projects"]))
        return {self.want["config_name"]: config, self.want["index_name"]: index}


# --- what differs -----------------------------------------------------------------


class Plan:
    """The changes that bring Targets to what is wanted; read-only."""

    def __init__(self, want):
        self.want = want
        self.dir_mode = int(want["dir_mode"], 8)
        self.config_mode = int(want["config_mode"], 8)
        self.owners = {}  # path to create, fix or link -> Owner
        self.missing_repos = []
        self.conflicts = []
        self.dirs = []
        self.links = []
        self.configs = []
        self.remove_files = []
        self.remove_dirs = []

    def changes(self):
        return self.dirs or self.links or self.configs or self.remove_files or self.remove_dirs

    def merge(self, other):
        self.owners.update(other.owners)
        for name in (
            "missing_repos",
            "conflicts",
            "dirs",
            "links",
            "configs",
            "remove_files",
            "remove_dirs",
        ):
            getattr(self, name).extend(getattr(other, name))
        return self

    def as_dict(self):
        return {
            "missing_repos": self.missing_repos,
            "conflicts": self.conflicts,
            "dirs": self.dirs,
            "links": self.links,
            "configs": [{"path": c["path"], "dest": c["dest"]} for c in self.configs],
            "remove_files": self.remove_files,
            "remove_dirs": self.remove_dirs,
        }

    def lines(self):
        return (
            ["create or fix " + d for d in self.dirs]
            + ["link " + link for link in self.links]
            + ["write " + c["dest"] for c in self.configs]
            + ["remove " + f for f in self.remove_files]
            + ["remove if empty " + d for d in self.remove_dirs]
        )

    def conflict(self, target, path, found, wanted):
        self.conflicts.append({"path": target.path, "file": path, "is": found, "want": wanted})

    def is_our_link(self, path):
        """A link to the installed hook, or to where an older release of the role installed it."""
        ours = [self.want["hook"]] + list(self.want.get("retired_hooks") or [])
        return kind(lstat(path)) == "link" and os.readlink(path) in ours

    def add(self, target):
        hooks_dir = target.hooks_dir
        if kind(lstat(target.must_exist)) != "directory":
            if target.state == "present":
                self.missing_repos.append({"path": target.path, "repo": target.must_exist})
            return self
        if target.path != SERVER_WIDE and kind(lstat(hooks_dir)) not in ("absent", "directory"):
            # A custom_hooks that links elsewhere (another project, anywhere): never written or
            # cleaned through, for present and absent alike.
            self.conflict(target, hooks_dir, kind(lstat(hooks_dir)), "directory")
            return self
        if target.state == "present":
            self.install(target)
            unused = [stage for stage in self.want["all_stages"] if stage not in target.stages]
            self.remove_links(target, unused)
            return self
        removed = self.remove_links(target, self.want["all_stages"])
        for name in target.files:
            path = os.path.join(hooks_dir, name)
            if kind(lstat(path)) == "file":
                self.remove_files.append(path)
                removed.add(path)
        top = kind(lstat(hooks_dir)) == "directory"
        if top and not target.keep_top and empty_after(hooks_dir, removed):
            self.remove_dirs.append(hooks_dir)
        return self

    def install(self, target):
        hooks_dir = target.hooks_dir
        chains = [os.path.join(hooks_dir, stage + ".d") for stage in target.stages]
        for directory in [hooks_dir] + chains:
            st = lstat(directory)
            fix = directory != hooks_dir or target.manage_top
            if st is None or (
                fix and kind(st) == "directory" and target.dir_owner.differs(st, self.dir_mode)
            ):
                self.dirs.append(directory)
                self.owners[directory] = target.dir_owner
            elif kind(st) != "directory":
                self.conflict(target, directory, kind(st), "directory")
        for chain in chains:
            link = os.path.join(chain, self.want["link_name"])
            st = lstat(link)
            if st is None:
                self.links.append(link)
            elif kind(st) != "link":
                self.conflict(target, link, kind(st), "link to " + self.want["hook"])
            elif os.readlink(link) != self.want["hook"] or target.file_owner.differs(st):
                self.links.append(link)
            self.owners[link] = target.file_owner
        for name, wanted in sorted(target.files.items()):
            self.file(target, os.path.join(hooks_dir, name), wanted)

    def file(self, target, path, wanted):
        st = lstat(path)
        if st is not None and kind(st) != "file":
            self.conflict(target, path, kind(st), "file")
            return
        before = "" if st is None else (read_own_text(path) or "")
        if (
            st is None
            or not says_the_same(before, wanted)
            or target.file_owner.differs(st, self.config_mode)
        ):
            self.configs.append(
                {
                    "path": target.path,
                    "dest": path,
                    "before": before,
                    "after": wanted if isinstance(wanted, str) else config_text(wanted),
                    "json": path.endswith(".json"),
                }
            )
            self.owners[path] = target.file_owner

    def remove_links(self, target, stages):
        """Our links in these stages, and their chain directories when that leaves them empty."""
        removed = set()
        for stage in stages:
            chain = os.path.join(target.hooks_dir, stage + ".d")
            found = kind(lstat(chain))
            if found == "absent":
                continue
            if found != "directory":
                # Not ours to look into, nor to remove: a file or a link where a chain belongs.
                if stage not in target.stages or target.state != "present":
                    self.conflict(target, chain, found, "directory or nothing")
                continue
            link = os.path.join(chain, self.want["link_name"])
            if self.is_our_link(link):
                self.remove_files.append(link)
                removed.add(link)
                if empty_after(chain, removed):
                    self.remove_dirs.append(chain)
                    removed.add(chain)
        return removed

    def diff(self):
        """Ansible's diff: one before/after entry per config written, link or directory changed."""
        entries = []
        for directory in self.dirs:
            entries.append(entry(directory, described(directory), self.wanted_dir(directory)))
        for link in self.links:
            after = dict(path=link, state="link", src=self.want["hook"])
            entries.append(entry(link, described(link), after))
        for config in self.configs:
            if config["before"] != config["after"]:
                entries.append(
                    {
                        "before_header": config["dest"] if config["before"] else "(absent)",
                        "after_header": config["dest"],
                        "before": config["before"],
                        "after": config["after"],
                    }
                )
            else:
                owner = self.owners[config["dest"]]
                after = dict(path=config["dest"], state="file", owner=owner.user)
                after.update(group=owner.group, mode="%04o" % self.config_mode)
                entries.append(entry(config["dest"], described(config["dest"]), after))
        for path in self.remove_files:
            if path.endswith(".json") and kind(lstat(path)) == "file":
                text = read_own_text(path) or ""
                entries.append(
                    {"before_header": path, "after_header": "(absent)", "before": text, "after": ""}
                )
            else:
                entries.append(entry(path, described(path), dict(path=path, state="absent")))
        for directory in self.remove_dirs:
            entries.append(entry(directory, described(directory), dict(path=directory, state="absent")))
        return entries

    def wanted_dir(self, path):
        owner = self.owners[path]
        return dict(
            path=path, state="directory", owner=owner.user, group=owner.group,
            mode="%04o" % self.dir_mode,
        )


def entry(path, before, after):
    return {"before_header": path, "after_header": path, "before": before, "after": after}


def described(path):
    """What is at path now, as the file module describes it."""
    st = lstat(path)
    found = kind(st)
    if found == "absent":
        return dict(path=path, state="absent")
    what = dict(path=path, state=found)
    if found == "link":
        what["src"] = os.readlink(path)
    else:
        what["mode"] = "%04o" % permissions(st)
    what["owner"] = name_of(pwd.getpwuid, st.st_uid)
    what["group"] = name_of(grp.getgrgid, st.st_gid)
    return what


def name_of(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def says_the_same(text, wanted):
    """Whether a file's text is what is wanted: a text exactly, a config (a dict) as the hook
    reads it (json.loads). Rendering a thousand configs to compare them would cost more than
    the rest of a rerun; a config is rendered only when it is written."""
    if isinstance(wanted, str):
        return text == wanted
    try:
        return json.loads(text) == wanted
    except ValueError:
        return False


def empty_after(directory, removed):
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    return all(os.path.join(directory, entry) in removed for entry in entries)


def check_configs(hook, configs):
    """The hook's own check-config over every config about to be written, in one run."""
    config = combined([json.loads(c["after"]) for c in configs if c["json"]])
    if config is None:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as handle:
        handle.write(config_text(config))
        handle.flush()
        check = subprocess.run(
            [hook, "check-config", handle.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
    if check.returncode != 0:
        raise Refused(
            "the hook's check-config refused the configs; nothing was changed:\n" + check.stdout
        )


class Applier:
    """Makes a plan's changes; each file appears whole (written aside, then renamed)."""

    def __init__(self, plan):
        self.plan = plan
        self.done = []

    def run(self):
        for directory in self.plan.dirs:
            self.directory(directory)
        for link in self.plan.links:
            self.link(link)
        for config in self.plan.configs:
            self.config(config)
        for path in self.plan.remove_files:
            os.unlink(path)
            self.done.append("removed " + path)
        for directory in self.plan.remove_dirs:
            try:
                os.rmdir(directory)
                self.done.append("removed " + directory)
            except OSError as error:  # something new appeared in it: keep it
                self.done.append("kept {} ({})".format(directory, error.strerror))
        return self.done

    def directory(self, path):
        owner = self.plan.owners[path]
        created = lstat(path) is None
        if created:
            os.mkdir(path, self.plan.dir_mode)
        # Through the directory itself, never a link: the git user owns the directory above and
        # may have put a link in its place since the plan looked (chown would follow it).
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            raise Refused(
                "{} is no longer a directory (replaced while the role ran): not followed; look at "
                "what is there now and run again".format(path)
            ) from None
        try:
            os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, self.plan.dir_mode)
        finally:
            os.close(fd)
        self.done.append(("created " if created else "fixed owner/mode of ") + path)

    def link(self, path):
        owner = self.plan.owners[path]
        hook = self.plan.want["hook"]
        aside = os.path.join(
            os.path.dirname(path), ".{}.codo-release-{}".format(os.path.basename(path), os.getpid())
        )
        os.symlink(hook, aside)
        os.lchown(aside, owner.uid, owner.gid)
        os.rename(aside, path)
        self.done.append("linked {} -> {}".format(path, hook))

    def config(self, config):
        path = config["dest"]
        owner = self.plan.owners[path]
        fd, aside = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".codo-release.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(config["after"])
                handle.flush()
                os.fchown(handle.fileno(), owner.uid, owner.gid)
                os.fchmod(handle.fileno(), self.plan.config_mode)
                os.fsync(handle.fileno())
            os.rename(aside, path)
        except BaseException:
            if os.path.lexists(aside):
                os.unlink(aside)
            raise
        self.done.append("wrote " + path)


# --- sending through gitaly hooks set -------------------------------------------------


def manifest(top):
    """Every entry under top: its type and owner's mode bits, a link's target or a file's digest."""
    entries = {}
    for directory, dirs, files in os.walk(top):
        for name in [os.curdir] + dirs + files:
            path = os.path.normpath(os.path.join(directory, name))
            st = os.lstat(path)
            # The owner's bits only: Gitaly's umask may drop group and other bits of the
            # project's own files (ours are checked exactly by the plan afterwards).
            what = (kind(st), permissions(st) & 0o700)
            if kind(st) == "link":
                what = ("link", os.readlink(path))
            elif kind(st) == "file":
                with open(path, "rb") as handle:
                    what += (hashlib.sha256(handle.read()).hexdigest(),)
            entries[os.path.relpath(path, top)] = what
    return entries


KINDS = {tarfile.FIFOTYPE: "a named pipe", tarfile.CHRTYPE: "a device", tarfile.BLKTYPE: "a device"}


def unpack(packed, top, shown):
    """Make top (which must not exist) hold what the archive packed holds, as root: regular
    files, directories and symbolic links (never followed), each mode's rwx bits kept. Anything
    else, a name with `..`, or an entry not under a directory made here is a ValueError naming
    it as under shown."""
    os.mkdir(top, 0o700)
    made = {os.curdir}
    with tarfile.open(packed, "r:") as archive:
        for entry in archive:
            name = os.path.normpath(entry.name)
            where = os.path.join(shown, name)
            if os.path.isabs(entry.name) or os.pardir in entry.name.split("/"):
                raise ValueError("{} is outside custom_hooks".format(where))
            if name != os.curdir and (os.path.dirname(name) or os.curdir) not in made:
                raise ValueError("{} is not in a directory".format(where))
            path = os.path.join(top, name)
            mode = entry.mode & 0o777
            if name == os.curdir and entry.isdir():
                os.chmod(top, mode)
            elif entry.isdir():
                os.mkdir(path, 0o700)
                os.chmod(path, mode)
                made.add(name)
            elif entry.issym():
                os.symlink(entry.linkname, path)
            elif entry.isreg():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(archive.extractfile(entry), out)
                    os.fchmod(out.fileno(), mode)
            else:
                what = KINDS.get(entry.type, "not a file, directory or link")
                raise ValueError("{} is {}".format(where, what))


class GitalySender:
    """Sends a project's whole hook set, our entries changed, with `gitaly hooks set`."""

    def __init__(self, node):
        self.node = node
        self.gitaly = node.want["gitaly"]

    def send(self, target, plan):
        """Send the project's hook set with ours changed; what was sent (a manifest) and a line."""
        with tempfile.TemporaryDirectory(prefix="codo-release-") as work:
            staged = os.path.join(work, "custom_hooks")
            if kind(lstat(target.hooks_dir)) == "directory":
                self.copy(target, work, staged)
            Applier(Plan(self.node.want).add(target.moved(staged, work))).run()
            archive = self.archive(work, target)
            self.hooks_set(target, archive)
            sent = manifest(staged)
        line = "sent {} ({}:{}) with gitaly hooks set: {}".format(
            target.path, target.storage, target.relative, "; ".join(plan.lines())
        )
        return sent, line

    def copy(self, target, work, staged):
        """The project's custom_hooks into staged (root's), read with the git user's rights only.

        The git user owns custom_hooks and may swap any entry for a link while it is copied: read
        by root, a link to /etc/shadow would be followed. So `tar` reads it as the git user, and
        root unpacks that archive, which the git user may have shaped at will: only files,
        directories and links, each in a directory made here, never through a link."""
        packed = os.path.join(work, "copy.tar")
        git = self.node.git
        argv = ["tar", "--create", "--file", "-", "--format=gnu", "--hard-dereference"]
        argv += ["-C", target.hooks_dir, "."]
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
        try:
            with open(packed, "wb") as out:
                run = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    universal_newlines=True,
                    preexec_fn=git.become,
                    cwd="/",
                    env=env,
                    timeout=GITALY_TIMEOUT_S,
                )
        except subprocess.TimeoutExpired:
            raise Refused(
                "copying {}'s custom_hooks as {} took over {} s: not sent".format(
                    target.path, git.user, GITALY_TIMEOUT_S
                )
            ) from None
        said = run.stderr.strip().splitlines()
        if run.returncode != 0 or said:  # also "socket ignored", exit 0
            raise Refused(
                "cannot copy {}'s custom_hooks ({}) as {} to send it ({}): not sent; make what it "
                "names readable by {} or move it away (only files, directories and links can be "
                "sent) and run again".format(
                    target.path,
                    target.hooks_dir,
                    git.user,
                    CONTROL.sub("?", (said or ["tar exit status {}".format(run.returncode)])[0]),
                    git.user,
                )
            )
        try:
            unpack(packed, staged, target.hooks_dir)
        except (OSError, ValueError, tarfile.TarError) as error:
            raise Refused(
                "cannot copy {}'s custom_hooks to send it ({}): not sent; move away what is not "
                "a file, directory or link and run again".format(
                    target.path, CONTROL.sub("?", str(error))
                )
            ) from None
        finally:
            os.unlink(packed)

    def archive(self, work, target):
        """custom_hooks.tar with custom_hooks/ at its root, or Refused: never a wiping archive."""
        archive = os.path.join(work, "custom_hooks.tar")
        if kind(lstat(os.path.join(work, "custom_hooks"))) != "directory":
            raise Refused("nothing staged for {}: not sent".format(target.path))
        subprocess.run(["tar", "-cf", archive, "-C", work, "custom_hooks"], check=True)
        listing = subprocess.run(
            ["tar", "-tf", archive], stdout=subprocess.PIPE, universal_newlines=True, check=True
        ).stdout.splitlines()
        stray = [entry for entry in listing if entry.split("/")[0] != "custom_hooks"]
        if not listing or stray:
            raise Refused(
                "the archive for {} is not rooted at custom_hooks/ ({}): not sent, its hooks are "
                "untouched".format(target.path, (stray or ["empty"])[0])
            )
        return archive

    def hooks_set(self, target, archive):
        argv = [self.gitaly["command"], "hooks", "set", "--storage", target.storage]
        argv += ["--repository", target.relative, "--config", self.gitaly["config"]]
        git = self.node.git
        env = dict(os.environ, HOME=pwd.getpwnam(git.user).pw_dir)
        try:
            with open(archive, "rb") as stdin:
                run = subprocess.run(
                    argv,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    universal_newlines=True,
                    preexec_fn=git.become,
                    cwd="/",
                    env=env,
                    timeout=GITALY_TIMEOUT_S,
                )
        except FileNotFoundError:
            raise Refused(
                "no gitaly command at {}: set codo_hooks_gitaly_command".format(argv[0])
            ) from None
        except subprocess.TimeoutExpired:
            raise Refused(
                "gitaly hooks set for {} took over {} s".format(target.path, GITALY_TIMEOUT_S)
            ) from None
        if run.returncode != 0:
            said = (run.stdout.strip().splitlines() or ["no output"])[-1]
            raise Refused(
                "gitaly hooks set failed for {} ({}:{}): {}".format(
                    target.path, target.storage, target.relative, said
                )
            )

    def check_result(self, target, sent):
        """What the project holds now is what was sent, and needs nothing more of ours."""
        now = manifest(target.hooks_dir)
        differ = sorted(name for name in set(sent) | set(now) if sent.get(name) != now.get(name))
        if not differ:
            differ = Plan(self.node.want).add(target).lines()
        if differ:
            raise Refused(
                "gitaly hooks set did not leave {}'s custom_hooks as sent ({}); is "
                "codo_hooks_git_user the user Gitaly runs as?".format(
                    target.path, ", ".join(differ[:5])
                )
            )


# --- the command -------------------------------------------------------------------


def apply(node, plans):
    """Make every plan's changes; the list of what was done, or Refused (done so far on it)."""
    done = []
    try:
        check_configs(node.want["hook"], [c for _, plan in plans for c in plan.configs])
        sender = GitalySender(node) if node.method == "gitaly" else None
        for target, plan in plans:
            if not plan.changes():
                continue
            if sender and target.path != SERVER_WIDE:
                sent, line = sender.send(target, plan)
                done.append(line)
                sender.check_result(target, sent)
            else:
                done.extend(Applier(plan).run())
    except Refused as error:
        error.done = done
        raise
    return done




def failure(plan):
    """One message naming every missing repository and conflict."""
    parts = []
    if plan.missing_repos:
        parts.append(
            "No repository directory on this node for: {}. Check the project's id, or set "
            "disk_path to the Relative path the Admin area shows (legacy storage, another storage, "
            "Gitaly Cluster), or codo_hooks_repositories_root".format(
                "; ".join("{} (looked for {})".format(r["path"], r["repo"]) for r in plan.missing_repos)
            )
        )
    if plan.conflicts:
        parts.append(
            "{}. Move it away (it was not made by this role) and run again".format(
                "; ".join(
                    "{}: {} is a {}, the hook needs a {} there".format(
                        c["path"], c["file"], c["is"], c["want"]
                    )
                    for c in plan.conflicts
                )
            )
        )
    return ". ".join(parts) + "; nothing was changed."


def run(want, check):
    """The module's result, and why it failed (None when it did not).

    want: the node's settings and every project's wanted state (desired.work_out's states).
    """
    result = {"changed": False, "differs": False, "done": [], "sends": [], "elsewhere": [], "method": want["method"]}
    try:
        node = Node(want)
    except KeyError as error:  # pwd/grp: no such user or group
        problem = (
            "no user or group {} on this server: is GitLab installed here? "
            "(codo_hooks_git_user, codo_hooks_git_group)".format(error)
        )
        return dict(result, errors=[problem]), problem
    except Problem as error:
        return dict(result, errors=[str(error)]), str(error)
    targets, elsewhere = node.targets()
    plans = [(target, Plan(want).add(target)) for target in targets]
    merged = Plan(want)
    for _, plan in plans:
        merged.merge(plan)
    sends = [
        t.path
        for t, p in plans
        if node.method == "gitaly" and t.path != SERVER_WIDE and p.changes()
    ]
    result.update(merged.as_dict(), elsewhere=elsewhere, sends=sends)
    if merged.missing_repos or merged.conflicts:
        return result, failure(merged)
    result["diff"] = merged.diff()
    result["changed"] = result["differs"] = bool(merged.changes())
    if check or not result["changed"]:
        return result, None
    try:
        result["done"] = apply(node, plans)
    except Refused as error:
        result.update(done=error.done, changed=bool(error.done))
        done = "; ".join(error.done) if error.done else "nothing"
        return result, "{} (done before it stopped: {})".format(error, done)
    return result, None
