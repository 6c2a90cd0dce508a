"""Each submitted task followed by the flush timer until it deploys, fails or is stuck."""

import json

import pytest
from conftest import assert_key_nowhere, new_tag_line

RELEASE = "release-dbtt-1"
QA = "qa-dbtt-1"  # rule 0: schedule ready, one host; rule 1 (release-): schedule new, two hosts


def submit(site, tag):
    result = site.run_hook("post-receive", [new_tag_line(tag)])
    assert "submitted as task" in result.stdout, result.stdout
    return site.fake.tasks[-1]


CHECK = "/api/task/v2/task/check/"


def checks(site):
    return [r for r in site.fake.requests if r.path.endswith("/task/check/")]


def test_a_task_is_followed_until_it_is_deployed_and_then_left_alone(site):
    task = submit(site, QA)
    result = site.flush()
    assert f"{QA} task {task.list_id} running" in result.stdout
    site.fake.finish_task(task.list_id)
    result = site.flush()
    assert f"{QA} task {task.list_id} deployed: every step succeeded" in result.stdout
    read = len(checks(site))
    quiet = site.flush()
    assert len(checks(site)) == read and "deployed" not in quiet.stdout
    assert [e["outcome"] for e in site.log() if e.get("stage") == "follow"] == [
        "running",
        "deployed",
    ]
    status = site.admin("status", "--state-dir", site.state_dir)
    assert "deployed" in status.stdout and f"/#/task/{task.list_id}" in status.stdout
    assert_key_nowhere(site, result.stdout, status.stdout)


@pytest.mark.parametrize(
    "host", ["118.25.0.10", "118.25.0.11"]
)  # check/ shows the first host's steps
def test_a_failed_step_is_named_with_its_host(site, host):
    site.fake.templates[32] = {
        "steps": [{"group": 1, "command_name": "checkout"}, {"group": 1, "command_name": "publish"}]
    }
    task = submit(site, "release-dbtt-7")  # two hosts
    site.fake.approve_task(task.list_id)
    site.fake.start_task(task.list_id)
    site.fake.fail_task(task.list_id, host=host, step="publish")
    result = site.flush()
    assert f"task {task.list_id} failed: step publish failed on {host}" in result.stdout
    (sent,) = site.spool("sent")
    assert sent["follow"] == "failed"


def test_a_task_waiting_for_approval_says_so(site):
    task = submit(site, RELEASE)  # schedule new
    result = site.flush()
    assert (
        f"task {task.list_id} waiting_approval: waits for approval in the platform" in result.stdout
    )


def test_a_task_that_never_starts_is_stuck_past_the_deadline(site):
    site.config["codo"]["follow_deadline_s"] = 0.01
    site.write_config()
    task = submit(site, QA)
    result = site.flush()
    assert f"task {task.list_id} stuck" in result.stdout and "restart it there" in result.stdout
    assert site.spool("sent")[0]["follow"] == "stuck"


def test_a_flush_reads_only_a_bounded_number_of_unfinished_tasks(site):
    for n in range(25):
        submit(site, f"qa-dbtt-{n}")
    site.flush()
    assert (
        len(checks(site)) == 20
    )  # FOLLOW_PER_RUN; the rest next minute, least recently read first
    site.flush()
    assert len(checks(site)) == 40
    read = {int(r.query["list_id"]) for r in checks(site)}
    assert read == {task.list_id for task in site.fake.tasks}


@pytest.mark.parametrize("status", [500, 502])
def test_a_platform_that_cannot_show_the_task_changes_nothing(site, status):
    task = submit(site, QA)
    site.fake.set_fault("status", status=status, path="/api/task/v2/task/check/")
    result = site.flush()
    assert "Traceback" not in result.stdout + result.stderr
    (sent,) = site.spool("sent")
    assert "follow" not in sent and f"HTTP {status}" in sent["follow_note"]
    site.fake.clear_faults()
    site.fake.finish_task(task.list_id)
    assert "deployed" in site.flush().stdout


ODD = {"schedule": "start", "scheduler_list": 1, "hosts_status": {}}
TROUBLED = {"schedule": "start", "scheduler_list": [], "hosts_status": {"118.25.0.10": "4"}}


@pytest.mark.parametrize(
    "replies, follow",
    [
        ([ODD], "running"),
        ([dict(ODD, scheduler_list=True, hosts_status={"118.25.0.10": "2"})], "running"),
        ([TROUBLED, dict(TROUBLED, scheduler_list=7)], "failed"),  # the host's steps asked for
    ],
)
def test_a_task_shown_in_an_odd_shape_changes_nothing_and_the_flush_goes_on(site, replies, follow):
    """check/ answering steps that are not a list: what it cannot tell stays unknown; the release
    stays sent (not uncertain, never resendable) and the spooled release behind it is sent."""
    task = submit(site, QA)
    site.fake.set_fault("status", status=503, method="POST")
    kept = site.run_hook("post-receive", [new_tag_line("qa-dbtt-2")])
    assert "spooled" in kept.stdout, kept.stdout
    site.fake.clear_faults()
    for data in replies:
        body = json.dumps({"code": 0, "data": data})
        site.fake.add_fault("status", status=200, body=body, path=CHECK, times=1)
    result = site.flush()
    assert "internal error" not in result.stdout + result.stderr
    assert "qa-dbtt-2 submitted as task" in result.stdout
    site.fake.clear_faults()
    site.flush()
    assert site.spool("uncertain") == [] and site.spool("inflight") == []
    first = next(e for e in site.spool("sent") if e["tag"] == QA)
    assert first["task_id"] == task.list_id and first.get("follow") == follow
