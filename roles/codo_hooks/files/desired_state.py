"""Every project's wanted state, worked out once on the control node, and the checks on it.

Run by the role (tasks/assert.yml) as `python3 -c <this file>` with JSON on stdin:

  {"projects": codo_hooks_projects, "located": {path: GitLab's storage answer},
   "method": ..., "cluster": bool, "stages": [...], "codo": {...}, "settings": {...},
   "defaults": {"submitter", "executor", "details"}, "hook": the hook entry for check-config}

and prints {"projects": [...]}, or exits 1 printing {"errors": [one line each]}. Each project comes out as
files/sync_hooks.py reads it: its path, its repository relative to its storage (absolute
for an absolute disk_path; none when only its path is known), its storage, state, stages
and the codo-release.json it gets. Errors say what to change in the inventory.

Why Python rather than a Jinja template and assert tasks: at a thousand projects the same
work cost Ansible's templating about 15 s a run; here it costs a fraction of a second,
and the hook's own check-config runs over every present project in one process.
Python 3.6+, standard library only.
"""

import hashlib
import json
import subprocess
import sys

LOCATE = (
    "Give the GitLab project id (hashed storage) or disk_path (Admin area > Projects > the project"
    " > Relative path), or set codo_hooks_gitlab_api_url and codo_hooks_gitlab_api_token to have"
    " the role ask GitLab."
)
PRAEFECT = (
    "Praefect tells it: praefect -config /var/opt/gitlab/praefect/config.toml metadata"
    " -virtual-storage default -relative-path <the project's @hashed path>."
)


def hashed(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def repository(project, found, cluster):
    """The repository relative to its storage (absolute for an absolute disk_path), or None."""
    disk_path = project.get("disk_path") or found.get("disk_path")
    if cluster and project.get("replica_path"):
        return project["replica_path"].strip("/")
    if disk_path:
        repo = disk_path.rstrip("/") or "/"
        return repo if repo.endswith(".git") else repo + ".git"
    if project.get("id") is not None:
        return hashed(project["id"])
    return None


def project_config(project, want):
    """The project's own entry of codo-release.json: keys left out are the hook's defaults."""
    defaults = want["defaults"]
    entry = {
        "git_url": project.get("git_url"),
        "app_name": project.get("app_name"),
        "task_name": project.get("task_name"),
        "submitter": project.get("submitter", defaults["submitter"]),
        "executor": project.get("executor", defaults["executor"]),
        "details": project.get("details", defaults["details"]),
        "rules": project.get("rules"),
    }
    return {key: value for key, value in entry.items() if value is not None}


def desired(project, want):
    found = want["located"].get(project["path"], {})
    config = dict({"codo": want["codo"]}, **want["settings"])
    config["projects"] = {project["path"]: project_config(project, want)}
    return {
        "path": project["path"],
        "repo": repository(project, found, want["cluster"]),
        "storage": project.get("storage") or found.get("repository_storage") or None,
        "state": project.get("state") or "present",
        "stages": project.get("stages") or want["stages"],
        "config": config,
    }


def twice(values):
    """The values that occur more than once, in order."""
    seen, again = set(), []
    for value in values:
        if value in seen and value not in again:
            again.append(value)
        seen.add(value)
    return again


def input_errors(want):
    projects, errors = want["projects"], []
    listed = twice(p["path"] for p in projects)
    if listed:
        errors.append(
            "Projects listed more than once in codo_hooks_projects: {}. Keep one entry per project "
            "and put all its tag rules in that entry's rules.".format(", ".join(listed))
        )
    escaping = [
        "{} ({})".format(p["path"], p["disk_path"])
        for p in projects
        if ".." in (p.get("disk_path") or "").split("/")
    ]
    if escaping:
        errors.append("disk_path may not contain '..': " + ", ".join(escaping))
    if want["cluster"]:
        missing = [p["path"] for p in projects if not p.get("replica_path")]
        if missing:
            errors.append(
                "codo_hooks_gitaly_cluster is true but these projects have no replica_path: "
                "{}. {}".format(", ".join(missing), PRAEFECT)
            )
    if want["method"] == "gitaly":
        absolute = [p["path"] for p in projects if (p.get("disk_path") or "").startswith("/")]
        if absolute:
            errors.append(
                "With codo_hooks_install_method gitaly, disk_path is relative to the Gitaly storage "
                "(the Admin area's Relative path); these are absolute: " + ", ".join(absolute)
            )
    return errors


def placement_errors(want, states):
    errors = []
    if want["method"] != "global":
        unlocated = [s["path"] for s in states if s["repo"] is None]
        if unlocated:
            errors.append(
                "Projects with neither id nor disk_path: {}. {}".format(
                    ", ".join(unlocated), LOCATE
                )
            )
    shared = twice((s["storage"], s["repo"]) for s in states if s["repo"] is not None)
    if shared:
        claims = [
            "{} ({})".format(
                repo,
                ", ".join(
                    s["path"] for s in states if (s["storage"], s["repo"]) == (storage, repo)
                ),
            )
            for storage, repo in shared
        ]
        errors.append(
            "These repository directories are claimed by more than one project (check their id "
            "and disk_path): " + "; ".join(claims)
        )
    return errors


def check_config_errors(want, states):
    """The hook's own check-config over every present project, in one run."""
    present = [s for s in states if s["state"] == "present"]
    if not present:
        return []
    combined = dict(present[0]["config"], projects={})
    for state in present:
        combined["projects"].update(state["config"]["projects"])
    check = subprocess.run(
        [sys.executable, want["hook"], "check-config", "/dev/stdin"],
        input=json.dumps(combined),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    if check.returncode == 0:
        return []
    return ["codo_hooks_projects do not make a valid hook config:"] + check.stdout.splitlines()


def main():
    want = json.load(sys.stdin)
    errors = input_errors(want)
    states = [desired(project, want) for project in want["projects"]]
    if not errors:
        errors = placement_errors(want, states) or check_config_errors(want, states)
    if errors:
        json.dump({"errors": errors}, sys.stdout)
        return 1
    json.dump({"projects": states}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
