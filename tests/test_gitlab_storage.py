"""The GitLab API lookup of the codo_hooks_gitlab_storage module (roles/codo_hooks/module_utils/
codo_hooks_core/gitlab.py, called as the module calls it) against the fake GitLab API on 127.0.0.1.
tests/test_projects_playbook.py runs the module through ansible-playbook."""

import hashlib
import io
import json
import secrets
import socket
from contextlib import redirect_stderr, redirect_stdout

import pytest
from ansible_module import role_module_utils
from fakes.fake_gitlab import FakeGitLab
from fakes.redirector import Elsewhere, Redirector

role_module_utils()
from ansible.module_utils.codo_hooks_core import gitlab as gitlab_lookup

TOKEN = "glpat-admin-" + secrets.token_hex(8)
USER_TOKEN = "glpat-user-" + secrets.token_hex(8)


def hashed(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}".format(digest[:2], digest[2:4], digest)


def lookup(url, token, paths, located=()):
    """([], 0, the result, the result as JSON, what was printed): paths given by path only, located by id."""
    projects = [{"path": path} for path in paths] + [
        {"path": path, "id": number} for number, path in enumerate(located, 100)
    ]
    printed = io.StringIO()
    with redirect_stdout(printed), redirect_stderr(printed):
        found, errors = gitlab_lookup.locate(url, token, True, projects)
    out = {"located": found, "errors": errors}
    return [], 0, out, json.dumps(out), printed.getvalue()


@pytest.fixture
def gitlab():
    server = FakeGitLab(token=TOKEN, projects={1: "ops/dbtt"}, user_token=USER_TOKEN)
    server.state.add_project(2, "ops/legacy", legacy=True)
    server.state.add_project(3, "ops/far", storage="storage-2")
    server.start()
    yield server
    server.stop()


def test_paths_are_located_with_disk_path_and_storage(gitlab):
    argv, rc, out, raw, err = lookup(
        gitlab.url + "/", TOKEN, ["ops/dbtt", "ops/legacy", "ops/far"], located=["ops/has-id"]
    )
    assert rc == 0 and out["errors"] == []
    assert out["located"] == {
        "ops/dbtt": {"disk_path": hashed(1), "repository_storage": "default"},
        "ops/legacy": {"disk_path": "ops/legacy", "repository_storage": "default"},
        "ops/far": {"disk_path": hashed(3), "repository_storage": "storage-2"},
    }
    asked = [r["path"] for r in gitlab.requests]
    assert sorted(asked) == sorted(
        "/api/v4/projects/{}/storage".format(p) for p in ("ops%2Fdbtt", "ops%2Flegacy", "ops%2Ffar")
    )
    assert all(r["token"] for r in gitlab.requests)
    for text in [raw, err] + argv:
        assert TOKEN not in text


def test_an_unknown_path_is_named_in_one_line(gitlab):
    _, rc, out, _, _ = lookup(gitlab.url, TOKEN, ["ops/dbtt", "ops/nope"])
    assert rc == 0 and list(out["located"]) == ["ops/dbtt"]
    (error,) = out["errors"]
    assert "ops/nope" in error and "404" in error and "\n" not in error


def test_a_wrong_token_is_said_once_whatever_the_number_of_projects(gitlab):
    wrong = "glpat-wrong-" + secrets.token_hex(8)
    _, rc, out, raw, err = lookup(gitlab.url, wrong, ["ops/dbtt", "ops/legacy", "ops/far"])
    assert rc == 0 and out["located"] == {}
    (error,) = out["errors"]
    assert "401" in error and "codo_hooks_gitlab_api_token" in error
    assert wrong not in raw + err


def test_a_user_token_is_told_it_must_be_an_administrators(gitlab):
    _, rc, out, raw, err = lookup(gitlab.url, USER_TOKEN, ["ops/dbtt", "ops/far"])
    assert rc == 0 and out["located"] == {}
    (error,) = out["errors"]
    assert "403" in error and "administrator" in error
    assert USER_TOKEN not in raw + err


def test_an_unreachable_gitlab_is_said_once():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = "http://127.0.0.1:{}".format(port)
    _, rc, out, raw, err = lookup(url, TOKEN, ["ops/dbtt", "ops/far"])
    assert rc == 0 and out["located"] == {}
    (error,) = out["errors"]
    assert error.startswith("cannot reach GitLab at " + url)
    assert TOKEN not in raw + err


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_to_another_host_is_refused_and_the_token_never_follows(code):
    elsewhere = Elsewhere(body={"disk_path": "@hashed/ab/cd/elsewhere"}).start()
    redirector = Redirector(elsewhere.url, code=code).start()
    try:
        _, _, out, raw, err = lookup(redirector.url, TOKEN, ["ops/dbtt"])
    finally:
        redirector.stop()
        elsewhere.stop()
    assert not any(TOKEN in str(headers) for headers in elsewhere.headers)
    assert out["located"] == {}
    (error,) = out["errors"]
    assert "redirect" in error and elsewhere.url in error and "codo_hooks_gitlab_api_url" in error
    assert "\n" not in error and TOKEN not in raw + err


@pytest.mark.parametrize(
    "field, value",
    [
        ("disk_path", "/etc/cron"),
        ("disk_path", "../../../../etc/cron"),
        ("disk_path", "@hashed/6b/../../../../root/x"),
        ("disk_path", "ops/dbtt\n/etc"),
        ("disk_path", 7),
        ("disk_path", ["@hashed/6b"]),
        ("repository_storage", {"name": "default"}),
        ("repository_storage", "default\x00"),
    ],
)
def test_a_storage_reply_outside_the_storage_or_not_text_is_refused_in_one_line(gitlab, field, value):
    gitlab.state.storages[1][field] = value
    _, rc, out, raw, err = lookup(gitlab.url, TOKEN, ["ops/dbtt", "ops/legacy"])
    assert "ops/dbtt" not in out["located"] and "ops/legacy" in out["located"]
    (error,) = out["errors"]
    assert "ops/dbtt" in error and field in error and "\n" not in error
    assert TOKEN not in raw + err
