#!/usr/bin/env python3
"""A fake OpenDevOps (CODO) task platform: shared/codo-api.md, reply for reply.

In tests:
    with FakeCodo(auth_key=make_auth_key(), templates={32: [1]}) as fake:
        ... fake.url, fake.tasks, fake.requests, fake.set_fault("status", status=503, method="POST")

    fake.finish_task(1), fake.fail_task(1, host="10.0.0.5", step="deploy"), fake.task(1).status

Standalone (prints its URL, serves until killed):
    python3 tests/fakes/fake_codo.py --port 18081 --auth-key-file F [--template 32:1,2]
        [--templates-file T.json] [--repos-file R] [--state-file tasks.json]
and driven over HTTP without auth: GET /_fake/tasks, GET /_fake/requests,
GET|POST /_fake/fault, POST /_fake/task (move a task: {"list_id", "action", ...}), POST /_fake/reset.

The endpoints (shared/codo-api.md): POST accept/ and git hooks (create tasks), GET|POST|PUT|DELETE
task_layout/user/, and the read endpoints, GET only (any other method 405 after the csrf check):
- task/list/?page&limit: unfinished tasks (schedule not 'OK'), start_time DESC, list_id DESC,
  default limit 100, no cap; `count` before the visibility filter, the filter after paging;
  `list_id` the first id on the page or "".
- task/check_history/?page&limit[&search_val]: finished tasks, list_id DESC, default limit 500;
  search_val a MySQL `LIKE 'S%'` on list_id, task_type, temp_id, creator, executor, status,
  task_name (not args); `count` ignores it; "history": true.
- Visibility of both: the key's data.username or data.nickname among the task's associated_user
  ({'admin': [template users + submitter]}), or data.is_superuser.
- task/check/?list_id=N[&get_run_group=G][&get_run_host=IP]: one task, no visibility check; its
  steps on one host (get_run_host, else the run group's first) of the run group (get_run_group,
  else the only group, else the group of the first running or failed step, else the first), and
  hosts_status for each host of that group. No list_id: code -1; unknown: 500.
- task_layout/temp/?key=K&value=V (or all templates), task_layout/details/?temp_id=N.
A task's row: args and hosts as stored (args byte-identical), start_time the posted exec_time,
creator the submitter, status '0', schedule as posted; it moves only when a test moves it
(approve/queue/start/finish/fail/wait/pause/terminate_task, or POST /_fake/task).

What every request meets, in the platform's order (shared/codo-api.md):
1. csrf, for every method but GET unless an `Sdk-Method` header skips it: no `csrf_key` cookie at all
   is HTTP 500, a made-up, used or expired one 402 `csrf error.`; neither sets a new `csrf_key`.
   A live key passes once and is gone whatever happens next.
2. A fresh `csrf_key` cookie, on every reply from here on (401, 405 and 500 included).
3. Login: the `auth_key` cookie (or `?auth_key=`). Missing, or a JWT without `data.user_id`: 401
   `你没有登录`. Not a JWT at all (three base64url parts, JSON objects for header and payload): 500.
   Signatures and `exp` are not checked; a fake built with `auth_key=K` also refuses, with 401, any
   other well-formed key (so tests see a wrong key), one built with `auth_key=None` takes any
   well-formed key with a user_id.
4. The method: PUT and DELETE on the accept and git hooks paths are 405 with an empty body.
5. The handler: bad input (unknown template, bad JSON, bad field) is 500 and creates no task.

Faults (set_fault / add_fault, or POST /_fake/fault with the same names as JSON); each can be limited
with `times`, `method` and `path`. Unless said otherwise a fault answers without reaching the
service: no csrf key used, no task created, no csrf cookie set.
- hang: no answer until the fault is cleared (then the normal answer) or the server stops (none).
- slow: the normal answer after `seconds`.
- non_json: 200 with the platform's HTML login page.
- status: `status` with its usual page (a 2xx: an empty body, 204 never has one) or `body`.
- commit_then_status: the service handles the request (a task is created if it would be), then the
  reply's status becomes `status`; the body stays the platform's JSON unless `body` is given.
- commit_then_500: commit_then_status with 500 `服务器内部错误`, only when a task was created; that
  task was never published to the queue (the queue is down): it stays as created, status '0', and
  start/finish/fail/wait/pause refuse it until republish_task().
- close_after_body: the service handles the request, then the connection closes without a reply.
- redirect: `status` (default 302; any 3xx) with a `Location: <location>` header and a small nginx page.
- drip: the normal answer (a task created if it would be), its body padded with spaces to `size`
  bytes if given, sent a few bytes at a time so that the whole body takes `seconds`.
- flood: the normal answer (a task created if it would be), its body padded with spaces to `size`
  bytes (default 64 MiB), streamed in 64 KiB chunks with Content-Length, or chunked with `chunked`.
  The padded body is valid JSON: only a client that reads it whole can take it as success.
- message: a 200 JSON reply `{"code": code, "msg": msg}` (defaults 0 and ""); with `create` the
  service handles the request first and, when it created a task, `list_id` is added; without it no
  task is created. The JSON is ASCII-escaped like Tornado's, so CR/LF in `msg` travel as `\\r\\n`.

Standard library only, Python 3.7+: it also runs inside the Molecule containers.
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ACCEPT_PATH = "/api/task/v2/task/accept/"
GIT_HOOKS_PATH = "/api/task/other/v1/git/hooks/"
EXEC_USERS_PATH = "/api/task/v2/task_layout/user/"
LIST_PATH = "/api/task/v2/task/list/"
CHECK_HISTORY_PATH = "/api/task/v2/task/check_history/"
CHECK_PATH = "/api/task/v2/task/check/"
TEMPLATES_PATH = "/api/task/v2/task_layout/temp/"
TEMPLATE_DETAILS_PATH = "/api/task/v2/task_layout/details/"
ROUTE_METHODS = {
    ACCEPT_PATH: ("GET", "POST"),
    GIT_HOOKS_PATH: ("GET", "POST"),
    EXEC_USERS_PATH: ("GET", "POST", "PUT", "DELETE"),
    # The read endpoints: only GET is served here; any other method is 405 (after the csrf check).
    LIST_PATH: ("GET",),
    CHECK_HISTORY_PATH: ("GET",),
    CHECK_PATH: ("GET",),
    TEMPLATES_PATH: ("GET",),
    TEMPLATE_DETAILS_PATH: ("GET",),
}
CONTROL_PREFIX = "/_fake/"

NOT_LOGGED_IN = "你没有登录"
CSRF_ERROR = "csrf error."
SERVER_ERROR = "服务器内部错误"
NOT_FOUND_PAGE = "<html><title>404: Not Found</title><body>404: Not Found</body></html>"
LOGIN_PAGE = "<!DOCTYPE html><html><head><title>OpenDevOps</title></head><body><div id=app></div></body></html>"

EXEC_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
EXEC_TIME_DEFAULT = "2038-10-25 14:00:00"  # what the platform assumes when exec_time is absent
COLUMN_CHARS = 50  # task_name, details, submitter, executor: longer values fail the INSERT
GROUP_MAX_HOSTS = 100
GIT_HOOKS_DEFAULT_HOSTS = {1: "127.0.0.1", 2: "127.0.0.1"}  # the platform's own default
CSRF_KEY_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's
CSRF_KEY_CHARS = 22
LIST_LIMIT, HISTORY_LIMIT = 100, 500  # the default `limit` of list/ and check_history/

# A task's `status` (the order's overall state) and its steps' `task_status`.
NEW, QUEUED, RUNNING, SUCCEEDED, FAILED, MANUAL, PAUSED, TIMED = (
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
)
TRIGGER_STATUS = {"timed": TIMED, "hand": MANUAL}  # a step's first task_status; others: QUEUED
STEP_DEFAULTS = {
    "command_name": "deploy",
    "command": "/bin/bash /opt/codo/deploy.sh",
    "args": "TAG GIT_URL APP_NAME",
    "trigger": "order",
    "exec_user": "root",
    "force_host": "",
}

TASK_ACTIONS = (
    "approve",
    "queue",
    "start",
    "finish",
    "fail",
    "wait",
    "pause",
    "terminate",
    "republish",
    "update",
)
RUNNING_ACTIONS = (
    "start",
    "finish",
    "fail",
    "wait",
    "pause",
)  # what an unpublished task never does

FAULT_KINDS = (
    "hang",
    "slow",
    "commit_then_500",
    "commit_then_status",
    "non_json",
    "status",
    "close_after_body",
    "redirect",
    "drip",
    "flood",
    "message",
)
DEFAULT_STATUS = {"redirect": 302, "commit_then_status": 500, "commit_then_500": 500}  # others: 503
FLOOD_SIZE = 64 * 1024 * 1024
STREAM_CHUNK = 64 * 1024


@dataclasses.dataclass
class Task:
    """A task the platform created, as it would store it."""

    list_id: int
    path: str  # the endpoint that created it
    raw_body: str  # the request body exactly as received
    fields: dict  # the task's fields: the JSON body (accept) or what the platform built (git hooks)
    hosts: dict  # {group: "ip,ip"} once groups the template lacks were dropped
    row: dict = dataclasses.field(default_factory=dict)  # the stored row, as list/ answers it
    steps: list = dataclasses.field(default_factory=list)  # one per (group, host, template step)
    published: bool = True  # False: created while the queue was down (commit_then_500), never runs

    @property
    def args(self):
        """The `args` field parsed the way the platform parses it when the task runs."""
        return ast.literal_eval(self.fields["args"])

    @property
    def status(self):
        return self.row.get("status")

    @property
    def schedule(self):
        return self.row.get("schedule")

    def as_json(self):
        return dict(
            dataclasses.asdict(self), hosts={str(group): ips for group, ips in self.hosts.items()}
        )


@dataclasses.dataclass
class Received:
    """One request as it reached the platform."""

    method: str
    path: str
    query: dict  # {name: last value}
    headers: object  # http.client.HTTPMessage: case-insensitive .get()
    cookies: dict
    body: bytes
    status: int | None = None  # the HTTP status answered; None: no answer (hang, close, stop)
    fault: str | None = None  # the kind of fault that hit it
    error: str | None = None  # the exception behind a 500, for whoever debugs a test

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def as_json(self):
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return dict(fields, headers=dict(self.headers.items()), body=self.text)


@dataclasses.dataclass
class Fault:
    """A failure to play on the next matching requests; see FakeCodo.set_fault."""

    kind: str
    times: int | None = None  # only the next N matching requests; None: until cleared
    method: str | None = None  # only requests with this method
    path: str | None = None  # only requests to this path
    seconds: float = 5.0  # slow: the delay; drip: how long the whole body takes
    status: int | None = None  # status, commit_then_status, redirect: the HTTP status to answer
    location: str | None = None  # redirect: the Location header
    size: int | None = None  # drip, flood: the body's length in bytes (padded with spaces)
    chunked: bool = False  # drip, flood: Transfer-Encoding: chunked instead of Content-Length
    body: str | None = None  # status, commit_then_status: the body instead of the usual one
    code: int = 0  # message: the reply's code
    msg: str = ""  # message: the reply's msg
    create: bool = False  # message: let the service create the task first
    hits: int = 0
    released: threading.Event = dataclasses.field(
        default_factory=threading.Event, repr=False, compare=False
    )

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        self.method = self.method.upper() if self.method else None
        if self.status is None:
            self.status = DEFAULT_STATUS.get(self.kind, 503)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"not an HTTP status: {self.status!r}")
        if self.kind == "redirect" and (not 300 <= self.status <= 399 or not self.location):
            raise ValueError("redirect needs a 3xx status and a location")
        if self.kind == "flood" and self.size is None:
            self.size = FLOOD_SIZE

    def take(self, method, path):
        """Count this request against the fault if it matches; True if the fault applies."""
        spent = self.times is not None and self.hits >= self.times
        if spent or self.method not in (None, method) or self.path not in (None, path):
            return False
        self.hits += 1
        return True

    def as_json(self):
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "released"
        }


@dataclasses.dataclass
class Reply:
    status: int
    body: str = ""
    content_type: str = "text/html; charset=UTF-8"
    task: Task | None = None  # the task this request created, if any
    csrf_key: str | None = None  # the fresh key the reply sets as a cookie
    headers: tuple = ()  # more (name, value) headers
    size: int | None = None  # pad the body with spaces to this many bytes
    seconds: float = 0.0  # spread the body over this long
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length


def json_reply(payload, task=None, status=200):
    # Tornado's json_encode: ASCII-escaped, so "ID：19" travels as "ID\uff1a19".
    return Reply(status, json.dumps(payload), "application/json; charset=UTF-8", task)


PLATFORM_PAGES = {401: NOT_LOGGED_IN, 402: CSRF_ERROR, 404: NOT_FOUND_PAGE, 500: SERVER_ERROR}
GATEWAY_REASONS = {
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def status_page(status):
    """The body a bare status comes with: the platform's own page, else the gateway's (nginx)."""
    if status in PLATFORM_PAGES:
        return PLATFORM_PAGES[status]
    title = f"{status} {GATEWAY_REASONS.get(status, 'Error')}"
    return f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>"


class ServerError(Exception):
    """The platform's handler raised: it answers a bare HTTP 500."""


# What bad input makes the platform's handlers raise (json, literal_eval, int, strptime, the INSERT).
# Tornado answers each with a bare 500; anything else is a bug of this fake and should surface.
BAD_INPUT = (
    ServerError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    SyntaxError,
    RecursionError,
)


def make_auth_key(
    user_id=1,
    username="githook",
    nickname="githook",
    is_superuser=False,
    exp=4102444800,
    email="githook@example.com",
):
    """A JWT like the admin service mints (HS256-shaped, signature random: nobody checks it), with
    its claims exp, nbf, iat, iss, sub, id and data {user_id, username, nickname, email,
    is_superuser}. `exp` is a Unix time (None: no exp claim); the platform never checks it."""

    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    issued = 1546300800  # 2019-01-01
    payload = {
        "exp": exp,
        "nbf": issued,
        "iat": issued,
        "iss": "auth: ss",
        "sub": "my token",
        "id": 15618718060,
        "data": {
            "user_id": user_id,
            "username": username,
            "nickname": nickname,
            "email": email,
            "is_superuser": is_superuser,
        },
    }
    if exp is None:
        del payload["exp"]
    return ".".join(
        [part({"typ": "JWT", "alg": "HS256"}), part(payload), secrets.token_urlsafe(32)]
    )


def jwt_payload(value):
    """The payload of a well-formed JWT: three base64url parts, header and payload JSON objects.
    None for anything else (the platform answers such a key with a 500)."""
    parts = (value or "").split(".")
    if len(parts) != 3:
        return None
    try:
        header, payload = (json.loads(_base64url(part)) for part in parts[:2])
        _base64url(parts[2])
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return payload if isinstance(header, dict) and isinstance(payload, dict) else None


def jwt_user_id(value):
    """The key's `data.user_id`, None when it has none (or is not a JWT)."""
    data = (jwt_payload(value) or {}).get("data")
    return data.get("user_id") if isinstance(data, dict) else None


def _base64url(part):
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise binascii.Error("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def unused_port():
    """A loopback port nothing listens on: the platform being down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeCodo:
    """The CODO task service behind its gateway, on 127.0.0.1.

    auth_key: the one key accepted (a well-formed JWT with data.user_id, see make_auth_key; anything
        else is a ValueError); other well-formed keys get 401. None: any well-formed JWT carrying a
        user_id is accepted, as on the real server, and self.auth_key is one such key.
    templates: {template_id: spec}, default {32: [1]}. A spec is either a list of group numbers
        (one step per group: command_name "deploy", args "TAG GIT_URL APP_NAME") or a dict
        {"name": temp_name, "creator": str, "users": [nickname or (user_id, nickname)],
         "groups": [group numbers] (one default step each) or "steps": [step]}, a step being
        {"group": 1, "level", "command_name", "command", "args": "TAG GIT_URL APP_NAME" or a list
        of words, "trigger": "order" | "hand" | "timed", "exec_user", "force_host"} (all but group
        optional; level counts up within the group). Templates may be changed after start.
    repos: {(git_url, relative_path): {tag_prefix: rule}} for the git hooks endpoint; a rule is
        {"temp_id": 32, "schedule": "ready", "hosts": {1: "10.0.0.5"}} (schedule defaults to
        "new", hosts to the platform's {1: "127.0.0.1", 2: "127.0.0.1"}); {} or None: no hooks.
    """

    def __init__(
        self,
        auth_key=None,
        templates=None,
        repos=None,
        port=0,
        state_file=None,
        skip_csrf_with_sdk_header=True,
        csrf_ttl=1800,
        nickname="githook",
        verbose=False,
    ):
        if auth_key is not None and not jwt_user_id(auth_key):
            raise ValueError(
                "auth_key must be a well-formed JWT carrying data.user_id: see make_auth_key()"
            )
        self.accept_any_key = auth_key is None
        self.auth_key = auth_key or make_auth_key(nickname=nickname)
        self.templates = dict(templates or {32: [1]})
        self.repos = dict(repos or {})
        self.port = port
        self.state_file = state_file
        self.skip_csrf_with_sdk_header = skip_csrf_with_sdk_header
        self.csrf_ttl = csrf_ttl
        self.nickname = nickname
        self.verbose = verbose
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = None
        self._connections = set()
        self._faults = []
        self.reset()

    # --- running -----------------------------------------------------------

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        """Serve in a daemon thread; after stop(), start() serves again on the same port."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self):
        """Down: stop listening, drop open connections, and leave hung requests unanswered."""
        if self._server is None:
            return
        self._stopping.set()
        self.clear_faults()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in list(self._connections):
                _shut(connection)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- state for tests ---------------------------------------------------

    def reset(self):
        """Back to a fresh platform: no tasks, requests, csrf keys, execution users or faults."""
        self.clear_faults()
        with self._lock:
            self._tasks, self._requests, self._exec_users, self._csrf_keys = [], [], [], {}
            self._next_list_id, self._next_exec_user_id, self._next_sched_id = 1, 1, 1
            self._save_state()

    @property
    def tasks(self):
        with self._lock:
            return list(self._tasks)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def exec_users(self):
        with self._lock:
            return [dict(user) for user in self._exec_users]

    def wait_for_requests(self, count, timeout=5.0):
        """Block until `count` API requests have arrived; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._requests) >= count, timeout)

    def wait_for_tasks(self, count, timeout=5.0):
        """Block until `count` tasks exist; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._tasks) >= count, timeout)

    def task(self, list_id):
        """The task with this list_id; KeyError if there is none."""
        with self._lock:
            return self._task(list_id)

    def _task(self, list_id):
        for task in self._tasks:
            if str(task.list_id) == str(list_id):
                return task
        raise KeyError(f"no task {list_id!r}")

    # --- driving a task through its life (the platform's scheduler and executor) ---
    # A task is created with status '0' and the posted schedule ('new' or 'ready'); its steps start
    # at '1' ('5' for a hand step, '7' for a timed one). Nothing moves it until a test does: a task
    # is "stuck" by default. A task created by commit_then_500 was never published to the queue:
    # start/finish/fail/wait/pause refuse it (ValueError) until republish_task().

    def advance_task(self, list_id, action, **params):
        """One of TASK_ACTIONS on the task; returns it. Also POST /_fake/task {"list_id", "action",
        ...params}."""
        if action not in TASK_ACTIONS:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(TASK_ACTIONS)}")
        with self._lock:
            task = self._task(list_id)
            if action in RUNNING_ACTIONS and not task.published:
                raise ValueError(f"task {task.list_id} was never published: nothing runs it")
            getattr(self, f"_{action}")(task, **params)
            self._lock.notify_all()
            self._save_state()
            return task

    def approve_task(self, list_id, start_time=None, executor=None):
        """Approved in the platform: schedule 'ready', status '1' (optionally a new start_time
        and executor, as the approval sets them)."""
        return self.advance_task(list_id, "approve", start_time=start_time, executor=executor)

    def queue_task(self, list_id):
        """Taken from the queue by the scheduler: schedule 'ready', status '1'."""
        return self.advance_task(list_id, "queue")

    def start_task(self, list_id):
        """Running: schedule 'start', status '2', the first step on each host of the first
        group running ('2')."""
        return self.advance_task(list_id, "start")

    def finish_task(self, list_id):
        """Deployed: every step succeeded ('3'), status '3', schedule 'OK'."""
        return self.advance_task(list_id, "finish")

    def fail_task(self, list_id, host=None, step=None):
        """A step failed on a host: that step '4', the steps before it '3', status '4', schedule
        'start'. host: an IP (default the first of the first group); step: its task_name
        (command_name) or level (default the host's first step)."""
        return self.advance_task(list_id, "fail", host=host, step=step)

    def wait_task(self, list_id, host=None, step=None, timed=False):
        """Waiting at a manual step ('5'), or a timed one with timed=True ('7'): that step and
        the task's status, the steps before it '3', schedule 'start'. host, step: as fail_task."""
        return self.advance_task(list_id, "wait", host=host, step=step, timed=timed)

    def pause_task(self, list_id):
        """Paused: status '6', running steps (or else the first unfinished one) '6', schedule
        'start'."""
        return self.advance_task(list_id, "pause")

    def terminate_task(self, list_id):
        """Terminated in the platform: schedule 'OK', every step '3', status kept."""
        return self.advance_task(list_id, "terminate")

    def republish_task(self, list_id):
        """Published again (someone restarted it): the scheduler may now run it."""
        return self.advance_task(list_id, "republish")

    def update_task(self, list_id, **columns):
        """Set any of the row's columns (status, schedule, start_time, ...) as they are."""
        return self.advance_task(list_id, "update", **columns)

    def _approve(self, task, start_time=None, executor=None):
        task.row.update(schedule="ready", status=QUEUED)
        if start_time:
            task.row["start_time"] = _stored_time(start_time)
        if executor:
            task.row["executor"] = executor
        for step in task.steps:
            if step["task_status"] == NEW:
                step["task_status"] = QUEUED

    def _queue(self, task):
        task.row.update(schedule="ready", status=QUEUED)

    def _start(self, task):
        task.row.update(schedule="start", status=RUNNING)
        pending = [step for step in task.steps if step["task_status"] in (NEW, QUEUED)]
        if pending:
            group = pending[0]["task_group"]
            for host in _unique(step["exec_ip"] for step in pending if step["task_group"] == group):
                first = next(s for s in pending if (s["task_group"], s["exec_ip"]) == (group, host))
                first["task_status"] = RUNNING

    def _finish(self, task):
        task.row.update(schedule="OK", status=SUCCEEDED)
        for step in task.steps:
            step["task_status"] = SUCCEEDED

    def _fail(self, task, host=None, step=None):
        self._stop_at(task, host, step, FAILED)

    def _wait(self, task, host=None, step=None, timed=False):
        self._stop_at(task, host, step, TIMED if timed else MANUAL)

    def _stop_at(self, task, host, step, status):
        target = _find_step(task, host, step)
        order = _group_order(task)
        for each in task.steps:
            earlier_group = order.index(each["task_group"]) < order.index(target["task_group"])
            same_line = (each["task_group"], each["exec_ip"]) == (
                target["task_group"],
                target["exec_ip"],
            )
            if earlier_group or (same_line and each["task_level"] < target["task_level"]):
                each["task_status"] = SUCCEEDED
        target["task_status"] = status
        task.row.update(schedule="start", status=status)

    def _pause(self, task):
        task.row.update(schedule="start", status=PAUSED)
        running = [step for step in task.steps if step["task_status"] == RUNNING]
        unfinished = [step for step in task.steps if step["task_status"] != SUCCEEDED]
        for step in running or unfinished[:1]:
            step["task_status"] = PAUSED

    def _terminate(self, task):
        task.row["schedule"] = "OK"
        for step in task.steps:
            step["task_status"] = SUCCEEDED

    def _republish(self, task):
        task.published = True

    def _update(self, task, **columns):
        unknown = set(columns) - set(task.row)
        if unknown:
            raise ValueError(f"no column {', '.join(sorted(unknown))}")
        task.row.update(columns)

    # --- faults ------------------------------------------------------------

    def set_fault(self, kind, **limits):
        """Replace all faults by one. Limits: times, method, path. Parameters, per kind (see the
        module docstring): seconds (slow, drip); status (status, commit_then_status, redirect);
        location (redirect); size, chunked (drip, flood); body (status, commit_then_status);
        code, msg, create (message)."""
        self.clear_faults()
        return self.add_fault(kind, **limits)

    def add_fault(self, kind, **limits):
        """Add a fault; the first one matching a request applies to it."""
        fault = Fault(kind, **limits)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self):
        """Behave again; requests held by `hang` are then answered normally."""
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.released.set()

    @property
    def faults(self):
        with self._lock:
            return list(self._faults)

    # --- serving -----------------------------------------------------------

    def _serve(self, http):
        url = urlsplit(http.path)
        body = http.rfile.read(int(http.headers.get("Content-Length") or 0))
        if url.path.startswith(CONTROL_PREFIX):
            return _send(http, self._control(http.command, url.path, body), self._stopping)
        request = Received(
            method=http.command,
            path=url.path,
            query={name: values[-1] for name, values in parse_qs(url.query).items()},
            headers=http.headers,
            cookies=_cookies(http.headers.get("Cookie", "")),
            body=body,
        )
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            fault = next((f for f in self._faults if f.take(request.method, request.path)), None)
        request.fault = fault and fault.kind
        reply = self._faulted(fault, request)
        if reply is None or self._stopping.is_set():
            http.close_connection = True
            return
        request.status = reply.status
        _send(http, reply, self._stopping)

    def _faulted(self, fault, request):
        """The reply to send once the fault has played; None: send nothing, close the connection."""
        kind = fault and fault.kind
        if kind == "hang":
            fault.released.wait()
        elif kind == "slow":
            self._stopping.wait(fault.seconds)
        if kind == "status":
            return Reply(
                fault.status, _status_body(fault.status) if fault.body is None else fault.body
            )
        if kind == "non_json":
            return Reply(200, LOGIN_PAGE)
        if kind == "redirect":
            return Reply(
                fault.status, status_page(fault.status), headers=(("Location", fault.location),)
            )
        if kind == "message" and not fault.create:
            return json_reply({"code": fault.code, "msg": fault.msg})
        if self._stopping.is_set():
            return None
        reply = self._answer(request)
        if kind == "close_after_body":
            return None
        if kind == "commit_then_500" and reply.task:
            with self._lock:  # the row is committed, the queue is down: nothing will run it
                reply.task.published = False
                self._save_state()
            return dataclasses.replace(
                reply, status=500, body=SERVER_ERROR, content_type="text/html; charset=UTF-8"
            )
        if kind == "commit_then_status":
            body = reply.body if fault.body is None else fault.body
            return dataclasses.replace(
                reply, status=fault.status, body="" if fault.status == 204 else body
            )
        if kind == "message":
            payload = {"code": fault.code, "msg": fault.msg}
            if reply.task:
                payload["list_id"] = reply.task.list_id
            return dataclasses.replace(json_reply(payload, reply.task), csrf_key=reply.csrf_key)
        if kind in ("drip", "flood"):
            seconds = fault.seconds if kind == "drip" else 0.0
            return dataclasses.replace(
                reply, size=fault.size, chunked=fault.chunked, seconds=seconds
            )
        return reply

    def _answer(self, request):
        """What the task service answers: csrf check, fresh key, login check, method, handler."""
        methods = ROUTE_METHODS.get(request.path)
        if methods is None:
            return Reply(404, NOT_FOUND_PAGE)
        if request.method != "GET" and not self._csrf_exempt(request):
            if not request.cookies.get("csrf_key"):
                request.error = "no csrf_key cookie"  # websdk's check crashes: 500, no new key
                return Reply(500, SERVER_ERROR)
            if not self._consume_csrf(request):
                return Reply(402, CSRF_ERROR)  # no new key either
        csrf_key = self._issue_csrf_key()
        auth_key = self._auth_key_of(request)
        if auth_key and jwt_payload(auth_key) is None:
            request.error = "auth_key is not a JWT"
            reply = Reply(500, SERVER_ERROR)
        elif not self._logged_in(auth_key):
            reply = Reply(401, NOT_LOGGED_IN)
        elif request.method not in methods:
            reply = Reply(405)
        else:
            reply = self._handled(request, csrf_key)
        reply.csrf_key = csrf_key
        return reply

    def _logged_in(self, auth_key):
        if not jwt_user_id(auth_key):
            return False
        return self.accept_any_key or auth_key == self.auth_key

    def _handled(self, request, csrf_key):
        handler = {
            ACCEPT_PATH: self._accept,
            GIT_HOOKS_PATH: self._git_hooks,
            EXEC_USERS_PATH: self._exec_user,
            LIST_PATH: self._task_list,
            CHECK_HISTORY_PATH: self._check_history,
            CHECK_PATH: self._check,
            TEMPLATES_PATH: self._templates_list,
            TEMPLATE_DETAILS_PATH: self._template_details,
        }
        try:
            return handler[request.path](request, csrf_key)
        except BAD_INPUT as error:
            request.error = f"{type(error).__name__}: {error}"
            return Reply(500, SERVER_ERROR)

    # --- csrf and login ----------------------------------------------------

    def _csrf_exempt(self, request):
        return self.skip_csrf_with_sdk_header and "Sdk-Method" in request.headers

    def _consume_csrf(self, request):
        """A live key passes once: it is gone whatever happens to the request next."""
        with self._lock:
            issued = self._csrf_keys.pop(request.cookies.get("csrf_key"), None)
        return issued is not None and time.monotonic() - issued < self.csrf_ttl

    def _issue_csrf_key(self):
        key = "".join(secrets.choice(CSRF_KEY_ALPHABET) for _ in range(CSRF_KEY_CHARS))
        with self._lock:
            self._csrf_keys[key] = time.monotonic()
        return key

    @staticmethod
    def _auth_key_of(request):
        return request.cookies.get("auth_key") or request.query.get("auth_key")

    # --- the endpoints -----------------------------------------------------

    @staticmethod
    def _csrf_reply(csrf_key):
        return json_reply({"code": 0, "msg": "获取csrf_key成功", "csrf_key": csrf_key})

    def _accept(self, request, csrf_key):
        if request.method == "GET":
            return self._csrf_reply(csrf_key)
        return self._create_task(request, _json_object(request.body))

    def _git_hooks(self, request, csrf_key):
        if request.method == "GET":
            return self._csrf_reply(csrf_key)
        data = _json_object(request.body)
        git_url, relative_path, tag = (
            data.get("git_url"),
            data.get("relative_path"),
            data.get("tag_name"),
        )
        if not git_url or not relative_path or not tag:
            return json_reply({"code": -1, "msg": "Key parameters cannot be empty"})
        if (git_url, relative_path) not in self.repos:
            return json_reply({"code": 0, "msg": "No related items were found"})
        rules = self.repos[(git_url, relative_path)]
        if not rules:
            return json_reply({"code": 0, "msg": "No hooks, ignore"})
        matched = [prefix for prefix in rules if tag.startswith(prefix)]
        if not matched:
            return json_reply({"code": 2, "msg": "No hook matched"})
        rule = rules[matched[-1]]  # the platform keeps the last matching key, not the longest
        host = urlsplit(git_url).hostname or git_url
        args = {
            "TAG": tag,
            "RELATIVE_PATH": relative_path,
            "GIT_SSH_URL": f"git@{host}:{relative_path}.git",
            "GIT_HTTP_URL": f"{git_url.rstrip('/')}/{relative_path}.git",
        }
        fields = {
            "exec_time": datetime.datetime.now().strftime(EXEC_TIME_FORMAT),
            "temp_id": rule.get("temp_id"),
            "task_name": relative_path,
            "schedule": rule.get("schedule", "new"),
            "submitter": self.nickname,
            "args": str(args),
            "hosts": str(rule.get("hosts", GIT_HOOKS_DEFAULT_HOSTS)),
        }
        return self._create_task(request, fields)

    def _create_task(self, request, fields):
        """The platform's create_task: host checks answer codes, bad columns raise (500)."""
        hosts = ast.literal_eval(fields.get("hosts", "{}"))
        hosts = {int(group): ips for group, ips in hosts.items()}
        template = self._template(fields.get("temp_id"))
        if template is None:
            raise ServerError(f"no template {fields.get('temp_id')!r}")  # .one() finds no row
        groups = _template_groups(template)
        for group in groups:
            ips = hosts.get(group)
            if not ips:
                return json_reply({"code": -4, "msg": "The exec host cannot be empty"})
            if len(ips.split(",")) > GROUP_MAX_HOSTS:
                return json_reply({"code": -4, "msg": "Too many hosts, please execute in groups"})
            if not all(_is_ipv4(ip) for ip in ips.split(",")):
                return json_reply({"code": 5, "msg": "ip格式有误"})
        _check_columns(fields)
        hosts = {g: hosts[g] for g in groups}
        associated_user = _associated_user(template, fields)
        with self._lock:
            task = Task(self._next_list_id, request.path, request.text, fields, hosts)
            task.row = {
                "list_id": task.list_id,
                "task_name": fields.get("task_name"),
                "task_type": fields.get("task_type") or template["temp_name"],
                "hosts": str(hosts),
                "args": fields.get("args", "{}"),
                "details": fields.get("details", ""),
                "description": "",
                "associated_user": associated_user,
                "creator": fields.get("submitter"),
                "executor": fields.get("executor", ""),
                "status": NEW,
                "schedule": fields.get("schedule", "new"),
                "temp_id": str(fields.get("temp_id")),
                "create_time": datetime.datetime.now().strftime(EXEC_TIME_FORMAT),
                "start_time": _stored_time(fields.get("exec_time", EXEC_TIME_DEFAULT)),
            }
            task.steps = self._new_steps(task.list_id, template, hosts)
            self._next_list_id += 1
            self._tasks.append(task)
            self._lock.notify_all()
            self._save_state()
        return json_reply(
            {
                "code": 0,
                "msg": f"Task creation success, ID：{task.list_id}",
                "list_id": task.list_id,
            },
            task,
        )

    def _template(self, temp_id):
        """The template with this id, normalised (see _template_spec); None if there is none."""
        for known, spec in list(self.templates.items()):
            if str(known) == str(temp_id):
                return _template_spec(known, spec)
        return None

    def _all_templates(self):
        return sorted(
            (_template_spec(known, spec) for known, spec in list(self.templates.items())),
            key=lambda template: _sort_id(template["temp_id"]),
        )

    def _new_steps(self, list_id, template, hosts):
        """The platform's new_task: one step per group, host and template step of that group."""
        steps = []
        for group, ips in hosts.items():
            for ip in ips.split(","):
                for step in template["steps"]:
                    if step["group"] != group:
                        continue
                    steps.append(
                        {
                            "sched_id": self._next_sched_id,
                            "list_id": str(list_id),
                            "task_group": group,
                            "task_level": step["level"],
                            "task_name": step["command_name"],
                            "task_cmd": step["command"],
                            "task_args": step["args"],
                            "trigger": step["trigger"],
                            "exec_user": step["exec_user"],
                            "force_host": step["force_host"],
                            "exec_ip": ip,
                            "task_status": TRIGGER_STATUS.get(step["trigger"], QUEUED),
                        }
                    )
                    self._next_sched_id += 1
        return steps

    # --- the read endpoints (shared/codo-api.md, "Reading tasks back", "Templates") ---

    def _task_list(self, request, csrf_key):
        """Unfinished tasks, newest start_time first; count before visibility, filter after paging."""
        offset, limit = _paging(request, LIST_LIMIT)
        with self._lock:
            rows = [dict(t.row) for t in self._tasks if t.row["schedule"] not in (None, "OK")]
        count = len(rows)
        rows.sort(key=lambda row: (row["start_time"] or "", row["list_id"]), reverse=True)
        rows = [row for row in rows[offset : offset + limit] if _visible(row, request)]
        first = rows[0]["list_id"] if rows else ""
        return json_reply(
            {"code": 0, "msg": "获取成功", "data": rows, "count": count, "list_id": first}
        )

    def _check_history(self, request, csrf_key):
        """Finished tasks, highest list_id first; search_val a LIKE 'S%' on some columns, not args."""
        offset, limit = _paging(request, HISTORY_LIMIT)
        search = (request.query.get("search_val") or "").strip()
        with self._lock:
            rows = [dict(t.row) for t in self._tasks if t.row["schedule"] == "OK"]
        count = len(rows)
        if search:
            rows = [
                row
                for row in rows
                if any(_like_prefix(row[column], search) for column in HISTORY_SEARCHED)
            ]
        rows.sort(key=lambda row: row["list_id"], reverse=True)
        rows = [row for row in rows[offset : offset + limit] if _visible(row, request)]
        return json_reply(
            {"code": 0, "msg": "获取成功", "data": rows, "count": count, "history": True}
        )

    def _check(self, request, csrf_key):
        """One task, its steps on one host of one group, the status of each host of that group."""
        list_id = (request.query.get("list_id") or "").strip()
        if not list_id:
            return json_reply({"code": -1, "msg": "订单ID不能为空"})
        with self._lock:
            try:
                task = self._task(list_id)
            except KeyError:
                raise ServerError(f"no task {list_id!r}") from None  # None.temp_id
            row, steps = dict(task.row), [dict(step) for step in task.steps]
        template = self._template(row["temp_id"])
        hand_list = [
            step["command_name"]
            for step in (template["steps"] if template else [])
            if step["trigger"] == "hand"
        ]
        try:
            args = ast.literal_eval(row["args"])
        except Exception:  # the platform prints it and goes on with {}
            args = {}
        args = args if isinstance(args, dict) else {}
        all_hosts = ast.literal_eval(row["hosts"])
        group_list = list(all_hosts)
        run_group = (request.query.get("get_run_group") or "").strip()
        if not run_group:
            if not group_list:
                return json_reply({"code": -1, "msg": "没有可运行组"})
            busy = [s for s in steps if s["task_status"] in (RUNNING, FAILED)]
            run_group = busy[0]["task_group"] if len(group_list) > 1 and busy else group_list[0]
        this_hosts = all_hosts.get(int(run_group))
        if not this_hosts:
            return json_reply({"code": -2, "msg": "运行组中没有可执行主机"})
        this_host_list = this_hosts.split(",")
        this_host = (request.query.get("get_run_host") or "").strip() or this_host_list[0]
        in_group = sorted(
            (s for s in steps if str(s["task_group"]) == str(run_group)),
            key=lambda s: s["task_level"],
        )
        scheduler_list = [s for s in in_group if s["exec_ip"] == this_host]
        hosts_status = {
            host: _host_status([s["task_status"] for s in in_group if s["exec_ip"] == host])
            for host in this_host_list
        }
        admin_user = ast.literal_eval(row["associated_user"]).get("admin")
        identity = _identity(request)
        data = {
            "create_time": row["create_time"],
            "start_time": row["start_time"],
            "username": identity.get("username"),
            "creator": row["creator"],
            "executor": row["executor"],
            "new_args": args,
            "new_args_list": [{"args_key": k, "args_value": v} for k, v in args.items()],
            "schedule": row["schedule"],
            "associated_user": "，".join(admin_user),
            "approval_button": identity.get("nickname") in admin_user
            or bool(identity.get("is_superuser")),
            "args_keys": list(args),
            "hand_list": hand_list,
            "group_list": group_list,
            "run_group": str(run_group),
            "this_host_list": this_host_list,
            "this_host": this_host,
            "scheduler_list": scheduler_list,
            "hosts_status": hosts_status,
            "list_id": str(list_id),
        }
        return json_reply({"code": 0, "msg": "获取订单信息成功", "data": data})

    def _templates_list(self, request, csrf_key):
        """All templates by temp_id, or those whose column `key` equals `value`."""
        key = (request.query.get("key") or "").strip()
        value = (request.query.get("value") or "").strip()
        entries = [
            {"temp_id": t["temp_id"], "temp_name": t["temp_name"], "creator": t["creator"]}
            for t in self._all_templates()
        ]
        if key and value:
            if key not in TEMPLATE_COLUMNS:
                raise ServerError(f"no column {key!r}")  # filter_by(**{key: value})
            entries = [entry for entry in entries if _column_equals(entry.get(key), value)]
        return json_reply({"code": 0, "msg": "获取成功", "data": entries})

    def _template_details(self, request, csrf_key):
        """The template's steps by group and level, and its users as "user_id,,,nickname"."""
        temp_id = (request.query.get("temp_id") or "").strip()
        if not temp_id:
            return json_reply({"code": -1, "msg": "模板ID不能为空"})
        template = self._template(temp_id)
        temp_list, temp_user = [], []
        if template:
            for number, step in enumerate(template["steps"], 1):
                temp_list.append(
                    dict(
                        step,
                        id=number,
                        temp_id=str(template["temp_id"]),
                        creator=template["creator"],
                    )
                )
            temp_list.sort(key=lambda step: (step["group"], step["level"]))
            temp_user = [f"{user_id},,,{nickname}" for user_id, nickname in template["users"]]
        return json_reply(
            {
                "code": 0,
                "msg": "获取模板详情成功",
                "data": {"temp_list": temp_list, "temp_user": temp_user},
                "temp_user": temp_user,
            }
        )

    def _exec_user(self, request, csrf_key):
        if request.method == "GET":
            return json_reply({"code": 0, "msg": "获取成功", "data": self.exec_users})
        data = _json_object(request.body)
        with self._lock:
            if request.method == "POST":
                return self._add_exec_user(data)
            if request.method == "PUT":
                return self._update_exec_user(data)
            return self._delete_exec_user(data)

    def _add_exec_user(self, data):
        if not all(data.get(name) for name in ("alias_user", "exec_user", "ssh_port", "user_key")):
            return json_reply({"code": -1, "msg": "参数不能为空"})
        if _has_chinese(data["alias_user"]) or _has_chinese(data["exec_user"]):
            return json_reply({"code": -1, "msg": "名称不能有汉字"})
        if any(user["alias_user"] == data["alias_user"] for user in self._exec_users):
            return json_reply({"code": -2, "msg": "名称不能重复"})
        user = {"id": self._next_exec_user_id, "alias_user": data["alias_user"]}
        self._exec_users.append(_with_exec_user_fields(user, data))
        self._next_exec_user_id += 1
        return json_reply({"code": 0, "msg": "添加成功"})

    def _update_exec_user(self, data):
        """By id; like the platform, alias_user is not changed and an unknown id is not an error."""
        if not data.get("exec_user") or not data.get("user_key"):
            return json_reply({"code": -1, "msg": "不能为空"})
        if _has_chinese(data.get("alias_user") or "") or _has_chinese(data["exec_user"]):
            return json_reply({"code": -1, "msg": "名称不能有汉字"})
        for user in self._exec_users:
            if str(user["id"]) == str(data.get("id")):
                _with_exec_user_fields(user, data)
        return json_reply({"code": 0, "msg": "编辑成功"})

    def _delete_exec_user(self, data):
        if not data.get("exec_user_id"):
            return json_reply({"code": -1, "msg": "ID不能为空"})
        self._exec_users = [
            user for user in self._exec_users if str(user["id"]) != str(data["exec_user_id"])
        ]
        return json_reply({"code": 0, "msg": "删除成功"})

    # --- control over HTTP (standalone use) --------------------------------

    def _control(self, method, path, body):
        if (method, path) == ("GET", "/_fake/tasks"):
            return json_reply([task.as_json() for task in self.tasks])
        if (method, path) == ("GET", "/_fake/requests"):
            return json_reply([request.as_json() for request in self.requests])
        if (method, path) == ("GET", "/_fake/fault"):
            return json_reply([fault.as_json() for fault in self.faults])
        if (method, path) == ("POST", "/_fake/fault"):
            return self._control_faults(body)
        if (method, path) == ("POST", "/_fake/task"):
            return self._control_task(body)
        if (method, path) == ("POST", "/_fake/reset"):
            self.reset()
            return json_reply({"reset": True})
        return json_reply({"error": f"no control endpoint {method} {path}"}, status=404)

    def _control_task(self, body):
        """Body: {"list_id": 3, "action": "fail", "host": "10.0.0.5", "step": "deploy"}; the
        parameters as advance_task's. Answers the task as GET /_fake/tasks lists it."""
        try:
            wanted = json.loads(body or b"{}")
            list_id, action = wanted.pop("list_id", None), wanted.pop("action", None)
            task = self.advance_task(list_id, action, **wanted)
        except KeyError as error:  # no such task
            return json_reply({"error": error.args[0]}, status=404)
        except (AttributeError, TypeError, ValueError) as error:
            return json_reply({"error": str(error)}, status=400)
        return json_reply(task.as_json())

    def _control_faults(self, body):
        """Body: one fault ({"kind": "status", "status": 502, "times": 2, "method": "POST"}),
        a list of them, or {} to clear."""
        self.clear_faults()
        try:
            wanted = json.loads(body or b"{}")
            for limits in (
                wanted if isinstance(wanted, list) else [wanted] if wanted.get("kind") else []
            ):
                self.add_fault(**limits)
        except (AttributeError, TypeError, ValueError) as error:
            return json_reply({"error": f"not a fault: {error}"}, status=400)
        return json_reply([fault.as_json() for fault in self.faults])

    def _save_state(self):
        """Write the tasks for another process to read (called with the lock held)."""
        if not self.state_file:
            return
        scratch = f"{self.state_file}.{os.getpid()}.tmp"
        with open(scratch, "w", encoding="utf-8") as handle:
            json.dump(
                [task.as_json() for task in self._tasks], handle, ensure_ascii=False, indent=1
            )
        os.replace(scratch, self.state_file)

    def _track(self, connection, is_open):
        with self._lock:
            (self._connections.add if is_open else self._connections.discard)(connection)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Tornado
    timeout = 30  # idle keep-alive connections do not outlive a test run
    fake = None  # the FakeCodo, set by FakeCodo.start

    def setup(self):
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self):
        self.fake._track(self.connection, False)
        super().finish()

    def do_GET(self):
        self.fake._serve(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def version_string(self):
        return "TornadoServer/5.1.1"

    def log_message(self, format, *args):
        if self.fake.verbose:
            super().log_message(format, *args)


def _status_body(status):
    return "" if 200 <= status <= 299 else status_page(status)


def _send(http, reply, stopping):
    body = reply.body.encode("utf-8")
    size = max(len(body), reply.size or 0)
    has_body = reply.status not in (204, 304) and reply.status >= 200
    try:
        http.send_response(reply.status)
        http.send_header("Content-Type", reply.content_type)
        if has_body and reply.chunked:
            http.send_header("Transfer-Encoding", "chunked")
        elif has_body:
            http.send_header("Content-Length", str(size))
        for name, value in reply.headers:
            http.send_header(name, value)
        if reply.csrf_key:
            http.send_header("Set-Cookie", f"csrf_key={reply.csrf_key}; Path=/")
        http.end_headers()
        if has_body and http.command != "HEAD":
            _send_body(http, body, size, reply, stopping)
    except OSError:  # the client gave up (its timeout); the platform does not care either
        http.close_connection = True


def _send_body(http, body, size, reply, stopping):
    """The body, padded with spaces to `size`, in pieces: all at once, in chunks, or dripping."""
    steps = (
        max(1, min(size, int(reply.seconds * 100)))
        if reply.seconds > 0
        else max(1, -(-size // STREAM_CHUNK))
    )
    piece = -(-size // steps)
    padding = b" " * min(piece, STREAM_CHUNK)
    started, sent = time.monotonic(), 0
    while sent < size:
        end = min(size, sent + piece)
        if reply.seconds > 0 and stopping.wait(
            max(0.0, started + reply.seconds * end / size - time.monotonic())
        ):
            http.close_connection = True
            return
        data = body[sent:end]
        while len(data) < end - sent:
            data += padding[: end - sent - len(data)]
        _write(http, data, reply.chunked)
        sent = end
    if reply.chunked:
        http.wfile.write(b"0\r\n\r\n")


def _write(http, data, chunked):
    if chunked:
        http.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
    else:
        http.wfile.write(data)


def _shut(connection):
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _cookies(header):
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _json_object(body):
    data = json.loads(body.decode("utf-8"))
    if not isinstance(data, dict):
        raise ServerError("the body is not a JSON object")
    return data


def _is_ipv4(text):
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _check_columns(fields):
    """What the INSERT refuses (MariaDB, strict mode): too long text, args not text, a bad time."""
    for name in ("task_name", "details", "submitter", "executor"):
        value = fields.get(name)
        if isinstance(value, str) and len(value) > COLUMN_CHARS:
            raise ServerError(f"{name} longer than {COLUMN_CHARS} characters")
    if not isinstance(fields.get("args", "{}"), str):
        raise ServerError("args is not a string")
    datetime.datetime.strptime(fields.get("exec_time", EXEC_TIME_DEFAULT), EXEC_TIME_FORMAT)


HISTORY_SEARCHED = ("list_id", "task_type", "temp_id", "creator", "executor", "status", "task_name")
TEMPLATE_COLUMNS = ("temp_id", "temp_name", "creator")


def _template_spec(temp_id, spec):
    """A template as FakeCodo(templates=...) gives it -> {"temp_id", "temp_name", "creator",
    "users": [(user_id, nickname)], "steps": [{"group", "level", "command_name", "command", "args",
    "trigger", "exec_user", "force_host"}]}."""
    if not isinstance(spec, dict):
        spec = {"groups": spec}
    steps = spec.get("steps")
    if steps is None:
        steps = [{"group": group} for group in spec.get("groups", [1])]
    levels, normalised = {}, []
    for given in steps:
        step = dict(STEP_DEFAULTS)
        step.update(given)
        step["group"] = int(step.get("group", 99))
        levels[step["group"]] = levels.get(step["group"], 0) + 1
        step["level"] = int(step.get("level", levels[step["group"]]))
        if not isinstance(step["args"], str):
            step["args"] = " ".join(step["args"])
        normalised.append(step)
    users = []
    for number, user in enumerate(spec.get("users", ()), 2):
        users.append((number, user) if isinstance(user, str) else (user[0], user[1]))
    return {
        "temp_id": _sort_id(temp_id),
        "temp_name": spec.get("name", f"template-{temp_id}"),
        "creator": spec.get("creator", "admin"),
        "users": users,
        "steps": normalised,
    }


def _template_groups(template):
    """The template's host groups, as the platform's GROUP BY gives them: ascending."""
    return sorted({step["group"] for step in template["steps"]})


def _sort_id(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _associated_user(template, fields):
    """{'admin': [template users' nicknames + submitter]}, merged with a posted associated_user."""
    users = [nickname for _, nickname in template["users"]]
    submitter = fields.get("submitter")
    if submitter not in users:
        users.append(submitter)
    associated = {"admin": users}
    posted = fields.get("associated_user")
    if posted:
        posted = ast.literal_eval(posted)
        if not isinstance(posted, dict):
            raise ServerError("associated_user is not a dict")  # the INSERT gets a dict: 500
        associated = dict(associated, **posted)
    return str(associated)


def _stored_time(text):
    """What a DATETIME column gives back for a posted time: `%Y-%m-%d %H:%M:%S`."""
    return datetime.datetime.strptime(text, EXEC_TIME_FORMAT).strftime(EXEC_TIME_FORMAT)


def _unique(items):
    return list(dict.fromkeys(items))


def _group_order(task):
    return _unique(step["task_group"] for step in task.steps)


def _find_step(task, host=None, step=None):
    """The step `step` (task_name or level) on `host` (an IP); defaults: the first of each."""
    if not task.steps:
        raise ValueError(f"task {task.list_id} has no steps")
    hosts = _unique(each["exec_ip"] for each in task.steps)
    host = host or hosts[0]
    candidates = sorted(
        (each for each in task.steps if each["exec_ip"] == host),
        key=lambda each: (_group_order(task).index(each["task_group"]), each["task_level"]),
    )
    if step is not None:
        candidates = [
            each for each in candidates if str(step) in (each["task_name"], str(each["task_level"]))
        ]
    if not candidates:
        raise ValueError(f"task {task.list_id} has no step {step!r} on {host!r}")
    return candidates[0]


def _paging(request, default_limit):
    """(offset, limit) from page and limit: not numbers, or a negative offset or limit, are what
    makes the platform's query raise (500)."""
    page = int((request.query.get("page") or "1").strip())
    limit = int((request.query.get("limit") or str(default_limit)).strip())
    offset = (page - 1) * limit
    if offset < 0 or limit < 0:
        raise ServerError(f"page {page}, limit {limit}: a negative OFFSET or LIMIT")
    return offset, limit


def _identity(request):
    """The key's data {user_id, username, nickname, is_superuser, ...}, as websdk reads it."""
    key = request.cookies.get("auth_key") or request.query.get("auth_key")
    data = (jwt_payload(key) or {}).get("data")
    return data if isinstance(data, dict) else {}


def _visible(row, request):
    """list/ and check_history/: the key's username or nickname among the task's associated
    users (every list of the dict, not only 'admin'), or a superuser key."""
    identity = _identity(request)
    users = [user for group in ast.literal_eval(row["associated_user"]).values() for user in group]
    return (
        identity.get("username") in users
        or identity.get("nickname") in users
        or bool(identity.get("is_superuser"))
    )


def _like_prefix(value, pattern):
    """MySQL's `value LIKE 'pattern%'`: % and _ are wildcards, \\ escapes, case-insensitive;
    NULL never matches."""
    if value is None:
        return False
    regex, escaped = [], False
    for char in pattern:
        if escaped:
            regex.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            regex.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.fullmatch("".join(regex) + ".*", str(value), re.IGNORECASE | re.DOTALL) is not None


def _column_equals(column, value):
    """MySQL's `column = 'value'`: numbers compare as numbers, text case-insensitively."""
    if isinstance(column, int):
        try:
            return column == float(value)
        except ValueError:
            return False
    return column is not None and str(column).lower() == value.lower()


def _host_status(statuses):
    """A host's status from its steps' task_status, in the platform's order of precedence."""
    status = FAILED
    if NEW in statuses:
        status = NEW
    if QUEUED in statuses:
        status = QUEUED
    if RUNNING in statuses:
        status = RUNNING
    if MANUAL in statuses and QUEUED not in statuses and RUNNING not in statuses:
        status = MANUAL
    if PAUSED in statuses:
        status = PAUSED
    if TIMED in statuses:
        status = TIMED
    if FAILED in statuses:
        status = FAILED
    if SUCCEEDED in statuses and len(set(statuses)) == 1:
        status = SUCCEEDED
    return status


def _has_chinese(text):
    return any("\u4e00" <= char <= "\u9fff" for char in text)


def _with_exec_user_fields(user, data):
    user.update({name: data.get(name) for name in ("exec_user", "ssh_port", "user_key", "remarks")})
    user["update_time"] = datetime.datetime.now().strftime(EXEC_TIME_FORMAT)
    return user


# --- standalone ------------------------------------------------------------


def _template(text):
    """`32:1,2` -> (32, [1, 2])"""
    temp_id, _, groups = text.partition(":")
    return int(temp_id), [int(group) for group in groups.split(",") if group] or [1]


def _repos(path):
    """A JSON list of {"git_url", "relative_path", "hooks": {tag_prefix: rule}}."""
    with open(path, encoding="utf-8") as handle:
        entries = json.load(handle)
    return {(entry["git_url"], entry["relative_path"]): entry.get("hooks") for entry in entries}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    parser.add_argument(
        "--auth-key-file", required=True, help="the one auth_key accepted: a JWT with data.user_id"
    )
    parser.add_argument(
        "--template", type=_template, action="append", help="TEMP_ID:GROUP,GROUP (repeatable)"
    )
    parser.add_argument(
        "--templates-file",
        help='templates as JSON {"32": spec}, a spec as FakeCodo(templates=...) takes (added to --template)',
    )
    parser.add_argument(
        "--repos-file", help="git hooks rules, a JSON list of {git_url, relative_path, hooks}"
    )
    parser.add_argument("--state-file", help="keep the created tasks in this JSON file")
    parser.add_argument(
        "--no-sdk-csrf-skip", action="store_true", help="check csrf even with an Sdk-Method header"
    )
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    options = parser.parse_args(argv)
    with open(options.auth_key_file, encoding="utf-8") as handle:
        auth_key = handle.read().strip()
    if not jwt_user_id(auth_key):
        parser.error(
            f"{options.auth_key_file}: not a well-formed JWT carrying data.user_id (see make_auth_key)"
        )
    templates = dict(options.template or ())
    if options.templates_file:
        with open(options.templates_file, encoding="utf-8") as handle:
            templates.update({_sort_id(key): spec for key, spec in json.load(handle).items()})
    fake = FakeCodo(
        auth_key=auth_key,
        templates=templates or None,
        repos=_repos(options.repos_file) if options.repos_file else None,
        port=options.port,
        state_file=options.state_file,
        skip_csrf_with_sdk_header=not options.no_sdk_csrf_skip,
        verbose=options.verbose,
    ).start()
    print(fake.url, flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
