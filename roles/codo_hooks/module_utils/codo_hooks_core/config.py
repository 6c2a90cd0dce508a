"""What the hook's config looks like and which project paths the role accepts.

Used on the node (the module) and on the control node (the action plugin).
Python 3.6+, standard library only.
"""

import hashlib
import json
import re

ALL_STAGES = ("pre-receive", "update", "post-receive")
LINK_NAME = "codo-release"
CONFIG_NAME = "codo-release.json"
INDEX_NAME = "codo-release.projects"

# A project's keys as the module's argument_spec checks them, on the node and, first, on the
# control node (the action plugin): the role's meta/argument_specs.yml documents them but does
# not check them, since Ansible's role validation copies and templates a thousand projects on
# every run. A rule's keys are the hook's, checked by its check-config.
PROJECT = dict(
    path=dict(type="str", required=True),
    id=dict(type="int"),
    disk_path=dict(type="str"),
    storage=dict(type="str"),
    replica_path=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    stages=dict(type="list", elements="str", choices=list(ALL_STAGES)),
    git_url=dict(type="str"),
    app_name=dict(type="str"),
    task_name=dict(type="str"),
    submitter=dict(type="str"),
    executor=dict(type="str"),
    details=dict(type="str"),
    rules=dict(type="list", elements="dict"),
)

# GitLab's path rules: letters, digits, '_', '-' and '.', not starting with '-', not ending in
# '.git' or '.atom'; a project path is a namespace and a name (or more namespaces) joined by '/'.
SEGMENT = re.compile(r"\A[A-Za-z0-9_.][A-Za-z0-9_.-]*\Z")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def hashed(project_id):
    """GitLab's hashed-storage repository of a project id."""
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def config_text(config):
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def combined(configs):
    """One codo-release.json holding the projects of several (the first one's settings), or None."""
    if not configs:
        return None
    merged = dict(configs[0], projects={})
    for config in configs:
        merged["projects"].update(config["projects"])
    return merged


def bad_path(path):
    """Why a project path is not one GitLab can have, or None."""
    if not isinstance(path, str) or not path:
        return "empty"
    if CONTROL.search(path):
        return "has a control character"
    segments = path.split("/")
    if len(segments) < 2:
        return "needs a namespace (namespace/project)"
    for segment in segments:
        if segment in (".", "..") or not SEGMENT.match(segment):
            return "may hold only letters, digits, '_', '-' and '.' between '/', not start with '-'"
        if segment.endswith((".git", ".atom")):
            return "may not end a part with .git or .atom"
    return None


def bad_location(value):
    """Why a disk_path, replica_path or storage is refused, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or CONTROL.search(value):
        return "has a control character"
    return None  # '..' in a disk_path: desired.py says so with the project's name


def path_errors(projects):
    """One line naming every project whose path, disk_path, replica_path or storage is refused."""
    refused = []
    for project in projects:
        path = project.get("path")
        why = bad_path(path)
        if why:
            refused.append("{} ({})".format(json.dumps(path), why))
            continue
        for key in ("disk_path", "replica_path", "storage"):
            why = bad_location(project.get(key))
            if why:
                refused.append("{} {} {} ({})".format(path, key, json.dumps(project[key]), why))
    if not refused:
        return None
    return "codo_hooks_projects: refused, outside GitLab's path rules: " + "; ".join(refused)
