"""A platform that is down, slow, broken or refusing: nothing lost, nothing sent twice."""

import concurrent.futures
import os
import time

import pytest
from conftest import new_tag_line

RELEASE = "release-dbtt-server-20190320-02"


def post_receive(site, *tags, **env):
    return site.run_hook("post-receive", [new_tag_line(tag) for tag in tags], **env)


def test_platform_down_spools_the_release_and_flush_delivers_it_once(site):
    site.fake.stop()
    result = post_receive(site, RELEASE)
    assert result.returncode == 0
    assert f"codo: {RELEASE} spooled: platform unreachable" in result.stdout
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]
    site.fake.start()
    assert site.flush().returncode == 0
    again = site.flush()
    assert again.returncode == 0
    assert len(site.fake.tasks) == 1
    assert site.spool("pending") == []
    assert [entry["task_id"] for entry in site.spool("sent")] == [1]


def test_flush_leaves_the_release_pending_while_the_platform_is_down(site):
    site.fake.stop()
    post_receive(site, RELEASE)
    result = site.flush()
    assert result.returncode == 1
    assert "1 pending" in result.stdout
    assert len(site.spool("pending")) == 1


def test_a_platform_that_never_answers_cannot_hold_the_push_past_its_budget(site):
    site.config["codo"].update(budget_s=2, read_timeout_s=30)
    site.write_config()
    site.fake.set_fault("hang")
    started = time.monotonic()
    result = post_receive(site, RELEASE, "release-dbtt-second")
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 4  # budget plus interpreter start and slack: generous on a loaded machine
    assert result.returncode == 0
    tags = sorted(entry["tag"] for entry in site.spool("pending"))
    assert tags == ["release-dbtt-second", RELEASE]


def test_after_a_failure_the_next_update_of_the_same_push_goes_straight_to_the_spool(site):
    site.fake.stop()
    site.run_hook("update", argv=["refs/tags/release-dbtt-a", "0" * 40, "1" * 40])
    site.fake.start()
    result = site.run_hook("update", argv=["refs/tags/release-dbtt-b", "0" * 40, "1" * 40])
    assert "spooled: the platform failed moments ago" in result.stdout
    assert site.fake.requests == []
    assert len(site.spool("pending")) == 2


def test_a_refused_csrf_key_is_retried_with_a_fresh_one(site):
    site.fake.set_fault("status", status=402, method="POST", times=1)
    result = post_receive(site, RELEASE)
    assert "submitted as task 1" in result.stdout
    assert len(site.fake.tasks) == 1


def test_503_is_retried_because_it_created_nothing(site):
    site.fake.set_fault("status", status=503, method="POST", times=1)
    result = post_receive(site, RELEASE)
    assert "submitted as task" in result.stdout
    assert len(site.fake.tasks) == 1


@pytest.mark.parametrize(
    "fault, detail",
    [
        ({"mode": "commit_then_500"}, "HTTP 500"),
        ({"mode": "status", "status": 502}, "HTTP 502"),
        ({"mode": "status", "status": 504}, "HTTP 504"),
        ({"mode": "non_json"}, "not the platform's JSON"),
        ({"mode": "close_after_body"}, "connection lost after the task was sent"),
    ],
)
def test_a_reply_that_may_hide_a_created_task_is_uncertain_and_never_resent_by_itself(
    site, fault, detail
):
    site.fake.set_fault(fault.pop("mode"), method="POST", times=1, **fault)
    result = post_receive(site, RELEASE)
    assert result.returncode == 0
    assert "WARNING" in result.stdout and detail in result.stdout
    created = len(site.fake.tasks)
    assert [entry["tag"] for entry in site.spool("uncertain")] == [RELEASE]
    flushed = site.flush()
    assert flushed.returncode == 1
    assert "flush --include-uncertain" in flushed.stdout
    assert len(site.fake.tasks) == created


def test_read_timeout_after_the_body_went_out_is_uncertain(site):
    site.config["codo"].update(read_timeout_s=1, budget_s=5)
    site.write_config()
    site.fake.set_fault("slow", seconds=3, method="POST", times=1)
    result = post_receive(site, RELEASE)
    assert "may or may not have become a task" in result.stdout
    assert len(site.spool("uncertain")) == 1


def test_flush_include_uncertain_resends_after_a_person_checked(site):
    site.fake.set_fault("status", status=502, method="POST", times=1)
    post_receive(site, RELEASE)
    result = site.flush("--include-uncertain")
    assert result.returncode == 0, result.stdout
    assert len(site.fake.tasks) == 1
    assert site.spool("uncertain") == []


def test_a_business_refusal_is_failed_and_waits_for_a_fixed_config(site):
    site.rule(1)["hosts"] = {
        "2": ["118.25.0.10"]
    }  # the template runs group 1 only: it ends up empty
    site.write_config()
    result = post_receive(site, RELEASE)
    assert "The exec host cannot be empty (code -4)" in result.stdout
    assert len(site.spool("failed")) == 1
    assert site.flush().returncode == 1
    assert site.fake.tasks == []
    site.rule(1)["hosts"] = {"1": ["118.25.0.10"]}
    site.write_config()
    assert site.flush("--include-failed").returncode == 0
    assert len(site.fake.tasks) == 1


def test_a_rejected_key_is_kept_pending_and_sent_once_the_key_is_renewed(site):
    from fakes.fake_codo import make_auth_key

    with open(site.key_file, "w") as handle:
        handle.write(make_auth_key(user_id=7))  # well-formed, but not a key the platform knows
    result = post_receive(site, RELEASE)
    assert "rejected the auth key (HTTP 401)" in result.stdout
    assert len(site.spool("pending")) == 1
    from conftest import AUTH_KEY

    with open(site.key_file, "w") as handle:
        handle.write(AUTH_KEY)
    assert site.flush().returncode == 0
    assert len(site.fake.tasks) == 1


def test_an_entry_abandoned_mid_send_becomes_uncertain(site):
    site.fake.stop()
    post_receive(site, RELEASE)
    (entry,) = site.spool("pending")
    spool = os.path.join(site.state_dir, "spool")
    os.rename(
        os.path.join(spool, "pending", entry["id"] + ".json"),
        os.path.join(spool, "inflight", entry["id"] + ".json"),
    )
    site.fake.start()
    result = site.flush()
    assert result.returncode == 1
    assert [e["last_error"] for e in site.spool("uncertain")] == [
        "the process sending it stopped mid-send"
    ]
    assert site.fake.tasks == []


def test_concurrent_flushes_send_each_release_once(site):
    site.rule(1)["max_per_push"] = 12  # one push of 12 release tags, past the default guard of 10
    site.write_config()
    site.fake.stop()
    post_receive(site, *[f"release-dbtt-f{n:02d}" for n in range(12)])
    assert len(site.spool("pending")) == 12
    site.fake.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: site.flush(), range(4)))
    # On a loaded machine a flush may run out of its time budget and leave a release pending for
    # the next run (saying so); it must never send one twice. The timer's next run sends the rest.
    for result in results:
        assert result.returncode in (0, 1), result.stdout + result.stderr
        if result.returncode == 1:
            assert " pending" in result.stdout, result.stdout
    assert site.flush().returncode == 0
    names = [task.fields["args"] for task in site.fake.tasks]  # each carries its TAG
    assert len(names) == 12 and len(set(names)) == 12, names
    assert len(site.spool("sent")) == 12
    assert site.spool("pending") == [] and site.spool("uncertain") == []


def test_flush_sends_with_the_config_as_it_is_now(site):
    site.fake.stop()
    post_receive(site, RELEASE)
    site.rule(1)["template_id"] = 33
    site.fake.templates[33] = [1]
    site.write_config()
    site.fake.start()
    site.flush()
    assert site.fake.tasks[0].fields["temp_id"] == "33"


def test_unwritable_state_dir_in_update_refuses_without_sending(site):
    site.config["state_dir"] = "/proc/codo-cannot-write-here"
    site.write_config()
    result = site.run_hook("update", argv=["refs/tags/" + RELEASE, "0" * 40, "1" * 40])
    assert result.returncode == 1
    assert "cannot write the spool" in result.stdout
    assert site.fake.requests == []


def test_the_key_never_reaches_output_spool_or_log(site):
    from conftest import AUTH_KEY

    outputs = []
    site.fake.set_fault("status", status=502, method="POST", times=1)
    outputs.append(post_receive(site, RELEASE))
    site.fake.stop()
    outputs.append(post_receive(site, "release-dbtt-down"))
    site.fake.start()
    outputs.append(site.flush("--include-uncertain"))
    outputs.append(site.admin("status", "--state-dir", site.state_dir, "--json"))
    outputs.append(site.admin("match", "--config", site.config_path, RELEASE))
    for result in outputs:
        assert AUTH_KEY not in result.stdout + result.stderr
    for directory, _, names in os.walk(site.state_dir):
        for name in names:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
                assert AUTH_KEY not in handle.read(), name


def test_a_broken_config_after_the_push_keeps_new_tags_until_it_is_fixed(site):
    site.rule(1)["hosts"] = {"1": ["not-an-ip"]}
    site.write_config()
    result = post_receive(site, RELEASE)
    assert "kept in the spool" in result.stdout and "check-config" in result.stdout
    assert site.fake.requests == []
    site.rule(1)["hosts"] = {"1": ["118.25.0.10"]}
    site.write_config()
    assert site.flush().returncode == 0
    assert len(site.fake.tasks) == 1
