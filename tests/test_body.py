"""The request the platform gets is the seed hook's, field by field; the git_hooks flavour too."""

import ast
import json
import os
import sys
import types

import pytest
from conftest import AUTH_KEY, GIT_URL, ROOT, new_tag_line

SEED = os.path.join(ROOT, "tests", "seed", "new_hook_for_update.py")
SEED_KEY = "va2VuIsImRhdGEiOnsi9.BgP8UAoNiBkzJNSN1pa-eQVjlAxrKGxYZf0YgvXv39k"
SEED_GIT_URL = "git@gitlab.xxxxxxx.com:xxxxx/xxxxx.git"


def load_seed(url):
    """The seed hook as published, with only its hard-coded platform, key, host and repo swapped."""
    with open(SEED, encoding="utf-8") as handle:
        source = handle.read()
    swaps = {
        "https://codo-v1.domain.com": url,
        SEED_KEY: AUTH_KEY,
        "118.25.xx.xx": "118.25.0.10",
        SEED_GIT_URL: GIT_URL,
    }
    for old, new in swaps.items():
        assert old in source
        source = source.replace(old, new)
    module = types.ModuleType("seed_hook")
    exec(compile(source, SEED, "exec"), module.__dict__)  # noqa: S102 - the seed fixture, shipped beside the tests
    return module


def test_body_equals_the_seeds_for_the_same_inputs(site):
    site.rule(0)["hosts"] = {"1": ["118.25.0.10"]}
    site.write_config()
    load_seed(site.fake.url).post_task("qa-dbtt-20190320-01", "32", "ready")
    site.run_hook("post-receive", [new_tag_line("qa-dbtt-20190320-01")])
    seed, ours = (task.raw_body for task in site.fake.tasks)
    seed_fields, our_fields = json.loads(seed), json.loads(ours)
    assert list(our_fields) == list(seed_fields)
    for field in seed_fields:
        if field != "exec_time":
            assert our_fields[field] == seed_fields[field], field
    assert abs(_seconds(our_fields["exec_time"]) - _seconds(seed_fields["exec_time"])) < 60
    assert ours.replace(our_fields["exec_time"], "T") == seed.replace(seed_fields["exec_time"], "T")


def _seconds(text):
    import datetime

    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timestamp()


def test_handshake_gets_a_csrf_key_then_posts_with_both_cookies(site):
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    get, post = site.fake.requests
    assert (get.method, get.path) == ("GET", "/api/task/v2/task/accept/")
    assert get.cookies == {"auth_key": AUTH_KEY}
    assert post.method == "POST"
    assert post.cookies["auth_key"] == AUTH_KEY
    assert len(post.cookies["csrf_key"]) == 22


def test_hosts_are_a_python_literal_with_int_group_keys_in_order(site):
    site.fake.templates[32] = [1, 2, 10]
    site.rule(1)["hosts"] = {"10": ["10.0.0.3"], "2": ["10.0.0.2"], "1": ["10.0.0.1", "10.0.0.4"]}
    site.write_config()
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    hosts = site.fake.tasks[0].fields["hosts"]
    assert hosts == "{1: '10.0.0.1,10.0.0.4', 2: '10.0.0.2', 10: '10.0.0.3'}"
    assert ast.literal_eval(hosts) == {1: "10.0.0.1,10.0.0.4", 2: "10.0.0.2", 10: "10.0.0.3"}


def test_rule_args_extend_the_seeds_args(site):
    site.rule(1)["args"] = {"ENV": "prod"}
    site.write_config()
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    args = ast.literal_eval(site.fake.tasks[0].fields["args"])
    assert list(args) == ["TAG", "GIT_URL", "APP_NAME", "ENV"]
    assert args["ENV"] == "prod"


def test_defaults_are_what_the_seed_sent(site):
    rules = site.config["projects"]["ops/dbtt"]["rules"]
    rules[1] = {"tag": rules[1]["tag"], "template_id": 32, "hosts": {"1": ["118.25.0.10"]}}
    del site.config["projects"]["ops/dbtt"]["task_name"]
    site.write_config()
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    fields = site.fake.tasks[0].fields
    assert (fields["submitter"], fields["executor"], fields["details"]) == (
        "githook",
        "githook",
        "git hook auto exec",
    )
    assert (fields["schedule"], fields["task_name"]) == ("ready", "DBTT")


@pytest.fixture
def git_hooks_site(site):
    site.config["codo"].update(api="git_hooks", gitlab_url="https://gitlab.example.com")
    site.write_config()
    return site


def test_git_hooks_api_posts_url_path_and_tag(git_hooks_site):
    git_hooks_site.fake.repos[("https://gitlab.example.com", "ops/dbtt")] = {
        "release-": {"temp_id": 32}
    }
    result = git_hooks_site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    post = next(r for r in git_hooks_site.fake.requests if r.method == "POST")
    assert post.path == "/api/task/other/v1/git/hooks/"
    assert json.loads(post.body) == {
        "git_url": "https://gitlab.example.com",
        "relative_path": "ops/dbtt",
        "tag_name": "release-dbtt-1",
    }
    assert "submitted" in result.stdout


@pytest.mark.parametrize(
    "rules, message", [({}, "No hooks, ignore"), ({"hotfix-": {}}, "No hook matched")]
)
def test_git_hooks_replies_that_create_nothing_are_reported_as_skipped(
    git_hooks_site, rules, message
):
    git_hooks_site.fake.repos[("https://gitlab.example.com", "ops/dbtt")] = rules
    result = git_hooks_site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    assert f"release-dbtt-1 skipped: the platform's rules: {message}" in result.stdout
    assert git_hooks_site.spool("pending") == [] and git_hooks_site.spool("failed") == []


def test_git_hooks_a_project_the_platform_does_not_know_is_a_failure_naming_gitlab_url(
    git_hooks_site,
):
    # The platform answers code 0 "No related items were found" when gitlab_url or the path is not its own.
    result = git_hooks_site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    assert "skipped" not in result.stdout
    assert "knows no such project under codo.gitlab_url" in result.stdout
    assert [entry["tag"] for entry in git_hooks_site.spool("failed")] == ["release-dbtt-1"]


def test_git_hooks_api_refuses_unsafe_tags_too(git_hooks_site):
    result = git_hooks_site.run_hook("pre-receive", [new_tag_line("release-dbtt-$(id)")])
    assert result.returncode == 1
    assert "not a safe release name" in result.stdout


def test_python_version_floor_of_the_program_is_3_6():
    import subprocess

    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")  # from requirements-dev.txt
    result = subprocess.run(
        [vermin, "--no-tips", "--violations", "-t=3.6-", os.path.join(ROOT, "files")],
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert result.returncode == 0, result.stdout
