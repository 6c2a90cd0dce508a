"""codo_hooks_probe (roles/codo_hooks/library/), run the way Ansible runs it: the installed hook's
check-config --probe as the git user over every present project, once; it fails with the list."""

import grp
import os
import pwd

import pytest
from ansible_module import run_module
from conftest import GIT_URL, PROJECT, assert_key_nowhere

pytestmark = pytest.mark.hook_program


@pytest.fixture
def node(site):
    if os.geteuid() != 0:
        pytest.skip("the probe runs the hook as the git user, which needs root")
    return site


def probe_args(site, **changes):
    """The role's arguments for the site's project, as tasks/probe.yml passes them."""
    rules = site.config["projects"][PROJECT]["rules"]
    codo = dict(site.config["codo"])
    args = {
        "projects": [
            {"path": PROJECT, "id": 1, "git_url": GIT_URL, "app_name": "DBTT", "rules": rules}
        ],
        "hook": site.entry,
        "codo": codo,
        "settings": {"state_dir": site.state_dir, "on_failure": "spool"},
        "git_user": pwd.getpwuid(os.geteuid()).pw_name,
        "git_group": grp.getgrgid(os.getegid()).gr_name,
    }
    args.update(changes)
    return args


def run_probe(site, check=False, **changes):
    rc, result, stderr = run_module("codo_hooks_probe", probe_args(site, **changes), check=check)
    assert "Traceback" not in stderr
    assert_key_nowhere(site, str(result), stderr)
    return rc, result


def test_a_platform_that_agrees_passes_changes_nothing_and_sends_nothing(node):
    rc, result = run_probe(node)
    assert rc == 0 and result["changed"] is False, result
    assert result["problems"] == [] and result["summary"].startswith("OK (1 project(s), 2 rule(s))")
    assert not [r for r in node.fake.requests if r.method == "POST"]
    # The platform was asked: the key's csrf round trip, then template 32 once for both rules.
    asked = [r.path for r in node.fake.requests if r.method == "GET"]
    assert asked[0] == "/api/task/v2/task/accept/"
    assert sum(path.endswith("/task_layout/temp/") for path in asked) == 1, asked


def test_each_problem_is_one_line_naming_project_and_rule_and_the_task_fails(node):
    rules = node.config["projects"][PROJECT]["rules"]
    rules[0]["template_id"] = 99
    rules[1]["hosts"] = {"1": ["118.25.0.10"], "3": ["118.25.0.11"]}
    rc, result = run_probe(node)
    assert rc != 0 and result["failed"] is True
    assert any(
        p.startswith("projects.ops/dbtt.rules[0]: the platform has no template 99")
        for p in result["problems"]
    )
    assert any(
        p.startswith("projects.ops/dbtt.rules[1]: host group 3 is not one")
        for p in result["problems"]
    )
    assert "2 problem(s)" in result["msg"] and "template 99" in result["msg"]
    assert "codo-probe-" not in result["msg"]  # the temporary file's name is not shown


def test_a_key_the_platform_refuses_fails_and_is_never_shown(node):
    from fakes.fake_codo import make_auth_key

    other = make_auth_key(user_id=9)
    with open(node.key_file, "w") as handle:
        handle.write(other)
    rc, result = run_probe(node)
    assert rc != 0 and "rejected the auth key (HTTP 401)" in result["msg"]
    assert other not in str(result)


def test_a_platform_that_is_down_fails_with_one_line(node):
    node.fake.stop()
    rc, result = run_probe(node)
    assert rc != 0 and "could not be asked" in result["msg"]


def test_warnings_are_ansible_warnings_and_do_not_fail(node):
    rc, result = run_probe(node, submitter="someone-else")
    assert rc == 0, result
    assert any("flush cannot settle uncertain releases" in w for w in result["warnings_found"])
    shown = str(result.get("warnings")) + str(result.get("deprecations"))
    assert "flush cannot settle uncertain releases" in shown, result


def test_it_runs_as_the_git_user_who_must_own_the_key(node, tmp_path):
    if not any(u.pw_name == "nobody" for u in pwd.getpwall()):
        pytest.skip("no user nobody")
    rc, result = run_probe(node, git_user="nobody", git_group=grp.getgrgid(os.getegid()).gr_name)
    # Run as nobody, the hook cannot even be reached in root's private test directory: root could.
    assert rc != 0 and "could not be run: Permission denied" in result["msg"], result


def test_check_mode_before_the_hook_is_installed_skips_saying_so(node, tmp_path):
    missing = str(tmp_path / "not-installed" / "codo_release_hook.py")
    rc, result = run_probe(node, check=True, hook=missing)
    assert (
        rc == 0 and result["changed"] is False and "not installed yet" in result["skipped_reason"]
    )
    rc, result = run_probe(node, hook=missing)
    assert rc != 0 and "is missing" in result["msg"]


def test_absent_projects_are_not_asked_about(node):
    args = probe_args(node)
    args["projects"][0]["state"] = "absent"
    rc, result, _ = run_module("codo_hooks_probe", args)
    assert rc == 0 and "no present project" in result["skipped_reason"]
    assert not node.fake.requests


def test_a_project_path_outside_gitlabs_rules_is_refused_in_one_line(node):
    args = probe_args(node)
    args["projects"][0]["path"] = "ops/\x1bdbtt"
    rc, result, _ = run_module("codo_hooks_probe", args)
    assert rc != 0 and "control character" in result["msg"] and "\n" not in result["msg"]


def test_a_project_that_stands_for_others_says_how_many_a_problem_concerns(node):
    rules = node.config["projects"][PROJECT]["rules"]
    rules[0]["template_id"] = 99
    others = ["ops/app{}".format(n) for n in range(5)]
    rc, result = run_probe(node, alike={PROJECT: others})
    assert rc != 0
    line = next(p for p in result["problems"] if "template 99" in p)
    assert line.endswith(
        "(the same for 5 other project(s) alike: ops/app0, ops/app1, ops/app2, ...)"
    ), line


def test_projects_are_asked_about_once_per_shape():
    """desired.probe_groups: tags, URLs and names do not matter; template, host groups, args
    names, mode and submitter do; absent projects are not asked about."""
    from ansible_module import role_module_utils

    role_module_utils()
    from ansible.module_utils.codo_hooks_core import desired

    ids = iter(range(1, 100))

    def project(path, template=32, groups=("1",), args=None, submitter=None, state="present"):
        rule = {"tag": r"\A" + path.replace("/", "-"), "template_id": template}
        rule["hosts"] = {group: ["10.0.0.1"] for group in groups}
        if args:
            rule["args"] = args
        entry = {"path": path, "id": next(ids), "git_url": "git@x:" + path, "app_name": path}
        entry.update(rules=[rule], submitter=submitter, state=state)
        return entry

    projects = [
        project("a/one"),
        project("a/two"),  # another tag, URL and name: the same questions
        project("a/three", template=33),
        project("a/four", groups=("1", "2")),
        project("a/five", args={"BRANCH": "main"}),
        project("a/six", submitter="someone"),
        project("a/seven", state="absent"),
        project("a/eight", args={"BRANCH": "other"}),  # the same args names as a/five
    ]
    want = {
        "projects": projects,
        "located": {},
        "method": "files",
        "cluster": False,
        "stages": ["pre-receive", "post-receive"],
        "defaults": {"submitter": "githook", "executor": "githook", "details": "d"},
        "codo": {"url": "https://codo.example.com", "auth_key_file": "/k"},
        "settings": {},
    }
    states, errors = desired.work_out(want)
    assert errors == []
    chosen, alike = desired.probe_groups(projects, states)
    assert [p["path"] for p in chosen] == ["a/one", "a/three", "a/four", "a/five", "a/six"]
    assert alike == {"a/one": ["a/two"], "a/five": ["a/eight"]}
