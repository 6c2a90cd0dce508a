"""Bring the hooks of many projects to what the inventory wants, in one pass.

Run by the role as `python3 -c <this file> plan|apply [--check]` with the wanted
state as JSON on stdin (tasks/assert.yml, tasks/projects.yml); prints a JSON report.

  plan           read-only: what differs (missing repositories and conflicts too)
  apply          make the changes of the plan; refuses to start if a repository is
                 missing or something the role did not make is in the way
  apply --check  what apply would do, changing nothing (Ansible's check mode)

Why one script rather than a loop of ansible.builtin tasks per project: a loop pays
a module round trip per item and task, 6 per project at first install, and GitLab
servers carry hundreds of hooked projects. Here a rerun that changes nothing costs
one round trip whatever the number of projects, and a first install two.

It touches only the paths it owns in each project's custom_hooks: the chain
directories, the `<stage>.d/codo-release` links and `codo-release.json`. A link is
removed only when it points at the installed hook; a directory only when empty.
Python 3.6+, standard library only.
"""

import difflib
import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile


def lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
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


def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):
        return None


def config_text(config):
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


class Owner:
    """A user and group by name, and whether a file already has them (and a mode)."""

    def __init__(self, user, group):
        self.user, self.group = user, group
        self.uid = pwd.getpwnam(user).pw_uid
        self.gid = grp.getgrnam(group).gr_gid

    def differs(self, st, mode=None):
        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
            return True
        return mode is not None and stat.S_IMODE(st.st_mode) != mode


class Plan:
    def __init__(self, want):
        self.want = want
        self.dir_mode = int(want["dir_mode"], 8)
        self.config_mode = int(want["config_mode"], 8)
        self.dir_owner = Owner(want["git_user"], want["git_group"])
        self.file_owner = Owner(want["file_owner"], want["file_group"])
        self.missing_repos = []
        self.conflicts = []
        self.dirs = []
        self.links = []
        self.configs = []
        self.remove_files = []
        self.remove_dirs = []

    def changes(self):
        return self.dirs or self.links or self.configs or self.remove_files or self.remove_dirs

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

    def conflict(self, project, path, found, wanted):
        self.conflicts.append({"path": project["path"], "file": path, "is": found, "want": wanted})

    def is_our_link(self, path):
        return kind(lstat(path)) == "link" and os.readlink(path) == self.want["hook"]

    def add(self, project):
        repo = project["repo"]
        hooks_dir = os.path.join(repo, "custom_hooks")
        if kind(lstat(repo)) != "directory":
            if project["state"] == "present":
                self.missing_repos.append({"path": project["path"], "repo": repo})
            return
        if project["state"] == "present":
            self.install(project, hooks_dir)
            unused = [stage for stage in self.want["all_stages"] if stage not in project["stages"]]
            self.remove_links(hooks_dir, unused)
            return
        removed = self.remove_links(hooks_dir, self.want["all_stages"])
        config = os.path.join(hooks_dir, self.want["config_name"])
        if kind(lstat(config)) == "file":
            self.remove_files.append(config)
            removed.add(config)
        if kind(lstat(hooks_dir)) == "directory" and empty_after(hooks_dir, removed):
            self.remove_dirs.append(hooks_dir)

    def install(self, project, hooks_dir):
        chains = [os.path.join(hooks_dir, stage + ".d") for stage in project["stages"]]
        for directory in [hooks_dir] + chains:
            st = lstat(directory)
            if st is None or (
                kind(st) == "directory" and self.dir_owner.differs(st, self.dir_mode)
            ):
                self.dirs.append(directory)
            elif kind(st) != "directory":
                self.conflict(project, directory, kind(st), "directory")
        for chain in chains:
            link = os.path.join(chain, self.want["link_name"])
            st = lstat(link)
            if st is None:
                self.links.append(link)
            elif kind(st) != "link":
                self.conflict(project, link, kind(st), "link to " + self.want["hook"])
            elif os.readlink(link) != self.want["hook"] or self.file_owner.differs(st):
                self.links.append(link)
        config = os.path.join(hooks_dir, self.want["config_name"])
        st = lstat(config)
        wanted = config_text(project["config"])
        if st is not None and kind(st) != "file":
            self.conflict(project, config, kind(st), "file")
        elif (
            st is None
            or read_text(config) != wanted
            or self.file_owner.differs(st, self.config_mode)
        ):
            before = "" if st is None else (read_text(config) or "")
            self.configs.append(
                {"path": project["path"], "dest": config, "before": before, "after": wanted}
            )

    def remove_links(self, hooks_dir, stages):
        """Our links in these stages, and their chain directories when that leaves them empty."""
        removed = set()
        for stage in stages:
            chain = os.path.join(hooks_dir, stage + ".d")
            link = os.path.join(chain, self.want["link_name"])
            if self.is_our_link(link):
                self.remove_files.append(link)
                removed.add(link)
                if empty_after(chain, removed):
                    self.remove_dirs.append(chain)
                    removed.add(chain)
        return removed


def empty_after(directory, removed):
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    return all(os.path.join(directory, entry) in removed for entry in entries)


class Applier:
    """Makes the plan's changes; each file appears whole (written aside, then renamed)."""

    def __init__(self, plan):
        self.plan = plan
        self.done = []

    def run(self):
        self.validate_configs()
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

    def validate_configs(self):
        """The hook's own check-config over every config about to be written, in one run."""
        if not self.plan.configs:
            return
        combined = None
        for config in self.plan.configs:
            parsed = json.loads(config["after"])
            if combined is None:
                combined = parsed
            else:
                combined["projects"].update(parsed["projects"])
        with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as handle:
            handle.write(config_text(combined))
            handle.flush()
            check = subprocess.run(
                [self.plan.want["hook"], "check-config", handle.name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                universal_newlines=True,
            )
        if check.returncode != 0:
            raise Refused(
                "the hook's check-config refused the configs; nothing was changed:\n" + check.stdout
            )

    def directory(self, path):
        if lstat(path) is None:
            os.mkdir(path, self.plan.dir_mode)
            self.done.append("created " + path)
        else:
            self.done.append("fixed owner/mode of " + path)
        os.chown(path, self.plan.dir_owner.uid, self.plan.dir_owner.gid)
        os.chmod(path, self.plan.dir_mode)

    def link(self, path):
        aside = os.path.join(
            os.path.dirname(path), ".{}.codo-hooks-{}".format(os.path.basename(path), os.getpid())
        )
        os.symlink(self.plan.want["hook"], aside)
        os.lchown(aside, self.plan.file_owner.uid, self.plan.file_owner.gid)
        os.rename(aside, path)
        self.done.append("linked {} -> {}".format(path, self.plan.want["hook"]))

    def config(self, config):
        path = config["dest"]
        fd, aside = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".codo-release.json.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(config["after"])
                handle.flush()
                os.fchown(handle.fileno(), self.plan.file_owner.uid, self.plan.file_owner.gid)
                os.fchmod(handle.fileno(), self.plan.config_mode)
                os.fsync(handle.fileno())
            os.rename(aside, path)
        except BaseException:
            if os.path.lexists(aside):
                os.unlink(aside)
            raise
        self.done.append("wrote " + path)


class Refused(Exception):
    pass


def config_diffs(plan):
    return [
        "".join(
            difflib.unified_diff(
                config["before"].splitlines(True),
                config["after"].splitlines(True),
                "before: " + config["dest"],
                "after: " + config["dest"],
            )
        )
        for config in plan.configs
        if config["before"] != config["after"]
    ]


def main(argv):
    mode = argv[1] if len(argv) > 1 else "plan"
    check = "--check" in argv[2:]
    want = json.load(sys.stdin)
    try:
        plan = Plan(want)
    except KeyError as error:  # pwd/grp: no such user or group
        problem = "no user or group {} on this server: is GitLab installed here? (codo_hooks_git_user, codo_hooks_git_group)"
        json.dump({"errors": [problem.format(error)], "changed": False}, sys.stdout)
        return 1
    for project in want["projects"]:
        plan.add(project)
    report = dict(plan.as_dict(), errors=[], changed=False, done=[], diffs=config_diffs(plan))
    if mode == "apply":
        if plan.missing_repos or plan.conflicts:
            report["failed"] = "missing repositories or conflicts: nothing was changed"
            json.dump(report, sys.stdout)
            return 1
        report["changed"] = bool(plan.changes())
        if not check:
            applier = Applier(plan)
            try:
                applier.run()
            except Refused as error:
                report["failed"] = str(error)
                report["changed"] = False
                json.dump(report, sys.stdout)
                return 1
            finally:
                report["done"] = applier.done
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
