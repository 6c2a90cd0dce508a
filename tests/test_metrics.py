"""The metrics flush leaves for node_exporter's textfile collector, read back with a strict parser
of the exposition format (and promtool when it is installed), and what `status --json` adds."""

import json
import os
import shutil
import stat
import subprocess
import sys

import exposition
import pytest
from conftest import AUTH_KEY, FILES, PROJECT, assert_key_nowhere, new_tag_line

sys.path.insert(0, FILES)
import codo_release  # noqa: E402
from codo_release import metrics as program_metrics  # noqa: E402

QA = "qa-dbtt-1"  # rule 0: schedule ready
RELEASE = "release-dbtt-1"  # rule 1: schedule new
KEY_EXP = 4102444800  # the test key's exp claim (fakes.fake_codo.make_auth_key)


@pytest.fixture
def metrics_dir(tmp_path):
    path = tmp_path / "textfile"
    path.mkdir()
    return str(path)


def flush(site, metrics_dir, *args):
    result = site.flush("--metrics-dir", metrics_dir, *args)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def metrics(metrics_dir):
    with open(os.path.join(metrics_dir, "codo_release.prom"), encoding="utf-8") as handle:
        text = handle.read()
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if promtool:  # promtool's own linter: names, HELP, units, counters
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
    return exposition.parse(text)


def releases(families, project=PROJECT):
    family = families["codo_release_releases_total"]
    return {
        labels["outcome"]: family.value(**labels)
        for labels in family.labelled()
        if labels["project"] == project
    }


def counted(families, project=PROJECT):
    return {outcome: n for outcome, n in releases(families, project).items() if n}


def push(site, *tags, stage="post-receive", **env):
    result = site.run_hook(stage, [new_tag_line(tag) for tag in tags], **env)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def test_a_submitted_release_is_counted_and_its_time_kept(site, metrics_dir):
    push(site, QA)
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families) == {"submitted": 1}
    assert set(releases(families)) == set(program_metrics.RELEASE_OUTCOMES)  # each from 0
    (sent,) = site.spool("sent")
    submitted = families["codo_release_last_submission_timestamp_seconds"].value()
    assert abs(submitted - sent["sent_at"]) < 2
    assert families["codo_release_last_run_timestamp_seconds"].value() == submitted
    assert families["codo_release_last_flush_timestamp_seconds"].value() >= submitted
    assert families["codo_release_spool_entries"].value(state="sent") == 1
    assert families["codo_release_build_info"].value(version=codo_release.VERSION) == 1
    assert families["codo_release_key_expiry_timestamp_seconds"].value() == KEY_EXP
    assert families["codo_release_config_problems"].value() == 0


def test_the_file_is_replaced_whole_world_readable_and_holds_no_secret(site, metrics_dir):
    push(site, QA)
    flush(site, metrics_dir)
    assert os.listdir(metrics_dir) == ["codo_release.prom"]  # no temp file left
    path = os.path.join(metrics_dir, "codo_release.prom")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    inode = os.stat(path).st_ino
    flush(site, metrics_dir)
    assert os.stat(path).st_ino != inode  # renamed over, never rewritten in place
    with open(path, encoding="utf-8") as handle:
        assert_key_nowhere(site, handle.read())


def test_a_spooled_release_is_counted_once_however_often_flush_retries(site, metrics_dir):
    site.fake.stop()
    push(site, RELEASE)
    assert flush(site, metrics_dir).returncode == 1
    assert flush(site, metrics_dir).returncode == 1
    families = metrics(metrics_dir)
    assert counted(families) == {"spooled": 1}
    assert families["codo_release_spool_entries"].value(state="pending") == 1
    assert families["codo_release_spool_oldest_age_seconds"].value(state="pending") > 0
    assert families["codo_release_spool_oldest_age_seconds"].value(state="uncertain") == 0
    assert families["codo_release_last_submission_timestamp_seconds"].value() == 0
    site.fake.start()
    assert flush(site, metrics_dir).returncode == 0
    families = metrics(metrics_dir)
    assert counted(families) == {"spooled": 1, "submitted": 1}
    assert families["codo_release_spool_entries"].value(state="pending") == 0
    assert families["codo_release_spool_oldest_age_seconds"].value(state="pending") == 0


def test_refused_tags_are_counted_before_the_push(site, metrics_dir):
    push(site, "release-dbtt-$(id)", stage="pre-receive")
    site.rule(1)["allowed_users"] = ["bob"]
    site.write_config()
    push(site, RELEASE, stage="pre-receive")
    flush(site, metrics_dir)
    assert counted(metrics(metrics_dir)) == {"refused": 2}


def test_an_uncertain_release_then_settled_is_counted_as_both(site, metrics_dir):
    site.config["codo"]["settle_after_s"] = 0.01
    site.write_config()
    site.fake.set_fault("commit_then_500", method="POST", times=1)
    push(site, RELEASE)
    site.config["codo"]["settle_after_s"] = 3600
    site.write_config()
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families) == {"uncertain": 1}
    assert families["codo_release_spool_oldest_age_seconds"].value(state="uncertain") > 0
    site.config["codo"]["settle_after_s"] = 0.01
    site.write_config()
    flush(site, metrics_dir)
    assert counted(metrics(metrics_dir)) == {"uncertain": 1, "settled": 1}


def test_deployed_failed_and_stuck_tasks_are_counted_as_flush_follows_them(site, metrics_dir):
    site.fake.templates[32] = {"steps": [{"group": 1, "command_name": "publish"}]}
    push(site, "qa-dbtt-deployed", "qa-dbtt-failed")
    deployed, failed = site.fake.tasks
    site.fake.finish_task(deployed.list_id)
    site.fake.start_task(failed.list_id)
    site.fake.fail_task(failed.list_id, step="publish")
    flush(site, metrics_dir)
    site.config["codo"]["follow_deadline_s"] = 0.01
    site.write_config()
    push(site, "qa-dbtt-stuck")
    flush(site, metrics_dir)
    flush(site, metrics_dir)  # followed already: nothing counted twice
    assert counted(metrics(metrics_dir)) == {"submitted": 3, "deployed": 1, "failed": 1, "stuck": 1}


def test_a_release_the_platform_refuses_is_counted_failed(site, metrics_dir):
    site.fake.set_fault("message", code=-1, msg="template not allowed", method="POST", times=1)
    push(site, RELEASE)
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families) == {"failed": 1}
    assert families["codo_release_spool_entries"].value(state="failed") == 1


def test_counters_survive_the_logs_rotation_and_the_spools_pruning(site, metrics_dir):
    site.config["log_max_bytes"] = 2000  # about four events a file: rotated between two flushes
    site.write_config()
    for n in range(0, 12, 2):
        push(site, f"qa-dbtt-{n}")
        push(site, f"qa-dbtt-{n + 1}")
        flush(site, metrics_dir)  # and it logs each new task's first state
    assert os.path.exists(os.path.join(site.state_dir, "hook.log.1"))
    for entry in os.listdir(os.path.join(site.state_dir, "spool", "sent")):
        os.unlink(os.path.join(site.state_dir, "spool", "sent", entry))
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families)["submitted"] == 12
    assert families["codo_release_spool_entries"].value(state="sent") == 0


def test_two_flushes_at_once_count_each_event_once(site, metrics_dir):
    for n in range(5):
        push(site, f"qa-dbtt-{n}")
    runs = [
        subprocess.Popen(
            [site.entry, "flush", "--state-dir", site.state_dir, "--metrics-dir", metrics_dir],
            stdout=subprocess.DEVNULL,
            env=site.env(),
        )
        for _ in range(3)
    ]
    for run in runs:
        run.wait(timeout=120)
    assert counted(metrics(metrics_dir))["submitted"] == 5


@pytest.mark.parametrize("project", ['ops/"quoted"', "ops/back\\slash", "ops/new\nline"])
def test_a_hostile_project_name_is_one_escaped_label_value(site, metrics_dir, project):
    site.config["projects"] = {project: site.config["projects"][PROJECT]}
    site.write_config()
    push(site, QA, GL_PROJECT_PATH=project)
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families, project) == {"submitted": 1}
    assert {labels["project"] for labels in families["codo_release_releases_total"].labelled()} == {
        project
    }


def test_a_label_value_that_is_not_ascii_or_not_even_utf8_stays_one_valid_value():
    tally = program_metrics.new_tally()
    tally["releases"] = {"ops/ünï\u202ecode": {"submitted": 1}, "ops/\udcff": {"refused": 2}}
    figures = {
        "counts": dict.fromkeys(program_metrics.SPOOL_STATES, 0),
        "ignored": 0,
        "oldest": {"pending": None, "uncertain": None},
        "key_expires": None,
        "config_problems": 0,
    }
    text = program_metrics.metrics_text(tally, figures)
    text.encode("utf-8")  # node_exporter refuses a file that is not UTF-8
    families = exposition.parse(text)
    assert counted(families, "ops/ünï\u202ecode") == {"submitted": 1}
    assert counted(families, "ops/\\udcff") == {"refused": 2}  # the byte shown escaped


def test_a_config_that_cannot_be_used_is_counted_and_its_releases_spooled(site, metrics_dir):
    del site.config["projects"][PROJECT]["git_url"]  # invalid, its state_dir still readable
    site.write_config()
    result = push(site, RELEASE, stage="pre-receive")
    assert result.returncode == 1
    push(site, RELEASE)
    flush(site, metrics_dir)
    families = metrics(metrics_dir)
    assert counted(families) == {"refused": 1, "spooled": 1}
    assert families["codo_release_config_problems"].value() == 1
    assert "codo_release_key_expiry_timestamp_seconds" not in families  # no config, no key


def test_without_a_metrics_dir_flush_writes_none_but_keeps_counting(site, metrics_dir):
    push(site, QA)
    site.flush()
    push(site, "qa-dbtt-2")
    flush(site, metrics_dir)
    assert counted(metrics(metrics_dir)) == {"submitted": 2}


def test_metrics_moved_or_turned_off_leave_no_stale_file_but_a_flush_by_hand_leaves_them(
    site, metrics_dir, tmp_path
):
    first = os.path.join(metrics_dir, "codo_release.prom")
    push(site, QA)
    flush(site, metrics_dir)
    assert os.path.isfile(first)
    assert site.flush().returncode == 0  # by hand, neither option: the timer's file stays
    assert os.path.isfile(first)
    moved = tmp_path / "moved"
    moved.mkdir()
    flush(site, str(moved))
    assert not os.path.exists(first) and counted(metrics(str(moved))) == {"submitted": 1}
    other = moved / "other.prom"  # another exporter's file in the shared directory
    other.write_text("other 1\n")
    result = site.flush("--no-metrics")
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr
    assert os.listdir(str(moved)) == ["other.prom"]
    flush(site, metrics_dir)  # turned on again: written again, from the kept counters
    assert counted(metrics(metrics_dir)) == {"submitted": 1}


def test_only_a_regular_file_of_the_hooks_own_is_removed_where_the_state_says_it_wrote(
    site, metrics_dir, tmp_path
):
    if os.geteuid() != 0:
        pytest.skip("planting another user's file needs root")
    push(site, QA)
    flush(site, metrics_dir)
    state_file = os.path.join(site.state_dir, "metrics-state.json")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "codo_release.prom"
    victim.write_text("not the hook's\n")
    os.chown(str(victim), 65534, 65534)  # another user's file by that name
    linked_dir = tmp_path / "linked"
    linked_dir.mkdir()
    target = tmp_path / "target"
    target.write_text("kept\n")
    os.symlink(str(target), str(linked_dir / "codo_release.prom"))
    for planted in (str(victim_dir), str(linked_dir), "relative/dir", "/\u0000x"):
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
        state["metrics_dir"] = planted
        with open(state_file, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        result = site.flush("--no-metrics")
        assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr
    assert victim.read_text() == "not the hook's\n"
    assert os.path.islink(str(linked_dir / "codo_release.prom")) and target.read_text() == "kept\n"


def test_a_metrics_dir_that_is_not_an_absolute_path_is_refused_in_one_line(site):
    result = site.flush("--metrics-dir", "textfile")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "'textfile' is not an absolute path" in result.stderr


def test_a_metrics_dir_that_cannot_be_written_is_one_line_and_changes_no_exit_code(site, tmp_path):
    push(site, QA)
    result = flush(site, str(tmp_path / "missing"))
    assert result.returncode == 0
    (line,) = [line for line in result.stdout.splitlines() if "metrics" in line]
    assert "cannot write" in line and "codo_release.prom" in line


def test_a_state_dir_nothing_ran_in_yet_gets_metrics_but_is_not_made(site, metrics_dir, tmp_path):
    missing = str(tmp_path / "never")
    result = site.admin("flush", "--state-dir", missing, "--metrics-dir", metrics_dir)
    assert result.returncode == 0 and result.stdout == ""
    families = metrics(metrics_dir)
    assert families["codo_release_spool_entries"].value(state="pending") == 0
    assert families["codo_release_last_flush_timestamp_seconds"].value() > 0
    assert not os.path.exists(missing)


def test_status_json_tells_version_key_expiry_last_run_flush_and_oldest_ages(site, metrics_dir):
    def status():
        result = site.admin("status", "--state-dir", site.state_dir, "--json")
        assert result.returncode == 0, result.stdout
        return json.loads(result.stdout)

    empty = status()
    assert empty["version"] == codo_release.VERSION
    assert (empty["last_run"], empty["last_flush"], empty["key_expires"]) == (None, None, None)
    assert (empty["oldest_pending_s"], empty["oldest_uncertain_s"]) == (None, None)
    site.fake.stop()
    push(site, RELEASE)
    before_flush = status()
    assert before_flush["last_run"] is not None  # read from the log, not waiting for a flush
    assert before_flush["oldest_pending_s"] >= 0 and before_flush["oldest_uncertain_s"] is None
    assert before_flush["key_expires"] == KEY_EXP  # from the config the entry names
    flush(site, metrics_dir)
    after = status()
    assert after["last_flush"] >= before_flush["last_run"]
    assert after["last_run"] == before_flush["last_run"]
    assert {"counts", "entries", "ignored"} <= set(after)
    by_config = site.admin("status", "--config", site.config_path, "--json")
    assert json.loads(by_config.stdout)["key_expires"] == KEY_EXP
    assert AUTH_KEY not in by_config.stdout


def test_status_json_key_expires_is_null_for_a_key_without_exp(site):
    from fakes.fake_codo import make_auth_key

    site.serve_key(make_auth_key(exp=None))
    result = site.admin("status", "--config", site.config_path, "--json")
    assert json.loads(result.stdout)["key_expires"] is None


def test_version_prints_the_hooks_version(site):
    result = site.admin("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "codo_release_hook.py " + codo_release.VERSION
