"""Uncertain releases settled by flush against the platform's task lists, without a person."""

import concurrent.futures
import json

import pytest
from conftest import AUTH_KEY, assert_key_nowhere, new_tag_line
from fakes.fake_codo import make_auth_key

RELEASE = "release-dbtt-1"


def push(site, *tags):
    result = site.run_hook("post-receive", [new_tag_line(tag) for tag in tags])
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def settling(site):
    site.config["codo"]["settle_after_s"] = 0.01
    site.write_config()
    return site


def test_a_task_committed_behind_a_500_is_found_and_flagged(settling):
    settling.fake.set_fault("commit_then_500", method="POST", times=1)
    push(settling, RELEASE)
    (task,) = settling.fake.tasks
    assert [e["tag"] for e in settling.spool("uncertain")] == [RELEASE]
    result = settling.flush()
    assert f"{RELEASE} settled: the platform has it as task {task.list_id}" in result.stdout
    assert (
        "the platform reported a failure when it took it, so the task may need restarting there"
        in result.stdout
    )
    (sent,) = settling.spool("sent")
    assert sent["task_id"] == task.list_id and sent["settled"] == "sent"
    assert len(settling.fake.tasks) == 1
    assert settling.flush().returncode == 0 and len(settling.fake.tasks) == 1
    assert [e["outcome"] for e in settling.log() if e.get("stage") == "flush"] == ["settled"]
    assert_key_nowhere(settling, result.stdout)


def test_a_task_that_finished_before_the_lookup_is_found_in_the_history(settling):
    settling.fake.set_fault("commit_then_status", status=502, method="POST", times=1)
    push(settling, RELEASE)
    (task,) = settling.fake.tasks
    settling.fake.finish_task(task.list_id)
    result = settling.flush()
    assert f"settled: the platform has it as task {task.list_id}" in result.stdout
    assert len(settling.fake.tasks) == 1


def test_a_500_that_created_nothing_is_sent_again_exactly_once(settling):
    settling.fake.set_fault("status", status=500, method="POST", times=1)
    push(settling, RELEASE)
    assert settling.fake.tasks == [] and len(settling.spool("uncertain")) == 1
    result = settling.flush()
    assert f"{RELEASE} settled: the platform has no such task: sent again" in result.stdout
    assert [task.args["TAG"] for task in settling.fake.tasks] == [RELEASE]
    assert settling.flush().returncode == 0 and len(settling.fake.tasks) == 1


def test_an_unknown_template_after_a_500_fails_naming_the_template(settling):
    settling.rule(1)["template_id"] = 99
    settling.write_config()
    push(settling, RELEASE)
    result = settling.flush()
    assert "the platform has no template 99" in result.stdout
    assert [e["tag"] for e in settling.spool("failed")] == [RELEASE]
    assert settling.fake.tasks == []


def test_a_template_lookup_answered_with_an_error_code_is_not_taken_for_no_template(settling):
    settling.fake.set_fault("status", status=500, method="POST", times=1)
    push(settling, RELEASE)
    assert settling.fake.tasks == [] and len(settling.spool("uncertain")) == 1
    settling.fake.set_fault(
        "status",
        status=200,
        body='{"code": -1, "msg": "busy", "data": []}',
        method="GET",
        path="/api/task/v2/task_layout/temp/",
    )
    result = settling.flush()
    assert "no template" not in result.stdout and settling.spool("failed") == []
    assert [task.args["TAG"] for task in settling.fake.tasks] == [RELEASE]


def test_a_key_that_cannot_see_its_tasks_leaves_the_release_uncertain_and_says_why(site):
    site.serve_key(make_auth_key(username="ops-bot", nickname="Ops Bot"), settle_after_s=0.01)
    site.fake.set_fault("status", status=500, method="POST", times=1)
    push(site, RELEASE)
    site.flush()
    (entry,) = site.spool("uncertain")
    assert "the key cannot see the hook's tasks" in entry["settle_note"]
    assert "set the project's submitter to 'ops-bot'" in entry["settle_note"]
    assert site.fake.tasks == []
    status = site.admin("status", "--state-dir", site.state_dir)
    assert "cannot see the hook's tasks" in status.stdout


def test_a_superuser_key_settles_whatever_the_submitter(site):
    site.serve_key(
        make_auth_key(username="admin", nickname="admin", is_superuser=True), settle_after_s=0.01
    )
    site.fake.set_fault("commit_then_500", method="POST", times=1)
    push(site, RELEASE)
    assert "settled: the platform has it" in site.flush().stdout


def test_a_platform_whose_lists_cannot_be_read_leaves_it_uncertain_and_resends_nothing(settling):
    settling.fake.set_fault("status", status=500, method="POST", times=1)
    push(settling, RELEASE)
    settling.fake.set_fault("status", status=500, path="/api/task/v2/task/list/")
    result = settling.flush()
    assert settling.fake.tasks == [] and len(settling.spool("uncertain")) == 1
    assert "could not be read" in settling.spool("uncertain")[0]["settle_note"]
    assert "Traceback" not in result.stdout + result.stderr


def test_nothing_is_looked_up_before_the_quiet_delay(site):
    site.fake.set_fault("status", status=500, method="POST", times=1)
    push(site, RELEASE)  # settle_after_s: the default 120 s
    site.flush()
    assert not [r for r in site.fake.requests if "/task/list/" in r.path]
    assert len(site.spool("uncertain")) == 1 and site.fake.tasks == []


def test_twenty_uncertain_releases_settled_by_three_concurrent_flushes_make_twenty_tasks(settling):
    tags = [f"release-dbtt-{n}" for n in range(20)]
    settling.config["codo"]["down_memory_s"] = 0.01  # so that each release is tried, not spooled
    settling.write_config()
    settling.fake.set_fault("commit_then_500", method="POST", times=10)
    for tag in tags[:10]:
        push(settling, tag)
    settling.fake.clear_faults()
    settling.fake.set_fault("status", status=500, method="POST", times=10)
    for tag in tags[10:]:
        push(settling, tag)
    assert len(settling.spool("uncertain")) == 20 and len(settling.fake.tasks) == 10
    settling.fake.clear_faults()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: settling.flush(), range(3)))
    settling.flush()
    assert sorted(task.args["TAG"] for task in settling.fake.tasks) == sorted(tags)
    assert len(settling.spool("sent")) == 20 and settling.spool("uncertain") == []
    assert AUTH_KEY not in json.dumps([e for e in settling.log()])


def seed_releases(fake, count, exec_time="2019-03-20 10:00:00", finish=True):
    """`count` other releases of the project (finished: what a platform shows after months of use);
    their list_ids."""
    import urllib.request

    list_ids = []
    for number in range(count):
        get = urllib.request.Request(
            fake.url + "/api/task/v2/task/accept/", headers={"Cookie": f"auth_key={AUTH_KEY}"}
        )
        with urllib.request.urlopen(get, timeout=5) as reply:
            csrf = json.loads(reply.read())["csrf_key"]
        args = {
            "TAG": f"release-dbtt-old-{number}",
            "GIT_URL": "git@x:ops/dbtt.git",
            "APP_NAME": "DBTT",
        }
        body = {
            "task_name": "DBTT",
            "temp_id": "32",
            "args": str(args),
            "details": "git hook auto exec",
            "hosts": str({1: ",".join(f"118.25.0.{host}" for host in range(10, 30))}),
            "submitter": "githook",
            "exec_time": exec_time,
            "schedule": "new",
            "executor": "githook",
        }
        post = urllib.request.Request(
            fake.url + "/api/task/v2/task/accept/",
            data=json.dumps(body).encode(),
            headers={"Cookie": f"auth_key={AUTH_KEY}; csrf_key={csrf}"},
        )
        with urllib.request.urlopen(post, timeout=5) as reply:
            list_ids.append(json.loads(reply.read())["list_id"])
        if finish:
            fake.finish_task(list_ids[-1])
    return list_ids


def test_a_project_with_a_long_history_still_settles(settling):
    """A page of the task lists (the project's earlier tasks, each row with its 20 hosts) runs over
    the 64 KiB a task's reply may take, and is still the platform's."""
    seed_releases(settling.fake, 200)
    settling.fake.set_fault("status", status=500, method="POST", times=1)
    push(settling, RELEASE)
    result = settling.flush()
    assert f"{RELEASE} settled: the platform has no such task: sent again" in result.stdout, (
        result.stdout
    )
    assert [t.args["TAG"] for t in settling.fake.tasks if t.args["TAG"] == RELEASE] == [RELEASE]


def test_a_task_moving_up_the_list_while_it_is_read_is_still_found(settling):
    """list/ is paged, and a task that finishes leaves it, moving every later row up: a task on
    page 2 when page 1 was read is on page 1 when page 2 is. Read page by page, it is in neither
    page nor (unfinished) in the history, and would be sent a second time."""
    ahead = seed_releases(settling.fake, 100, exec_time="2038-01-01 00:00:00", finish=False)
    settling.fake.set_fault("commit_then_status", status=502, method="POST", times=1)
    push(settling, RELEASE)
    (mine,) = [t for t in settling.fake.tasks if t.args["TAG"] == RELEASE]
    lists = "/api/task/v2/task/list/"
    settling.fake.add_fault("slow", seconds=0, path=lists, times=1)
    settling.fake.add_fault("slow", seconds=2, path=lists, times=1)  # the second read waits
    asked = len(settling.fake.requests)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flushing = pool.submit(settling.flush)
        assert settling.fake.wait_for_requests(asked + 2, timeout=30)
        settling.fake.finish_task(ahead[0])  # while the second read waits
        result = flushing.result()
    assert [t.args["TAG"] for t in settling.fake.tasks].count(RELEASE) == 1, result.stdout
    assert f"{RELEASE} settled: the platform has it as task {mine.list_id}" in result.stdout
