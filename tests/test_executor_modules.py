"""codo_executor's modules (roles/codo_executor/library/) run the way Ansible runs them, against the
fake GitLab API and the fake platform on 127.0.0.1: idempotent by key, nothing sent in check mode."""

import base64
import os
import secrets

import pytest
from ansible_module import run_module
from fakes.fake_codo import FakeCodo
from fakes.fake_gitlab import FakeGitLab
from fakes.redirector import Elsewhere, Redirector

TOKEN = "glpat-admin-" + secrets.token_hex(8)
TITLE = "codo-deploy@web-01"


def public_key():
    return "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)).decode()


@pytest.fixture
def gitlab():
    server = FakeGitLab(token=TOKEN, projects={1: "ops/dbtt", 2: "ops/web"})
    server.start()
    yield server
    server.stop()


def deploy_keys(gitlab, key, projects, check=False):
    args = {"api_url": gitlab.url + "/api/v4", "token": TOKEN, "title": TITLE, "key": key, "projects": projects}
    return run_module("codo_executor_deploy_keys", args, check=check, diff=True, role="codo_executor")


def test_deploy_keys_are_added_read_only_once_and_check_mode_sends_nothing(gitlab):
    key = public_key()
    projects = [{"path": "ops/dbtt", "id": 1}, {"path": "ops/web"}]
    rc, result, _ = deploy_keys(gitlab, key, projects, check=True)
    assert rc == 0 and result["changed"] is True and len(result["actions"]) == 2
    assert all(r["method"] == "GET" for r in gitlab.requests)
    assert gitlab.deploy_keys(1) == []
    rc, result, _ = deploy_keys(gitlab, key, projects)
    assert rc == 0 and result["changed"] is True
    for project_id in (1, 2):
        (listed,) = gitlab.deploy_keys(project_id)
        assert listed["title"] == TITLE and listed["can_push"] is False
    sent = len(gitlab.requests)
    rc, result, _ = deploy_keys(gitlab, key, projects)
    assert rc == 0 and result["changed"] is False and result["actions"] == []
    assert all(r["method"] == "GET" for r in gitlab.requests[sent:])
    assert TOKEN not in str(result)


def test_a_retired_key_and_a_project_no_longer_deployed_lose_the_hosts_key(gitlab):
    old, new = public_key(), public_key()
    assert deploy_keys(gitlab, old, [{"path": "ops/dbtt", "id": 1}, {"path": "ops/web", "id": 2}])[0] == 0
    rc, result, _ = deploy_keys(
        gitlab, new, [{"path": "ops/dbtt", "id": 1}, {"path": "ops/web", "id": 2, "deploy": False}]
    )
    assert rc == 0 and result["changed"] is True, result
    (listed,) = gitlab.deploy_keys(1)
    assert listed["key"].split()[:2] == new.split()[:2]
    assert gitlab.deploy_keys(2) == []


def test_a_wrong_token_fails_naming_the_projects(gitlab):
    args = {"api_url": gitlab.url + "/api/v4", "token": "wrong", "title": TITLE, "key": public_key(),
            "projects": [{"path": "ops/dbtt", "id": 1}]}
    rc, result, _ = run_module("codo_executor_deploy_keys", args, role="codo_executor")
    assert rc == 1 and "ops/dbtt (401" in result["msg"]


@pytest.fixture
def codo():
    fake = FakeCodo()
    fake.start()
    yield fake
    fake.stop()


def platform_user(codo, check=False, **changes):
    args = {
        "url": codo.url + "/api/task/v2/task_layout/user/",
        "auth_key": codo.auth_key,
        "alias": "codo-executor",
        "exec_user": "codo",
        "ssh_port": 22,
        "user_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----",
        "remarks": "",
    }
    args.update(changes)
    return run_module("codo_executor_platform_user", args, check=check, diff=True, role="codo_executor")


def test_the_execution_user_is_added_once_and_check_mode_sends_nothing(codo):
    rc, result, _ = platform_user(codo, check=True)
    assert rc == 0 and result["changed"] is True and result["action"] == "add"
    assert codo.exec_users == []
    rc, result, _ = platform_user(codo)
    assert rc == 0 and result["changed"] is True and result["has_key"] is True
    (user,) = codo.exec_users
    assert user["alias_user"] == "codo-executor" and user["exec_user"] == "codo"
    rc, result, _ = platform_user(codo)
    assert rc == 0 and result["changed"] is False and result["action"] == "none"
    assert "not-a-real-key" not in str(result)


def test_a_new_key_is_a_rotation_refused_while_hosts_are_missing(codo):
    assert platform_user(codo)[0] == 0
    rc, result, _ = platform_user(codo, user_key="other", missing_hosts=["web-02"])
    assert rc == 1 and "web-02" in result["msg"] and "rotate" in result["msg"]
    rc, result, _ = platform_user(codo, user_key="other")
    assert rc == 0 and result["action"] == "update" and result["rotates"] is True
    assert codo.exec_users[0]["user_key"] == "other"


def test_state_absent_deletes_the_execution_user(codo):
    assert platform_user(codo)[0] == 0
    rc, result, _ = platform_user(codo, state="absent")
    assert rc == 0 and result["action"] == "delete" and result["has_user"] is False
    assert codo.exec_users == []
    rc, result, _ = platform_user(codo, state="absent")
    assert rc == 0 and result["changed"] is False


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_from_gitlab_is_refused_and_the_token_never_follows(code):
    elsewhere = Elsewhere(body=[]).start()
    redirector = Redirector(elsewhere.url, code=code).start()
    args = {"api_url": redirector.url + "/api/v4", "token": TOKEN, "title": TITLE, "key": public_key(),
            "projects": [{"path": "ops/dbtt", "id": 1}]}
    try:
        rc, result, stderr = run_module("codo_executor_deploy_keys", args, role="codo_executor")
    finally:
        redirector.stop()
        elsewhere.stop()
    assert not any(TOKEN in str(headers) for headers in elsewhere.headers)
    assert rc == 1 and "redirect" in result["msg"] and elsewhere.url in result["msg"]
    assert "codo_executor_gitlab_url" in result["msg"] and "\n" not in result["msg"]
    assert TOKEN not in str(result) + stderr


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_from_the_platform_is_refused_and_the_auth_key_never_follows(codo, code):
    elsewhere = Elsewhere(body={"code": 0, "msg": "", "data": []}).start()
    redirector = Redirector(elsewhere.url, code=code).start()
    try:
        rc, result, stderr = platform_user(codo, url=redirector.url + "/api/task/v2/task_layout/user/")
    finally:
        redirector.stop()
        elsewhere.stop()
    assert not any(codo.auth_key in str(headers) for headers in elsewhere.headers)
    assert rc == 1 and "redirect" in result["msg"] and elsewhere.url in result["msg"]
    assert "codo_executor_codo_url" in result["msg"] and "\n" not in result["msg"]
    assert codo.auth_key not in str(result) + stderr


@pytest.mark.parametrize(
    "listed",
    [["x"], [{"id": "1/../../../../projects/2", "key": "ssh-ed25519 AAAA", "title": TITLE}],
     [{"id": 1, "key": 5, "title": TITLE}], [{"title": TITLE}]],
)
def test_a_deploy_key_list_gitlab_does_not_document_is_refused_in_one_line(listed):
    elsewhere = Elsewhere(body=listed).start()
    args = {"api_url": elsewhere.url + "/api/v4", "token": TOKEN, "title": TITLE, "key": public_key(),
            "projects": [{"path": "ops/dbtt", "id": 1}]}
    try:
        rc, result, stderr = run_module("codo_executor_deploy_keys", args, role="codo_executor")
    finally:
        elsewhere.stop()
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert "ops/dbtt" in result["msg"] and "\n" not in result["msg"]
    assert len(elsewhere.headers) == 1  # the list only, nothing sent
    assert TOKEN not in str(result) + stderr


@pytest.mark.parametrize(
    "data",
    [["x"], [{"alias_user": "codo-executor", "user_key": 5, "id": 1}],
     [{"alias_user": "codo-executor", "user_key": "old", "id": "1; drop"}], {"alias_user": "codo-executor"}],
)
def test_an_execution_user_list_the_platform_does_not_document_is_refused_in_one_line(data):
    elsewhere = Elsewhere(body={"code": 0, "msg": "", "data": data}).start()
    args = {"url": elsewhere.url + "/api/task/v2/task_layout/user/", "auth_key": "not-the-key",
            "alias": "codo-executor", "exec_user": "codo", "user_key": "new"}
    try:
        rc, result, stderr = run_module("codo_executor_platform_user", args, role="codo_executor")
    finally:
        elsewhere.stop()
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert "execution users" in result["msg"] and "\n" not in result["msg"]
    assert len(elsewhere.headers) == 1  # the list only, nothing sent
