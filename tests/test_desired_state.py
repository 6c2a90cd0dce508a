"""Where the role looks for each project's repository, what config it gets, and what stops a run
before anything changes: the shared code of the codo_hooks_projects module and action plugin
(roles/codo_hooks/module_utils/codo_hooks_core/desired.py) as they call it, with the real hook's
check-config."""

import sys
from pathlib import Path

import yaml
from ansible_module import role_module_utils

role_module_utils()
from ansible.module_utils.codo_hooks_core import desired

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "codo_hooks"
RULES = [{"tag": r"\Arelease-", "template_id": 32, "hosts": {"1": ["10.0.0.5"]}}]
SHA1 = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"  # sha256("1")
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))


def project(path, **keys):
    return dict({"path": path, "git_url": "git@x:y.git", "app_name": "APP", "rules": RULES}, **keys)


def render(projects, method="files", cluster=False, located=None):
    """(projects by path, errors) as the role's task gets them."""
    want = {
        "projects": projects,
        "located": located or {},
        "method": method,
        "cluster": cluster,
        "stages": DEFAULTS["codo_hooks_stages"],
        "hook": str(ROOT / "files" / "codo_release_hook.py"),
        "defaults": {
            "submitter": "githook",
            "executor": "githook",
            "details": "git hook auto exec",
        },
        "codo": {
            "url": "http://127.0.0.1:1",
            "api": "task_accept",
            "auth_key_file": "/etc/codo-release/auth_key",
        },
        "settings": {"state_dir": "/var/opt/codo-release", "on_failure": "spool"},
    }
    states, errors = desired.work_out(want)
    if not errors:
        errors = desired.check_config_errors(sys.executable, want["hook"], states)
    return {p["path"]: p for p in ([] if errors else states)}, errors


def test_an_id_is_found_in_hashed_storage():
    projects, errors = render([project("ops/dbtt", id=1)])
    assert errors == []
    assert projects["ops/dbtt"]["repo"] == f"@hashed/6b/86/{SHA1}.git"
    assert projects["ops/dbtt"]["storage"] is None  # the node's codo_hooks_gitaly_storage applies
    assert projects["ops/dbtt"]["stages"] == ["pre-receive", "post-receive"]


def test_a_disk_path_wins_over_the_id_and_gets_one_dot_git():
    projects, errors = render(
        [
            project("legacy/app", disk_path="legacy/app", id=7),
            project("legacy/dotgit", disk_path="legacy/dotgit.git/"),
            project("abs/app", disk_path="/srv/git/abs/app"),
        ]
    )
    assert errors == []
    assert projects["legacy/app"]["repo"] == "legacy/app.git"
    assert projects["legacy/dotgit"]["repo"] == "legacy/dotgit.git"
    assert projects["abs/app"]["repo"] == "/srv/git/abs/app.git"


def test_what_gitlab_said_locates_a_project_given_by_path_only():
    located = {
        "ops/by-path": {"disk_path": "@hashed/ef/2d/ef2d", "repository_storage": "storage-2"}
    }
    projects, errors = render(
        [project("ops/by-path"), project("ops/mine", id=1, storage="storage-3")], located=located
    )
    assert errors == []
    assert projects["ops/by-path"]["repo"] == "@hashed/ef/2d/ef2d.git"
    assert projects["ops/by-path"]["storage"] == "storage-2"
    assert projects["ops/mine"]["storage"] == "storage-3"


def test_a_project_that_cannot_be_located_stops_the_run_except_server_wide():
    _, errors = render([project("ops/unknown"), project("ops/dbtt", id=1)])
    assert (
        len(errors) == 1 and "ops/unknown" in errors[0] and "codo_hooks_gitlab_api_url" in errors[0]
    )
    projects, errors = render([project("ops/unknown")], method="global")
    assert errors == [] and projects["ops/unknown"]["repo"] is None


def test_in_a_cluster_the_replica_path_is_used_and_required():
    projects, errors = render(
        [project("ops/dbtt", id=1, replica_path="@cluster/repositories/6f/96/22/")], cluster=True
    )
    assert errors == [] and projects["ops/dbtt"]["repo"] == "@cluster/repositories/6f/96/22"
    _, errors = render([project("ops/dbtt", id=1)], cluster=True)
    assert len(errors) == 1 and "replica_path" in errors[0] and "ops/dbtt" in errors[0]
    _, errors = render(
        [project("ops/dbtt", id=1, replica_path="@cluster/../../../../etc/cron")], cluster=True
    )
    assert errors == ["replica_path may not contain '..': ops/dbtt (@cluster/../../../../etc/cron)"]


def test_each_config_holds_only_its_own_project_with_the_role_defaults():
    projects, _ = render([project("ops/a", id=1), project("ops/b", id=2, submitter="alice")])
    assert list(projects["ops/a"]["config"]["projects"]) == ["ops/a"]
    assert projects["ops/a"]["config"]["projects"]["ops/a"]["submitter"] == "githook"
    assert projects["ops/b"]["config"]["projects"]["ops/b"]["submitter"] == "alice"
    assert projects["ops/b"]["config"]["codo"]["url"] == "http://127.0.0.1:1"
    assert "task_name" not in projects["ops/a"]["config"]["projects"]["ops/a"]


def test_inventory_mistakes_are_named_one_line_each():
    _, errors = render([project("ops/a", id=1), project("ops/a", id=2)])
    assert errors == [
        "Projects listed more than once in codo_hooks_projects: ops/a. Keep one entry per project "
        "and put all its tag rules in that entry's rules."
    ]
    _, errors = render(
        [project("ops/a", id=1), project("ops/b", disk_path=f"@hashed/6b/86/{SHA1}")]
    )
    assert (
        len(errors) == 1 and "ops/a, ops/b" in errors[0] and "claimed by more than one" in errors[0]
    )
    _, errors = render([project("ops/a", disk_path="../etc")])
    assert errors == ["disk_path may not contain '..': ops/a (../etc)"]
    _, errors = render([project("ops/a", disk_path="/srv/a")], method="gitaly")
    assert len(errors) == 1 and "relative to the Gitaly storage" in errors[0]


def test_the_hooks_check_config_refuses_a_bad_rule_before_anything_changes():
    bad = [{"tag": "(unclosed", "template_id": 32, "hosts": {"1": ["10.0.0.5"]}}]
    _, errors = render([project("ops/a", id=1), project("ops/b", id=2, rules=bad)])
    assert errors[0] == "codo_hooks_projects do not make a valid hook config:"
    assert any("ops/b" in line for line in errors[1:])
    _, errors = render([project("ops/b", id=2, rules=bad, state="absent")])
    assert errors == []  # an absent project's config is never written
