"""Guards on what a push may release, shadow rules, and who released: through real pushes."""

import pytest
from conftest import git


@pytest.fixture
def linked(site):
    site.link("pre-receive", "post-receive")
    return site


def commit_on_side_branch(site, days_old=0):
    git("checkout", "-q", "-b", "side", cwd=site.clone)
    site.commit("side", days_old=days_old)


def test_a_mirror_sized_push_of_release_tags_is_refused_with_one_line(linked):
    tags = [f"release-dbtt-{n}" for n in range(150)]
    for tag in tags:
        linked.tag(tag)
    code, output = linked.push("--tags")
    assert code != 0
    assert "this push creates 150 release tags for rule 1, at most 10 (max_per_push)" in output
    assert linked.fake.tasks == [] and linked.fake.requests == []
    assert not [ref for ref in linked.remote_refs() if ref.startswith("refs/tags/")]


def test_up_to_max_per_push_release_in_one_push(linked):
    linked.rule(1)["max_per_push"] = 3
    linked.write_config()
    for n in range(3):
        linked.tag(f"release-dbtt-{n}")
    code, output = linked.push("--tags")
    assert code == 0, output
    assert len(linked.fake.tasks) == 3


def test_a_tag_on_a_commit_not_merged_to_the_branch_is_refused(linked):
    linked.rule(1)["from_branch"] = "main"
    linked.write_config()
    commit_on_side_branch(linked)
    linked.tag("release-dbtt-side")
    code, output = linked.push("refs/tags/release-dbtt-side")
    assert code != 0
    assert "is not on branch main: only what was merged there is released" in output
    git("checkout", "-q", "main", cwd=linked.clone)
    linked.tag("release-dbtt-main")
    code, output = linked.push("refs/tags/release-dbtt-main")
    assert code == 0, output
    assert [task.args["TAG"] for task in linked.fake.tasks] == ["release-dbtt-main"]


def test_a_tag_on_an_old_commit_is_refused(linked):
    linked.rule(1)["max_age_days"] = 30
    linked.write_config()
    commit_on_side_branch(linked, days_old=90)
    linked.tag("release-dbtt-old")
    code, output = linked.push("refs/tags/release-dbtt-old")
    assert code != 0 and "days old, more than 30 (max_age_days of rule 1)" in output
    assert linked.fake.tasks == []


def test_a_shadow_rule_says_what_it_would_send_and_sends_nothing(linked):
    linked.rule(1)["mode"] = "shadow"
    linked.write_config()
    linked.tag("release-dbtt-7")
    code, output = linked.push("refs/tags/release-dbtt-7")
    assert code == 0
    assert (
        "release-dbtt-7 shadow: rule 1 would submit it to template 32 (new); nothing sent" in output
    )
    assert linked.fake.requests == []
    assert [e["outcome"] for e in linked.log()] == ["shadow"]


def test_each_log_event_says_who_released_what(linked):
    linked.tag("release-dbtt-8")
    linked.push("refs/tags/release-dbtt-8")
    (event,) = linked.log()
    sha = git("rev-parse", "HEAD", cwd=linked.clone).stdout.strip()
    assert event["user"] == "alice" and event["protocol"] == "ssh" and event["gl_id"] == "user-1"
    assert event["old"] == "0" * 40 and event["new"] == sha


@pytest.mark.parametrize("user, shown", [("alice", "alice"), ("eve;reboot", "unknown")])
def test_a_rule_may_hand_the_pusher_to_the_task(linked, user, shown):
    linked.rule(1)["pusher_args"] = {"PUSHER": "username", "PUSH_PROTOCOL": "protocol"}
    linked.write_config()
    linked.tag("release-dbtt-9")
    code, output = linked.push("refs/tags/release-dbtt-9", user=user)
    assert code == 0, output
    (task,) = linked.fake.tasks
    assert task.args["PUSHER"] == shown and task.args["PUSH_PROTOCOL"] == "ssh"


@pytest.mark.parametrize(
    "change, says",
    [
        ({"mode": "dry"}, 'mode must be "release" or "shadow"'),
        ({"from_branch": "-x"}, "from_branch must be a branch name"),
        ({"from_branch": "a..b"}, "from_branch must be a branch name"),
        ({"max_age_days": 0}, "max_age_days must be a number of days"),
        ({"max_per_push": 0}, "max_per_push must be a whole number"),
        ({"pusher_args": {"TAG": "username"}}, "is not a name the hook may set"),
        ({"pusher_args": {"WHO": "password"}}, "pusher_args.WHO must be one of"),
    ],
)
def test_check_config_refuses_a_bad_guard(site, change, says):
    site.rule(1).update(change)
    site.write_config()
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 2 and says in result.stdout
