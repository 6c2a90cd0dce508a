"""Every project's wanted state, worked out from the inventory, and the checks on it.

The module works the projects out on the node from the role's variables (cheap: a fraction of
a second for a thousand projects); the action plugin works the same out on the control node to
run the hook's check-config over them before anything changes. Each project comes out as
sync.py reads it: its path, its repository relative to its storage (absolute for an absolute
disk_path; None when only its path is known), its storage, state, stages and the
codo-release.json it gets. Errors say what to change in the inventory, one line each.
Python 3.6+, standard library only.
"""

import json
import subprocess
import tempfile

from ansible.module_utils.codo_hooks_core.config import combined, hashed

LOCATE = (
    "Give the GitLab project id (hashed storage) or disk_path (Admin area > Projects > the project"
    " > Relative path), or set codo_hooks_gitlab_api_url and codo_hooks_gitlab_api_token to have"
    " the role ask GitLab."
)
PRAEFECT = (
    "Praefect tells it: praefect -config /var/opt/gitlab/praefect/config.toml metadata"
    " -virtual-storage default -relative-path <the project's @hashed path>."
)


def given(project, key, default=None):
    """The project's key, or the default when it is left out (None after argument validation)."""
    value = project.get(key)
    return default if value is None else value


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
        "submitter": given(project, "submitter", defaults["submitter"]),
        "executor": given(project, "executor", defaults["executor"]),
        "details": given(project, "details", defaults["details"]),
        "rules": project.get("rules"),
    }
    return {key: value for key, value in entry.items() if value is not None}


def desired(project, want):
    found = want["located"].get(project["path"]) or {}
    config = dict({"codo": want["codo"]}, **want["settings"])
    config["projects"] = {project["path"]: project_config(project, want)}
    return {
        "path": project["path"],
        "repo": repository(project, found, want["cluster"]),
        "storage": project.get("storage") or found.get("repository_storage") or None,
        "state": given(project, "state", "present"),
        "stages": project.get("stages") or list(want["stages"]),
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
    for key in ("disk_path", "replica_path"):
        escaping = [
            "{} ({})".format(p["path"], p[key]) for p in projects if ".." in (p.get(key) or "").split("/")
        ]
        if escaping:
            errors.append("{} may not contain '..': {}".format(key, ", ".join(escaping)))
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


def want_of(params):
    """What work_out takes, from the arguments of codo_hooks_projects or codo_hooks_probe."""
    return {
        "projects": params["projects"],
        "located": params.get("located") or {},
        "method": params["method"],
        "cluster": params["cluster"],
        "stages": params["stages"],
        "defaults": {key: params[key] for key in ("submitter", "executor", "details")},
        "codo": params.get("codo") or {},
        "settings": params.get("settings") or {},
    }


def work_out(want):
    """(every project's wanted state, the errors that stop the run: one line each).

    want: {"projects": codo_hooks_projects, "located": {path: GitLab's storage answer},
    "method", "cluster", "stages", "defaults": {"submitter", "executor", "details"},
    "codo": the config's codo section, "settings": its other top-level keys}.
    """
    errors = input_errors(want)
    states = [desired(project, want) for project in want["projects"]]
    if not errors:
        errors = placement_errors(want, states)
    return states, errors


def present_config(states):
    """One config holding every present project, for the hook's check-config, or None."""
    return combined([s["config"] for s in states if s["state"] == "present"])


def probe_shape(state):
    """What the platform is asked about a present project (its submitter; for each rule its
    template, host groups, args names and mode), as one comparable text: projects of one shape
    get the same answers, whatever their tags, URLs and names."""
    entry = state["config"]["projects"][state["path"]]
    rules = [
        [
            rule.get("template_id"),
            sorted(str(group) for group in (rule.get("hosts") or {})),
            sorted(str(name) for name in (rule.get("args") or {})),
            rule.get("mode"),
        ]
        for rule in entry.get("rules") or []
        if isinstance(rule, dict)
    ]
    return json.dumps([entry.get("submitter"), rules], sort_keys=True, default=str)


def probe_groups(projects, states):
    """(one project of each probe shape, {its path: the paths of the others of its shape}): what
    codo_hooks_probe asks the platform about, however many projects share a shape."""
    chosen, alike, first = [], {}, {}
    for project, state in zip(projects, states):
        if state["state"] != "present":
            continue
        shape = probe_shape(state)
        if shape in first:
            alike[first[shape]].append(state["path"])
            continue
        first[shape] = state["path"]
        alike[state["path"]] = []
        chosen.append(project)
    return chosen, {path: others for path, others in alike.items() if others}


def check_config_errors(python, hook, states):
    """The hook's own check-config over every present project's config, in one run."""
    config = present_config(states)
    if config is None:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as handle:
        handle.write(json.dumps(config))
        handle.flush()
        check = subprocess.run(
            [python, hook, "check-config", handle.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
    if check.returncode == 0:
        return []
    return ["codo_hooks_projects do not make a valid hook config:"] + check.stdout.splitlines()
