"""Release tags to OpenDevOps (CODO) tasks: everything behind codo_release_hook.py.

Read top to bottom:
  1. What the pusher sees       one short `codo:` line per event
  2. Config                     loading, defaults, every problem listed
  3. Decisions                  release, skip or refuse a tag update
  4. Request bodies             exactly what the seed hook sent
  5. The platform               one budget per push; retry only what surely created nothing
  6. The spool                  every release journaled before it is sent, claimed by rename
  7. The log                    one JSON line per event, bounded
  8. Hook stages                pre-receive, update, post-receive
  9. Admin commands             check-config, match, flush, status

Only os, sys and time are imported up front. `json` and `re` cost most of a bare
interpreter start, so a push whose tags no rule can match reads its config with
json's own C scanner and tells tags apart by each rule's literal prefix; `re`
comes in when a tag may be a release, `requests` when it is about to be sent.
"""

import os
import sys
import time

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

# Outcomes of one release.
SENT, SKIPPED, PENDING, UNCERTAIN, FAILED = "sent", "skipped", "pending", "uncertain", "failed"

# ---------------------------------------------------------------------------
# 1. What the pusher sees
# ---------------------------------------------------------------------------


def say(message):
    """One line to the pusher (GitLab shows hook output as `remote:` lines)."""
    _write(sys.stdout, "codo: " + message)


def refuse_line(message):
    """A refusal: the `codo:` line, plus the line GitLab's web UI shows for web-created tags."""
    say(message)
    _write(sys.stderr, "GL-HOOK-ERR: codo: " + message)


def _write(stream, line):
    # GitLab hands hooks no LANG; on Python 3.6 that means an ASCII stdout.
    stream.flush()
    stream.buffer.write((line + "\n").encode("utf-8", "replace"))
    stream.buffer.flush()


def shown(name):
    """A ref name as it may be shown: as is when plain, else quoted with anything odd escaped."""
    import re

    return name if re.match(SHELL_SAFE_TAG, name, re.ASCII) else ascii(name)


# ---------------------------------------------------------------------------
# 2. Config
# ---------------------------------------------------------------------------

DEFAULT_TAG_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"

CODO_DEFAULTS = {
    "url": None,
    "api": "task_accept",
    "auth_key_file": "/etc/codo-hooks/auth_key",
    "verify_tls": True,
    "ca_file": None,
    "connect_timeout_s": 3,
    "read_timeout_s": 10,
    "budget_s": 20,
    "task_link": None,
    "gitlab_url": None,
    "down_memory_s": 60,
}
TOP_DEFAULTS = {
    "codo": None,
    "state_dir": "/var/opt/codo-hooks",
    "on_failure": "spool",
    "tag_name_pattern": DEFAULT_TAG_NAME_PATTERN,
    "log_max_bytes": 5 * 1024 * 1024,
    "projects": None,
}
PROJECT_DEFAULTS = {
    "git_url": None,
    "app_name": None,
    "task_name": None,
    "submitter": "githook",
    "executor": "githook",
    "details": "git hook auto exec",
    "rules": [],
}
RULE_DEFAULTS = {
    "tag": None,
    "template_id": None,
    "schedule": "ready",
    "hosts": {},
    "args": {},
    "allowed_users": [],
    "on_move": False,
}
APIS = ("task_accept", "git_hooks")
SEED_ARGS = ("TAG", "GIT_URL", "APP_NAME")
PLATFORM_TEXT_LIMIT = 50
MAX_HOSTS_PER_GROUP = 100

# Whatever tag_name_pattern says, these never reach a shell on the execution hosts:
# shell syntax, quotes, white space, globs, non-ASCII, and a leading '-' (an option).
PLAIN_REGEX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/,:=@%!<>#&~ ")
SHELL_SAFE_TAG = r"[A-Za-z0-9._/+,=:@%][A-Za-z0-9._/+,=:@%-]*\Z"  # compiled on first use, not on every start


class ConfigError(Exception):
    """The config cannot be used; the message is one line naming the file."""


def read_config(path):
    try:
        with open(path, encoding="utf-8") as handle:
            raw = parse_json(handle.read())
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}")
    except ValueError as error:
        raise ConfigError(f"config {path} is not valid JSON: {error}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return raw


def parse_json(text):
    """json.loads without importing json (and with it re), through the C scanner json itself uses.

    Anything but a clean parse is handed to json.loads, for its exact error message.
    """
    try:
        from _json import make_scanner

        stripped = text.strip(" \t\n\r")
        value, end = make_scanner(_JsonOptions)(stripped, 0)
        if end == len(stripped):
            return value
    except Exception:  # any failure at all: json.loads says what is wrong
        pass
    import json

    return json.loads(text)


class _JsonOptions:
    """What the C scanner reads off a json.JSONDecoder: its defaults."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float


class Config:
    """A checked config, with defaults filled in."""

    def __init__(self, raw, path):
        self.path = os.path.abspath(path)
        self.top = _with_defaults(raw, TOP_DEFAULTS)
        self.codo = _with_defaults(raw.get("codo") or {}, CODO_DEFAULTS)
        self.projects = raw.get("projects") or {}
        self.state_dir = self.top["state_dir"]
        self.on_failure = self.top["on_failure"]

    @classmethod
    def load(cls, path, project_path=None, patterns=True):
        """Read and check the file: the platform settings and the one project asked for.

        patterns=False leaves the regular expressions unchecked (check_patterns does it): a push of
        tags that no rule can match never imports re.
        """
        raw = read_config(path)
        problems = config_problems(raw, only_project=project_path, patterns=patterns)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigError(f"config {path}: {problems[0]}{more}")
        return cls(raw, path)

    def check_patterns(self, project_path):
        """Raise ConfigError unless the regular expressions (tag_name_pattern, the project's rules) compile."""
        raw = {"tag_name_pattern": self.top["tag_name_pattern"], "projects": self.projects}
        problems = _patterns_problems(raw, project_path)
        if problems:
            raise ConfigError("config {}: {}".format(self.path, problems[0]))

    @property
    def tag_name_re(self):
        import re

        return re.compile(self.top["tag_name_pattern"], re.ASCII)  # re caches compiled patterns

    def project(self, project_path):
        """The project's settings, or None when this config does not release it."""
        if project_path is None:
            if len(self.projects) != 1:
                return None
            project_path = next(iter(self.projects))
        raw = self.projects.get(project_path)
        if raw is None:
            return None
        return Project(project_path, raw, self.codo["api"])


class Project:
    def __init__(self, path, raw, api):
        self.path = path
        self.settings = _with_defaults(raw, PROJECT_DEFAULTS)
        if not self.settings["task_name"]:
            self.settings["task_name"] = self.settings["app_name"]
        self.rules = [Rule(index, rule) for index, rule in enumerate(self.settings["rules"])]
        if api == "git_hooks" and not self.rules:
            # The platform holds the rules: every new tag goes to it.
            self.rules = [Rule(0, {"tag": ""})]

    def rule_for(self, tag):
        for rule in self.rules:
            if rule.pattern.match(tag):
                return rule
        return None


class Rule:
    def __init__(self, index, raw):
        self.index = index
        self.settings = _with_defaults(raw, RULE_DEFAULTS)
        self.prefix = literal_prefix(self.settings["tag"])

    @property
    def pattern(self):
        import re

        return re.compile(self.settings["tag"])  # re caches compiled patterns

    def hosts_literal(self):
        """{1: 'ip1,ip2'}: the Python literal the platform parses, group keys as ints."""
        groups = {}
        for group in sorted(self.settings["hosts"], key=int):
            ips = self.settings["hosts"][group]
            groups[int(group)] = ips if isinstance(ips, str) else ",".join(ips)
        return str(groups)


def literal_prefix(pattern):
    """Text that every tag the pattern matches (with re.match) starts with; '' when that is not sure.

    Conservative: alternation and inline flags give '', and a literal that a quantifier
    follows is left out (`ab?` promises only `a`).
    """
    if "|" in pattern or "(?" in pattern:
        return ""
    for anchor in ("\\A", "^"):
        if pattern.startswith(anchor):
            pattern = pattern[len(anchor) :]
            break
    prefix = ""
    for char in pattern:
        if char not in PLAIN_REGEX_CHARS:
            return prefix[:-1] if char in "*?{" else prefix
        prefix += char
    return prefix


def _with_defaults(raw, defaults):
    merged = dict(defaults)
    merged.update(raw)
    return merged


def config_problems(raw, only_project=None, patterns=True):
    """Every problem in a config, one line each; [] when it is fine.

    With only_project, projects other than that one are not looked at: one
    team's typo must not stop another team's releases.
    """
    problems = []
    problems += _unknown_keys(raw, TOP_DEFAULTS, "")
    codo = raw.get("codo")
    if not isinstance(codo, dict):
        return problems + ['"codo" must be an object with at least "url"']
    problems += _codo_problems(codo)
    problems += _top_problems(raw)
    projects = raw.get("projects")
    if not isinstance(projects, dict) or not projects:
        return problems + ['"projects" must be an object with at least one project, keyed by path']
    api = codo.get("api", CODO_DEFAULTS["api"])
    for path, project in sorted(projects.items()):
        if only_project is None or path == only_project:
            problems += _project_problems(path, project, api)
    return problems + (_patterns_problems(raw, only_project) if patterns else [])


def _patterns_problems(raw, only_project):
    """Regular expressions that do not compile: tag_name_pattern and every rule's tag."""
    import re

    problems = _regex_problems(raw.get("tag_name_pattern", DEFAULT_TAG_NAME_PATTERN), "tag_name_pattern", re.ASCII)
    for path, project in sorted(raw["projects"].items()):
        rules = project.get("rules") if isinstance(project, dict) else None
        if (only_project is None or path == only_project) and isinstance(rules, list):
            for index, rule in enumerate(rules):
                if isinstance(rule, dict) and isinstance(rule.get("tag"), str):
                    problems += _regex_problems(rule["tag"], "projects.{}.rules[{}].tag".format(path, index), 0)
    return problems


def _unknown_keys(raw, known, where):
    return [
        "{}{!r} is not a known key (known: {})".format(where, key, ", ".join(sorted(known)))
        for key in sorted(raw)
        if key not in known
    ]


def _codo_problems(codo):
    problems = _unknown_keys(codo, CODO_DEFAULTS, "codo.")
    url = codo.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or url.split("/")[2:3] in ([], [""]):
        problems.append("codo.url must be the platform's http(s) URL, e.g. https://codo.example.com")
    if codo.get("api", "task_accept") not in APIS:
        problems.append("codo.api must be one of: {}".format(", ".join(APIS)))
    if codo.get("api") == "git_hooks" and not isinstance(codo.get("gitlab_url"), str):
        problems.append("codo.gitlab_url is needed with api git_hooks: GitLab's URL as the platform knows it")
    for key in ("connect_timeout_s", "read_timeout_s", "budget_s", "down_memory_s"):
        value = codo.get(key, CODO_DEFAULTS[key])
        if not _is_number(value) or value <= 0:
            problems.append(f"codo.{key} must be a positive number of seconds")
    if not isinstance(codo.get("verify_tls", True), bool):
        problems.append("codo.verify_tls must be true or false")
    for key in ("auth_key_file", "ca_file", "task_link"):
        if codo.get(key) is not None and not isinstance(codo.get(key), str):
            problems.append(f"codo.{key} must be a string or null")
    return problems


def _top_problems(raw):
    problems = []
    if raw.get("on_failure", "spool") not in ("spool", "reject"):
        problems.append('on_failure must be "spool" (keep and resend) or "reject" (refuse the tag; update stage)')
    if not isinstance(raw.get("state_dir", ""), str):
        problems.append("state_dir must be a directory path")
    if not _is_number(raw.get("log_max_bytes", 1)) or raw.get("log_max_bytes", 1) <= 0:
        problems.append("log_max_bytes must be a positive number")
    if not isinstance(raw.get("tag_name_pattern", ""), str):
        problems.append("tag_name_pattern must be a regular expression")
    return problems


def _project_problems(path, project, api):
    where = f"projects.{path}"
    if not isinstance(project, dict):
        return [f"{where} must be an object"]
    problems = _unknown_keys(project, PROJECT_DEFAULTS, where + ".")
    if api == "task_accept":
        for key in ("git_url", "app_name"):
            if not isinstance(project.get(key), str) or not project.get(key):
                problems.append(f"{where}.{key} is required")
    for key in ("task_name", "submitter", "executor", "details"):
        value = project.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > PLATFORM_TEXT_LIMIT):
            problems.append(f"{where}.{key} must be text of at most {PLATFORM_TEXT_LIMIT} characters")
    if len(str(project.get("task_name") or project.get("app_name") or "")) > PLATFORM_TEXT_LIMIT:
        problems.append(f"{where}.task_name (app_name when unset) is over {PLATFORM_TEXT_LIMIT} characters")
    rules = project.get("rules", [])
    if not isinstance(rules, list) or (api == "task_accept" and not rules):
        problems.append(f"{where}.rules must be a list of at least one rule")
        return problems
    for index, rule in enumerate(rules):
        problems += _rule_problems(f"{where}.rules[{index}]", rule, api)
    return problems


def _rule_problems(where, rule, api):
    if not isinstance(rule, dict):
        return [f"{where} must be an object"]
    problems = _unknown_keys(rule, RULE_DEFAULTS, where + ".")
    if not isinstance(rule.get("tag"), str):
        problems.append(f"{where}.tag is required: a regex matched at the start of the tag name")
    if rule.get("schedule", "ready") not in ("ready", "new"):
        problems.append(f'{where}.schedule must be "ready" (run at once) or "new" (wait for approval)')
    if not isinstance(rule.get("on_move", False), bool):
        problems.append(f"{where}.on_move must be true or false")
    users = rule.get("allowed_users", [])
    if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
        problems.append(f"{where}.allowed_users must be a list of GitLab usernames")
    problems += _args_problems(where, rule.get("args", {}))
    if api == "task_accept":
        template = rule.get("template_id")
        if isinstance(template, bool) or not isinstance(template, (int, str)) or not str(template).isdigit():
            problems.append(f"{where}.template_id must be the platform template's number")
        problems += _hosts_problems(where + ".hosts", rule.get("hosts"))
    return problems


def _args_problems(where, args):
    if not isinstance(args, dict) or not all(isinstance(v, (str, int)) for v in args.values()):
        return [f"{where}.args must map argument names to text"]
    return [
        f"{where}.args.{key} would replace the value the hook sets; use another name"
        for key in sorted(args)
        if key in SEED_ARGS
    ]


def _hosts_problems(where, hosts):
    if not isinstance(hosts, dict) or not hosts:
        return [f'{where} must map group numbers to IPv4 lists, e.g. {{"1": ["10.0.0.5"]}}']
    problems = []
    for group, ips in sorted(hosts.items()):
        if not str(group).isdigit():
            problems.append(f"{where}: group {group!r} is not a number")
        if isinstance(ips, str):
            ips = ips.split(",")
        if not isinstance(ips, list) or not ips:
            problems.append(f"{where}.{group} must list at least one IPv4 address")
            continue
        if len(ips) > MAX_HOSTS_PER_GROUP:
            problems.append(
                f"{where}.{group} has {len(ips)} hosts; the platform takes at most {MAX_HOSTS_PER_GROUP} a group: split it"
            )
        for ip in ips:
            if not isinstance(ip, str) or not is_ipv4(ip):
                problems.append(f"{where}.{group}: {ip!r} is not an IPv4 address (the platform connects by IP)")
    return problems


def is_ipv4(text):
    """Dotted quad, no leading zeros: what the platform's own check accepts."""
    parts = text.split(".")
    return len(parts) == 4 and all(part.isdigit() and part == str(int(part)) and int(part) < 256 for part in parts)


def _regex_problems(pattern, where, flags):
    import re

    if not isinstance(pattern, str):
        return []  # said by the structural checks
    try:
        re.compile(pattern, flags)
    except re.error as error:
        return [f"{where} is not a valid regular expression: {error}"]
    return []


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# 3. Decisions
# ---------------------------------------------------------------------------


class RefUpdate:
    """One `old new ref` line of a push."""

    def __init__(self, old, new, ref):
        self.old, self.new, self.ref = old, new, ref

    @property
    def tag(self):
        return self.ref[len("refs/tags/") :]

    @property
    def created(self):
        return not self.old.strip("0")

    def as_dict(self):
        return {"old": self.old, "new": self.new, "ref": self.ref}


class Decision:
    def __init__(self, kind, reason="", rule=None):
        self.kind, self.reason, self.rule = kind, reason, rule  # kind: release, skip, refuse


def decide(config, project, update, user):
    """Release, skip or refuse one tag update, before anything is sent."""
    rule = project.rule_for(update.tag)
    if rule is None:
        return Decision("skip", "no rule matches")
    if not update.created and not rule.settings["on_move"]:
        return Decision("skip", "tag moved; its rule releases new tags only (on_move)", rule)
    unsafe = unsafe_tag_reason(config, update.tag)
    if unsafe:
        return Decision("refuse", unsafe, rule)
    allowed = rule.settings["allowed_users"]
    if allowed and user not in allowed:
        return Decision(
            "refuse",
            "{} may not release {} (allowed_users of rule {})".format(
                user or "an unknown user", shown(update.tag), rule.index
            ),
            rule,
        )
    return Decision("release", "", rule)


def unsafe_tag_reason(config, tag):
    """Why a tag name must not reach a shell on the execution hosts, or '' when it is safe."""
    import re

    if not config.tag_name_re.fullmatch(tag) or not re.match(SHELL_SAFE_TAG, tag, re.ASCII):
        return (
            "tag {} is not a safe release name: it goes into a shell command on the execution hosts; "
            "use letters, digits and . _ / - (tag_name_pattern {})".format(shown(tag), config.top["tag_name_pattern"])
        )
    return ""


# ---------------------------------------------------------------------------
# 4. Request bodies: field by field what the seed hook sent
# ---------------------------------------------------------------------------

TASK_ACCEPT_PATH = "/api/task/v2/task/accept/"
GIT_HOOKS_PATH = "/api/task/other/v1/git/hooks/"


def task_accept_body(project, rule, tag, now=None):
    import json

    args = {"TAG": tag, "GIT_URL": project.settings["git_url"], "APP_NAME": project.settings["app_name"]}
    args.update((str(key), str(value)) for key, value in rule.settings["args"].items())
    return json.dumps(
        {
            "task_name": project.settings["task_name"],
            "temp_id": str(rule.settings["template_id"]),
            "args": str(args),
            "details": project.settings["details"],
            "hosts": rule.hosts_literal(),
            "submitter": project.settings["submitter"],
            "exec_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "schedule": rule.settings["schedule"],
            "executor": project.settings["executor"],
        }
    )


def git_hooks_body(config, project, tag):
    import json

    return json.dumps({"git_url": config.codo["gitlab_url"], "relative_path": project.path, "tag_name": tag})


def request_for(config, project, rule, tag):
    """(path, body) of the one request that releases this tag."""
    if config.codo["api"] == "git_hooks":
        return GIT_HOOKS_PATH, git_hooks_body(config, project, tag)
    return TASK_ACCEPT_PATH, task_accept_body(project, rule, tag)


# ---------------------------------------------------------------------------
# 5. The platform
# ---------------------------------------------------------------------------

PLATFORM_SKIP_MESSAGES = ("No related items were found", "No hooks, ignore")


class Result:
    def __init__(self, outcome, detail, task_id=None, platform_down=False):
        self.outcome, self.detail, self.task_id = outcome, detail, task_id
        self.platform_down = platform_down  # nothing got through: later releases skip straight to the spool


class BudgetExceeded(BaseException):
    """Raised by the timer; a BaseException so no library's `except Exception` swallows it."""


class Budget:
    """One time budget for a whole push (or one flush attempt), enforced by a timer signal.

    requests' timeouts bound each socket wait, not a reply that drips in, nor a
    DNS lookup; the timer bounds them all.
    """

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self):
        return self.deadline - time.monotonic()

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
    """The task platform's API: csrf handshake, then one POST; classifies every reply."""

    RETRIES = 3

    def __init__(self, codo, auth_key):
        import requests  # here, so that no time budget pays for the import

        self.requests = requests
        self.codo = codo
        self.auth_key = auth_key
        self.base = codo["url"].rstrip("/")

    def submit(self, path, body, budget):
        """Send one release within the budget; retry only what surely created nothing."""
        detail = "no attempt made"
        for attempt in range(self.RETRIES):
            if budget.left() <= 0:
                break
            if attempt:
                time.sleep(min(0.2 * 2**attempt, max(budget.left() - 0.5, 0)))
            result = self._attempt(path, body, budget)
            if result is not None and result.outcome != "retry":
                return result
            detail = result.detail
        return Result(PENDING, detail or "time budget used up", platform_down=True)

    def _attempt(self, path, body, budget):
        import requests

        url = self.base + path
        try:
            with budget:
                csrf = self._csrf_key(requests, url, budget)
        except BudgetExceeded:
            return Result(PENDING, "time budget used up before the platform answered", platform_down=True)
        except _Unreachable as error:
            return Result("retry", str(error))
        except _NotSent as error:
            return Result(PENDING, str(error), platform_down=error.platform_down)
        try:
            with budget:
                reply = requests.post(
                    url,
                    data=body,
                    cookies={"auth_key": self.auth_key, "csrf_key": csrf},
                    headers={"Connection": "close"},
                    timeout=self._timeouts(budget),
                    verify=self._verify(),
                )
        except BudgetExceeded:
            return Result(UNCERTAIN, "time budget used up while the platform handled the task", platform_down=True)
        except requests.exceptions.SSLError as error:
            return Result(PENDING, f"TLS failed: {_reason(error)}; set codo.ca_file for a private CA")
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as error:
            if _connection_never_made(error):
                return Result("retry", f"platform unreachable: {_reason(error)}")
            return Result(UNCERTAIN, f"connection lost after the task was sent: {_reason(error)}", platform_down=True)
        except requests.exceptions.RequestException as error:
            return Result(UNCERTAIN, f"no reply to the task: {_reason(error)}", platform_down=True)
        return self._classify(path, reply)

    def _csrf_key(self, requests, url, budget):
        """GET a single-use csrf key. Nothing is created by a GET, so every failure here is safe."""
        try:
            reply = requests.get(
                url,
                cookies={"auth_key": self.auth_key},
                headers={"Connection": "close"},
                timeout=self._timeouts(budget),
                verify=self._verify(),
            )
        except requests.exceptions.SSLError as error:
            raise _NotSent(f"TLS failed: {_reason(error)}; set codo.ca_file for a private CA")
        except requests.exceptions.RequestException as error:
            raise _Unreachable(f"platform unreachable: {_reason(error)}")
        if reply.status_code == 401:
            raise _NotSent("the platform rejected the auth key (HTTP 401): renew the key in auth_key_file")
        if reply.status_code == 503:
            raise _Unreachable("platform unavailable (HTTP 503)")
        key = _json_field(reply, "csrf_key") or reply.cookies.get("csrf_key")
        if reply.status_code != 200 or not key:
            raise _NotSent(f"no csrf key from {url} (HTTP {reply.status_code}): check codo.url", platform_down=True)
        return key

    def _classify(self, path, reply):
        status = reply.status_code
        if status in (402, 503):
            return Result(
                "retry",
                "HTTP {} ({}) before the task was created".format(
                    status, "csrf key refused" if status == 402 else "unavailable"
                ),
            )
        if status == 401:
            return Result(PENDING, "the platform rejected the auth key (HTTP 401): renew the key in auth_key_file")
        if status != 200:
            outcome = UNCERTAIN if status >= 500 else PENDING
            return Result(outcome, f"HTTP {status} from the platform", platform_down=status >= 500)
        payload = _json(reply)
        if not isinstance(payload, dict) or "code" not in payload:
            return Result(UNCERTAIN, "a reply that is not the platform's JSON (HTTP 200)", platform_down=True)
        code, message = payload.get("code"), str(payload.get("msg", ""))
        if path == GIT_HOOKS_PATH and (code == 2 or (code == 0 and message in PLATFORM_SKIP_MESSAGES)):
            return Result(SKIPPED, f"the platform's rules: {message}")
        if code != 0:
            return Result(FAILED, f"the platform refused it: {message} (code {code})")
        return Result(SENT, message, task_id=payload.get("list_id") or _task_id_in(message))

    def _timeouts(self, budget):
        left = max(budget.left(), 0.01)
        return (min(self.codo["connect_timeout_s"], left), min(self.codo["read_timeout_s"], left))

    def _verify(self):
        if not self.codo["verify_tls"]:
            return False
        return self.codo["ca_file"] or True


class _Unreachable(Exception):
    """Nothing reached the platform; trying again soon may work."""


class _NotSent(Exception):
    """Nothing was created, and trying again now will not help."""

    def __init__(self, message, platform_down=False):
        super().__init__(message)
        self.platform_down = platform_down


def _connection_never_made(error):
    import requests

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    text = repr(error.args[0]) if error.args else ""
    return "NewConnectionError" in text or "NameResolutionError" in text or "Failed to establish" in text


def _reason(error):
    """The innermost cause of a requests error, in a few words and never with a cookie."""
    import re

    text = str(error.args[0] if error.args else error)
    match = re.search(
        r"\[Errno -?\d+\] [^'\")]+|timed out|Connection refused|RemoteDisconnected[^'\")]*|certificate verify failed[^'\")]*",
        text,
    )
    return (match.group(0) if match else type(error).__name__).strip()


def _json(reply):
    try:
        return reply.json()
    except ValueError:
        return None


def _json_field(reply, name):
    payload = _json(reply)
    return payload.get(name) if isinstance(payload, dict) else None


def _task_id_in(message):
    import re

    match = re.search(r"ID\s*[：:]\s*(\d+)", message)
    return int(match.group(1)) if match else None


def read_auth_key(codo):
    """The platform key: $CODO_AUTH_KEY (tests, admin use) or the key file. Never shown."""
    key = os.environ.get("CODO_AUTH_KEY")
    if key:
        return key.strip()
    path = codo["auth_key_file"]
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as error:
        raise ConfigError(f"cannot read the platform key {path}: {error.strerror or error}")
    if not key:
        raise ConfigError(f"the platform key file {path} is empty")
    return key


def say_submitted(codo, tag, task_id):
    link = task_link(codo, task_id)
    say("{} submitted as task {}{}".format(shown(tag), task_id, ": " + link if link else ""))


def task_link(codo, task_id):
    if not codo["task_link"] or task_id is None:
        return ""
    return codo["task_link"].replace("{list_id}", str(task_id))


# ---------------------------------------------------------------------------
# 6. The spool
# ---------------------------------------------------------------------------

SPOOL_STATES = (PENDING, "inflight", UNCERTAIN, FAILED, SENT)
SENT_KEPT = 500


class SpoolError(Exception):
    pass


class Claim:
    """An entry being worked on: its inflight file stays locked until it is settled."""

    def __init__(self, spool, entry, handle):
        self.spool, self.entry, self.handle = spool, entry, handle

    def settle(self, state, **fields):
        """Record the entry's new state durably, then let go of it."""
        self.entry.update(fields, state=state, updated=_now_text())
        try:
            if state is not None:
                self.spool.write_entry(state, self.entry)
            os.unlink(self.spool.path("inflight", self.entry["id"]))
        finally:
            self.handle.close()

    def drop(self):
        """Forget the entry (a refused release is not kept: it can simply be pushed again)."""
        self.settle(None)


class Spool:
    """Durable journal of releases in <state_dir>/spool/<state>/<id>.json.

    A release is written (locked, in `inflight/`) before it is sent, and moved
    to `sent/`, `pending/`, `uncertain/` or `failed/` after. Whoever renames
    an entry out of `pending/` owns it: a rename succeeds once, so concurrent
    pushes and flushes never send one release twice. An `inflight/` entry
    whose lock is free belongs to a process that died mid-send: uncertain.
    """

    def __init__(self, state_dir):
        self.root = os.path.join(state_dir, "spool")

    def path(self, state, entry_id):
        return os.path.join(self.root, state, entry_id + ".json")

    def ensure(self):
        for state in SPOOL_STATES + ("tmp",):
            os.makedirs(os.path.join(self.root, state), mode=0o750, exist_ok=True)

    def journal(self, entry):
        """Write a new entry straight into `inflight/`, locked by us. Raises SpoolError."""
        import fcntl

        entry = dict(entry, id=_new_id(), created=_now_text(), updated=_now_text(), attempts=0)
        try:
            self.ensure()
            tmp = os.path.join(self.root, "tmp", entry["id"] + ".json")
            handle = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - held: its lock guards the entry
            fcntl.flock(handle, fcntl.LOCK_EX)
            _dump(handle, entry)
            os.rename(tmp, self.path("inflight", entry["id"]))
            _fsync_dir(os.path.join(self.root, "inflight"))
        except OSError as error:
            raise SpoolError(f"cannot write the spool in {self.root}: {error.strerror or error}")
        return Claim(self, entry, handle)

    def claim(self, state, entry_id):
        """Take an entry out of `state` for sending; None if someone else has it."""
        import fcntl
        import json

        source = self.path(state, entry_id)
        try:
            handle = open(source, encoding="utf-8")  # noqa: SIM115 - held: its lock guards the entry
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.stat(source).st_ino:
                raise FileNotFoundError(source)  # settled anew while we waited: not the entry we locked
            entry = json.load(handle)
            os.rename(source, self.path("inflight", entry_id))
        except (OSError, ValueError):
            handle.close()
            return None
        return Claim(self, entry, handle)

    def recover_abandoned(self):
        """Inflight entries whose process died mid-send: the task may exist, so uncertain."""

        for entry_id in self.ids("inflight"):
            claim = self.claim("inflight", entry_id)  # renames onto itself: only the lock matters
            if claim is None:
                continue
            if any(os.path.exists(self.path(state, entry_id)) for state in (SENT, FAILED, PENDING, UNCERTAIN)):
                os.unlink(self.path("inflight", entry_id))
                claim.handle.close()
                continue
            claim.settle(UNCERTAIN, last_error="the process sending it stopped mid-send")

    def write_entry(self, state, entry):
        tmp = os.path.join(self.root, "tmp", entry["id"] + "." + state)
        with open(tmp, "w", encoding="utf-8") as handle:
            _dump(handle, entry)
        os.rename(tmp, self.path(state, entry["id"]))
        _fsync_dir(os.path.join(self.root, state))

    def ids(self, state):
        try:
            names = os.listdir(os.path.join(self.root, state))
        except FileNotFoundError:
            return []
        return sorted(name[:-5] for name in names if name.endswith(".json"))

    def entries(self, state):
        import json

        found = []
        for entry_id in self.ids(state):
            try:
                with open(self.path(state, entry_id), encoding="utf-8") as handle:
                    found.append(json.load(handle))
            except (OSError, ValueError):
                continue
        return found

    def prune_sent(self, keep=SENT_KEPT):
        for entry_id in self.ids(SENT)[:-keep]:
            try:
                os.unlink(self.path(SENT, entry_id))
            except FileNotFoundError:
                pass


def _new_id():
    # Sorts by time; unique across processes.
    return f"{int(time.time() * 1e6):016d}-{os.getpid()}-{os.urandom(3).hex()}"


def _now_text():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _dump(handle, entry):
    import json

    json.dump(entry, handle, sort_keys=True)
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DownMarker:
    """Remembers briefly that the platform failed, so the next refs of a push go straight to the spool."""

    def __init__(self, state_dir, seconds):
        self.path = os.path.join(state_dir, "platform-down")
        self.seconds = seconds

    def recent(self):
        try:
            return time.time() - os.stat(self.path).st_mtime < self.seconds
        except OSError:
            return False

    def set(self, detail):
        try:
            with open(self.path, "w", encoding="utf-8") as handle:
                handle.write(detail + "\n")
        except OSError:
            pass

    def clear(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


# ---------------------------------------------------------------------------
# 7. The log
# ---------------------------------------------------------------------------


def log_event(config, **event):
    """Append one JSON line to <state_dir>/hook.log; the file is rotated once it grows past log_max_bytes."""
    import json

    max_bytes = config.top["log_max_bytes"]
    path = os.path.join(config.state_dir, "hook.log")
    event = dict(event, time=_now_text())
    line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
    try:
        if os.path.exists(path) and os.path.getsize(path) > max_bytes:
            os.replace(path, path + ".1")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)  # one write: lines of concurrent pushes do not interleave
        finally:
            os.close(fd)
    except OSError:
        pass  # the log never costs a release


# ---------------------------------------------------------------------------
# 8. Hook stages
# ---------------------------------------------------------------------------


class Push:
    """One hook run: who pushed what to which project, under which config."""

    def __init__(self, stage, updates, config_path):
        self.stage = stage
        self.updates = updates  # [old, new, ref] of new and moved tags
        self.user = os.environ.get("GL_USERNAME")
        self.project_path = os.environ.get("GL_PROJECT_PATH")
        self.config_path = config_path


def run_stage(push):
    try:
        config = Config.load(push.config_path, push.project_path, patterns=False)
        project = config.project(push.project_path)
        if project is None:
            return EXIT_OK
        candidates = release_candidates(project, push)
        if not candidates:
            return EXIT_OK
        config.check_patterns(project.path)
    except ConfigError as error:
        return config_broken(push, str(error))
    decisions = [(update, decide(config, project, update, push.user)) for update in candidates]
    refused = [(update, decision) for update, decision in decisions if decision.kind == "refuse"]
    for update, decision in decisions:
        if decision.kind == "refuse":
            report_refusal(config, project, push, update, decision)
        elif decision.kind == "skip" and decision.rule is not None:
            say(f"{shown(update.tag)} skipped: {decision.reason}")
    if push.stage == "pre-receive":
        return EXIT_REFUSED if refused else EXIT_OK
    if refused and push.stage == "update":
        return EXIT_REFUSED
    releases = [(update, decision.rule) for update, decision in decisions if decision.kind == "release"]
    if not releases:
        return EXIT_OK
    sender = Sender(config, project, push)
    outcomes = [sender.release(update, rule) for update, rule in releases]
    if push.stage == "update" and outcomes[0] == "refused":
        return EXIT_REFUSED
    return EXIT_OK


def release_candidates(project, push):
    """Tag updates whose name starts with some rule's literal prefix: the only ones worth a regex.

    Every pushed tag goes through this loop, before re is imported: it stays lean.
    """
    prefixes = tuple(rule.prefix for rule in project.rules)
    return [RefUpdate(*update) for update in push.updates if update[2][10:].startswith(prefixes)]


def config_broken(push, message):
    """A config that cannot be used refuses new tags before the push, and keeps them after it."""
    created = [update for update in (RefUpdate(*raw) for raw in push.updates) if update.created]
    if not created:
        return EXIT_OK
    if push.stage in ("pre-receive", "update"):
        refuse_line(f"{message}; tags cannot be released until it is fixed: run codo_release_hook.py check-config")
        return EXIT_REFUSED
    spool = Spool(_state_dir_of_broken(push.config_path))
    for update in created:
        entry = _entry(push, update, None)
        try:
            spool.journal(entry).settle(PENDING, last_error=message)
        except SpoolError as error:
            say(f"{shown(update.tag)} NOT kept ({error}): delete the tag and push it again once the config is fixed")
            continue
        say(f"{shown(update.tag)} kept in the spool: {message}; run check-config, then flush")
    return EXIT_OK


def _state_dir_of_broken(path):
    try:
        state_dir = read_config(path).get("state_dir")
    except ConfigError:
        state_dir = None
    return state_dir if isinstance(state_dir, str) else TOP_DEFAULTS["state_dir"]


def report_refusal(config, project, push, update, decision):
    if push.stage == "post-receive":
        say(f"{shown(update.tag)} NOT released: {decision.reason}")
    else:
        refuse_line(f"push refused: {decision.reason}")
    log_event(
        config,
        project=project.path,
        ref=update.ref,
        stage=push.stage,
        user=push.user,
        rule=decision.rule.index if decision.rule else None,
        outcome="refused",
        detail=decision.reason,
    )


def _entry(push, update, rule):
    return dict(
        update.as_dict(),
        tag=update.tag,
        project=push.project_path,
        user=push.user,
        stage=push.stage,
        config_path=os.path.abspath(push.config_path),
        rule=rule.index if rule else None,
    )


class Sender:
    """Sends the releases of one push under one time budget; anything not sent stays in the spool."""

    def __init__(self, config, project, push):
        self.config, self.project, self.push = config, project, push
        self.spool = Spool(config.state_dir)
        self.down = DownMarker(config.state_dir, config.codo["down_memory_s"])
        self.budget = None
        self.reject = push.stage == "update" and config.on_failure == "reject"
        self.platform = None

    def release(self, update, rule):
        started = time.monotonic()
        try:
            claim = self.spool.journal(_entry(self.push, update, rule))
        except SpoolError as error:
            return self._unjournaled(update, rule, error)
        result = self._send(update, rule)
        claim.entry["attempts"] += 1
        outcome = self._settle(claim, update, result)
        log_event(
            self.config,
            project=self.project.path,
            ref=update.ref,
            stage=self.push.stage,
            user=self.push.user,
            rule=rule.index,
            outcome=outcome,
            detail=result.detail,
            task_id=result.task_id,
            spool_id=claim.entry["id"],
            duration_s=round(time.monotonic() - started, 3),
        )
        return outcome

    def _send(self, update, rule):
        if self.down.recent():
            return Result(PENDING, "the platform failed moments ago", platform_down=True)
        try:
            if self.platform is None:
                self.platform = Platform(self.config.codo, read_auth_key(self.config.codo))
        except ConfigError as error:
            return Result(PENDING, str(error))
        if self.budget is None:  # starts now, requests imported: a loaded CPU is not the platform's fault
            self.budget = Budget(self.config.codo["budget_s"])
        path, body = request_for(self.config, self.project, rule, update.tag)
        result = self.platform.submit(path, body, self.budget)
        if result.platform_down:
            self.down.set(result.detail)
        elif result.outcome in (SENT, SKIPPED, FAILED):
            self.down.clear()
        return result

    def _settle(self, claim, update, result):
        """Record the result, tell the pusher, and return the outcome."""
        tag = shown(update.tag)
        if result.outcome == SENT:
            claim.settle(SENT, task_id=result.task_id, last_error=None)
            say_submitted(self.config.codo, update.tag, result.task_id)
            return SENT
        if result.outcome == SKIPPED:
            claim.settle(SENT, last_error=None, skipped=result.detail)
            say(f"{tag} skipped: {result.detail}")
            return SKIPPED
        if result.outcome == UNCERTAIN:
            claim.settle(UNCERTAIN, last_error=result.detail)
            say(
                f"WARNING {tag} may or may not have become a task ({result.detail}). Check the platform before anything else: "
                "if there is no task, run codo_release_hook.py flush --include-uncertain"
            )
            return UNCERTAIN
        if self.reject:
            claim.drop()
            refuse_line(f"tag {tag} refused: {result.detail}. Nothing was created; push the tag again later")
            return "refused"
        if result.outcome == FAILED:
            claim.settle(FAILED, last_error=result.detail)
            say(
                f"{tag} not released: {result.detail}. Fix the rule, then run codo_release_hook.py flush --include-failed"
            )
            return FAILED
        claim.settle(PENDING, last_error=result.detail)
        say(f"{tag} spooled: {result.detail}; the spool timer sends it when the platform answers")
        return PENDING

    def _unjournaled(self, update, rule, error):
        """No spool to keep it in: the update stage refuses; after the push, try once, loudly."""
        tag = shown(update.tag)
        if self.push.stage == "update":
            refuse_line(f"tag {tag} refused: {error}. Nothing was sent; push the tag again once it is fixed")
            return "refused"
        result = self._send(update, rule)
        if result.outcome == SENT:
            say(f"{tag} submitted as task {result.task_id} ({error})")
            return SENT
        say(f"{tag} NOT released and NOT kept: {result.detail}; {error}. Delete the tag and push it again")
        return "lost"


# ---------------------------------------------------------------------------
# 9. Admin commands
# ---------------------------------------------------------------------------

HELP = """codo_release_hook.py: GitLab server hook that turns release tags into OpenDevOps tasks.

As a hook (linked into custom_hooks as pre-receive.d/, update.d/ or post-receive.d/):
the stage is the name it runs under; the config is codo-release.json in custom_hooks.

Admin commands:
  check-config [FILE]                       list every problem in a config
  match --project P TAG [--user U]          show what a push of TAG would send (sends nothing)
  flush [--include-uncertain] [--include-failed]
                                            send the spooled releases
  status [--json]                           what the spool holds
Each takes --help. Exit codes: 0 done, 1 refused or something left undelivered,
2 bad usage or config."""


def main(stage, updates, argv, config_path):
    """Called by the entry with the stage it runs as (None: admin), the tag updates, and the config's path."""
    if stage is not None and updates is not None:
        return run_stage(Push(stage, updates, config_path))
    if stage is not None:
        say(f"unknown hook stage {stage!r}: name the hook pre-receive, update or post-receive")
        return EXIT_USAGE
    return admin(argv, config_path)


def admin(argv, default_config):
    import argparse

    parser = argparse.ArgumentParser(
        prog="codo_release_hook.py", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check-config", help="list every problem in a config (exit 2 if any)")
    check.add_argument("file", nargs="?", default=default_config, help="config file (default: %(default)s)")

    match = commands.add_parser("match", help="show the request a push of TAG would send; sends nothing")
    match.add_argument("tag", help="tag name, without refs/tags/")
    match.add_argument("--project", help="project path with namespace (needed when the config has several)")
    match.add_argument("--user", help="GitLab username of the pusher")
    match.add_argument("--moved", action="store_true", help="the tag already existed and is being moved")
    match.add_argument("--config", default=default_config, help="config file (default: %(default)s)")

    for name, text in (
        ("flush", "send the spooled releases (exit 1 if any is left undelivered)"),
        ("status", "count the spool's entries and show the last errors"),
    ):
        command = commands.add_parser(name, help=text)
        where = command.add_mutually_exclusive_group()
        where.add_argument("--state-dir", help="state directory (default: the config's state_dir)")
        where.add_argument(
            "--config", default=default_config, help="config whose state_dir to use (default: %(default)s)"
        )
    commands.choices["flush"].add_argument(
        "--include-uncertain",
        action="store_true",
        help="also resend releases that may already be tasks: check the platform first",
    )
    commands.choices["flush"].add_argument(
        "--include-failed",
        action="store_true",
        help="also resend releases the platform refused, after fixing the config",
    )
    commands.choices["status"].add_argument("--json", action="store_true", help="machine-readable output")

    args = parser.parse_args(argv[1:])
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return {"check-config": check_config, "match": match_tag, "flush": flush, "status": status}[args.command](args)
    except ConfigError as error:
        say(str(error))
        return EXIT_USAGE


def check_config(args):
    raw = read_config(args.file)
    problems = config_problems(raw) + index_problems(args.file, raw)
    for problem in problems:
        say(f"{args.file}: {problem}")
    if problems:
        say(f"{args.file}: {len(problems)} problem(s); nothing is released from this config until they are fixed")
        return EXIT_USAGE
    rules = sum(len(project.get("rules", [])) for project in raw["projects"].values())
    say("{}: OK ({} project(s), {} rule(s))".format(args.file, len(raw["projects"]), rules))
    return EXIT_OK


def index_problems(path, raw):
    """A server-wide install lists its projects in <config>.projects; a project missing there is never released."""
    try:
        with open(os.path.splitext(path)[0] + ".projects", encoding="utf-8") as index:
            listed = set(index.read().split("\n"))
    except OSError:
        return []
    projects = raw.get("projects") if isinstance(raw.get("projects"), dict) else {}
    return [
        "projects.{} is missing from the project index {}: its pushes are ignored".format(
            project, os.path.splitext(path)[0] + ".projects"
        )
        for project in sorted(projects)
        if project not in listed
    ]


def match_tag(args):
    config = Config.load(args.config, args.project)
    project = config.project(args.project)
    if project is None:
        raise ConfigError(
            "no project {!r} in {} (it has: {})".format(args.project, args.config, ", ".join(sorted(config.projects)))
        )
    old = "1" * 40 if args.moved else "0" * 40
    decision = decide(config, project, RefUpdate(old, "1" * 40, "refs/tags/" + args.tag), args.user)
    if decision.kind != "release":
        say(
            "{} would be {}: {}".format(
                shown(args.tag), {"skip": "skipped", "refuse": "refused"}[decision.kind], decision.reason
            )
        )
        return EXIT_REFUSED
    path, body = request_for(config, project, decision.rule, args.tag)
    say(
        "{} matches rule {} ({!r}); a push would send:".format(
            shown(args.tag), decision.rule.index, decision.rule.settings["tag"]
        )
    )
    print("GET  {}{}  Cookie: auth_key=********".format(config.codo["url"].rstrip("/"), path))
    print("POST {}{}  Cookie: auth_key=********; csrf_key=<from the GET>".format(config.codo["url"].rstrip("/"), path))
    print(body)
    return EXIT_OK


def _state_dir(args):
    if args.state_dir:
        return args.state_dir
    return Config(read_config(args.config), args.config).state_dir


def flush(args):
    spool = Spool(_state_dir(args))
    spool.recover_abandoned()
    states = [PENDING] + [UNCERTAIN] * args.include_uncertain + [FAILED] * args.include_failed
    queue = sorted((entry_id, state) for state in states for entry_id in spool.ids(state))
    delivered = 0
    for entry_id, state in queue:
        claim = spool.claim(state, entry_id)
        if claim is None:
            continue  # another flush or push has it
        outcome = resend(claim)
        delivered += outcome in (SENT, SKIPPED)
        if outcome == "platform_down":
            break
    spool.prune_sent()
    left = {state: len(spool.ids(state)) for state in (PENDING, UNCERTAIN, FAILED)}
    if delivered or any(left.values()):
        say(
            f"flush: {delivered} delivered; left: {left[PENDING]} pending, {left[UNCERTAIN]} uncertain, {left[FAILED]} failed"
        )
    if left[UNCERTAIN] and not args.include_uncertain:
        say(
            f"{left[UNCERTAIN]} uncertain release(s) need a person: check the platform for the tasks, then flush --include-uncertain"
        )
    return EXIT_REFUSED if any(left.values()) else EXIT_OK


def resend(claim):
    """Send one spooled release with today's config; the claim is settled whatever happens."""
    entry = claim.entry
    entry["attempts"] = entry.get("attempts", 0) + 1
    started = time.monotonic()
    try:
        config = Config.load(entry["config_path"], entry["project"])
        project = config.project(entry["project"])
        if project is None:
            raise ConfigError("project {} is no longer in {}".format(entry["project"], entry["config_path"]))
        auth_key = read_auth_key(config.codo)
    except ConfigError as error:
        claim.settle(PENDING, last_error=str(error))
        return PENDING
    update = RefUpdate(entry["old"], entry["new"], entry["ref"])
    decision = decide(config, project, update, entry.get("user"))
    if decision.kind != "release":
        claim.settle(SENT, skipped=decision.reason, last_error=None)
        say(f"{shown(update.tag)} not sent: {decision.reason}")
        return SKIPPED
    path, body = request_for(config, project, decision.rule, update.tag)
    platform = Platform(config.codo, auth_key)
    result = platform.submit(path, body, Budget(config.codo["budget_s"]))
    outcome = {SENT: SENT, SKIPPED: SENT}.get(result.outcome, result.outcome)
    claim.settle(outcome, last_error=None if outcome == SENT else result.detail, task_id=result.task_id)
    if result.outcome == SENT:
        DownMarker(config.state_dir, 0).clear()
        say_submitted(config.codo, update.tag, result.task_id)
    else:
        say(f"{shown(update.tag)} {result.outcome}: {result.detail}")
    log_event(
        config,
        project=project.path,
        ref=update.ref,
        stage="flush",
        user=entry.get("user"),
        rule=decision.rule.index,
        outcome=result.outcome,
        detail=result.detail,
        task_id=result.task_id,
        spool_id=entry["id"],
        duration_s=round(time.monotonic() - started, 3),
    )
    if result.outcome == PENDING and result.platform_down:
        return "platform_down"
    return result.outcome


def status(args):
    import json

    spool = Spool(_state_dir(args))
    counts = {state: len(spool.ids(state)) for state in (PENDING, UNCERTAIN, FAILED, SENT, "inflight")}
    waiting = [entry for state in (PENDING, UNCERTAIN, FAILED) for entry in spool.entries(state)]
    if args.json:
        print(json.dumps({"counts": counts, "entries": waiting}, sort_keys=True, indent=1))
        return EXIT_OK
    say(
        "spool {}: {} pending, {} uncertain, {} failed, {} sent, {} in flight".format(
            spool.root, counts[PENDING], counts[UNCERTAIN], counts[FAILED], counts[SENT], counts["inflight"]
        )
    )
    for entry in waiting[-20:]:
        say(
            "  {:<9} {} {} {} (tries {}): {}".format(
                entry["state"],
                entry["updated"],
                entry.get("project"),
                shown(entry["tag"]),
                entry.get("attempts", 0),
                entry.get("last_error"),
            )
        )
    return EXIT_OK
