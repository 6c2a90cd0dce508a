"""check-config, match, flush, status: what an admin runs by hand and the role runs to validate."""

import json
import os

import pytest
from conftest import AUTH_KEY, PROJECT, new_tag_line


def broken(site, change):
    change(site.config)
    site.write_config()
    return site.admin("check-config", site.config_path)


def test_check_config_accepts_the_example_config(site):
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 0
    assert "OK (1 project(s), 2 rule(s))" in result.stdout


def rules(config):
    return config["projects"][PROJECT]["rules"]


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda c: rules(c)[0].update(tag="release-(dbtt"), "rules[0].tag is not a valid regular expression"),
        (lambda c: rules(c)[0].update(hosts={"1": ["118.25.0.300"]}), "'118.25.0.300' is not an IPv4 address"),
        (lambda c: rules(c)[0].update(hosts={"1": ["gitlab.example.com"]}), "is not an IPv4 address"),
        (
            lambda c: rules(c)[0].update(hosts={"1": [f"10.0.{n // 250}.{n % 250}" for n in range(101)]}),
            "has 101 hosts; the platform takes at most 100 a group",
        ),
        (
            lambda c: c["projects"][PROJECT].update(task_name="x" * 51),
            "task_name must be text of at most 50 characters",
        ),
        (lambda c: c["projects"][PROJECT].update(taskname="DBTT"), "'taskname' is not a known key"),
        (lambda c: c["codo"].update(urll="x"), "codo.'urll' is not a known key"),
        (lambda c: rules(c)[0].update(schedule="now"), 'schedule must be "ready"'),
        (lambda c: rules(c)[0].update(template_id="abc"), "template_id must be the platform template's number"),
        (lambda c: rules(c)[0].update(args={"TAG": "x"}), "args.TAG would replace the value the hook sets"),
        (lambda c: c.update(tag_name_pattern="[a-"), "tag_name_pattern is not a valid regular expression"),
        (lambda c: c.update(on_failure="retry"), 'on_failure must be "spool"'),
        (lambda c: c["codo"].update(url="codo.example.com"), "codo.url must be the platform's http(s) URL"),
        (lambda c: c["projects"][PROJECT].pop("git_url"), "projects.ops/dbtt.git_url is required"),
    ],
)
def test_check_config_names_each_problem_and_exits_2(site, change, problem):
    result = broken(site, change)
    assert result.returncode == 2
    assert problem in result.stdout


def test_check_config_lists_every_problem_not_just_the_first(site):
    def two_problems(config):
        rules(config)[0].update(tag="(", hosts={"1": ["x"]})

    result = broken(site, two_problems)
    problems = [line for line in result.stdout.splitlines() if "rules[0]" in line]
    assert len(problems) == 2


def test_check_config_of_an_unreadable_file_says_so_in_one_line(site, tmp_path):
    result = site.admin("check-config", str(tmp_path / "missing.json"))
    assert result.returncode == 2
    assert result.stdout.count("\n") == 1 and "cannot read config" in result.stdout


def test_match_prints_the_exact_body_with_the_key_masked(site):
    result = site.admin("match", "--config", site.config_path, "--project", PROJECT, "release-dbtt-9")
    assert result.returncode == 0
    assert "auth_key=********" in result.stdout
    assert AUTH_KEY not in result.stdout
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["args"].startswith("{'TAG': 'release-dbtt-9'")
    assert body["temp_id"] == "32"
    assert site.fake.requests == []


def test_match_of_an_unsafe_tag_exits_1_with_the_reason(site):
    result = site.admin("match", "--config", site.config_path, "release-dbtt-$(id)")
    assert result.returncode == 1
    assert "would be refused" in result.stdout


def test_match_of_a_user_not_allowed_exits_1(site):
    rules(site.config)[1]["allowed_users"] = ["alice"]
    site.write_config()
    result = site.admin("match", "--config", site.config_path, "release-dbtt-9", "--user", "bob")
    assert result.returncode == 1
    assert "bob may not release" in result.stdout


def test_match_of_an_unknown_project_is_a_usage_error(site):
    result = site.admin("match", "--config", site.config_path, "--project", "nope/nope", "release-dbtt-9")
    assert result.returncode == 2
    assert "no project 'nope/nope'" in result.stdout


def test_status_counts_the_spool(site):
    site.fake.stop()
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1"), new_tag_line("release-dbtt-2")])
    result = site.admin("status", "--state-dir", site.state_dir, "--json")
    counts = json.loads(result.stdout)["counts"]
    assert counts["pending"] == 2 and counts["sent"] == 0
    text = site.admin("status", "--config", site.config_path)
    assert "2 pending, 0 uncertain, 0 failed, 0 sent" in text.stdout
    assert "platform unreachable" in text.stdout


@pytest.mark.parametrize("command", ["check-config", "match", "flush", "status"])
def test_each_command_has_help(site, command):
    result = site.admin(command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_no_command_is_a_usage_error(site):
    result = site.admin()
    assert result.returncode == 2


def test_unknown_command_is_a_usage_error(site):
    result = site.admin("frobnicate")
    assert result.returncode == 2


def test_every_event_is_one_json_log_line(site):
    site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    site.run_hook("pre-receive", [new_tag_line("release-dbtt-$(x)")])
    submitted, refused = site.log()
    assert (submitted["outcome"], submitted["task_id"], submitted["project"]) == ("sent", 1, PROJECT)
    assert submitted["ref"] == "refs/tags/release-dbtt-1" and submitted["rule"] == 1
    assert submitted["duration_s"] >= 0
    assert refused["outcome"] == "refused"


def test_the_log_is_rotated_past_its_bound(site):
    site.config["log_max_bytes"] = 200
    site.write_config()
    for n in range(3):
        site.run_hook("post-receive", [new_tag_line(f"release-dbtt-{n}")])
    assert os.path.exists(os.path.join(site.state_dir, "hook.log.1"))
    assert os.path.getsize(os.path.join(site.state_dir, "hook.log")) < 1000
