"""Where the role looks for each project's repository: templates/desired_state.json.j2 rendered by
real Ansible (the template lookup, the role's defaults) for hashed ids, disk paths, GitLab's API
answers and Gitaly Cluster replica paths. One ansible-playbook run renders every case."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "codo_hooks"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
RULES = [{"tag": r"\Arelease-", "template_id": 32, "hosts": {"1": ["10.0.0.5"]}}]
SHA1 = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"  # sha256("1")

CASES = {
    "hashed": {
        "vars": {},
        "projects": [{"path": "ops/dbtt", "id": 1}],
    },
    "disk_paths": {
        "vars": {},
        "projects": [
            {"path": "legacy/app", "disk_path": "legacy/app", "id": 7},
            {"path": "legacy/dotgit", "disk_path": "legacy/dotgit.git/"},
            {"path": "abs/app", "disk_path": "/srv/git/abs/app"},
        ],
    },
    "looked_up": {
        "vars": {
            "_codo_hooks_located": {
                "ops/by-path": {"disk_path": "@hashed/ef/2d/ef2d", "repository_storage": "storage-2"}
            }
        },
        "projects": [
            {"path": "ops/by-path"},
            {"path": "ops/mine", "id": 1, "storage": "storage-3"},
            {"path": "ops/unknown"},
        ],
    },
    "cluster": {
        "vars": {"codo_hooks_gitaly_cluster": True},
        "projects": [{"path": "ops/dbtt", "id": 1, "replica_path": "@cluster/repositories/6f/96/22/"}],
    },
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Each case's desired state, as the role's set_fact reads it."""
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not in this interpreter's environment (make venv)")
    work = tmp_path_factory.mktemp("desired")
    plays = []
    for name, case in CASES.items():
        projects = [dict(p, git_url="git@x:y.git", app_name="APP", rules=RULES) for p in case["projects"]]
        variables = dict(
            yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
            _codo_hooks_located={},
            codo_hooks_codo_url="http://127.0.0.1:1",
        )
        variables.update(case["vars"], codo_hooks_projects=projects)
        plays.append(
            {
                "name": name,
                "hosts": "localhost",
                "gather_facts": False,
                "vars": variables,
                "tasks": [
                    {
                        "name": "Render",
                        "ansible.builtin.copy": {
                            "content": "{{ lookup('ansible.builtin.template', '%s') }}"
                            % (ROLE / "templates" / "desired_state.json.j2"),
                            "dest": str(work / (name + ".json")),
                            "mode": "0600",
                        },
                    }
                ],
            }
        )
    playbook = work / "render.yml"
    playbook.write_text(yaml.safe_dump(plays))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    run = subprocess.run(
        [str(PLAYBOOK), "-c", "local", "-i", "localhost,", "-e", "ansible_python_interpreter=" + sys.executable]
        + [str(playbook)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout
    return {
        name: {p["path"]: p for p in json.loads((work / (name + ".json")).read_text())["projects"]}
        for name in CASES
    }


def test_an_id_is_found_in_hashed_storage(rendered):
    project = rendered["hashed"]["ops/dbtt"]
    assert project["repo"] == f"@hashed/6b/86/{SHA1}.git"
    assert project["storage"] is None  # the node's codo_hooks_gitaly_storage applies


def test_a_disk_path_wins_over_the_id_and_gets_one_dot_git(rendered):
    projects = rendered["disk_paths"]
    assert projects["legacy/app"]["repo"] == "legacy/app.git"
    assert projects["legacy/dotgit"]["repo"] == "legacy/dotgit.git"
    assert projects["abs/app"]["repo"] == "/srv/git/abs/app.git"


def test_what_gitlab_said_locates_a_project_given_by_path_only(rendered):
    projects = rendered["looked_up"]
    assert projects["ops/by-path"]["repo"] == "@hashed/ef/2d/ef2d.git"
    assert projects["ops/by-path"]["storage"] == "storage-2"
    assert projects["ops/mine"]["storage"] == "storage-3"
    assert projects["ops/unknown"]["repo"] is None


def test_in_a_cluster_the_replica_path_is_used_as_praefect_gives_it(rendered):
    assert rendered["cluster"]["ops/dbtt"]["repo"] == "@cluster/repositories/6f/96/22"


def test_each_project_config_holds_only_its_own_project(rendered):
    for projects in rendered.values():
        for path, project in projects.items():
            assert list(project["config"]["projects"]) == [path]
