"""A wrong or hostile platform, or anything in front of it: the key goes nowhere but codo.url, no reply
is read past a small cap or shown raw, and what may have created a task is never sent twice."""

import os
import subprocess
import sys

import pytest
from conftest import assert_key_nowhere, new_tag_line

RELEASE = "release-dbtt-1"
ACCEPT = "/api/task/v2/task/accept/"


def push(site, stage="post-receive"):
    result = site.run_hook(stage, [new_tag_line(RELEASE)])
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def elsewhere(other_platform):
    """The host a redirect points at: it must never see a request."""
    return other_platform


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_is_never_followed_and_the_release_is_kept(site, elsewhere, status, method):
    site.fake.set_fault("redirect", status=status, method=method, location=elsewhere.url + ACCEPT)
    result = push(site)
    assert elsewhere.requests == []
    assert f"redirects (HTTP {status}) to {elsewhere.url}{ACCEPT}" in result.stdout
    assert "put it in codo.url" in result.stdout
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]
    assert site.fake.tasks == []
    site.fake.clear_faults()
    assert site.flush().returncode == 0
    assert [task.args["TAG"] for task in site.fake.tasks] == [RELEASE] and elsewhere.requests == []
    assert_key_nowhere(site, result.stdout)


def test_a_redirect_location_cannot_forge_lines(site):
    site.fake.set_fault("redirect", status=302, location="http://x/\r\nGL-HOOK-ERR: forged")
    result = push(site)
    assert not any(
        line.startswith(("GL-HOOK-ERR: forged", "codo: forged"))
        for line in result.stdout.split("\n")
    )
    assert len(result.stdout.rstrip("\n").split("\n")) == 1


def run_measured(site, lines):
    """Run the hook in a child of a fresh interpreter; (stdout, the hook's peak RSS in MiB)."""
    link = os.path.join(site.hooks, "post-receive.d", "codo-release")
    if not os.path.exists(link):
        site.link("post-receive")
    code = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run(sys.argv[1:], input=sys.stdin.read(), capture_output=True, text=True).stdout\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "print(out)\n"
    )
    env = site.env(GL_PROJECT_PATH="ops/dbtt")
    result = subprocess.run(
        [sys.executable, "-c", code, link],
        input="".join(line + "\n" for line in lines),
        cwd=site.repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    peak, _, output = result.stdout.partition("\n")
    return output, int(peak)


def test_a_flood_of_a_reply_is_not_read_past_a_small_cap(site):
    site.fake.set_fault("flood", method="POST", size=512 * 1024 * 1024)
    output, peak_mib = run_measured(site, [new_tag_line(RELEASE)])
    assert peak_mib < 120, peak_mib  # the hook alone is ~30 MiB; reading the reply would be 512+
    assert "over 64 KiB" in output and "may or may not have become a task" in output
    assert [entry["tag"] for entry in site.spool("uncertain")] == [RELEASE]
    assert site.flush().returncode == 1 and len(site.fake.tasks) == 1  # never sent twice


def test_a_flooded_csrf_reply_sends_nothing(site):
    site.fake.set_fault("flood", method="GET", size=256 * 1024 * 1024)
    output, peak_mib = run_measured(site, [new_tag_line(RELEASE)])
    assert peak_mib < 120
    assert "spooled" in output and site.fake.tasks == []


def test_a_reply_that_drips_is_cut_by_the_budget(site):
    site.config["codo"].update(budget_s=3, read_timeout_s=2)
    site.write_config()
    site.fake.set_fault("drip", method="GET", seconds=60, size=16 * 1024)
    result = push(
        site
    )  # 60 s timeout on the run: a drip that beat the per-read timeout would hold it
    assert "spooled" in result.stdout
    assert [entry["tag"] for entry in site.spool("pending")] == [RELEASE]


@pytest.mark.parametrize("status", [201, 202, 204])
@pytest.mark.parametrize("created", [True, False])
def test_a_2xx_other_than_the_platforms_reply_is_uncertain_and_never_resent(site, status, created):
    site.fake.set_fault("commit_then_status" if created else "status", status=status, method="POST")
    result = push(site)
    assert f"HTTP {status} instead of the platform's reply" in result.stdout
    assert [entry["tag"] for entry in site.spool("uncertain")] == [RELEASE]
    site.fake.clear_faults()
    assert site.flush().returncode == 1
    assert len(site.fake.tasks) == (1 if created else 0)


@pytest.mark.parametrize(
    "msg",
    [
        "ok\r\nGL-HOOK-ERR: codo: forged refusal",
        "ok\ncodo: release-evil submitted as task 1",
        "ok\u2028codo: forged",
        "\u202egnp.exe",
        "x" * 30000,
    ],
)
def test_a_platform_message_is_shown_on_one_escaped_line(site, msg):
    site.fake.set_fault("message", method="POST", code=5, msg=msg)
    result = push(site)
    ours = result.stdout.rstrip("\n").split("\n")
    assert len(ours) == 1 and ours[0].startswith(
        f"codo: {RELEASE} not released: the platform refused it"
    )
    assert (
        "\r" not in result.stdout
        and "\u2028" not in result.stdout
        and "\u202e" not in result.stdout
    )
    assert len(ours[0]) < 1000
    status = site.admin("status", "--state-dir", site.state_dir)
    assert all(line.startswith("codo: ") for line in status.stdout.rstrip("\n").split("\n"))


def test_a_task_id_that_is_not_a_number_is_not_taken(site):
    site.fake.set_fault(
        "commit_then_status",
        status=200,
        method="POST",
        body='{"code": 0, "msg": "ok", "list_id": "1; rm"}',
    )
    result = push(site)
    assert "submitted as task None" in result.stdout
    assert "rm" not in result.stdout


@pytest.mark.parametrize(
    "body", ['{"code": "0", "msg": "ok"}', '{"code": NaN}', "[" * 5000, "\xff\xfe"]
)
def test_a_200_that_is_not_the_platforms_json_is_uncertain(site, body):
    site.fake.set_fault("commit_then_status", status=200, method="POST", body=body)
    result = push(site)
    assert "not the platform's JSON" in result.stdout
    assert [entry["tag"] for entry in site.spool("uncertain")] == [RELEASE]


@pytest.mark.parametrize(
    "body",
    [
        '{"code": 0, "csrf_key": "abc\\r\\nX-Evil: 1"}',
        '{"code": 0, "csrf_key": "a; auth_key=x"}',
        '{"code": 0}',
    ],
)
def test_a_csrf_key_the_platform_would_not_make_is_not_sent_back(site, body):
    site.fake.set_fault("status", status=200, method="GET", body=body)
    result = push(site)
    assert "not with the platform's csrf key" in result.stdout
    assert not [r for r in site.fake.requests if r.method == "POST"]
    assert_key_nowhere(site, result.stdout)


def test_a_gateways_502_to_the_key_request_blames_the_service_not_the_url(site):
    site.fake.set_fault("status", status=502, method="GET")
    result = push(site)
    assert "gateway in front of the platform answered HTTP 502" in result.stdout
    assert "check codo.url" not in result.stdout


def test_a_500_to_the_key_request_names_the_key_and_the_platform(site):
    site.fake.set_fault("status", status=500, method="GET")
    result = push(site)
    assert (
        "failed on the csrf request (HTTP 500)" in result.stdout and site.key_file in result.stdout
    )
    assert "check codo.url" not in result.stdout


def test_a_500_for_an_unknown_template_names_the_template(site):
    site.rule(1)["template_id"] = 99  # the fake knows 32 only: 500, and no task
    site.write_config()
    result = push(site)
    assert "an unknown template (template_id 99) gives this and creates nothing" in result.stdout
    assert "message queue is down" in result.stdout
    assert site.fake.tasks == [] and [e["tag"] for e in site.spool("uncertain")] == [RELEASE]


def test_a_404_says_check_the_url(site):
    site.config["codo"]["url"] = site.fake.url + "/api"
    site.write_config()
    result = push(site)
    assert "not the platform's task API (HTTP 404): check codo.url" in result.stdout


@pytest.mark.parametrize("pad", [0, 150, 190])
def test_a_platform_message_that_echoes_the_key_shows_no_piece_of_it_where_it_is_cut(site, pad):
    from conftest import AUTH_KEY

    site.fake.set_fault("message", method="POST", code=5, msg="x" * pad + AUTH_KEY)
    result = push(site)
    assert "not released: the platform refused it" in result.stdout
    for piece in (AUTH_KEY[:24], AUTH_KEY.split(".")[1][:24]):
        assert piece not in result.stdout + result.stderr
    status = site.admin("status", "--state-dir", site.state_dir)
    assert AUTH_KEY[:24] not in status.stdout
    assert_key_nowhere(site, result.stdout, status.stdout)
