"""Compare the hooks of many projects with what the inventory wants, in one pass.

Run by tasks/projects.yml as `python3 -c <this file>` with the wanted state as
JSON on stdin. Read-only: it prints the plan (what to create, fix or remove) as
JSON and the role applies that plan with ansible.builtin modules, so a rerun
that changes nothing costs one round trip whatever the number of projects.
Python 3.6+, standard library only.
"""

import grp
import json
import os
import pwd
import stat
import sys


def owner_names(st):
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


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


def attributes_differ(st, owner, group, mode):
    user_name, group_name = owner_names(st)
    if (user_name, group_name) != (owner, group):
        return True
    return mode is not None and stat.S_IMODE(st.st_mode) != int(mode, 8)


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class Plan:
    def __init__(self, want):
        self.want = want
        self.missing_repos = []
        self.conflicts = []
        self.dirs = []
        self.links = []
        self.configs = []
        self.remove_files = []
        self.remove_dirs = []

    def as_dict(self):
        return {
            "missing_repos": self.missing_repos,
            "conflicts": self.conflicts,
            "dirs": self.dirs,
            "links": self.links,
            "configs": self.configs,
            "remove_files": self.remove_files,
            "remove_dirs": self.remove_dirs,
        }

    def is_our_link(self, st, path):
        return kind(st) == "link" and os.readlink(path) == self.want["hook"]

    def add(self, project):
        repo = project["repo"]
        hooks_dir = os.path.join(repo, "custom_hooks")
        if kind(lstat(repo)) != "directory":
            if project["state"] == "present":
                self.missing_repos.append({"path": project["path"], "repo": repo})
            return
        if project["state"] == "present":
            self.install(project, hooks_dir)
            self.remove_links(
                project,
                hooks_dir,
                [s for s in self.want["all_stages"] if s not in project["stages"]],
            )
        else:
            removed = self.remove_links(project, hooks_dir, self.want["all_stages"])
            config = os.path.join(hooks_dir, self.want["config_name"])
            if kind(lstat(config)) == "file":
                self.remove_files.append(config)
                removed.add(config)
            if kind(lstat(hooks_dir)) == "directory" and self.empty_after(hooks_dir, removed):
                self.remove_dirs.append(hooks_dir)

    def install(self, project, hooks_dir):
        want = self.want
        for directory in [hooks_dir] + [
            os.path.join(hooks_dir, s + ".d") for s in project["stages"]
        ]:
            st = lstat(directory)
            if st is None or (
                kind(st) == "directory"
                and attributes_differ(st, want["git_user"], want["git_group"], want["dir_mode"])
            ):
                self.dirs.append(directory)
            elif kind(st) != "directory":
                self.conflicts.append(
                    {
                        "path": project["path"],
                        "file": directory,
                        "is": kind(st),
                        "want": "directory",
                    }
                )
        for stage in project["stages"]:
            link = os.path.join(hooks_dir, stage + ".d", want["link_name"])
            st = lstat(link)
            if st is None:
                self.links.append(link)
            elif kind(st) != "link":
                self.conflicts.append(
                    {"path": project["path"], "file": link, "is": kind(st), "want": "link"}
                )
            elif os.readlink(link) != want["hook"] or attributes_differ(
                st, want["file_owner"], want["file_group"], None
            ):
                self.links.append(link)
        config = os.path.join(hooks_dir, want["config_name"])
        st = lstat(config)
        if st is not None and kind(st) != "file":
            self.conflicts.append(
                {"path": project["path"], "file": config, "is": kind(st), "want": "file"}
            )
        elif (
            st is None
            or read_json(config) != project["config"]
            or attributes_differ(st, want["file_owner"], want["file_group"], want["config_mode"])
        ):
            self.configs.append({"path": project["path"], "dest": config})

    def remove_links(self, project, hooks_dir, stages):
        """Our links in these stages, and their chain directories left empty."""
        removed = set()
        for stage in stages:
            chain = os.path.join(hooks_dir, stage + ".d")
            link = os.path.join(chain, self.want["link_name"])
            if self.is_our_link(lstat(link), link):
                self.remove_files.append(link)
                removed.add(link)
                if self.empty_after(chain, removed):
                    self.remove_dirs.append(chain)
                    removed.add(chain)
        return removed

    @staticmethod
    def empty_after(directory, removed):
        try:
            entries = os.listdir(directory)
        except OSError:
            return False
        return all(os.path.join(directory, entry) in removed for entry in entries)


def main():
    want = json.load(sys.stdin)
    plan = Plan(want)
    for project in want["projects"]:
        plan.add(project)
    json.dump(plan.as_dict(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
