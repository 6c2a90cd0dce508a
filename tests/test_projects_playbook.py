"""The codo_hooks_projects task as a play runs it: its action plugin on the control node (GitLab's
API for projects given by path only, the hook's check-config) and its module, here on localhost,
through ansible-playbook with --check and --diff. The files method, with this test's own user as the
git user, in a storage under tmp_path."""

import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, base_config, install_program
from fakes.fake_gitlab import FakeGitLab

ROLE = os.path.join(ROOT, "roles", "codo_hooks")
PLAYBOOK = """\
- name: Link the hook into the projects
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Ask GitLab where the projects given by path only are
      codo_hooks_gitlab_storage: "{{ lookup_args }}"
      register: located
      when: lookup_args is defined
    - name: Link the hook and write the configs
      codo_hooks_projects: "{{ projects_args | combine({'located': located.located | default({})}) }}"
"""
TOKEN = "glpat-admin-" + secrets.token_hex(8)


def hashed(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def snapshot(top):
    found = {}
    for directory, dirs, names in os.walk(top):
        for name in [os.curdir] + dirs + names:
            path = os.path.normpath(os.path.join(directory, name))
            st = os.lstat(path)
            what = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    what = handle.read()
            found[path] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


class Play:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.storage = tmp_path / "storage"
        self.hook = install_program(str(tmp_path / "opt"))
        self.playbook = tmp_path / "play.yml"
        self.playbook.write_text(PLAYBOOK)
        self.repo(1)

    def repo(self, project_id):
        path = self.storage / hashed(project_id)
        subprocess.run(["git", "init", "--bare", "-q", str(path)], check=True)
        return path

    def args(self, template_id=32, projects=None, **extra):
        config = base_config("https://codo.example.com", "/var/opt/codo-release", "/k")
        entry = config["projects"]["ops/dbtt"]
        entry["rules"][0]["template_id"] = template_id
        args = {
            "projects": projects or [dict(entry, path="ops/dbtt", id=1)],
            "hook": self.hook,
            "codo": config["codo"],
            "settings": {"state_dir": "/var/opt/codo-release", "on_failure": "spool"},
            "repositories_root": str(self.storage),
            "git_user": "root",
            "git_group": "root",
        }
        return dict(args, **extra)

    def run(self, args, *flags, lookup=None):
        extra = self.tmp / "extra.json"
        given = {"projects_args": args, "ansible_python_interpreter": sys.executable}
        if lookup:
            given["lookup_args"] = lookup
        extra.write_text(json.dumps(given))
        env = dict(
            os.environ,
            ANSIBLE_LIBRARY=os.path.join(ROLE, "library"),
            ANSIBLE_ACTION_PLUGINS=os.path.join(ROLE, "action_plugins"),
            ANSIBLE_MODULE_UTILS=os.path.join(ROLE, "module_utils"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        )
        playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        return subprocess.run(
            [playbook, "-i", "localhost,", "-e", "@" + str(extra), *flags, str(self.playbook)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )


@pytest.fixture
def play(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the configs are root-owned, as on a GitLab node")
    return Play(tmp_path)


def test_check_diff_after_a_rule_change_prints_the_configs_before_and_after_and_changes_nothing(play):
    first = play.run(play.args())
    assert first.returncode == 0 and "changed=1" in first.stdout, first.stdout + first.stderr
    before = snapshot(str(play.storage))
    dry = play.run(play.args(template_id=33), "--check", "--diff")
    assert dry.returncode == 0 and "changed=1" in dry.stdout, dry.stdout + dry.stderr
    config = str(play.storage / hashed(1) / "custom_hooks" / "codo-release.json")
    assert "--- before: " + config in dry.stdout and "+++ after: " + config in dry.stdout
    assert '-          "template_id": 32,' in dry.stdout
    assert '+          "template_id": 33,' in dry.stdout
    assert snapshot(str(play.storage)) == before
    again = play.run(play.args())
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout


def test_a_bad_rule_is_refused_on_the_control_node_before_the_node_is_touched(play):
    before = snapshot(str(play.storage))
    args = play.args()
    args["projects"][0]["rules"][0]["hosts"] = {"1": ["not-an-address"]}
    run = play.run(args)
    assert run.returncode == 2
    assert "do not make a valid hook config" in run.stdout and "not-an-address" in run.stdout
    assert snapshot(str(play.storage)) == before


def test_projects_given_by_path_only_are_found_with_the_token_never_shown(play):
    server = FakeGitLab(token=TOKEN, projects={1: "ops/dbtt"})
    server.state.add_project(2, "ops/legacy", legacy=True)
    server.start()
    try:
        legacy = play.storage / "ops" / "legacy.git"
        subprocess.run(["git", "init", "--bare", "-q", str(legacy)], check=True)
        entry = play.args()["projects"][0]
        projects = [dict(entry, path="ops/dbtt", id=None), dict(entry, path="ops/legacy", id=None)]
        del projects[0]["id"], projects[1]["id"]
        lookup = {"url": server.url, "token": TOKEN, "projects": projects}
        run = play.run(play.args(projects=projects), "-vvv", lookup=lookup)
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert (play.storage / hashed(1) / "custom_hooks" / "codo-release.json").exists()
    assert (legacy / "custom_hooks" / "codo-release.json").exists()
    assert TOKEN not in run.stdout + run.stderr


@pytest.mark.parametrize(
    "change, said",
    [
        ({"state": "gone"}, "value of state must be one of: present, absent, got: gone"),
        ({"id": "twelve"}, "twelve"),
        ({"stages": ["pre-receive", "post-update"]}, "post-update"),
        ({"taskname": "DBTT"}, "taskname"),
    ],
)
def test_a_project_key_of_the_wrong_kind_is_refused_in_one_line_before_the_node_is_touched(
    play, change, said
):
    # The role's meta/argument_specs.yml does not check codo_hooks_projects (see its comment):
    # the action plugin does, with the module's own argument_spec.
    before = snapshot(str(play.storage))
    args = play.args()
    args["projects"][0].update(change)
    run = play.run(args)
    assert run.returncode == 2, run.stdout + run.stderr
    shown = " ".join(run.stdout.split())  # the callback may wrap a long message
    assert "codo_hooks_projects: " in shown and said in shown, run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    assert snapshot(str(play.storage)) == before


def test_a_rule_with_the_hooks_newer_keys_passes_the_role(play):
    # A rule's keys are the hook's (check-config), guards and shadow mode included.
    args = play.args()
    args["projects"][0]["rules"][0].update(mode="shadow", max_per_push=3, from_branch="main")
    run = play.run(args)
    assert run.returncode == 0 and "changed=1" in run.stdout, run.stdout + run.stderr
    config = play.storage / hashed(1) / "custom_hooks" / "codo-release.json"
    assert json.loads(config.read_text())["projects"]["ops/dbtt"]["rules"][0]["mode"] == "shadow"


def test_projects_hooked_in_update_alone_are_warned_that_max_per_push_cannot_hold(play):
    # update runs once per ref: it cannot count the release tags of a push (a mirror's hundreds).
    args = play.args(stages=["update"])
    run = play.run(args)
    assert run.returncode == 0, run.stdout + run.stderr
    shown = " ".join((run.stdout + run.stderr).split())
    assert "max_per_push is not enforced for 1 project(s) (ops/dbtt)" in shown
    assert "add pre-receive to codo_hooks_stages" in shown
    both = play.run(play.args(stages=["pre-receive", "update"]))
    assert both.returncode == 0 and "max_per_push" not in both.stdout + both.stderr
