"""The platform (CODO task API) client: one time budget per push, and a retry only when the
request surely created nothing.

`Platform.submit` returns a `Result`: sent (with the task id), skipped, pending (nothing got
through: resend), uncertain (the task may exist: settle it by reading the task lists back) or
failed (the platform refused it). Its readers (`find_task`, `task_state`, `template_steps`) serve
settling, following and `check-config --probe`. Every reply is parsed strictly and bounded in
size; nothing from it reaches the pusher unescaped. See shared/codo-api.md.
"""

import time

from . import FAILED, PENDING, SENT, SKIPPED, UNCERTAIN
from .config import parse_json
from .decisions import GIT_HOOKS_PATH
from .output import one_line, say, shown

PLATFORM_SKIP_MESSAGES = ("No hooks, ignore",)


PLATFORM_UNKNOWN_PROJECT = "No related items were found"


REPLY_LIMIT = (
    64 * 1024
)  # the platform's replies are a few hundred bytes; anything larger is not its reply


# A page of a task list (each row carries its hosts, args and users) or a task's steps (each with its
# command) is larger: a project's 100 latest tasks run to 50 KiB and more.
READ_LIMIT = 4 * 1024 * 1024


CSRF_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class Result:
    def __init__(self, outcome, detail, task_id=None, platform_down=False, error_reply=False):
        self.outcome, self.detail, self.task_id = outcome, detail, task_id
        self.error_reply = error_reply  # uncertain after the platform answered with an error
        self.body = None  # what was posted, kept with an uncertain release to settle it by
        self.platform_down = (
            platform_down  # nothing got through: later releases skip straight to the spool
        )


class BudgetExceeded(BaseException):
    """Raised by the timer; a BaseException so no library's `except Exception` swallows it."""


class Budget:
    """One time budget for a whole push (or one flush attempt), enforced by a timer signal.

    requests' timeouts bound each socket wait, not a reply that drips in, nor a DNS lookup,
    nor a regular expression that backtracks; the timer bounds them all (re checks signals).
    """

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self):
        return self.deadline - time.monotonic()

    def extend(self, seconds):
        """Give back time that was not the budget's to spend (importing requests on a loaded CPU)."""
        self.deadline += seconds

    def __enter__(self):
        try:
            import signal

            signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))
            self._armed = True
        except ValueError:  # not the main thread: timeouts alone bound the wait
            self._armed = False
        return self

    def __exit__(self, *exc):
        if self._armed:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)

    @staticmethod
    def _expired(signum, frame):
        raise BudgetExceeded()


class Platform:
    """The task platform's API: csrf handshake, then one POST; classifies every reply.

    Nothing here follows a redirect, reads more than REPLY_LIMIT of a reply, or puts a reply's
    text or a header value into a message unescaped.
    """

    RETRIES = 3

    def __init__(self, codo, auth_key, key_file=None):
        import requests  # here, so that no time budget pays for the import

        self.requests = requests
        self.codo = codo
        self.auth_key = auth_key
        self.key_file = key_file or "the key"
        self.base = codo["url"].rstrip("/")
        self.posted = False

    def submit(self, path, body, budget, template_id=None):
        """Send one release within the budget; retry only what surely created nothing."""
        self.posted = (
            False  # True once a body may have left: an error after that leaves it uncertain
        )
        detail = "no attempt made"
        for attempt in range(self.RETRIES):
            if budget.left() <= 0:
                break
            if attempt:
                time.sleep(max(min(0.2 * 2**attempt, budget.left() - 0.5), 0))
            result = self._attempt(path, body, budget, template_id)
            if result.outcome != "retry":
                result.body = body
                return result
            detail = result.detail
        return Result(PENDING, detail or "time budget used up", platform_down=True)

    def _attempt(self, path, body, budget, template_id):
        url = self.base + path
        try:
            with budget:
                csrf = self._csrf_key(url, budget)
        except BudgetExceeded:
            return Result(
                PENDING, "time budget used up before the platform answered", platform_down=True
            )
        except Unreachable as error:
            return Result("retry", str(error))
        except NotSent as error:
            return Result(PENDING, str(error), platform_down=error.platform_down)
        try:
            with budget:
                status, headers, payload = self._request("POST", url, budget, body=body, csrf=csrf)
        except BudgetExceeded:
            return Result(
                UNCERTAIN,
                "time budget used up while the platform handled the task",
                platform_down=True,
            )
        except NotSent as error:
            return Result(PENDING, str(error), platform_down=error.platform_down)
        except Unreachable as error:
            return Result("retry", str(error))
        except _MaybeSent as error:
            return Result(UNCERTAIN, str(error), platform_down=True)
        return self._classify(path, url, status, headers, payload, template_id)

    def _request(self, method, url, budget, body=None, csrf=None, limit=REPLY_LIMIT):
        """(status, headers, parsed JSON or None) of one request; the body read up to `limit`.

        Raises Unreachable (no connection made), NotSent (TLS) or, for a POST whose body may have
        left, _MaybeSent."""
        requests = self.requests
        cookies = {"auth_key": self.auth_key}
        if csrf:
            cookies["csrf_key"] = csrf
        self.posted = self.posted or method == "POST"
        try:
            reply = requests.request(
                method,
                url,
                data=body,
                cookies=cookies,
                headers={"Connection": "close"},
                timeout=self._timeouts(budget),
                verify=self._verify(),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.SSLError as error:
            raise NotSent(f"TLS failed: {_reason(error)}; set codo.ca_file for a private CA")
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as error:
            if method == "GET" or _connection_never_made(error):
                raise Unreachable(f"platform unreachable: {_reason(error)}")
            raise _MaybeSent(f"connection lost after the task was sent: {_reason(error)}")
        except requests.exceptions.RequestException as error:
            if method == "GET":
                raise Unreachable(f"no reply from the platform: {_reason(error)}")
            raise _MaybeSent(f"no reply to the task: {_reason(error)}")
        try:
            raw = _read_limited(reply, limit)
        except (requests.exceptions.RequestException, ValueError, OSError) as error:
            problem = (
                f"HTTP {reply.status_code} with a reply that could not be read: {_reason(error)}"
            )
            if method == "GET":
                raise Unreachable(problem)
            raise _MaybeSent(problem)
        finally:
            reply.close()
        if raw is None:
            problem = f"HTTP {reply.status_code} with a reply over {limit // 1024} KiB: not the platform's"
            if method == "GET":
                raise NotSent(problem + "; check codo.url", platform_down=True)
            raise _MaybeSent(problem)
        return reply.status_code, reply.headers, _json(raw)

    def _csrf_key(self, url, budget):
        """GET a single-use csrf key. Nothing is created by a GET, so every failure here is safe."""
        status, headers, payload = self._request("GET", url, budget)
        if status == 200:
            key = payload.get("csrf_key") if isinstance(payload, dict) else None
            if isinstance(key, str) and 0 < len(key) <= 64 and set(key) <= CSRF_KEY_CHARS:
                return key
            raise NotSent(
                f"{url} answered, but not with the platform's csrf key: check codo.url",
                platform_down=True,
            )
        if 300 <= status < 400:
            raise NotSent(_redirected(url, status, headers))
        if status == 401:
            raise NotSent(self._key_refused())
        if status == 404:
            raise NotSent(
                f"{url} is not the platform's task API (HTTP 404): check codo.url, the platform's address"
            )
        if status == 500:
            raise NotSent(
                "the platform failed on the csrf request (HTTP 500): it is broken or cannot read the key "
                f"(a key that is not one of its JWTs gets 500): check {self.key_file} and the platform's log",
                platform_down=True,
            )
        if status in (502, 503, 504):
            raise Unreachable(
                f"the gateway in front of the platform answered HTTP {status}: the task service is down"
            )
        raise NotSent(f"HTTP {status} to the csrf request: check codo.url", platform_down=True)

    def _key_refused(self):
        return (
            f"the platform rejected the auth key (HTTP 401): the key in {self.key_file} was revoked or has no user; "
            "put a current key there"
        )

    def _classify(self, path, url, status, headers, payload, template_id):
        if status in (402, 503):
            return Result(
                "retry",
                "HTTP {} ({}) before the task was created".format(
                    status, "csrf key refused" if status == 402 else "unavailable"
                ),
            )
        if 300 <= status < 400:
            return Result(PENDING, _redirected(url, status, headers))
        if status == 401:
            return Result(PENDING, self._key_refused())
        if status == 500:
            return Result(
                UNCERTAIN, _server_error_detail(template_id), platform_down=True, error_reply=True
            )
        if status >= 500:
            return Result(
                UNCERTAIN,
                f"HTTP {status} from the platform's gateway to the task",
                platform_down=True,
                error_reply=True,
            )
        if status != 200:
            if 200 <= status < 300:
                return Result(
                    UNCERTAIN, f"HTTP {status} instead of the platform's reply: the task may exist"
                )
            return Result(
                PENDING, f"HTTP {status} to the task, which was not created: check codo.url"
            )
        if not isinstance(payload, dict) or type(payload.get("code")) is not int:
            return Result(
                UNCERTAIN, "a reply that is not the platform's JSON (HTTP 200)", platform_down=True
            )
        code, message = payload["code"], one_line(payload.get("msg", ""), 200)
        if path == GIT_HOOKS_PATH and code == 0 and message == PLATFORM_UNKNOWN_PROJECT:
            return Result(
                FAILED,
                "the platform knows no such project under codo.gitlab_url (it answered: {}): codo.gitlab_url must be "
                "GitLab's URL exactly as the platform's GitLab settings have it, and the platform must have synced "
                "the project".format(message),
            )
        if path == GIT_HOOKS_PATH and (
            code == 2 or (code == 0 and message in PLATFORM_SKIP_MESSAGES)
        ):
            return Result(SKIPPED, f"the platform's rules: {message}")
        if code != 0:
            return Result(FAILED, f"the platform refused it: {message} (code {code})")
        task_id = payload.get("list_id")
        if type(task_id) is not int:
            task_id = _task_id_in(message)
        return Result(SENT, message, task_id=task_id)

    # --- reading tasks back: settling an uncertain release ------------------

    def find_task(self, posted, budget):
        """("found", list_id), ("absent", None) or ("unknown", why) for a posted task body.

        A submission is known exactly by (task_name, temp_id, args, exec_time): the platform
        stores args byte for byte and exec_time as start_time. The unfinished list is read first,
        then the finished one: a task only ever moves from the first to the second, so one that
        is in neither, read in that order, does not exist. Absence is proven only if the caller
        made sure the key can see the task (see key_sees_submitter)."""
        wanted = (posted["task_name"], str(posted["temp_id"]), posted["args"], posted["exec_time"])
        try:
            with budget:
                task_id = self._search(TASK_LIST_PATH, wanted, budget, 100, None)
                if task_id is None:
                    task_id = self._search(
                        TASK_HISTORY_PATH, wanted, budget, 100, posted["task_name"]
                    )
        except BudgetExceeded:
            return "unknown", "the time budget ran out while reading the platform's task lists"
        except (Unreachable, NotSent, _MaybeSent, _Unreadable) as error:
            return "unknown", str(error)
        return ("found", task_id) if task_id is not None else ("absent", None)

    def _search(self, path, wanted, budget, limit, search):
        """The list_id of the wanted task in one of the platform's task lists, or None once the
        list is read to its end (or past where the task could be).

        check_history/ only gains rows, so reading it page by page misses none. list/ loses the
        rows of tasks that finish, each moving the later ones up: the task on page 2 when page 1
        was read may be on page 1 when page 2 is. So list/ is read from its start in one reply,
        twice as many rows each time, each reply one view of the list."""
        oldest = _day_before(wanted[3])
        unfinished = path == TASK_LIST_PATH
        for page in range(1, (LIST_READS if unfinished else SEARCH_PAGES) + 1):
            if unfinished:
                query = {"page": 1, "limit": limit * 2 ** (page - 1)}
            else:
                query = {"page": page, "limit": limit}
            if search:
                query["search_val"] = search
            rows, count = self._page(path, query, budget)
            for row in rows:
                if (
                    row.get("task_name"),
                    str(row.get("temp_id")),
                    row.get("args"),
                    row.get("start_time"),
                ) == wanted:
                    return row["list_id"]
            if query["page"] * query["limit"] >= count:
                return None
            if unfinished:
                # Newest start_time first: past a row older than the task, the task cannot be; the
                # order is checked, as the proof rests on it.
                times = [row.get("start_time") for row in rows]
                if (
                    times
                    and all(isinstance(t, str) for t in times)
                    and times == sorted(times, reverse=True)
                    and times[-1] < wanted[3]
                ):
                    return None
                continue
            # Newest first: past rows a day older than the task (the two clocks' slack) it cannot be.
            times = [row.get("create_time") for row in rows]
            if times and all(isinstance(t, str) and t < oldest for t in times):
                return None
        raise _Unreadable(
            "the platform's task list is longer than {} rows: not searched to its end".format(
                query["page"] * query["limit"]
            )
        )

    def _read(self, path, query, budget):
        """(status, JSON payload or None) of one GET of the platform's read API, within the budget.
        Raises _Unreadable when no reply could be had."""
        from urllib.parse import urlencode

        try:
            with budget:
                status, _headers, payload = self._request(
                    "GET", f"{self.base}{path}?{urlencode(query)}", budget, limit=READ_LIMIT
                )
        except BudgetExceeded:
            raise _Unreadable("the time budget ran out while reading the platform")
        except (Unreachable, NotSent, _MaybeSent) as error:
            raise _Unreadable(str(error))
        return status, payload

    def _page(self, path, query, budget):
        status, payload = self._read(path, query, budget)
        if status != 200 or not isinstance(payload, dict) or payload.get("code") != 0:
            raise _Unreadable(f"the platform's task list could not be read (HTTP {status})")
        rows, count = payload.get("data"), payload.get("count")
        if not isinstance(rows, list) or type(count) is not int:
            raise _Unreadable("the platform's task list is not in its usual shape")
        rows = [row for row in rows if isinstance(row, dict) and type(row.get("list_id")) is int]
        return rows, count

    def task_state(self, task_id, budget):
        """(outcome, detail) of a task now, read from check/?list_id= (which any key may read).

        deployed: finished, every step succeeded; failed: which step on which host; waiting_approval;
        waiting: at a manual or timed step; paused; running; unknown: the platform could not tell."""
        try:
            status, payload = self._read(TASK_CHECK_PATH, {"list_id": task_id}, budget)
        except _Unreadable as error:
            return "unknown", str(error)
        data = (
            payload.get("data") if isinstance(payload, dict) and payload.get("code") == 0 else None
        )
        if status != 200 or not isinstance(data, dict):
            return "unknown", f"the platform could not show task {task_id} (HTTP {status})"
        steps = _steps_of(data)
        hosts = data.get("hosts_status") if isinstance(data.get("hosts_status"), dict) else {}
        states = [str(step.get("task_status")) for step in steps] + [
            str(value) for value in hosts.values()
        ]
        # check/ shows one host's steps: a host in trouble is asked for by name, to name its step.
        troubled = next(
            (ip for ip, value in hosts.items() if str(value) in ("4", "5", "7", "6")), None
        )
        if troubled and not any(step.get("exec_ip") == troubled for step in steps):
            steps = self._host_steps(task_id, troubled, data.get("run_group"), budget) or steps
        for code, outcome, what in STEP_OUTCOMES:
            if code in states:
                step = next((step for step in steps if str(step.get("task_status")) == code), {})
                host = step.get("exec_ip") or next(
                    (ip for ip, value in hosts.items() if str(value) == code), "?"
                )
                name = step.get("task_name") or "a step"
                return outcome, f"step {one_line(name, 60)} {what} on {one_line(host, 60)}"
        schedule = data.get("schedule")
        if schedule == "OK":
            if states and all(state == "3" for state in states):
                return "deployed", "every step succeeded"
            return "finished", "finished or terminated in the platform"
        if schedule == "new":
            return "waiting_approval", "waits for approval in the platform"
        return "running", f"{one_line(schedule, 20)} in the platform"

    def _host_steps(self, task_id, host, group, budget):
        query = {"list_id": task_id, "get_run_host": host}
        if group is not None:
            query["get_run_group"] = group
        try:
            status, payload = self._read(TASK_CHECK_PATH, query, budget)
        except _Unreadable:
            return []
        data = payload.get("data") if isinstance(payload, dict) else None
        if status != 200 or not isinstance(data, dict):
            return []
        return _steps_of(data)

    def template_steps(self, template_id, budget):
        """The template's steps ([] when it has none or does not exist), or None if unreadable."""
        exists = self.template_exists(template_id, budget)
        if not exists:
            return None if exists is None else []
        try:
            status, payload = self._read(TEMPLATE_DETAILS_PATH, {"temp_id": template_id}, budget)
        except _Unreadable:
            return None
        data = payload.get("data") if isinstance(payload, dict) else None
        steps = data.get("temp_list") if isinstance(data, dict) else None
        if status != 200 or not isinstance(steps, list):
            return None
        return [step for step in steps if isinstance(step, dict)]

    def template_exists(self, template_id, budget):
        """True, False, or None when the platform cannot tell."""
        try:
            status, payload = self._read(
                TEMPLATE_PATH, {"key": "temp_id", "value": template_id}, budget
            )
        except _Unreadable:
            return None
        if (
            status != 200
            or not isinstance(payload, dict)
            or type(payload.get("code")) is not int
            or payload["code"] != 0
            or not isinstance(payload.get("data"), list)
        ):
            return None  # an error reply says nothing of the template: not "there is none"
        return bool(payload["data"])

    def _timeouts(self, budget):
        left = max(budget.left(), 0.01)
        return (min(self.codo["connect_timeout_s"], left), min(self.codo["read_timeout_s"], left))

    def _verify(self):
        if not self.codo["verify_tls"]:
            return False
        return self.codo["ca_file"] or True


class Unreachable(Exception):
    """Nothing reached the platform; trying again soon may work."""


class NotSent(Exception):
    """Nothing was created, and trying again now will not help."""

    def __init__(self, message, platform_down=False):
        super().__init__(message)
        self.platform_down = platform_down


class _MaybeSent(Exception):
    """The task's body may have reached the platform, and no reply says what became of it."""


class _Unreadable(Exception):
    """The platform's task lists could not be read to a conclusion."""


TASK_LIST_PATH = "/api/task/v2/task/list/"


TASK_HISTORY_PATH = "/api/task/v2/task/check_history/"


TEMPLATE_PATH = "/api/task/v2/task_layout/temp/"


TASK_CHECK_PATH = "/api/task/v2/task/check/"


TEMPLATE_DETAILS_PATH = "/api/task/v2/task_layout/details/"


FOLLOW_PER_RUN = 20  # tasks read a flush: the timer runs every minute


STATUS_RECENT = 10


FOLLOW_DONE = ("deployed", "failed", "finished", "stuck")


# A step's task_status: 4 failed, 5 waits for a person, 7 for its time, 6 paused (codo-api.md).
STEP_OUTCOMES = (
    ("4", "failed", "failed"),
    ("5", "waiting", "waits for a person at"),
    ("7", "waiting", "waits for its time at"),
    ("6", "paused", "is paused"),
)


SEARCH_PAGES = 40  # pages of check_history/


LIST_READS = 7  # readings of list/ from its start: 100 rows, then 200, ... 6,400


def _day_before(exec_time):
    """exec_time less a day, in the platform's format: how far apart its clock and ours may be."""
    try:
        stamp = time.mktime(time.strptime(exec_time, "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp - 86400))


def _steps_of(data):
    """The steps a check/ reply shows: its scheduler_list's objects, none when it is not a list."""
    steps = data.get("scheduler_list")
    return [step for step in steps if isinstance(step, dict)] if isinstance(steps, list) else []


def _read_limited(reply, limit):
    """The reply's body, or None when it is longer than `limit` (not read further)."""
    chunks, size = [], 0
    for chunk in reply.iter_content(8192):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _redirected(url, status, headers):
    location = one_line(headers.get("Location") or "nowhere", 200)
    return (
        f"{url} redirects (HTTP {status}) to {location}; the key goes nowhere but codo.url: "
        "if that address is the platform's, put it in codo.url"
    )


def _server_error_detail(template_id):
    cause = (
        f"an unknown template (template_id {template_id}) gives this and creates nothing; "
        if template_id is not None
        else ""
    )
    return (
        "HTTP 500 to the task: the platform may or may not have created it ("
        + cause
        + "a platform whose message queue is down creates it and still answers 500)"
    )


def _connection_never_made(error):
    import requests

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    text = repr(error.args[0]) if error.args else ""
    return (
        "NewConnectionError" in text
        or "NameResolutionError" in text
        or "Failed to establish" in text
    )


def _reason(error):
    """The innermost cause of an error, in a few fixed words: never its text, which may hold a header."""
    import re

    text = str(error.args[0] if error.args else error)
    match = re.search(
        r"\[Errno -?\d+\] [A-Za-z ]+|timed out|Connection refused|Connection reset|RemoteDisconnected|"
        r"certificate verify failed|Name or service not known|Read timed out",
        text,
    )
    return match.group(0).strip() if match else type(error).__name__


def _json(raw):
    """The platform's JSON reply, or None; NaN, deep nesting and bad UTF-8 are not its JSON."""
    try:
        return parse_json(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def _task_id_in(message):
    import re

    match = re.search(r"ID\s*[：:]\s*([0-9]{1,18})\b", message)
    return int(match.group(1)) if match else None


def say_submitted(codo, tag, task_id):
    link = task_link(codo, task_id)
    say("{} submitted as task {}{}".format(shown(tag), task_id, ": " + link if link else ""))


def task_link(codo, task_id):
    if not codo["task_link"] or task_id is None:
        return ""
    return codo["task_link"].replace("{list_id}", str(task_id))
