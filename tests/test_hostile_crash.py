"""No traceback ever reaches a pusher: an error of the hook's own ends in one line with an id that
finds the traceback in the log; before the push it refuses, after it the release is kept."""

import json
import os
import subprocess

import pytest
from conftest import AUTH_KEY, assert_key_nowhere, new_tag_line

RELEASE = "release-dbtt-1"


def sabotage(site, function, raising):
    """The installed program with one function raising at its first line: a bug we do not know of yet."""
    package = os.path.join(os.path.dirname(site.entry), "codo_release")
    for name in sorted(os.listdir(package)):
        module = os.path.join(package, name)
        if name.endswith(".py"):
            with open(module, encoding="utf-8") as handle:
                text = handle.read()
            if f"\ndef {function}(" in text:
                break
    else:
        raise AssertionError(f"no module of the program defines {function}")
    head = text.index(f"def {function}(")
    body = text.index("\n", text.index("):", head)) + 1
    indent = " " * 4
    text = text[:body] + f"{indent}raise {raising}\n" + text[body:]
    with open(module, "w", encoding="utf-8") as handle:
        handle.write(text)
    for name in os.listdir(os.path.join(os.path.dirname(module), "__pycache__")):
        os.unlink(os.path.join(os.path.dirname(module), "__pycache__", name))


def internal_errors(site):
    return [event for event in site.log() if event.get("outcome") == "internal_error"]


def the_one_line(output):
    lines = [line for line in output.split("\n") if line.startswith("codo: internal error")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("stage", ["pre-receive", "update"])
def test_an_error_before_the_push_refuses_it_with_an_id_and_logs_the_traceback(site, stage):
    sabotage(site, "decide", 'RuntimeError("boom")')
    if stage == "update":
        result = site.run_hook(stage, argv=[f"refs/tags/{RELEASE}", "0" * 40, "1" * 40])
    else:
        result = site.run_hook(stage, [new_tag_line(RELEASE)])
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    line = the_one_line(result.stdout)
    assert "push refused" in line and "GL-HOOK-ERR: codo: internal error" in result.stderr
    (event,) = internal_errors(site)
    assert event["error_id"] in line
    assert "RuntimeError: boom" in event["traceback"]


def test_an_error_after_the_push_keeps_the_release_and_says_so(site):
    sabotage(site, "decide", 'RuntimeError("boom")')
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)])
    assert result.returncode == 0
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{RELEASE} kept in the spool: internal error" in result.stdout
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]
    assert site.fake.requests == []


def test_an_error_mid_send_keeps_the_release_pending_and_never_shows_the_key(site):
    # The exception's own text holds the key: the log must hold it masked.
    sabotage(
        site,
        "request_for",
        "RuntimeError('leak ' + __import__('codo_release.keys').keys.read_auth_key(config.codo))",
    )
    result = site.run_hook("post-receive", [new_tag_line(RELEASE)])
    assert "Traceback" not in result.stdout + result.stderr
    the_one_line(result.stdout)
    (entry,) = site.spool("pending")
    assert "unexpected error" in entry["last_error"]
    (event,) = internal_errors(site)
    assert "leak ********" in event["traceback"]
    assert_key_nowhere(site, result.stdout, result.stderr)
    # the release goes once the program is fixed
    site.entry = __import__("conftest").install_program(os.path.dirname(site.entry))
    assert site.flush().returncode == 0
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE]


@pytest.mark.parametrize("given", [["--state-dir", "{}"], ["--state-dir={}"]])
def test_an_admin_command_that_fails_says_one_line_and_logs_in_the_state_dir_it_was_given(
    site, given
):
    sabotage(site, "status", 'KeyError("x")')
    result = site.admin("status", *[arg.format(site.state_dir) for arg in given])
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    line = the_one_line(result.stdout)
    assert "internal error" in line and os.path.join(site.state_dir, "hook.log") in line
    (event,) = internal_errors(site)
    assert event["error_id"] in line and "KeyError" in event["traceback"]


@pytest.mark.parametrize("missing", ["codo_release", "codo_release/platform.py"])
def test_a_missing_program_module_is_one_line_not_a_traceback(site, missing):
    package = os.path.join(os.path.dirname(site.entry), "codo_release")
    subprocess.run(
        ["rm", "-rf", os.path.join(os.path.dirname(site.entry), missing), package + "/__pycache__"],
        check=True,
    )
    result = site.run_hook("pre-receive", [new_tag_line(RELEASE)])
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "the release hook itself failed (ModuleNotFoundError)" in result.stdout


def test_the_log_line_of_an_internal_error_is_json_and_holds_no_key(site):
    sabotage(site, "decide", f"RuntimeError({AUTH_KEY!r})")
    site.run_hook("pre-receive", [new_tag_line(RELEASE)])
    with open(os.path.join(site.state_dir, "hook.log"), encoding="utf-8") as handle:
        (line,) = handle.read().splitlines()
    assert json.loads(line)["outcome"] == "internal_error"
    assert_key_nowhere(site)


def test_a_flush_that_dies_while_following_a_task_leaves_it_sent_not_uncertain(site):
    """Following claims a sent release (it sends nothing); a flush dying then (a bug, a timeout's
    kill) leaves the entry in flight. The next flush must put it back as sent: made uncertain, it
    would be listed for `flush --include-uncertain` and its task deployed twice."""
    result = site.run_hook("post-receive", [new_tag_line("qa-dbtt-1")])  # rule 0
    assert "submitted as task" in result.stdout
    sabotage(site, "follow_one", 'RuntimeError("boom")')
    assert "internal error" in site.flush().stdout
    assert [entry["tag"] for entry in site.spool("inflight")] == ["qa-dbtt-1"]
    site.entry = __import__("conftest").install_program(os.path.dirname(site.entry))
    result = site.flush()
    assert site.spool("uncertain") == [] and "uncertain" not in result.stdout
    (sent,) = site.spool("sent")
    assert sent["tag"] == "qa-dbtt-1" and sent["task_id"] == site.fake.tasks[0].list_id
    assert sent.get("follow") == "running"
    site.flush("--include-uncertain")
    assert len(site.fake.tasks) == 1
