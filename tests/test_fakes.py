"""The fakes hold to their contracts: shared/codo-api.md for FakeCodo, shared/gitlab-hooks.md for the runner."""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.cookies import SimpleCookie

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakes.fake_codo import (
    ACCEPT_PATH,
    EXEC_USERS_PATH,
    GIT_HOOKS_PATH,
    FakeCodo,
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
