"""Real git pushes into a bare repository whose custom_hooks run the way Gitaly runs them."""

import ast
import concurrent.futures
import json

import pytest
from conftest import PROJECT


@pytest.fixture
def linked(site):
    site.link("pre-receive", "post-receive")
    return site


def test_release_tag_push_creates_one_task_with_the_seeds_fields(linked):
    linked.tag("release-dbtt-server-20190320-02")
    code, output = linked.push("release-dbtt-server-20190320-02")
    assert code == 0, output
    assert len(linked.fake.tasks) == 1
    fields = json.loads(linked.fake.tasks[0].raw_body)
    assert fields["task_name"] == "DBTT"
    assert fields["temp_id"] == "32"
    assert fields["args"] == (
        "{'TAG': 'release-dbtt-server-20190320-02', 'GIT_URL': 'git@gitlab.example.com:ops/dbtt.git', 'APP_NAME': 'DBTT'}"
    )
    assert fields["hosts"] == "{1: '118.25.0.10,118.25.0.11'}"
    assert fields["schedule"] == "new"
    assert "codo: release-dbtt-server-20190320-02 submitted as task 1: " in output
    assert linked.fake.url + "/#/task/1" in output


def test_branch_push_sends_nothing_and_says_nothing(linked):
    linked.commit()
    code, output = linked.push("HEAD:refs/heads/feature")
    assert code == 0, output
    assert linked.fake.requests == []
    assert "codo:" not in output


def test_tag_deletion_sends_nothing(linked):
    linked.tag("release-dbtt-1")
    linked.push("release-dbtt-1")
    code, output = linked.push(":refs/tags/release-dbtt-1")
    assert code == 0, output
    assert len(linked.fake.tasks) == 1


def test_tag_no_rule_matches_is_ignored_silently(linked):
    linked.tag("v1.0")
    code, output = linked.push("v1.0")
    assert code == 0
    assert linked.fake.requests == []
    assert "codo:" not in output


def test_tag_name_keeps_its_slashes(linked):
    linked.tag("release-dbtt/2019/03")
    code, output = linked.push("release-dbtt/2019/03")
    assert code == 0, output
    assert "'TAG': 'release-dbtt/2019/03'" in linked.fake.tasks[0].fields["args"]


@pytest.mark.parametrize(
    "tag",
    [
        "release-dbtt-$(id)",
        "release-dbtt-`id`",
        "release-dbtt-1;reboot",
        "release-dbtt-1|sh",
        "release-dbtt-1&&id",
        "release-dbtt-'x'",
        'release-dbtt-"x"',
        "release-dbtt-\u0430pp",  # Cyrillic a: looks like the Latin one
        "release-dbtt-" + "9" * 200,
    ],
)
def test_unsafe_release_tag_is_refused_before_it_exists(linked, tag):
    linked.tag(tag)
    code, output = linked.push("refs/tags/" + tag)
    assert code != 0
    assert "codo: push refused: tag " in output
    assert "not a safe release name" in output
    assert "GL-HOOK-ERR: codo:" in output
    assert "refs/tags/" + tag not in linked.remote_refs()
    assert linked.fake.requests == []


def test_unsafe_tag_refusal_blocks_the_whole_push(linked):
    linked.tag("release-dbtt-ok")
    linked.tag("release-dbtt-$(id)")
    code, _ = linked.push("release-dbtt-ok", "refs/tags/release-dbtt-$(id)")
    assert code != 0
    assert "refs/tags/release-dbtt-ok" not in linked.remote_refs()
    assert linked.fake.tasks == []


def test_user_not_in_allowed_users_is_refused(linked):
    linked.rule(1)["allowed_users"] = ["alice"]
    linked.write_config()
    linked.tag("release-dbtt-2")
    code, output = linked.push("release-dbtt-2", user="mallory")
    assert code != 0
    assert "mallory may not release release-dbtt-2" in output
    assert linked.fake.tasks == []


def test_user_in_allowed_users_releases(linked):
    linked.rule(1)["allowed_users"] = ["alice"]
    linked.write_config()
    linked.tag("release-dbtt-2")
    code, output = linked.push("release-dbtt-2", user="alice")
    assert code == 0, output
    assert len(linked.fake.tasks) == 1


def test_moved_tag_is_skipped_unless_its_rule_says_on_move(linked):
    linked.tag("release-dbtt-3")
    linked.push("release-dbtt-3")
    linked.commit()
    linked.tag("release-dbtt-3")
    code, output = linked.push("release-dbtt-3", force=True)
    assert code == 0, output
    assert "release-dbtt-3 skipped: tag moved" in output
    assert len(linked.fake.tasks) == 1


def test_moved_tag_is_released_when_its_rule_says_on_move(linked):
    linked.rule(1)["on_move"] = True
    linked.write_config()
    linked.tag("release-dbtt-4")
    linked.push("release-dbtt-4")
    linked.commit()
    linked.tag("release-dbtt-4")
    code, output = linked.push("release-dbtt-4", force=True)
    assert code == 0, output
    assert len(linked.fake.tasks) == 2


def test_tag_deleted_and_pushed_again_is_a_new_release(linked):
    linked.tag("release-dbtt-5")
    linked.push("release-dbtt-5")
    linked.push(":refs/tags/release-dbtt-5")
    code, _ = linked.push("release-dbtt-5")
    assert code == 0
    assert len(linked.fake.tasks) == 2


def test_project_not_in_config_is_left_alone(site):
    site.link("pre-receive", "post-receive")
    config = site.config
    config["projects"] = {"other/project": config["projects"][PROJECT]}
    site.write_config()
    site.tag("release-dbtt-6")
    code, output = site.push("release-dbtt-6")
    assert code == 0
    assert "codo:" not in output
    assert site.fake.requests == []


def test_broken_config_refuses_new_tags_and_names_check_config(linked):
    with open(linked.config_path, "w") as handle:
        handle.write("{not json")
    linked.tag("release-dbtt-7")
    code, output = linked.push("release-dbtt-7")
    assert code != 0
    assert "check-config" in output
    assert "refs/tags/release-dbtt-7" not in linked.remote_refs()


def test_broken_config_never_blocks_a_branch_push(linked):
    with open(linked.config_path, "w") as handle:
        handle.write("{not json")
    linked.commit()
    code, output = linked.push("HEAD:refs/heads/main")
    assert code == 0, output


def test_update_stage_submits_before_the_ref_exists(site):
    site.link("update")
    site.tag("release-dbtt-8")
    code, output = site.push("release-dbtt-8")
    assert code == 0, output
    assert len(site.fake.tasks) == 1
    assert "submitted as task" in output


def test_update_stage_with_reject_refuses_the_tag_when_the_platform_is_down(site):
    site.link("update")
    site.config["on_failure"] = "reject"
    site.write_config()
    site.fake.stop()
    site.tag("release-dbtt-9")
    code, output = site.push("release-dbtt-9")
    assert code != 0
    assert "push the tag again later" in output
    assert "refs/tags/release-dbtt-9" not in site.remote_refs()
    assert site.spool("pending") == []


def test_update_stage_with_spool_lets_the_tag_through_and_keeps_it(site):
    site.link("update")
    site.fake.stop()
    site.tag("release-dbtt-10")
    code, output = site.push("release-dbtt-10")
    assert code == 0, output
    assert "spooled" in output
    assert [entry["tag"] for entry in site.spool("pending")] == ["release-dbtt-10"]


def test_update_stage_lets_an_uncertain_release_through_and_says_so(site):
    site.link("update")
    site.config["on_failure"] = "reject"
    site.write_config()
    site.fake.set_fault("commit_then_500", method="POST")
    site.tag("release-dbtt-11")
    code, output = site.push("release-dbtt-11")
    assert code == 0, output
    assert "WARNING release-dbtt-11 may or may not have become a task" in output
    assert "refs/tags/release-dbtt-11" in site.remote_refs()
    assert len(site.spool("uncertain")) == 1


def test_twenty_concurrent_pushes_of_twenty_tags_give_twenty_tasks(linked):
    linked.config["codo"]["budget_s"] = 60  # 20 hooks on 2 cores: the platform is not what is slow here
    linked.write_config()
    tags = [f"release-dbtt-c{n:02d}" for n in range(20)]
    for tag in tags:
        linked.tag(tag)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda tag: linked.push(tag), tags))
    assert all(code == 0 for code, _ in results), [out for code, out in results if code]
    sent = sorted(ast.literal_eval(task.fields["args"])["TAG"] for task in linked.fake.tasks)
    assert sent == tags
    assert len(linked.spool("sent")) == 20
