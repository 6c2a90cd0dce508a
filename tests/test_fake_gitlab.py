"""The fake GitLab answers deploy-key requests the way GitLab's API v4 does."""

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from fakes.fake_gitlab import FakeGitLab

TOKEN = "glpat-test-" + "x" * 12
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFVRQPLXB6DhMKAgpgNTN4/E80kcqVh8MS7O67W4Axzo codo-deploy@web1"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOV9d2ewEDmrcRxQ7VW9N2nBcJdQ1EJMNQJMH7ez1ZcD codo-deploy@web2"
FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes", "fake_gitlab.py")


def call(url, method="GET", body=None, token=TOKEN):
    """(status, headers, decoded JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("PRIVATE-TOKEN", token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            raw = reply.read()
            return reply.status, reply.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, error.headers, json.loads(raw) if raw else None


@pytest.fixture
def gitlab(tmp_path):
    server = FakeGitLab(
        token=TOKEN,
        projects={1: "ops/dbtt", 2: "ops/web"},
        authorized_keys_file=str(tmp_path / "authorized_keys"),
    )
    server.start()
    yield server
    server.stop()


def keys_url(gitlab, project="1"):
    return f"{gitlab.url}/api/v4/projects/{project}/deploy_keys"


def add(gitlab, project="1", key=KEY, title="codo-deploy@web1", can_push=False):
    return call(
        keys_url(gitlab, project), "POST", {"title": title, "key": key, "can_push": can_push}
    )


def test_project_is_found_by_id_and_by_encoded_path(gitlab):
    by_id = call(gitlab.url + "/api/v4/projects/1")
    by_path = call(gitlab.url + "/api/v4/projects/ops%2Fdbtt")
    assert by_id[0] == by_path[0] == 200
    assert by_id[2]["path_with_namespace"] == by_path[2]["path_with_namespace"] == "ops/dbtt"
    assert by_path[2]["id"] == 1


def test_unknown_project_is_404_with_gitlab_message(gitlab):
    status, _, body = call(gitlab.url + "/api/v4/projects/ops%2Fnope/deploy_keys")
    assert status == 404
    assert body == {"message": "404 Project Not Found"}


@pytest.mark.parametrize("token", [None, "wrong"])
def test_request_without_the_right_token_is_401(gitlab, token):
    status, _, body = call(keys_url(gitlab), token=token)
    assert status == 401
    assert body == {"message": "401 Unauthorized"}
    assert gitlab.deploy_keys(1) == []


def test_added_key_is_listed_read_only(gitlab):
    status, _, created = add(gitlab)
    assert status == 201
    assert created["can_push"] is False
    assert created["title"] == "codo-deploy@web1"
    assert created["fingerprint_sha256"].startswith("SHA256:")
    _, _, listed = call(keys_url(gitlab))
    assert listed == [created]


def test_can_push_sent_as_a_form_string_is_understood(gitlab):
    data = b"title=t&can_push=true&key=" + KEY.replace(" ", "+").replace("/", "%2F").encode()
    request = urllib.request.Request(keys_url(gitlab), data=data, method="POST")
    request.add_header("PRIVATE-TOKEN", TOKEN)
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 201
        assert json.loads(reply.read())["can_push"] is True


def test_same_key_twice_on_a_project_is_400_already_taken(gitlab):
    add(gitlab)
    status, _, body = add(gitlab, title="another title")
    assert status == 400
    assert body == {"message": {"deploy_key.fingerprint_sha256": ["has already been taken"]}}
    assert len(gitlab.deploy_keys(1)) == 1


def test_comment_does_not_make_a_key_different(gitlab):
    add(gitlab)
    status, _, _ = add(gitlab, key=KEY.rsplit(" ", 1)[0] + " another-comment")
    assert status == 400


def test_key_of_another_project_is_joined_not_duplicated(gitlab):
    _, _, first = add(gitlab, project="1")
    status, _, second = add(gitlab, project="ops%2Fweb", can_push=True)
    assert status == 201
    assert second["id"] == first["id"]
    assert gitlab.deploy_keys(1)[0]["can_push"] is False
    assert gitlab.deploy_keys(2)[0]["can_push"] is True


def test_invalid_key_is_400(gitlab):
    status, _, body = add(gitlab, key="ssh-ed25519 not-base64!")
    assert status == 400
    assert body == {"message": {"key": ["is invalid"]}}


def test_missing_title_is_400(gitlab):
    status, _, body = call(keys_url(gitlab), "POST", {"key": KEY})
    assert status == 400
    assert body == {"error": "title is missing"}


def test_put_changes_can_push_and_title(gitlab):
    _, _, created = add(gitlab, can_push=True)
    status, _, updated = call(
        f"{keys_url(gitlab)}/{created['id']}", "PUT", {"can_push": False, "title": "new"}
    )
    assert status == 200
    assert (updated["can_push"], updated["title"]) == (False, "new")
    assert gitlab.deploy_keys(1)[0]["can_push"] is False


def test_delete_removes_the_key_from_the_project(gitlab):
    _, _, created = add(gitlab)
    status, _, body = call(f"{keys_url(gitlab)}/{created['id']}", "DELETE")
    assert (status, body) == (204, None)
    assert gitlab.deploy_keys(1) == []
    status, _, _ = call(f"{keys_url(gitlab)}/{created['id']}", "DELETE")
    assert status == 404


def test_delete_keeps_a_key_another_project_still_has(gitlab):
    _, _, created = add(gitlab, project="1")
    add(gitlab, project="2")
    call(f"{keys_url(gitlab, '1')}/{created['id']}", "DELETE")
    assert [key["id"] for key in gitlab.deploy_keys(2)] == [created["id"]]


def test_listing_is_paginated_like_gitlab(gitlab):
    add(gitlab)
    add(gitlab, key=OTHER_KEY, title="codo-deploy@web2")
    status, headers, page_one = call(keys_url(gitlab) + "?per_page=1")
    assert status == 200
    assert len(page_one) == 1
    assert (headers["X-Total"], headers["X-Next-Page"]) == ("2", "2")
    _, headers, page_two = call(keys_url(gitlab) + "?per_page=1&page=2")
    assert headers["X-Next-Page"] == ""
    assert page_two[0]["id"] != page_one[0]["id"]


def test_authorized_keys_file_follows_the_registered_keys(gitlab, tmp_path):
    path = tmp_path / "authorized_keys"
    assert path.read_text() == ""
    _, _, created = add(gitlab)
    assert path.read_text() == " ".join(KEY.split()[:2]) + f" deploy-key-{created['id']}\n"
    call(f"{keys_url(gitlab)}/{created['id']}", "DELETE")
    assert path.read_text() == ""


def test_request_log_records_the_token_presence_never_the_token(gitlab):
    add(gitlab)
    call(keys_url(gitlab), token=None)
    status, _, log = call(gitlab.url + "/_fake/requests", token=None)
    assert status == 200
    assert [(entry["method"], entry["token"]) for entry in log[:2]] == [
        ("POST", True),
        ("GET", False),
    ]
    assert TOKEN not in json.dumps(log)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_standalone_server_serves_the_projects_it_is_given(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    pid_file = tmp_path / "pid"
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            FAKE,
            "--port",
            str(port),
            "--token-file",
            str(token_file),
            "--project",
            "7:group/app",
            "--pid-file",
            str(pid_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert (
            process.stdout.readline().strip() == f"fake GitLab listening on http://127.0.0.1:{port}"
        )
        assert int(pid_file.read_text()) == process.pid
        status, _, body = call(f"http://127.0.0.1:{port}/api/v4/projects/group%2Fapp")
        assert (status, body["id"]) == (200, 7)
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- repository storage (issue 5: projects given by path only) -------------------------------


def test_storage_tells_the_hashed_disk_path_and_the_storage(gitlab):
    status, _, body = call(gitlab.url + "/api/v4/projects/ops%2Fdbtt/storage")
    assert status == 200
    assert body == {
        "project_id": 1,
        "disk_path": "@hashed/6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
        "created_at": "2019-03-20T10:00:00.000Z",
        "repository_storage": "default",
    }


def test_storage_of_a_legacy_project_is_its_path_on_its_storage(gitlab):
    gitlab.state.add_project(3, "legacy/app", storage="storage-2", legacy=True)
    _, _, body = call(gitlab.url + "/api/v4/projects/3/storage")
    assert (body["disk_path"], body["repository_storage"]) == ("legacy/app", "storage-2")


def test_storage_is_for_administrators_only():
    server = FakeGitLab(token=TOKEN, user_token="glpat-not-admin").start()
    try:
        status, _, body = call(server.url + "/api/v4/projects/1/storage", token="glpat-not-admin")
        assert (status, body) == (403, {"message": "403 Forbidden"})
        assert call(server.url + "/api/v4/projects/1", token="glpat-not-admin")[0] == 200
    finally:
        server.stop()


def test_storage_of_an_unknown_project_is_404(gitlab):
    status, _, body = call(gitlab.url + "/api/v4/projects/ops%2Fnope/storage")
    assert (status, body) == (404, {"message": "404 Project Not Found"})


def test_standalone_server_takes_legacy_projects_and_storages(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, FAKE, "--port", str(port), "--token-file", str(token_file), "--project", "7:group/app",
         "--project", "8:old/app", "--legacy", "8", "--storage", "8:storage-2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdout.readline()
        _, _, hashed = call(f"http://127.0.0.1:{port}/api/v4/projects/group%2Fapp/storage")
        _, _, legacy = call(f"http://127.0.0.1:{port}/api/v4/projects/old%2Fapp/storage")
        assert hashed["disk_path"].startswith("@hashed/") and hashed["repository_storage"] == "default"
        assert (legacy["disk_path"], legacy["repository_storage"]) == ("old/app", "storage-2")
    finally:
        process.terminate()
        process.wait(timeout=10)
