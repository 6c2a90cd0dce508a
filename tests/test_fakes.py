"""The fakes hold to their contracts: shared/codo-api.md for FakeCodo, shared/gitlab-hooks.md for the runner."""

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakes.fake_codo import (
    ACCEPT_PATH,
    CHECK_HISTORY_PATH,
    CHECK_PATH,
    EXEC_USERS_PATH,
    GIT_HOOKS_PATH,
    LIST_PATH,
    TEMPLATE_DETAILS_PATH,
    TEMPLATES_PATH,
    FakeCodo,
    jwt_payload,
    make_auth_key,
    unused_port,
)

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")
RUNNER = os.path.join(FAKES, "gitaly_runner.py")
KEY = make_auth_key()
GITLAB = "https://gitlab.example.com"


class Answer:
    def __init__(self, response):
        self.status = response.status
        self.headers = response.headers
        self.text = response.read().decode("utf-8")
        jar = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        self.cookies = {name: morsel.value for name, morsel in jar.items()}

    def json(self):
        return json.loads(self.text)


def call(fake, method, path, body=None, cookies=None, headers=None, timeout=5):
    """One request on a fresh connection, cookies and body as given."""
    headers = dict(headers or {})
    if cookies:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        return Answer(connection.getresponse())
    finally:
        connection.close()


def csrf_key(fake, path=ACCEPT_PATH):
    return call(fake, "GET", path, cookies={"auth_key": KEY}).cookies["csrf_key"]


def send(fake, method, path, body, **options):
    """What a client does: GET a csrf key, then send with both cookies."""
    return call(
        fake,
        method,
        path,
        body,
        cookies={"auth_key": KEY, "csrf_key": csrf_key(fake, path)},
        **options,
    )


def task(**changes):
    fields = {
        "task_name": "DBTT",
        "temp_id": "32",
        "args": "{'TAG': 'release-dbtt-1', 'GIT_URL': 'git@gitlab.example.com:ops/dbtt.git', 'APP_NAME': 'DBTT'}",
        "details": "git hook auto exec",
        "hosts": "{1: '10.0.0.5'}",
        "submitter": "githook",
        "exec_time": "2019-03-20 10:00:00",
        "schedule": "ready",
        "executor": "githook",
    }
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not None}


@pytest.fixture
def fake():
    with FakeCodo(auth_key=KEY) as server:
        yield server


# --- routes, login, csrf ---------------------------------------------------


def test_get_gives_a_csrf_key_in_the_body_and_as_a_cookie(fake):
    answer = call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": KEY})
    assert answer.status == 200
    assert answer.json() == {
        "code": 0,
        "msg": "获取csrf_key成功",
        "csrf_key": answer.cookies["csrf_key"],
    }
    assert len(answer.cookies["csrf_key"]) == 22


def test_a_post_with_a_live_csrf_key_creates_the_task(fake):
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.json()) == (
        200,
        {"code": 0, "msg": "Task creation success, ID：1", "list_id": 1},
    )


def test_accepted_reply_escapes_the_full_width_colon_like_tornado(fake):
    assert "ID\\uff1a1" in send(fake, "POST", ACCEPT_PATH, task()).text


def test_task_ids_count_up(fake):
    ids = [send(fake, "POST", ACCEPT_PATH, task()).json()["list_id"] for _ in range(3)]
    assert ids == [1, 2, 3]


def test_missing_auth_key_is_401_not_logged_in(fake):
    answer = call(fake, "GET", ACCEPT_PATH)
    assert (answer.status, answer.text) == (401, "你没有登录")


def jwt(header=None, payload=None, signature="c2ln"):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return ".".join(
        [part(header or {"typ": "JWT", "alg": "HS256"}), part(payload or {}), signature]
    )


def test_another_well_formed_key_is_401_when_the_fake_has_one_key(fake):
    answer = call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": make_auth_key(user_id=2)})
    assert (answer.status, answer.text) == (401, "你没有登录")
    assert "csrf_key" in answer.cookies


@pytest.mark.parametrize(
    "key",
    [
        "someone-else",
        "eyJ0eXAi.codo-test-secret-0123",
        "a.b",
        "a.b.c.d",
        jwt() + ".x",
        jwt().replace(".", ".!", 1),  # not base64url
        jwt(payload=[1]),  # a payload that is not an object
        ".".join(["bm90IGpzb24", jwt().split(".")[1], "c2ln"]),  # a header that is not JSON
    ],
)
def test_a_key_that_is_not_a_jwt_is_500_on_every_request(fake, key):
    get = call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": key})
    post = call(
        fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": key, "csrf_key": csrf_key(fake)}
    )
    assert [(answer.status, answer.text) for answer in (get, post)] == [(500, "服务器内部错误")] * 2
    assert fake.tasks == []


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"user_id": 1},
        {"data": {}},
        {"data": {"username": "githook"}},
        {"data": {"user_id": 0}},
        {"data": 1},
    ],
)
def test_a_jwt_without_data_user_id_is_401_and_still_sets_a_csrf_key(payload):
    key = jwt(payload=payload)
    with FakeCodo() as fake:  # even the fake that takes any well-formed key
        answer = call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": key})
    assert (answer.status, answer.text) == (401, "你没有登录")
    assert len(answer.cookies["csrf_key"]) == 22


def test_without_a_configured_key_any_well_formed_jwt_with_a_user_id_is_accepted():
    key = jwt(payload={"data": {"user_id": 7}}, signature="")  # no signature check, no exp needed
    with FakeCodo() as fake:
        assert make_auth_key() != fake.auth_key
        for each in (key, make_auth_key(user_id=3), fake.auth_key):
            answer = call(
                fake,
                "POST",
                ACCEPT_PATH,
                task(),
                cookies={"auth_key": each, "csrf_key": csrf_key(fake)},
            )
            assert answer.json()["code"] == 0
        assert len(fake.tasks) == 3


@pytest.mark.parametrize(
    "key", ["eyJ0eXAi.codo-test-secret-0123", jwt(payload={"data": {"username": "x"}})]
)
def test_a_configured_key_that_the_platform_would_refuse_is_a_value_error(key):
    with pytest.raises(ValueError, match="make_auth_key"):
        FakeCodo(auth_key=key)


def test_auth_key_as_query_parameter_is_accepted(fake):
    assert call(fake, "GET", ACCEPT_PATH + "?auth_key=" + KEY).status == 200


def test_path_without_trailing_slash_is_404(fake):
    assert call(fake, "GET", ACCEPT_PATH.rstrip("/"), cookies={"auth_key": KEY}).status == 404


@pytest.mark.parametrize("path", [ACCEPT_PATH, GIT_HOOKS_PATH])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_put_and_delete_without_a_csrf_cookie_are_500(fake, method, path):
    answer = call(fake, method, path, task(), cookies={"auth_key": KEY})
    assert (answer.status, answer.text) == (500, "服务器内部错误")
    assert "csrf_key" not in answer.cookies
    assert fake.tasks == []


@pytest.mark.parametrize("path", [ACCEPT_PATH, GIT_HOOKS_PATH])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_put_and_delete_with_a_live_csrf_cookie_are_405_with_an_empty_body(fake, method, path):
    answer = send(fake, method, path, task())
    assert (answer.status, answer.text) == (405, "")
    assert len(answer.cookies["csrf_key"]) == 22
    assert fake.tasks == []


def test_exec_users_put_and_delete_need_a_csrf_cookie_too(fake):
    send(fake, "POST", EXEC_USERS_PATH, ALICE)
    assert (
        call(fake, "PUT", EXEC_USERS_PATH, dict(ALICE, id=1), cookies={"auth_key": KEY}).status
        == 500
    )
    assert (
        call(fake, "DELETE", EXEC_USERS_PATH, {"exec_user_id": 1}, cookies={"auth_key": KEY}).status
        == 500
    )
    assert len(fake.exec_users) == 1


def test_post_without_csrf_cookie_is_500_and_sets_no_csrf_key(fake):
    answer = call(fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY})
    assert (answer.status, answer.text) == (500, "服务器内部错误")
    assert "csrf_key" not in answer.cookies
    assert fake.tasks == []


def test_post_with_a_made_up_csrf_key_is_402_and_sets_no_csrf_key(fake):
    answer = call(
        fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY, "csrf_key": "x" * 22}
    )
    assert (answer.status, answer.text) == (402, "csrf error.")
    assert "Set-Cookie" not in answer.headers
    assert fake.tasks == []


def test_the_csrf_check_comes_before_the_login_check(fake):
    assert call(fake, "POST", ACCEPT_PATH, task()).status == 500  # no cookie at all
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies={"csrf_key": "x" * 22}).status == 402
    answer = call(fake, "POST", ACCEPT_PATH, task(), cookies={"csrf_key": csrf_key(fake)})
    assert (answer.status, answer.text) == (401, "你没有登录")


def test_csrf_key_is_single_use(fake):
    key = csrf_key(fake)
    cookies = {"auth_key": KEY, "csrf_key": key}
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies).status == 200
    refused = call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies)
    assert (refused.status, refused.cookies) == (402, {})
    assert len(fake.tasks) == 1


def test_csrf_key_is_used_up_by_a_post_that_fails(fake):
    cookies = {"auth_key": KEY, "csrf_key": csrf_key(fake)}
    assert call(fake, "POST", ACCEPT_PATH, "{not json", cookies=cookies).status == 500
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies).status == 402


def test_the_csrf_cookie_of_a_failed_reply_serves_the_retry(fake):
    failed = call(
        fake,
        "POST",
        ACCEPT_PATH,
        "{not json",
        cookies={"auth_key": KEY, "csrf_key": csrf_key(fake)},
    )
    retry = call(
        fake,
        "POST",
        ACCEPT_PATH,
        task(),
        cookies={"auth_key": KEY, "csrf_key": failed.cookies["csrf_key"]},
    )
    assert retry.status == 200


def test_every_reply_past_the_csrf_check_sets_a_fresh_csrf_cookie(fake):
    keys = [
        call(fake, "GET", ACCEPT_PATH).cookies["csrf_key"],  # 401
        call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": "not-a-jwt"}).cookies[
            "csrf_key"
        ],  # 500
        send(fake, "PUT", ACCEPT_PATH, task()).cookies["csrf_key"],  # 405
        send(fake, "POST", ACCEPT_PATH, task(temp_id="99")).cookies["csrf_key"],  # 500
        send(fake, "POST", ACCEPT_PATH, task()).cookies["csrf_key"],  # 200
    ]
    assert len(set(keys)) == 5


def test_an_expired_csrf_key_is_refused():
    with FakeCodo(auth_key=KEY, csrf_ttl=0) as fake:
        assert send(fake, "POST", ACCEPT_PATH, task()).status == 402


def test_a_csrf_key_from_the_other_endpoint_is_valid_too(fake):
    cookies = {"auth_key": KEY, "csrf_key": csrf_key(fake, GIT_HOOKS_PATH)}
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies).status == 200


def test_sdk_method_header_skips_the_csrf_check(fake):
    answer = call(
        fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY}, headers={"Sdk-Method": "x"}
    )
    assert answer.status == 200


def test_sdk_method_header_is_checked_when_the_skip_is_off():
    with FakeCodo(auth_key=KEY, skip_csrf_with_sdk_header=False) as fake:
        answer = call(
            fake,
            "POST",
            ACCEPT_PATH,
            task(),
            cookies={"auth_key": KEY},
            headers={"Sdk-Method": "x"},
        )
        assert answer.status == 500  # the csrf check ran: no csrf_key cookie


# --- the task accept endpoint ----------------------------------------------


def test_task_is_recorded_with_its_raw_body_and_fields(fake):
    body = json.dumps(task())
    send(fake, "POST", ACCEPT_PATH, body)
    (created,) = fake.tasks
    assert (created.list_id, created.path, created.raw_body) == (1, ACCEPT_PATH, body)
    assert created.fields == task()
    assert created.args["TAG"] == "release-dbtt-1"


def test_requests_are_recorded_with_method_path_headers_cookies_and_body(fake):
    key = csrf_key(fake)
    body = json.dumps(task())
    call(
        fake,
        "POST",
        ACCEPT_PATH,
        body,
        cookies={"auth_key": KEY, "csrf_key": key},
        headers={"X-Probe": "1"},
    )
    get, post = fake.requests
    assert (get.method, get.path, get.cookies, get.status) == (
        "GET",
        ACCEPT_PATH,
        {"auth_key": KEY},
        200,
    )
    assert (post.method, post.cookies, post.body, post.status) == (
        "POST",
        {"auth_key": KEY, "csrf_key": key},
        body.encode(),
        200,
    )
    assert post.headers["x-probe"] == "1"


def test_bad_json_is_500_server_error(fake):
    answer = send(fake, "POST", ACCEPT_PATH, "{'task_name': 'python, not json'}")
    assert (answer.status, answer.text) == (500, "服务器内部错误")


def test_task_name_over_50_characters_is_500(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(task_name="x" * 51)).status == 500
    assert send(fake, "POST", ACCEPT_PATH, task(task_name="x" * 50)).status == 200


def test_unknown_template_is_500_and_creates_no_task(fake):
    answer = send(fake, "POST", ACCEPT_PATH, task(temp_id="99"))
    assert (answer.status, answer.text) == (500, "服务器内部错误")
    assert fake.tasks == []


def test_the_csrf_key_of_an_unknown_template_500_works_once(fake):
    failed = send(fake, "POST", ACCEPT_PATH, task(temp_id="99"))
    cookies = {"auth_key": KEY, "csrf_key": failed.cookies["csrf_key"]}
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies).json()["list_id"] == 1
    assert call(fake, "POST", ACCEPT_PATH, task(), cookies=cookies).status == 402
    assert len(fake.tasks) == 1


def test_missing_template_is_500(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(temp_id=None)).status == 500


def test_template_id_may_be_an_int(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(temp_id=32)).json()["code"] == 0


def test_args_as_a_json_object_is_500(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(args={"TAG": "release-dbtt-1"})).status == 500


def test_exec_time_in_another_format_is_500(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(exec_time="2019-03-20T10:00:00")).status == 500


def test_host_group_keys_go_through_int(fake):
    send(fake, "POST", ACCEPT_PATH, task(hosts="{'1': '10.0.0.5'}"))
    assert fake.tasks[0].hosts == {1: "10.0.0.5"}


def test_groups_the_template_lacks_are_dropped_silently(fake):
    answer = send(fake, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5', 7: '10.0.0.6'}"))
    assert answer.json()["code"] == 0
    assert fake.tasks[0].hosts == {1: "10.0.0.5"}


def test_template_group_without_host_is_code_minus_4(fake):
    fake.templates[32] = [1, 2]
    answer = send(fake, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5'}"))
    assert answer.json() == {"code": -4, "msg": "The exec host cannot be empty"}
    assert fake.tasks == []


def test_more_than_100_hosts_in_a_group_is_code_minus_4(fake):
    ips = ",".join(f"10.0.{n // 250}.{n % 250 + 1}" for n in range(101))
    answer = send(fake, "POST", ACCEPT_PATH, task(hosts=str({1: ips})))
    assert answer.json() == {"code": -4, "msg": "Too many hosts, please execute in groups"}


def test_100_hosts_in_a_group_are_accepted(fake):
    ips = ",".join(f"10.0.0.{n + 1}" for n in range(100))
    assert send(fake, "POST", ACCEPT_PATH, task(hosts=str({1: ips}))).json()["code"] == 0


def test_host_that_is_not_ipv4_is_code_5(fake):
    answer = send(fake, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5,web01'}"))
    assert answer.json() == {"code": 5, "msg": "ip格式有误"}


# --- the git hooks endpoint ------------------------------------------------


def git_hooks(fake, tag="release-dbtt-1", git_url=GITLAB, relative_path="ops/dbtt"):
    body = {"git_url": git_url, "relative_path": relative_path, "tag_name": tag}
    return send(fake, "POST", GIT_HOOKS_PATH, body).json()


def test_git_hooks_empty_parameter_is_code_minus_1(fake):
    assert git_hooks(fake, tag="") == {"code": -1, "msg": "Key parameters cannot be empty"}


def test_git_hooks_unknown_repository_is_code_0_no_related_items(fake):
    assert git_hooks(fake) == {"code": 0, "msg": "No related items were found"}


def test_git_hooks_repository_without_rules_is_code_0_no_hooks(fake):
    fake.repos[(GITLAB, "ops/dbtt")] = {}
    assert git_hooks(fake) == {"code": 0, "msg": "No hooks, ignore"}


def test_git_hooks_tag_matching_no_prefix_is_code_2(fake):
    fake.repos[(GITLAB, "ops/dbtt")] = {"hotfix-": {"temp_id": 32}}
    assert git_hooks(fake) == {"code": 2, "msg": "No hook matched"}
    assert fake.tasks == []


def test_git_hooks_matching_prefix_creates_a_task_with_the_platforms_args(fake):
    fake.repos[(GITLAB, "ops/dbtt")] = {
        "release-": {"temp_id": 32, "schedule": "ready", "hosts": {1: "10.0.0.5"}}
    }
    assert git_hooks(fake) == {"code": 0, "msg": "Task creation success, ID：1", "list_id": 1}
    (created,) = fake.tasks
    assert created.args == {
        "TAG": "release-dbtt-1",
        "RELATIVE_PATH": "ops/dbtt",
        "GIT_SSH_URL": "git@gitlab.example.com:ops/dbtt.git",
        "GIT_HTTP_URL": "https://gitlab.example.com/ops/dbtt.git",
    }
    assert (created.fields["task_name"], created.fields["schedule"], created.hosts) == (
        "ops/dbtt",
        "ready",
        {1: "10.0.0.5"},
    )


# --- execution users -------------------------------------------------------

ALICE = {
    "alias_user": "deploy",
    "exec_user": "root",
    "ssh_port": 22,
    "user_key": "-----BEGIN KEY-----",
    "remarks": "r",
}


def test_exec_user_added_is_listed(fake):
    assert send(fake, "POST", EXEC_USERS_PATH, ALICE).json() == {"code": 0, "msg": "添加成功"}
    (listed,) = call(fake, "GET", EXEC_USERS_PATH, cookies={"auth_key": KEY}).json()["data"]
    assert {name: listed[name] for name in ALICE} == ALICE
    assert listed["id"] == 1


def test_exec_user_with_an_existing_alias_is_code_minus_2(fake):
    send(fake, "POST", EXEC_USERS_PATH, ALICE)
    assert send(fake, "POST", EXEC_USERS_PATH, ALICE).json()["code"] == -2


def test_exec_user_with_an_empty_field_is_code_minus_1(fake):
    assert send(fake, "POST", EXEC_USERS_PATH, dict(ALICE, user_key="")).json()["code"] == -1


def test_exec_user_with_chinese_characters_is_code_minus_1(fake):
    assert send(fake, "POST", EXEC_USERS_PATH, dict(ALICE, alias_user="部署")).json()["code"] == -1


def test_exec_user_put_updates_by_id(fake):
    send(fake, "POST", EXEC_USERS_PATH, ALICE)
    answer = send(
        fake, "PUT", EXEC_USERS_PATH, dict(ALICE, id=1, user_key="-----NEW KEY-----", ssh_port=2222)
    )
    assert answer.json() == {"code": 0, "msg": "编辑成功"}
    assert (fake.exec_users[0]["user_key"], fake.exec_users[0]["ssh_port"]) == (
        "-----NEW KEY-----",
        2222,
    )


def test_exec_user_delete_by_exec_user_id(fake):
    send(fake, "POST", EXEC_USERS_PATH, ALICE)
    assert send(fake, "DELETE", EXEC_USERS_PATH, {"exec_user_id": 1}).json() == {
        "code": 0,
        "msg": "删除成功",
    }
    assert fake.exec_users == []


# --- faults ----------------------------------------------------------------


def test_hang_never_answers_until_the_fault_is_cleared(fake):
    fake.set_fault("hang", method="POST")
    with pytest.raises(TimeoutError):
        send(fake, "POST", ACCEPT_PATH, task(), timeout=1)
    assert fake.tasks == []
    fake.clear_faults()
    assert fake.wait_for_tasks(1)  # the held request goes through: a read timeout may hide a task


def test_hang_ends_without_a_reply_when_the_server_stops(fake):
    fake.set_fault("hang")
    with socket.create_connection(("127.0.0.1", fake.port)) as connection:
        connection.sendall(b"GET " + ACCEPT_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert fake.wait_for_requests(1)
        fake.stop()
        connection.settimeout(10)
        assert connection.recv(100) == b""
    assert fake.tasks == []


def test_slow_answers_normally_after_the_delay(fake):
    fake.set_fault("slow", seconds=1, method="POST")
    started = time.monotonic()
    answer = send(fake, "POST", ACCEPT_PATH, task(), timeout=30)
    assert answer.json()["code"] == 0
    assert time.monotonic() - started >= 1


def test_commit_then_500_creates_the_task_and_answers_500(fake):
    fake.set_fault("commit_then_500", method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.text) == (500, "服务器内部错误")
    assert len(fake.tasks) == 1


def test_non_json_answers_200_with_an_html_page_and_creates_nothing(fake):
    fake.set_fault("non_json", method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert answer.status == 200 and answer.text.startswith("<!DOCTYPE html>")
    assert fake.tasks == []


@pytest.mark.parametrize("status", [502, 503, 504])
def test_status_answers_that_status_and_creates_nothing(fake, status):
    fake.set_fault("status", status=status, method="POST")
    assert send(fake, "POST", ACCEPT_PATH, task()).status == status
    assert fake.tasks == []


def test_close_after_body_creates_the_task_and_closes_without_a_reply(fake):
    fake.set_fault("close_after_body", method="POST")
    with pytest.raises(http.client.RemoteDisconnected):
        send(fake, "POST", ACCEPT_PATH, task())
    assert len(fake.tasks) == 1


def test_fault_limited_to_times_then_behaves(fake):
    fake.set_fault("status", status=503, method="POST", times=2)
    statuses = [send(fake, "POST", ACCEPT_PATH, task()).status for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fault_limited_to_a_method_spares_the_others(fake):
    fake.set_fault("status", status=503, method="POST")
    assert call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": KEY}).status == 200


def test_fault_is_set_over_http_without_auth(fake):
    fault = {"kind": "status", "status": 502, "method": "POST", "times": 1}
    assert call(fake, "POST", "/_fake/fault", fault).status == 200
    assert send(fake, "POST", ACCEPT_PATH, task()).status == 502
    assert call(fake, "GET", "/_fake/fault").json()[0]["hits"] == 1


def test_empty_fault_over_http_clears_the_faults(fake):
    fake.set_fault("status", status=502)
    call(fake, "POST", "/_fake/fault", {})
    assert fake.faults == []


def test_unknown_fault_is_refused(fake):
    with pytest.raises(ValueError):
        fake.set_fault("explode")


@pytest.mark.parametrize(
    "limits",
    [
        {"status": "503"},
        {"status": 600},
        {"kind": "redirect"},
        {"kind": "redirect", "status": 200, "location": "http://x/"},
    ],
)
def test_a_fault_with_bad_parameters_is_refused(fake, limits):
    with pytest.raises(ValueError):
        fake.set_fault(**dict({"kind": "status"}, **limits))


# --- faults: 2xx that are not the platform's success -----------------------


@pytest.mark.parametrize("status", [201, 202, 204])
def test_status_2xx_answers_with_an_empty_body_and_creates_nothing(fake, status):
    fake.set_fault("status", status=status, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.text, answer.cookies) == (status, "", {})
    assert fake.tasks == []
    assert fake.requests[-1].status == status


def test_a_204_has_no_content_length_and_keeps_the_connection_usable(fake):
    fake.set_fault("status", status=204, method="POST", times=1)
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        connection.request("POST", ACCEPT_PATH, body="{}")
        response = connection.getresponse()
        assert (response.status, response.read(), response.getheader("Content-Length")) == (
            204,
            b"",
            None,
        )
        connection.request("GET", ACCEPT_PATH, headers={"Cookie": f"auth_key={KEY}"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_status_with_a_body_answers_that_body(fake):
    fake.set_fault("status", status=201, body='{"code": 0, "msg": "created"}', method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.json()) == (201, {"code": 0, "msg": "created"})
    assert fake.tasks == []


@pytest.mark.parametrize("status", [201, 202])
def test_commit_then_status_creates_the_task_and_answers_its_json_with_that_status(fake, status):
    fake.set_fault("commit_then_status", status=status, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.json()) == (
        status,
        {"code": 0, "msg": "Task creation success, ID：1", "list_id": 1},
    )
    assert len(fake.tasks) == 1
    assert len(answer.cookies["csrf_key"]) == 22


def test_commit_then_status_204_creates_the_task_and_answers_no_body(fake):
    fake.set_fault("commit_then_status", status=204, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.text) == (204, "")
    assert len(fake.tasks) == 1


def test_commit_then_status_keeps_the_platforms_refusal_and_creates_nothing(fake):
    fake.set_fault("commit_then_status", status=201, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task(hosts="{1: 'web01'}"))
    assert (answer.status, answer.json()) == (201, {"code": 5, "msg": "ip格式有误"})
    assert fake.tasks == []


def test_commit_then_status_with_a_body(fake):
    fake.set_fault("commit_then_status", status=202, body="accepted", method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.text, len(fake.tasks)) == (202, "accepted", 1)


# --- faults: messages --------------------------------------------------------

FORGED = "ok\r\nGL-HOOK-ERR: forged\ncodo: release-x sent\r"


def test_message_answers_code_and_msg_without_creating_a_task(fake):
    fake.set_fault("message", code=0, msg=FORGED, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.status, answer.json()) == (200, {"code": 0, "msg": FORGED})
    assert "\\r\\nGL-HOOK-ERR" in answer.text  # JSON-escaped on the wire, CR/LF once decoded
    assert fake.tasks == []


def test_message_with_create_creates_the_task_and_adds_its_list_id(fake):
    fake.set_fault("message", code=3, msg=FORGED, create=True, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert answer.json() == {"code": 3, "msg": FORGED, "list_id": 1}
    assert len(fake.tasks) == 1
    assert len(answer.cookies["csrf_key"]) == 22


def test_message_with_create_keeps_the_platforms_answer_when_nothing_is_created(fake):
    fake.set_fault("message", msg="x", create=True, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task(temp_id="99"))
    assert answer.json() == {"code": 0, "msg": "x"}
    assert fake.tasks == []


# --- faults: redirects, drips, floods ---------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_answers_a_location_and_goes_no_further(fake, status):
    with FakeCodo(auth_key=KEY) as elsewhere:
        location = elsewhere.url + ACCEPT_PATH
        fake.set_fault("redirect", status=status, location=location, method="POST")
        key = csrf_key(fake)
        answer = call(fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY, "csrf_key": key})
        assert (answer.status, answer.headers["Location"], answer.cookies) == (status, location, {})
        assert f"<title>{status} " in answer.text and len(answer.text) < 300
        assert fake.tasks == [] and elsewhere.requests == []
        assert (fake.requests[-1].method, fake.requests[-1].status, fake.requests[-1].fault) == (
            "POST",
            status,
            "redirect",
        )
        fake.clear_faults()  # the gateway answered: the csrf key was not used
        assert (
            call(
                fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY, "csrf_key": key}
            ).status
            == 200
        )


def test_redirect_location_leads_a_following_client_to_the_other_server(fake):
    with FakeCodo(auth_key=KEY) as elsewhere:
        fake.set_fault("redirect", status=302, location=elsewhere.url + ACCEPT_PATH)
        request = urllib.request.Request(
            fake.url + ACCEPT_PATH, headers={"Cookie": f"auth_key={KEY}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["code"] == 0
        assert elsewhere.requests[0].cookies == {
            "auth_key": KEY
        }  # what a client that follows gives away


def test_drip_takes_seconds_without_a_read_ever_waiting_long(fake):
    fake.set_fault("drip", seconds=2, size=400, method="POST")
    key = csrf_key(fake)
    started = time.monotonic()
    answer = call(
        fake, "POST", ACCEPT_PATH, task(), cookies={"auth_key": KEY, "csrf_key": key}, timeout=1
    )
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 10
    assert (answer.status, len(answer.text), answer.json()["list_id"]) == (200, 400, 1)
    assert len(fake.tasks) == 1


def test_drip_without_a_size_drips_the_platforms_reply(fake):
    fake.set_fault("drip", seconds=1, method="POST")
    started = time.monotonic()
    answer = send(fake, "POST", ACCEPT_PATH, task(), timeout=1)
    assert time.monotonic() - started >= 0.9
    assert answer.json() == {"code": 0, "msg": "Task creation success, ID：1", "list_id": 1}


def test_drip_stops_when_the_server_stops(fake):
    fake.set_fault("drip", seconds=60, size=1000)
    with socket.create_connection(("127.0.0.1", fake.port)) as connection:
        connection.sendall(
            b"GET "
            + ACCEPT_PATH.encode()
            + b" HTTP/1.1\r\nHost: x\r\nCookie: auth_key="
            + KEY.encode()
            + b"\r\n\r\n"
        )
        connection.settimeout(10)
        assert connection.recv(100).startswith(b"HTTP/1.1 200")
        stopper = threading.Thread(target=fake.stop)
        started = time.monotonic()
        stopper.start()
        while connection.recv(1000):
            pass
        stopper.join(10)
        assert time.monotonic() - started < 10


def test_flood_sends_content_length_64_mib_and_a_client_may_stop_reading(fake):
    fake.set_fault("flood", method="POST", times=1)
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        connection.request(
            "POST",
            ACCEPT_PATH,
            body=json.dumps(task()),
            headers={"Cookie": f"auth_key={KEY}; csrf_key={csrf_key(fake)}"},
        )
        response = connection.getresponse()
        assert (response.status, response.getheader("Content-Length")) == (
            200,
            str(64 * 1024 * 1024),
        )
        head = response.read(65536)
        assert head.startswith(b'{"code": 0') and head.endswith(b" " * 1000)
    finally:
        connection.close()
    assert len(fake.tasks) == 1
    assert (
        send(fake, "POST", ACCEPT_PATH, task()).json()["list_id"] == 2
    )  # the fake shrugs off the hang-up


def test_flood_body_read_whole_is_the_platforms_json(fake):
    fake.set_fault("flood", size=300_000, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (len(answer.text), answer.json()["list_id"]) == (300_000, 1)


def test_flood_chunked_has_no_content_length(fake):
    fake.set_fault("flood", size=200_000, chunked=True, method="POST")
    answer = send(fake, "POST", ACCEPT_PATH, task())
    assert (answer.headers["Transfer-Encoding"], answer.headers["Content-Length"]) == (
        "chunked",
        None,
    )
    assert (len(answer.text), answer.json()["code"]) == (200_000, 0)


def test_new_faults_are_set_over_http(fake):
    faults = [
        {
            "kind": "redirect",
            "status": 307,
            "location": "http://127.0.0.1:9/x",
            "method": "POST",
            "times": 1,
        },
        {"kind": "message", "code": 0, "msg": "a\nb", "method": "POST", "times": 1},
        {"kind": "flood", "size": 70000, "chunked": True, "method": "POST", "times": 1},
    ]
    listed = call(fake, "POST", "/_fake/fault", faults).json()
    assert [(f["kind"], f["status"], f["location"], f["size"]) for f in listed] == [
        ("redirect", 307, "http://127.0.0.1:9/x", None),
        ("message", 503, None, None),
        ("flood", 503, None, 70000),
    ]
    assert send(fake, "POST", ACCEPT_PATH, task()).headers["Location"] == "http://127.0.0.1:9/x"
    assert send(fake, "POST", ACCEPT_PATH, task()).json() == {"code": 0, "msg": "a\nb"}
    assert len(send(fake, "POST", ACCEPT_PATH, task()).text) == 70000
    assert len(fake.tasks) == 1


def test_unused_port_refuses_connections():
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused_port()), timeout=5)


def test_stopped_server_starts_again_on_the_same_port(fake):
    port = fake.port
    fake.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    fake.start()
    assert (fake.port, call(fake, "GET", ACCEPT_PATH, cookies={"auth_key": KEY}).status) == (
        port,
        200,
    )


# --- reading tasks back (shared/codo-api.md, "Reading tasks back") ----------

ROW_FIELDS = [
    "list_id",
    "task_name",
    "task_type",
    "hosts",
    "args",
    "details",
    "description",
    "associated_user",
    "creator",
    "executor",
    "status",
    "schedule",
    "temp_id",
    "create_time",
    "start_time",
]


READ_PATHS = [LIST_PATH, CHECK_HISTORY_PATH, CHECK_PATH, TEMPLATES_PATH, TEMPLATE_DETAILS_PATH]


def read(fake, path, auth_key=KEY, **query):
    """A GET with the auth_key cookie only, as a client reading tasks back does."""
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    return call(fake, "GET", url, cookies={"auth_key": auth_key})


def submit(fake, **changes):
    """A task created through accept/; its list_id."""
    answer = send(fake, "POST", ACCEPT_PATH, task(**changes))
    assert answer.json()["code"] == 0, answer.text
    return answer.json()["list_id"]


def ids(answer):
    return ids_of(answer.json())


def ids_of(reply):
    return [row["list_id"] for row in reply["data"]]


@pytest.fixture
def anyone():
    """A fake that takes any well-formed key, so that keys of several users can read."""
    with FakeCodo() as server:
        yield server


def test_list_answers_the_stored_row_as_text(fake):
    args = "{'TAG': 'release-dbtt-1',   'GIT_URL': \"git@h:ops/dbtt.git\", 'APP_NAME': '数据'}"
    submit(
        fake, args=args, hosts="{'1': '10.0.0.5', 7: '10.0.0.9'}", exec_time="2019-03-20 10:00:00"
    )
    answer = read(fake, LIST_PATH)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    reply = answer.json()
    assert (reply["code"], reply["msg"], reply["count"], reply["list_id"]) == (0, "获取成功", 1, 1)
    (row,) = reply["data"]
    assert list(row) == ROW_FIELDS
    assert isinstance(row["list_id"], int)
    assert all(isinstance(row[name], str) for name in ROW_FIELDS[1:])
    created = row.pop("create_time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created)
    assert row == {
        "list_id": 1,
        "task_name": "DBTT",
        "task_type": "template-32",  # no task_type posted: the template's name
        "hosts": "{1: '10.0.0.5'}",  # keys through int(), groups the template lacks dropped
        "args": args,  # byte-identical
        "details": "git hook auto exec",
        "description": "",
        "associated_user": "{'admin': ['githook']}",
        "creator": "githook",
        "executor": "githook",
        "status": "0",
        "schedule": "ready",
        "temp_id": "32",
        "start_time": "2019-03-20 10:00:00",
    }


def test_list_args_come_back_byte_identical_over_the_wire(fake):
    args = "{'TAG': 'r\\u00e9l\\\\x',  'APP_NAME':'A'  }"
    submit(fake, args=args)
    assert read(fake, LIST_PATH).json()["data"][0]["args"] == args
    assert fake.task(1).row["args"] == args


def test_list_creator_is_the_submitter_not_the_keys_user(anyone):
    submit(anyone, submitter="release-bot", executor="")
    (row,) = read(anyone, LIST_PATH, auth_key=make_auth_key(username="release-bot")).json()["data"]
    assert (row["creator"], row["executor"]) == ("release-bot", "")


def test_list_orders_by_start_time_then_list_id_newest_first(anyone):
    for exec_time in [
        "2019-03-20 10:00:00",
        "2019-03-21 09:00:00",
        "2019-03-20 10:00:00",
        "2018-01-01 00:00:00",
        "2019-03-21 09:00:00",
    ]:
        submit(anyone, exec_time=exec_time)
    answer = read(anyone, LIST_PATH)
    assert ids(answer) == [5, 2, 3, 1, 4]
    assert [row["start_time"] for row in answer.json()["data"]][:2] == ["2019-03-21 09:00:00"] * 2
    assert answer.json()["list_id"] == 5


def test_list_pages_with_page_and_limit(anyone):
    for day in range(1, 8):
        submit(anyone, exec_time=f"2019-03-0{day} 10:00:00")
    pages = [ids(read(anyone, LIST_PATH, page=page, limit=3)) for page in (1, 2, 3, 4)]
    assert pages == [[7, 6, 5], [4, 3, 2], [1], []]
    assert read(anyone, LIST_PATH, page=2, limit=3).json()["list_id"] == 4
    assert read(anyone, LIST_PATH, page=4, limit=3).json()["list_id"] == ""
    assert read(anyone, LIST_PATH, page=4, limit=3).json()["count"] == 7


def test_list_defaults_to_page_1_limit_100_and_has_no_cap(anyone):
    for _ in range(101):
        submit(anyone)
    assert ids(read(anyone, LIST_PATH)) == list(range(101, 1, -1))
    assert len(read(anyone, LIST_PATH, limit=1000).json()["data"]) == 101
    assert ids(read(anyone, LIST_PATH, page=2)) == [1]


@pytest.mark.parametrize("query", [{"page": "x"}, {"limit": "ten"}, {"page": 0}, {"limit": -1}])
def test_list_paging_that_breaks_the_query_is_500(fake, query):
    submit(fake)
    answer = read(fake, LIST_PATH, **query)
    assert (answer.status, answer.text) == (500, "服务器内部错误")


def test_list_limit_0_is_an_empty_page(fake):
    submit(fake)
    assert read(fake, LIST_PATH, limit=0).json() == {
        "code": 0,
        "msg": "获取成功",
        "data": [],
        "count": 1,
        "list_id": "",
    }


def test_list_holds_only_unfinished_tasks(fake):
    for _ in range(3):
        submit(fake)
    fake.finish_task(2)
    fake.terminate_task(3)
    reply = read(fake, LIST_PATH).json()
    assert (ids_of(reply), reply["count"]) == ([1], 1)


def test_list_shows_a_task_whose_submitter_is_the_keys_username(anyone):
    submit(anyone, submitter="hook-user")
    key = make_auth_key(username="hook-user", nickname="Hook")
    assert ids(read(anyone, LIST_PATH, auth_key=key)) == [1]


def test_list_shows_a_task_whose_submitter_is_the_keys_nickname(anyone):
    submit(anyone, submitter="Hook")
    key = make_auth_key(username="hook-user", nickname="Hook")
    assert ids(read(anyone, LIST_PATH, auth_key=key)) == [1]


def test_list_shows_every_task_to_a_superuser_key(anyone):
    submit(anyone, submitter="someone")
    key = make_auth_key(username="admin", nickname="管理员", is_superuser=True)
    assert ids(read(anyone, LIST_PATH, auth_key=key)) == [1]


def test_list_shows_a_task_to_the_templates_users():
    templates = {32: {"groups": [1], "users": ["ops", (9, "dev")]}}
    with FakeCodo(templates=templates) as fake:
        submit(fake, submitter="someone")
        assert fake.task(1).row["associated_user"] == "{'admin': ['ops', 'dev', 'someone']}"
        for nickname in ("ops", "dev"):
            key = make_auth_key(username="x", nickname=nickname)
            assert ids(read(fake, LIST_PATH, auth_key=key)) == [1]


def test_list_hides_a_task_from_another_key_but_counts_it(anyone):
    submit(anyone, submitter="someone")
    key = make_auth_key(username="githook", nickname="githook")
    assert read(anyone, LIST_PATH, auth_key=key).json() == {
        "code": 0,
        "msg": "获取成功",
        "data": [],
        "count": 1,
        "list_id": "",
    }


def test_list_filters_after_paging_so_a_page_may_hold_fewer_rows(anyone):
    for submitter in ["githook", "other", "githook", "other", "githook"]:
        submit(anyone, submitter=submitter)
    first, second = (read(anyone, LIST_PATH, page=p, limit=2).json() for p in (1, 2))
    assert (ids_of(first), first["list_id"], first["count"]) == ([5], 5, 5)
    assert (ids_of(second), second["list_id"]) == ([3], 3)


def test_list_and_reads_need_no_csrf_key_and_set_a_fresh_one(fake):
    submit(fake)
    keys = set()
    for path in (LIST_PATH, CHECK_HISTORY_PATH, CHECK_PATH + "?list_id=1", TEMPLATES_PATH):
        answer = call(fake, "GET", path, cookies={"auth_key": KEY})
        assert answer.status == 200 and answer.json()["code"] == 0
        keys.add(answer.cookies["csrf_key"])
    assert len(keys) == 4
    assert send(fake, "POST", ACCEPT_PATH, task()).json()["code"] == 0  # any of them works


def test_list_takes_the_key_as_a_query_parameter(fake):
    submit(fake)
    answer = call(fake, "GET", f"{LIST_PATH}?auth_key={KEY}")
    assert ids(answer) == [1]


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_without_a_key_are_401_and_still_set_a_csrf_key(fake, path):
    answer = call(fake, "GET", path)
    assert (answer.status, answer.text) == (401, "你没有登录")
    assert len(answer.cookies["csrf_key"]) == 22


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_with_a_key_that_is_not_a_jwt_are_500(fake, path):
    answer = call(fake, "GET", path, cookies={"auth_key": "not-a-jwt"})
    assert (answer.status, answer.text) == (500, "服务器内部错误")


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_with_another_well_formed_key_are_401_when_the_fake_has_one_key(fake, path):
    answer = call(fake, "GET", path, cookies={"auth_key": make_auth_key(user_id=2)})
    assert answer.status == 401


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_answer_other_methods_like_the_platform(fake, path):
    assert call(fake, "POST", path, "{}", cookies={"auth_key": KEY}).status == 500  # no csrf
    assert send(fake, "POST", path, "{}").status == 405


def test_reads_without_trailing_slash_are_404(fake):
    assert call(fake, "GET", LIST_PATH.rstrip("/"), cookies={"auth_key": KEY}).status == 404


# --- check_history ---------------------------------------------------------


def finished(fake, count, **changes):
    for _ in range(count):
        fake.finish_task(submit(fake, **changes))


def test_check_history_holds_finished_tasks_highest_id_first(fake):
    submit(fake, exec_time="2030-01-01 00:00:00")
    submit(fake, exec_time="2019-01-01 00:00:00")
    submit(fake, exec_time="2020-01-01 00:00:00")
    fake.finish_task(1)
    fake.finish_task(3)
    fake.terminate_task(2)
    reply = read(fake, CHECK_HISTORY_PATH).json()
    assert (reply["code"], reply["msg"], reply["count"], reply["history"]) == (
        0,
        "获取成功",
        3,
        True,
    )
    assert "list_id" not in reply
    assert ids_of(reply) == [3, 2, 1]  # by list_id, not start_time
    assert list(reply["data"][0]) == ROW_FIELDS
    assert [row["schedule"] for row in reply["data"]] == ["OK"] * 3
    assert [row["status"] for row in reply["data"]] == ["3", "0", "3"]  # terminated keeps status


def test_check_history_pages_with_a_default_limit_of_500(fake):
    finished(fake, 3)
    assert ids(read(fake, CHECK_HISTORY_PATH, page=2, limit=2)) == [1]
    assert ids(read(fake, CHECK_HISTORY_PATH, page=1)) == [3, 2, 1]


def test_check_history_default_limit_is_500(anyone):
    for _ in range(501):
        submit(anyone)
    for each in anyone.tasks:
        anyone.finish_task(each.list_id)
    assert len(read(anyone, CHECK_HISTORY_PATH).json()["data"]) == 500
    assert ids(read(anyone, CHECK_HISTORY_PATH, page=2)) == [1]


def test_check_history_search_is_a_prefix_match_on_its_columns(fake):
    finished(fake, 1, task_name="DBTT")
    finished(fake, 1, task_name="WEB", submitter="githook", executor="ops")
    for _ in range(8):
        finished(fake, 1, task_name="misc")
    history = lambda value: ids(read(fake, CHECK_HISTORY_PATH, search_val=value))  # noqa: E731
    assert history("DB") == [1]  # task_name
    assert history("db") == [1]  # LIKE is case-insensitive
    assert history("BTT") == []  # a prefix, not a substring
    assert history("1") == [10, 1]  # list_id
    assert history("op") == [2]  # executor
    assert history("git") == list(range(10, 0, -1))  # creator
    assert history("templ") == list(range(10, 0, -1))  # task_type
    assert history("3") == list(range(10, 0, -1))  # temp_id '32' and status '3'
    assert history("W_B") == [2] and history("W%") == [2]  # LIKE's wildcards
    assert history("  WEB  ") == [2]  # stripped


def test_check_history_search_does_not_look_in_args(fake):
    finished(fake, 1, args="{'TAG': 'release-dbtt-1', 'APP_NAME': 'DBTT'}")
    assert ids(read(fake, CHECK_HISTORY_PATH, search_val="{'TAG'")) == []
    assert ids(read(fake, CHECK_HISTORY_PATH, search_val="release-dbtt-1")) == []


def test_check_history_count_ignores_search_val(fake):
    finished(fake, 3)
    submit(fake)  # unfinished: not counted
    reply = read(fake, CHECK_HISTORY_PATH, search_val="nothing-matches").json()
    assert (reply["data"], reply["count"]) == ([], 3)


def test_check_history_visibility_as_list(anyone):
    for submitter in ["githook", "other", "githook"]:
        anyone.finish_task(submit(anyone, submitter=submitter))
    reply = read(anyone, CHECK_HISTORY_PATH, page=1, limit=2).json()
    assert (ids_of(reply), reply["count"]) == ([3], 3)
    superuser = make_auth_key(username="root", is_superuser=True)
    assert ids(read(anyone, CHECK_HISTORY_PATH, auth_key=superuser)) == [3, 2, 1]
    nickname = make_auth_key(username="x", nickname="other")
    assert ids(read(anyone, CHECK_HISTORY_PATH, auth_key=nickname)) == [2]


# --- check/ ------------------------------------------------------------------

TWO_STEPS = {
    32: {
        "name": "deploy-dbtt",
        "creator": "ops",
        "users": [(5, "ops")],
        "steps": [
            {"group": 1, "command_name": "pull", "command": "git pull", "args": "GIT_URL TAG"},
            {"group": 1, "command_name": "deploy", "args": ["TAG", "APP_NAME"]},
            {"group": 2, "command_name": "check", "trigger": "hand", "args": ""},
        ],
    }
}


@pytest.fixture
def steps():
    with FakeCodo(auth_key=KEY, templates=TWO_STEPS) as server:
        submit(server, hosts="{1: '10.0.0.5,10.0.0.6', 2: '10.0.0.7'}")
        yield server


def check(fake, auth_key=KEY, **query):
    return read(fake, CHECK_PATH, auth_key=auth_key, **query)


def test_check_answers_the_task_with_its_steps(steps):
    answer = check(steps, list_id=1)
    assert (answer.status, answer.json()["code"], answer.json()["msg"]) == (
        200,
        0,
        "获取订单信息成功",
    )
    data = answer.json()["data"]
    assert (data["list_id"], data["schedule"], data["group_list"], data["run_group"]) == (
        "1",
        "ready",
        [1, 2],
        "1",
    )
    assert data["new_args"] == {
        "TAG": "release-dbtt-1",
        "GIT_URL": "git@gitlab.example.com:ops/dbtt.git",
        "APP_NAME": "DBTT",
    }
    assert data["args_keys"] == ["TAG", "GIT_URL", "APP_NAME"]
    assert data["new_args_list"][0] == {"args_key": "TAG", "args_value": "release-dbtt-1"}
    assert (data["this_host_list"], data["this_host"]) == (["10.0.0.5", "10.0.0.6"], "10.0.0.5")
    assert data["hosts_status"] == {"10.0.0.5": "1", "10.0.0.6": "1"}
    assert (data["associated_user"], data["hand_list"]) == ("ops，githook", ["check"])
    assert (data["creator"], data["executor"], data["username"]) == (
        "githook",
        "githook",
        "githook",
    )
    assert data["approval_button"] is True
    assert data["start_time"] == "2019-03-20 10:00:00"
    assert [
        (s["task_level"], s["task_name"], s["exec_ip"], s["task_status"], s["task_args"])
        for s in data["scheduler_list"]
    ] == [
        (1, "pull", "10.0.0.5", "1", "GIT_URL TAG"),
        (2, "deploy", "10.0.0.5", "1", "TAG APP_NAME"),
    ]
    assert set(data["scheduler_list"][0]) >= {
        "sched_id",
        "task_group",
        "task_cmd",
        "trigger",
        "exec_user",
    }


def test_check_picks_a_group_and_a_host_when_asked(steps):
    data = check(steps, list_id=1, get_run_group=2).json()["data"]
    assert (data["run_group"], data["this_host"], data["hosts_status"]) == (
        "2",
        "10.0.0.7",
        {"10.0.0.7": "5"},
    )
    assert [(s["task_name"], s["task_status"]) for s in data["scheduler_list"]] == [("check", "5")]
    data = check(steps, list_id=1, get_run_host="10.0.0.6").json()["data"]
    assert {s["exec_ip"] for s in data["scheduler_list"]} == {"10.0.0.6"}


def test_check_has_no_visibility_check(steps):
    stranger = make_auth_key(user_id=2, username="x", nickname="y")
    with FakeCodo(templates=TWO_STEPS) as anyone:
        submit(anyone, hosts="{1: '10.0.0.5', 2: '10.0.0.7'}")
        data = check(anyone, auth_key=stranger, list_id=1).json()["data"]
        assert (data["list_id"], data["username"], data["approval_button"]) == ("1", "x", False)
        assert read(anyone, LIST_PATH, auth_key=stranger).json()["data"] == []


def test_check_of_an_unknown_task_is_500(steps):
    answer = check(steps, list_id=99)
    assert (answer.status, answer.text) == (500, "服务器内部错误")
    assert len(answer.cookies["csrf_key"]) == 22


@pytest.mark.parametrize("query", [{}, {"list_id": ""}, {"list_id": "  "}])
def test_check_without_list_id_is_code_minus_1(steps, query):
    answer = check(steps, **query)
    assert (answer.status, answer.json()) == (200, {"code": -1, "msg": "订单ID不能为空"})


def test_check_of_args_that_are_no_python_literal_shows_no_args(fake):
    submit(fake, args="{'TAG': release}")  # accepted; the executor fails on it later
    data = check(fake, list_id=1).json()["data"]
    assert (data["new_args"], data["args_keys"]) == ({}, [])


def test_check_a_task_without_groups_is_code_minus_1():
    with FakeCodo(auth_key=KEY, templates={40: {"steps": []}}) as fake:
        submit(fake, temp_id="40", hosts="{}")
        assert check(fake, list_id=1).json() == {"code": -1, "msg": "没有可运行组"}


# --- templates ---------------------------------------------------------------


def test_template_by_id(steps):
    answer = read(steps, TEMPLATES_PATH, key="temp_id", value=32)
    assert answer.json() == {
        "code": 0,
        "msg": "获取成功",
        "data": [{"temp_id": 32, "temp_name": "deploy-dbtt", "creator": "ops"}],
    }


def test_unknown_template_is_an_empty_list(steps):
    for value in (33, "x"):
        answer = read(steps, TEMPLATES_PATH, key="temp_id", value=value)
        assert (answer.status, answer.json()["code"], answer.json()["data"]) == (200, 0, [])


def test_templates_without_a_filter_are_all_of_them_by_id():
    with FakeCodo(auth_key=KEY, templates={40: [1], 32: [1, 2], "7": [3]}) as fake:
        data = read(fake, TEMPLATES_PATH).json()["data"]
        assert [entry["temp_id"] for entry in data] == [7, 32, 40]
        assert data[0] == {"temp_id": 7, "temp_name": "template-7", "creator": "admin"}


def test_templates_filtered_by_an_unknown_column_is_500(steps):
    assert read(steps, TEMPLATES_PATH, key="nope", value="1").status == 500


def test_template_details_lists_steps_by_group_and_level_and_its_users(steps):
    reply = read(steps, TEMPLATE_DETAILS_PATH, temp_id=32).json()
    assert (reply["code"], reply["msg"]) == (0, "获取模板详情成功")
    temp_list = reply["data"]["temp_list"]
    assert [(s["group"], s["level"], s["command_name"], s["args"]) for s in temp_list] == [
        (1, 1, "pull", "GIT_URL TAG"),
        (1, 2, "deploy", "TAG APP_NAME"),
        (2, 1, "check", ""),
    ]
    assert [s["trigger"] for s in temp_list] == ["order", "order", "hand"]
    assert {"command", "exec_user", "temp_id"} <= set(temp_list[0])
    assert temp_list[0]["temp_id"] == "32"
    assert reply["data"]["temp_user"] == reply["temp_user"] == ["5,,,ops"]


def test_template_details_of_a_list_of_groups_has_one_default_step_per_group(fake):
    fake.templates[32] = [2, 1]  # as tests already change it
    temp_list = read(fake, TEMPLATE_DETAILS_PATH, temp_id=32).json()["data"]["temp_list"]
    assert [(s["group"], s["level"], s["args"]) for s in temp_list] == [
        (1, 1, "TAG GIT_URL APP_NAME"),
        (2, 1, "TAG GIT_URL APP_NAME"),
    ]


def test_template_details_of_an_unknown_template_is_code_0_with_empty_lists(fake):
    assert read(fake, TEMPLATE_DETAILS_PATH, temp_id=99).json()["data"] == {
        "temp_list": [],
        "temp_user": [],
    }


def test_template_details_without_temp_id_is_code_minus_1(fake):
    assert read(fake, TEMPLATE_DETAILS_PATH).json() == {"code": -1, "msg": "模板ID不能为空"}


def test_a_rich_templates_groups_decide_the_hosts_a_task_needs(steps):
    answer = send(steps, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5'}"))
    assert answer.json() == {"code": -4, "msg": "The exec host cannot be empty"}


# --- a task's life -----------------------------------------------------------


def state(fake, list_id=1):
    task = fake.task(list_id)
    return task.status, task.schedule


def step_states(fake, list_id=1):
    return [(s["exec_ip"], s["task_name"], s["task_status"]) for s in fake.task(list_id).steps]


@pytest.mark.parametrize("schedule", ["new", "ready"])
def test_a_task_starts_at_status_0_with_the_posted_schedule(fake, schedule):
    submit(fake, schedule=schedule)
    assert state(fake) == ("0", schedule)
    assert read(fake, LIST_PATH).json()["data"][0]["schedule"] == schedule


def test_a_task_is_created_with_one_step_per_host_and_template_step(steps):
    assert step_states(steps) == [
        ("10.0.0.5", "pull", "1"),
        ("10.0.0.5", "deploy", "1"),
        ("10.0.0.6", "pull", "1"),
        ("10.0.0.6", "deploy", "1"),
        ("10.0.0.7", "check", "5"),  # a hand step waits from the start
    ]


def test_a_task_moves_nowhere_by_itself(fake):
    submit(fake)
    time.sleep(0.2)
    assert state(fake) == ("0", "ready")


def test_approve_queue_start_finish(fake):
    submit(fake, schedule="new")
    fake.approve_task(1, start_time="2019-03-21 08:00:00", executor="boss")
    assert state(fake) == ("1", "ready")
    assert (fake.task(1).row["start_time"], fake.task(1).row["executor"]) == (
        "2019-03-21 08:00:00",
        "boss",
    )
    fake.queue_task(1)
    assert state(fake) == ("1", "ready")
    fake.start_task(1)
    assert state(fake) == ("2", "start")
    assert check(fake, list_id=1).json()["data"]["hosts_status"] == {"10.0.0.5": "2"}
    fake.finish_task(1)
    assert state(fake) == ("3", "OK")
    data = check(fake, list_id=1).json()["data"]
    assert (data["schedule"], data["hosts_status"]) == ("OK", {"10.0.0.5": "3"})
    assert [s["task_status"] for s in data["scheduler_list"]] == ["3"]
    assert ids(read(fake, LIST_PATH)) == [] and ids(read(fake, CHECK_HISTORY_PATH)) == [1]


def test_start_runs_the_first_step_on_each_host_of_the_first_group(steps):
    steps.start_task(1)
    assert step_states(steps) == [
        ("10.0.0.5", "pull", "2"),
        ("10.0.0.5", "deploy", "1"),
        ("10.0.0.6", "pull", "2"),
        ("10.0.0.6", "deploy", "1"),
        ("10.0.0.7", "check", "5"),
    ]


def test_a_step_fails_on_a_host(steps):
    steps.fail_task(1, host="10.0.0.6", step="deploy")
    assert state(steps) == ("4", "start")
    assert step_states(steps)[2:4] == [("10.0.0.6", "pull", "3"), ("10.0.0.6", "deploy", "4")]
    data = check(steps, list_id=1).json()["data"]
    assert data["hosts_status"] == {"10.0.0.5": "1", "10.0.0.6": "4"}
    failed = check(steps, list_id=1, get_run_host="10.0.0.6").json()["data"]["scheduler_list"]
    assert [(s["task_name"], s["task_status"]) for s in failed] == [("pull", "3"), ("deploy", "4")]
    assert ids(read(steps, LIST_PATH)) == [1]  # a failed task is not finished


def test_a_failed_step_in_a_later_group_is_the_run_group_check_shows(steps):
    steps.fail_task(1, host="10.0.0.7")
    data = check(steps, list_id=1).json()["data"]
    assert (data["run_group"], data["hosts_status"]) == ("2", {"10.0.0.7": "4"})
    assert [s["task_status"] for s in steps.task(1).steps[:4]] == ["3"] * 4


def test_fail_defaults_to_the_first_step_on_the_first_host(fake):
    submit(fake)
    fake.fail_task(1)
    assert (state(fake), step_states(fake)) == (("4", "start"), [("10.0.0.5", "deploy", "4")])


def test_fail_of_a_step_the_task_lacks_is_a_value_error(steps):
    with pytest.raises(ValueError):
        steps.fail_task(1, host="10.9.9.9")
    with pytest.raises(ValueError):
        steps.fail_task(1, step="nope")


@pytest.mark.parametrize("timed, status", [(False, "5"), (True, "7")])
def test_a_task_waits_at_a_manual_or_timed_step(steps, timed, status):
    steps.wait_task(1, host="10.0.0.5", step=2, timed=timed)
    assert state(steps) == (status, "start")
    assert step_states(steps)[:2] == [("10.0.0.5", "pull", "3"), ("10.0.0.5", "deploy", status)]
    assert check(steps, list_id=1).json()["data"]["hosts_status"]["10.0.0.5"] == status


def test_a_task_pauses(steps):
    steps.start_task(1)
    steps.pause_task(1)
    assert state(steps) == ("6", "start")
    assert check(steps, list_id=1).json()["data"]["hosts_status"] == {
        "10.0.0.5": "6",
        "10.0.0.6": "6",
    }


def test_update_sets_columns_and_refuses_unknown_ones(fake):
    submit(fake)
    fake.update_task(1, status="2", schedule="start")
    assert state(fake) == ("2", "start")
    with pytest.raises(ValueError):
        fake.update_task(1, colour="red")


def test_moving_an_unknown_task_is_a_key_error(fake):
    with pytest.raises(KeyError):
        fake.finish_task(7)
    with pytest.raises(ValueError):
        fake.advance_task(1, "explode")


def test_the_task_of_a_commit_then_500_never_starts(fake):
    fake.set_fault("commit_then_500", method="POST")
    assert send(fake, "POST", ACCEPT_PATH, task(schedule="ready")).status == 500
    fake.clear_faults()
    assert (state(fake), fake.task(1).published) == (("0", "ready"), False)
    for move in (fake.start_task, fake.finish_task, fake.fail_task, fake.pause_task):
        with pytest.raises(ValueError, match="never published"):
            move(1)
    row = read(fake, LIST_PATH).json()["data"][0]
    assert (row["list_id"], row["status"], row["schedule"]) == (1, "0", "ready")
    fake.republish_task(1)
    fake.finish_task(1)
    assert state(fake) == ("3", "OK")


def test_an_unknown_template_500_leaves_nothing_to_read(fake):
    assert send(fake, "POST", ACCEPT_PATH, task(temp_id="99")).status == 500
    assert read(fake, LIST_PATH).json()["count"] == 0
    assert read(fake, CHECK_HISTORY_PATH).json()["count"] == 0


def test_a_task_is_moved_over_http(steps):
    answer = call(
        steps, "POST", "/_fake/task", {"list_id": 1, "action": "fail", "host": "10.0.0.6"}
    )
    assert answer.status == 200
    assert (answer.json()["row"]["status"], answer.json()["published"]) == ("4", True)
    assert [s["task_status"] for s in answer.json()["steps"]][2] == "4"
    assert (
        call(steps, "POST", "/_fake/task", {"list_id": 1, "action": "finish"}).json()["row"][
            "schedule"
        ]
        == "OK"
    )
    assert [t["row"]["status"] for t in call(steps, "GET", "/_fake/tasks").json()] == ["3"]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"list_id": 9, "action": "finish"}, 404),
        ({"action": "finish"}, 404),
        ({"list_id": 1}, 400),
        ({"list_id": 1, "action": "explode"}, 400),
        ({"list_id": 1, "action": "fail", "colour": "red"}, 400),
        ({"list_id": 1, "action": "update", "colour": "red"}, 400),
    ],
)
def test_a_bad_move_over_http_is_refused(steps, body, status):
    assert call(steps, "POST", "/_fake/task", body).status == status


# --- faults on the read endpoints ---------------------------------------------


@pytest.mark.parametrize("path", [LIST_PATH, CHECK_HISTORY_PATH, CHECK_PATH])
def test_a_list_that_errors_leaves_the_other_paths_alone(fake, path):
    submit(fake)
    fake.set_fault("status", status=500, path=path)
    answer = read(fake, path, list_id=1)
    assert (answer.status, answer.text, answer.cookies) == (500, "服务器内部错误", {})
    others = [p for p in (LIST_PATH, CHECK_HISTORY_PATH, CHECK_PATH) if p != path]
    assert [read(fake, p, list_id=1).status for p in others] == [200, 200]
    assert send(fake, "POST", ACCEPT_PATH, task()).json()["code"] == 0


def test_a_list_that_answers_non_json(fake):
    fake.set_fault("non_json", path=CHECK_HISTORY_PATH, times=1)
    first, second = (read(fake, CHECK_HISTORY_PATH) for _ in range(2))
    assert first.status == 200 and first.text.startswith("<!DOCTYPE html>")
    assert second.json()["history"] is True


def test_faults_on_the_read_paths_over_http(fake):
    submit(fake)
    call(
        fake,
        "POST",
        "/_fake/fault",
        {"kind": "status", "status": 502, "path": LIST_PATH, "method": "GET"},
    )
    assert read(fake, LIST_PATH).status == 502
    assert read(fake, TEMPLATES_PATH).status == 200


def test_a_slow_list(fake):
    fake.set_fault("slow", seconds=0.5, path=LIST_PATH)
    started = time.monotonic()
    assert read(fake, LIST_PATH).status == 200
    assert time.monotonic() - started >= 0.5


# --- the key ---------------------------------------------------------------


def test_make_auth_key_carries_the_admin_services_claims():
    payload = jwt_payload(
        make_auth_key(user_id=3, username="u", nickname="n", is_superuser=True, exp=5)
    )
    assert {"exp", "nbf", "iat", "iss", "sub", "id", "data"} <= set(payload)
    assert (payload["exp"], payload["iss"]) == (5, "auth: ss")
    assert payload["data"] == {
        "user_id": 3,
        "username": "u",
        "nickname": "n",
        "email": "githook@example.com",
        "is_superuser": True,
    }
    assert "exp" not in jwt_payload(make_auth_key(exp=None))


def test_an_expired_key_still_reads(anyone):
    submit(anyone)
    assert ids(
        read(anyone, LIST_PATH, auth_key=make_auth_key(exp=int(time.time()) - 2 * 86400))
    ) == [1]


# --- standalone ------------------------------------------------------------


@pytest.fixture
def standalone(tmp_path):
    key_file, state_file = tmp_path / "auth_key", tmp_path / "tasks.json"
    key_file.write_text(KEY + "\n")
    command = [sys.executable, os.path.join(FAKES, "fake_codo.py"), "--port", str(unused_port())]
    command += [
        "--auth-key-file",
        str(key_file),
        "--template",
        "32:1,2",
        "--state-file",
        str(state_file),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    port = int(url.rsplit(":", 1)[1])
    yield type("Standalone", (), {"port": port, "url": url, "state_file": state_file})
    process.terminate()
    assert process.wait(timeout=10) == 0


def test_standalone_serves_the_contract_and_writes_tasks_to_the_state_file(standalone):
    answer = send(standalone, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5', 2: '10.0.0.6'}"))
    assert answer.json()["list_id"] == 1
    (saved,) = json.loads(standalone.state_file.read_text())
    assert (saved["fields"]["task_name"], saved["hosts"]) == (
        "DBTT",
        {"1": "10.0.0.5", "2": "10.0.0.6"},
    )


def test_standalone_lists_tasks_and_requests_and_resets_over_http(standalone):
    send(standalone, "POST", ACCEPT_PATH, task(hosts="{1: '10.0.0.5', 2: '10.0.0.6'}"))
    assert [t["list_id"] for t in call(standalone, "GET", "/_fake/tasks").json()] == [1]
    assert [r["method"] for r in call(standalone, "GET", "/_fake/requests").json()] == [
        "GET",
        "POST",
    ]
    call(standalone, "POST", "/_fake/reset")
    assert call(standalone, "GET", "/_fake/tasks").json() == []
    assert json.loads(standalone.state_file.read_text()) == []


def test_standalone_refuses_a_key_file_that_is_not_a_jwt(tmp_path):
    key_file = tmp_path / "auth_key"
    key_file.write_text("molecule-test-key-4d1c2a0f\n")
    command = [
        sys.executable,
        os.path.join(FAKES, "fake_codo.py"),
        "--auth-key-file",
        str(key_file),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "not a well-formed JWT" in result.stderr and "4d1c2a0f" not in result.stderr


def test_standalone_reads_rich_templates_and_moves_tasks_over_http(tmp_path):
    key_file, templates_file = tmp_path / "auth_key", tmp_path / "templates.json"
    key_file.write_text(KEY + "\n")
    templates_file.write_text(
        json.dumps(
            {"40": {"name": "web", "users": ["ops"], "steps": [{"group": 3, "args": ["TAG"]}]}}
        )
    )
    command = [sys.executable, os.path.join(FAKES, "fake_codo.py"), "--port", str(unused_port())]
    command += ["--auth-key-file", str(key_file), "--templates-file", str(templates_file)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        server = type("Standalone", (), {"port": int(url.rsplit(":", 1)[1])})
        details = read(server, TEMPLATE_DETAILS_PATH, temp_id=40).json()["data"]
        assert [(s["group"], s["args"]) for s in details["temp_list"]] == [(3, "TAG")]
        assert read(server, TEMPLATES_PATH, key="temp_id", value=32).json()["data"] == []
        submit(server, temp_id=40, hosts="{3: '10.0.0.8'}")
        moved = call(server, "POST", "/_fake/task", {"list_id": 1, "action": "fail"}).json()
        assert (moved["row"]["status"], moved["row"]["associated_user"]) == (
            "4",
            "{'admin': ['ops', 'githook']}",
        )
        data = read(server, CHECK_PATH, list_id=1).json()["data"]
        assert data["hosts_status"] == {"10.0.0.8": "4"}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# --- the Gitaly runner, through real pushes --------------------------------

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


class Project:
    """A bare repository with the runner installed, a clone to push from, and a log hooks append to."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.bare = str(tmp_path / "project.git")
        self.clone = str(tmp_path / "clone")
        self.log = tmp_path / "hooks.log"
        self.hooks = tmp_path / "project.git" / "custom_hooks"
        self.git("init", "-q", "--bare", self.bare)
        subprocess.run(
            [
                sys.executable,
                RUNNER,
                "install",
                self.bare,
                "--project-path",
                "ops/dbtt",
                "--project-id",
                "7",
            ],
            check=True,
        )
        self.git("clone", "-q", self.bare, self.clone)
        self.git("commit", "-q", "--allow-empty", "-m", "one", cwd=self.clone)

    def env(self, **extra):
        return dict(
            PATH=os.environ["PATH"],
            HOME=str(self.tmp),
            CODO_LOG=str(self.log),
            **GIT_IDENTITY,
            **extra,
        )

    def git(self, *args, cwd=None, env=None):
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env or self.env(),
            check=False,
            capture_output=True,
            text=True,
        )

    def hook(self, relative, body="", mode=0o755):
        """A shell hook that logs its name, then runs `body`."""
        path = self.hooks / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "{relative}" >> "$CODO_LOG"\n{body}\n')
        path.chmod(mode)
        return path

    def push(self, *refspecs, **env):
        return self.git("push", "origin", *refspecs, cwd=self.clone, env=self.env(**env))

    def ran(self):
        """The lines the hooks logged, in order."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def refs(self):
        return self.git("for-each-ref", "--format=%(refname)", cwd=self.bare).stdout.split()


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def test_runner_runs_the_stage_hook_then_its_d_directory_in_alphabetical_order(project):
    for name in ("pre-receive.d/b", "pre-receive", "pre-receive.d/a", "pre-receive.d/10-first"):
        project.hook(name)
    assert project.push("HEAD:refs/heads/main").returncode == 0
    assert project.ran() == [
        "pre-receive",
        "pre-receive.d/10-first",
        "pre-receive.d/a",
        "pre-receive.d/b",
    ]


def test_runner_skips_non_executables_directories_and_backup_files(project):
    project.hook("pre-receive.d/a")
    project.hook("pre-receive.d/b~")
    project.hook("pre-receive.d/c", mode=0o644)
    (project.hooks / "pre-receive.d" / "d").mkdir()
    project.hook("pre-receive.d/e")
    assert project.push("HEAD:refs/heads/main").returncode == 0
    assert project.ran() == ["pre-receive.d/a", "pre-receive.d/e"]


def test_runner_stops_at_the_first_failure_and_the_push_is_refused(project):
    project.hook("pre-receive.d/a", "exit 3")
    project.hook("pre-receive.d/b")
    assert project.push("HEAD:refs/heads/main").returncode != 0
    assert project.ran() == ["pre-receive.d/a"]
    assert project.refs() == []


def test_runner_feeds_the_same_stdin_to_each_receive_hook(project):
    for name in ("post-receive.d/a", "post-receive.d/b"):
        project.hook(name, 'cat >> "$CODO_LOG"')
    project.git("tag", "v1", cwd=project.clone)
    project.push("v1")
    name_a, stdin_a, name_b, stdin_b = project.ran()
    assert (name_a, name_b) == ("post-receive.d/a", "post-receive.d/b")
    assert stdin_a == stdin_b and stdin_a.startswith("0" * 40) and stdin_a.endswith(" refs/tags/v1")


def test_runner_passes_refname_and_revisions_to_update_hooks(project):
    project.hook("update.d/a", 'echo "$@" >> "$CODO_LOG"')
    project.git("tag", "v1", cwd=project.clone)
    project.push("v1")
    name, argv = project.ran()
    ref, old, new = argv.split()
    assert (name, ref, old) == ("update.d/a", "refs/tags/v1", "0" * 40) and len(new) == 40


def test_runner_runs_hooks_in_the_repository_directory(project):
    project.hook("pre-receive", 'pwd -P >> "$CODO_LOG"')
    project.push("HEAD:refs/heads/main")
    assert project.ran()[1] == os.path.realpath(project.bare)


def test_runner_filters_the_environment_and_adds_gitlabs_variables(project):
    project.hook("pre-receive", 'env >> "$CODO_LOG"')
    project.push(
        "HEAD:refs/heads/main",
        GL_USERNAME="alice",
        LANG="C.UTF-8",
        PYTHONPATH="/nowhere",
        CODO_EXTRA="yes",
    )
    env = dict(line.split("=", 1) for line in project.ran()[1:] if "=" in line)
    assert env["GL_USERNAME"] == "alice" and env["CODO_EXTRA"] == "yes"
    assert (env["GL_PROJECT_PATH"], env["GL_REPOSITORY"], env["GL_PROTOCOL"]) == (
        "ops/dbtt",
        "project-7",
        "ssh",
    )
    assert "LANG" not in env and "PYTHONPATH" not in env and "GIT_AUTHOR_NAME" not in env
    assert "GIT_QUARANTINE_PATH" in env


def test_hook_output_reaches_the_pusher_as_remote_lines(project):
    project.hook("post-receive", "echo to-stdout; echo to-stderr >&2")
    output = project.push("HEAD:refs/heads/main").stderr
    assert "remote: to-stdout" in output and "remote: to-stderr" in output


# --- the runner: Gitaly's server-wide custom_hooks_dir ---------------------


@pytest.fixture
def server_wide(project, tmp_path):
    """The project's repository with Gitaly's custom_hooks_dir set, and a helper to add hooks there."""
    directory = tmp_path / "gitaly-custom-hooks"
    subprocess.run(
        [
            sys.executable,
            RUNNER,
            "install",
            project.bare,
            "--project-path",
            "ops/dbtt",
            "--project-id",
            "7",
            "--custom-hooks-dir",
            str(directory),
        ],
        check=True,
    )

    def hook(relative, body=""):
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "global/{relative}" >> "$CODO_LOG"\n{body}\n')
        path.chmod(0o755)

    return hook


def test_runner_runs_server_wide_hooks_after_the_projects_own(project, server_wide):
    server_wide("pre-receive.d/b")
    server_wide("pre-receive.d/a")
    project.hook("pre-receive.d/z")
    project.hook("pre-receive")
    assert project.push("HEAD:refs/heads/main").returncode == 0
    assert project.ran() == [
        "pre-receive",
        "pre-receive.d/z",
        "global/pre-receive.d/a",
        "global/pre-receive.d/b",
    ]


def test_runner_runs_server_wide_hooks_for_a_project_without_custom_hooks(project, server_wide):
    server_wide("post-receive.d/codo-release", 'echo "$GL_PROJECT_PATH $(pwd -P)" >> "$CODO_LOG"')
    project.push("HEAD:refs/heads/main")
    assert project.ran() == [
        "global/post-receive.d/codo-release",
        f"ops/dbtt {os.path.realpath(project.bare)}",
    ]


def test_runner_ignores_a_server_wide_stage_file_outside_its_d_directory(project, server_wide):
    server_wide("pre-receive")
    server_wide("pre-receive.d/a")
    project.push("HEAD:refs/heads/main")
    assert project.ran() == ["global/pre-receive.d/a"]


def test_runner_skips_the_server_wide_hooks_when_a_projects_hook_fails(project, server_wide):
    project.hook("pre-receive.d/a", "exit 1")
    server_wide("pre-receive.d/b")
    assert project.push("HEAD:refs/heads/main").returncode != 0
    assert project.ran() == ["pre-receive.d/a"]


def test_runner_without_custom_hooks_dir_runs_only_the_projects_hooks(project, tmp_path):
    (tmp_path / "gitaly-custom-hooks" / "pre-receive.d").mkdir(parents=True)
    project.hook("pre-receive")
    project.push("HEAD:refs/heads/main")
    assert project.ran() == ["pre-receive"]
