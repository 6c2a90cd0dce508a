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
 10. Metrics                    what flush counts from the log, for node_exporter and status

Only os, sys and time are imported up front. `json` and `re` cost most of a bare
interpreter start, so a push whose tags no rule can match reads its config with
json's own C scanner and tells tags apart by each rule's literal prefix; `re`
comes in when a tag may be a release, `requests` when it is about to be sent.
"""

import os
import sys
import time

# The hook's version: in `--version`, `status --json` and the metrics. Raise it with every change
# to the program that a node should be told apart by.
VERSION = "1.15.0"

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


# Secrets this process holds (the platform key): scrubbed from every line written, whatever put them there.
SECRETS = set()


def _write(stream, line):
    # GitLab hands hooks no LANG; on Python 3.6 that means an ASCII stdout.
    for secret in SECRETS:
        line = line.replace(secret, "********")
    stream.flush()
    stream.buffer.write((one_line(line, limit=None) + "\n").encode("utf-8", "replace"))
    stream.buffer.flush()


def one_line(text, limit=300):
    """Text from outside (a platform message, a tag, a path) on one line: line breaks, controls,
    invisible and separator characters escaped, so none can start a forged `codo:` or `GL-HOOK-ERR:` line."""
    text = str(text)
    if limit and len(text) > limit:
        text = text[:limit] + "..."
    if (
        text.isprintable()
    ):  # str.isprintable: no character of Unicode's Other or Separator classes but " "
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def odd_character(name):
    """The first space, control, format, separator or undecodable character of a name; '' if none."""
    if name.isprintable() and " " not in name:
        return ""
    return next(char for char in name if char == " " or not char.isprintable())


def shown(name):
    """A ref name as it may be shown: as is when plain, else quoted with anything odd escaped."""
    import re

    return name if re.match(SHELL_SAFE_TAG, name, re.ASCII) else one_line(ascii(name))


# ---------------------------------------------------------------------------
# 2. Config
# ---------------------------------------------------------------------------

DEFAULT_TAG_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"

CODO_DEFAULTS = {
    "url": None,
    "api": "task_accept",
    "auth_key_file": "/etc/codo-release/auth_key",
    "verify_tls": True,
    "ca_file": None,
    "connect_timeout_s": 3,
    "read_timeout_s": 10,
    "budget_s": 20,
    "task_link": None,
    "gitlab_url": None,
    "down_memory_s": 60,
    "settle_after_s": 120,
    "follow_deadline_s": 21600,
}
TOP_DEFAULTS = {
    "codo": None,
    "state_dir": "/var/opt/codo-release",
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
    "mode": "release",
    "from_branch": None,
    "max_age_days": None,
    "max_per_push": 10,
    "pusher_args": {},
}
# What a rule may hand the task about who released (pusher_args: {"ARG_NAME": field}).
WHO_FIELDS = ("username", "gl_id", "protocol", "old", "new")
APIS = ("task_accept", "git_hooks")
SEED_ARGS = ("TAG", "GIT_URL", "APP_NAME")
PLATFORM_TEXT_LIMIT = 50
MAX_HOSTS_PER_GROUP = 100

# Whatever tag_name_pattern says, these never reach a shell on the execution hosts:
# shell syntax, quotes, white space, globs, non-ASCII, and a leading '-' (an option).
PLAIN_REGEX_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/,:=@%!<>#&~ "
)
SHELL_SAFE_TAG = (
    r"[A-Za-z0-9._/+,=:@%][A-Za-z0-9._/+,=:@%-]*\Z"  # compiled on first use, not on every start
)


class ConfigError(Exception):
    """The config cannot be used; the message is one line naming the file."""


class UntrustedConfig(ConfigError):
    """A config that someone other than the hook's user or root could have written."""


CONFIG_LIMIT = 32 * 1024 * 1024


def read_config(path, owners=None, stream=False):
    """The config file's JSON object, from a regular file (stream: check-config reads a pipe too).
    With owners (a flush reading a config a spool entry names), only a file reached without a
    link, that one of them owns and no one else may write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if owners else 0))
        try:
            info = os.fstat(fd)
            why = untrusted_file(info, owners or {info.st_uid}, CONFIG_LIMIT)
            if stream and why == "not a regular file":
                import fcntl

                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            elif why and (owners or why in ("not a regular file", f"over {CONFIG_LIMIT} bytes")):
                raise (UntrustedConfig if owners else ConfigError)(
                    f"config {path} is not trusted: {why}"
                )
            chunks, size = [], 0
            while size <= CONFIG_LIMIT:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > CONFIG_LIMIT:
            raise ConfigError(f"config {path} is over {CONFIG_LIMIT} bytes: not a config")
        raw = parse_json(b"".join(chunks).decode("utf-8"))
    except OSError as error:
        import errno

        if owners and error.errno == errno.ELOOP:
            raise UntrustedConfig(f"config {path} is not trusted: a symbolic link")
        raise ConfigError(f"cannot read config {path}: {error.strerror or type(error).__name__}")
    except (ValueError, RecursionError) as error:
        raise ConfigError(f"config {path} is not valid JSON: {one_line(error, 120)}")
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

    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


class _JsonOptions:
    """What the C scanner reads off a json.JSONDecoder: its defaults, less NaN and Infinity."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, staticmethod(_no_constant)


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
    def load(cls, path, project_path=None, patterns=True, owners=None):
        """Read and check the file: the platform settings and the one project asked for.

        patterns=False leaves the regular expressions unchecked (check_patterns does it): a push of
        tags that no rule can match never imports re. owners: see read_config.
        """
        raw = read_config(path, owners)
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

    problems = _regex_problems(
        raw.get("tag_name_pattern", DEFAULT_TAG_NAME_PATTERN), "tag_name_pattern", re.ASCII
    )
    for path, project in sorted(raw["projects"].items()):
        rules = project.get("rules") if isinstance(project, dict) else None
        if (only_project is None or path == only_project) and isinstance(rules, list):
            for index, rule in enumerate(rules):
                if isinstance(rule, dict) and isinstance(rule.get("tag"), str):
                    problems += _regex_problems(
                        rule["tag"], "projects.{}.rules[{}].tag".format(path, index), 0
                    )
    return problems


def _unknown_keys(raw, known, where):
    return [
        "{}{!r} is not a known key (known: {})".format(where, key, ", ".join(sorted(known)))
        for key in sorted(raw)
        if key not in known
    ]


# Upper bounds: a value past them is a typo, and an absurd one (1e308) must not reach a timer or a sleep.
SECONDS_LIMITS = {
    "connect_timeout_s": 300,
    "read_timeout_s": 300,
    "budget_s": 600,
    "down_memory_s": 86400,
    "settle_after_s": 86400,
    "follow_deadline_s": 30 * 86400,
}
LOG_BYTES_LIMITS = (1, 1 << 31)
DIGITS = frozenset("0123456789")
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
# What a URL path may hold here: printable ASCII less space, quotes, `?` and `#` (no query, no fragment).
URL_PATH_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F)) - frozenset("\"'<>\\^`{|}?#")
# Values that go into the shell command line on the execution hosts (TAG is checked per push).
SHELL_SAFE_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/+,=:@%-"
)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def url_problem(url, what, whose="the platform's"):
    """Why `url` is not a plain http(s) URL (scheme, host, optional port and path; no user, query or
    fragment), or ''. Checked by hand, char by char: no parser's leniency decides where a key goes."""
    wrong = f"{what} must be {whose} http(s) URL, like https://codo.example.com[:port][/path]"
    if not isinstance(url, str):
        return wrong
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep:
        return wrong
    authority, slash, path = rest.partition("/")
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        host_ok = bracket and host and set(host) <= set("0123456789abcdefABCDEF:.")
        if port and not port.startswith(":"):
            return wrong
        port = port[1:]
    else:
        host, colon, port = authority.partition(":")
        host_ok = (
            host
            and set(host) <= HOST_CHARS
            and not host.startswith(("-", "."))
            and ".." not in host
        )
        if colon and not port:
            return wrong
    if not host_ok:
        return wrong + " (the host holds characters a host name cannot, or a user name)"
    if port and (not set(port) <= DIGITS or not 0 < int(port) < 65536):
        return wrong + " (the port must be a number from 1 to 65535)"
    if not set(path) <= URL_PATH_CHARS:
        return wrong + " (the path holds a space, quote, `?`, `#` or a character outside ASCII)"
    return ""


def _codo_problems(codo):
    problems = _unknown_keys(codo, CODO_DEFAULTS, "codo.")
    problems += [problem for problem in [url_problem(codo.get("url"), "codo.url")] if problem]
    if codo.get("api", "task_accept") not in APIS:
        problems.append("codo.api must be one of: {}".format(", ".join(APIS)))
    if codo.get("api") == "git_hooks":
        problems += [
            problem
            for problem in [url_problem(codo.get("gitlab_url"), "codo.gitlab_url", "GitLab's")]
            if problem
        ]
    for key, limit in sorted(SECONDS_LIMITS.items()):
        value = codo.get(key, CODO_DEFAULTS[key])
        if not _is_number(value) or not 0 < value <= limit:
            problems.append(f"codo.{key} must be a number of seconds above 0 and at most {limit}")
    if not isinstance(codo.get("verify_tls", True), bool):
        problems.append("codo.verify_tls must be true or false")
    for key in ("auth_key_file", "ca_file"):
        value = codo.get(key, CODO_DEFAULTS[key])
        unset = (
            (None, "") if key == "ca_file" else (None,)
        )  # "": null as ansible-core < 2.19 renders it
        if value not in unset and not _is_absolute_path(value):
            problems.append(
                f"codo.{key} must be an absolute file path"
                + (" or null" if key == "ca_file" else "")
            )
    link = codo.get("task_link")
    if link not in (None, "") and not _is_link(link):
        problems.append(
            "codo.task_link must be an http(s) URL, {list_id} standing for the task's number, or null"
        )
    return problems


def _is_link(value):
    """A URL shown to people: an http(s) URL, then optionally a query or fragment (SPAs' `#/task/{list_id}`)."""
    if not isinstance(value, str):
        return False
    value = value.replace("{list_id}", "1")
    cut = min([index for index in (value.find("?"), value.find("#")) if index >= 0] or [len(value)])
    return not url_problem(value[:cut], "") and set(value[cut:]) <= URL_PATH_CHARS | frozenset("?#")


def _is_absolute_path(value):
    return (
        isinstance(value, str)
        and value.startswith("/")
        and not odd_character(value.replace(" ", "_"))
    )


def _top_problems(raw):
    problems = []
    if raw.get("on_failure", "spool") not in ("spool", "reject"):
        problems.append(
            'on_failure must be "spool" (keep and resend) or "reject" (refuse the tag; update stage)'
        )
    if not _is_absolute_path(raw.get("state_dir", "/")):
        problems.append("state_dir must be an absolute directory path")
    size = raw.get("log_max_bytes", LOG_BYTES_LIMITS[0])
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not LOG_BYTES_LIMITS[0] <= size <= LOG_BYTES_LIMITS[1]
    ):
        problems.append(
            "log_max_bytes must be a whole number from {} to {}".format(*LOG_BYTES_LIMITS)
        )
    if not isinstance(raw.get("tag_name_pattern", ""), str):
        problems.append("tag_name_pattern must be a regular expression")
    return problems


def _project_problems(path, project, api):
    where = f"projects.{one_line(path)}"
    if not isinstance(project, dict):
        return [f"{where} must be an object"]
    problems = _unknown_keys(project, PROJECT_DEFAULTS, where + ".")
    if api == "task_accept":
        for key in ("git_url", "app_name"):
            if not isinstance(project.get(key), str) or not project.get(key):
                problems.append(f"{where}.{key} is required")
            elif not set(project[key]) <= SHELL_SAFE_CHARS:
                problems.append(
                    f"{where}.{key} goes into a shell command on the execution hosts: "
                    "use letters, digits and . _ / + , = : @ % - only"
                )
    for key in ("task_name", "submitter", "executor", "details"):
        value = project.get(key)
        if value is not None and (
            not isinstance(value, str)
            or len(value) > PLATFORM_TEXT_LIMIT
            or odd_character(value.replace(" ", "_"))
        ):
            problems.append(
                f"{where}.{key} must be text of at most {PLATFORM_TEXT_LIMIT} characters, on one line"
            )
    if len(str(project.get("task_name") or project.get("app_name") or "")) > PLATFORM_TEXT_LIMIT:
        problems.append(
            f"{where}.task_name (app_name when unset) is over {PLATFORM_TEXT_LIMIT} characters"
        )
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
        problems.append(
            f'{where}.schedule must be "ready" (run at once) or "new" (wait for approval)'
        )
    if not isinstance(rule.get("on_move", False), bool):
        problems.append(f"{where}.on_move must be true or false")
    users = rule.get("allowed_users", [])
    if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
        problems.append(f"{where}.allowed_users must be a list of GitLab usernames")
    problems += _args_problems(where, rule.get("args", {}))
    problems += _guard_problems(where, rule)
    if api == "task_accept":
        if not is_ascii_number(rule.get("template_id")):
            problems.append(
                f"{where}.template_id must be the platform template's number (ASCII digits)"
            )
        problems += _hosts_problems(where + ".hosts", rule.get("hosts"))
    return problems


def _guard_problems(where, rule):
    """mode, the guards (from_branch, max_age_days, max_per_push) and pusher_args."""
    problems = []
    if rule.get("mode", "release") not in ("release", "shadow"):
        problems.append(
            f'{where}.mode must be "release" or "shadow" (matches, says what it would send, sends nothing)'
        )
    branch = rule.get("from_branch")
    if branch is not None and (
        not isinstance(branch, str)
        or not branch
        or not set(branch) <= SHELL_SAFE_CHARS
        or ".." in branch
        or branch.startswith(("-", "/"))
        or branch.endswith((".lock", "/"))
    ):
        problems.append(f"{where}.from_branch must be a branch name, e.g. main")
    age = rule.get("max_age_days")
    if age is not None and (not _is_number(age) or not 0 < age <= 36500):
        problems.append(f"{where}.max_age_days must be a number of days above 0 (at most 36500)")
    count = rule.get("max_per_push", RULE_DEFAULTS["max_per_push"])
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        problems.append(f"{where}.max_per_push must be a whole number from 1 to 1000")
    who = rule.get("pusher_args", {})
    if not isinstance(who, dict):
        return problems + [
            f"{where}.pusher_args must map argument names to one of: {', '.join(WHO_FIELDS)}"
        ]
    for name, field in sorted(who.items()):
        if not name or name[0] in DIGITS or not set(name) <= NAME_CHARS or name in SEED_ARGS:
            problems.append(
                f"{where}.pusher_args: {one_line(name)!r} is not a name the hook may set"
            )
        elif field not in WHO_FIELDS:
            problems.append(f"{where}.pusher_args.{name} must be one of: {', '.join(WHO_FIELDS)}")
        elif name in (rule.get("args") or {}):
            problems.append(f"{where}.pusher_args.{name} is in args too: use one")
    return problems


def is_ascii_number(value):
    """A whole number as the platform's int() must read it: an int, or ASCII digits only."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and 0 < len(value) <= 18 and set(value) <= DIGITS


def _args_problems(where, args):
    if not isinstance(args, dict):
        return [f"{where}.args must map argument names to text"]
    problems = []
    for key, value in sorted(args.items()):
        if not key or key[0] in DIGITS or not set(key) <= NAME_CHARS:
            problems.append(
                f"{where}.args: {one_line(key)!r} is not a name (letters, digits, _; the template's word)"
            )
        elif key in SEED_ARGS:
            problems.append(
                f"{where}.args.{key} would replace the value the hook sets; use another name"
            )
        elif isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value):
            problems.append(f"{where}.args.{key} must be text or a whole number")
        elif not set(str(value)) <= SHELL_SAFE_CHARS:
            problems.append(
                f"{where}.args.{key} goes into a shell command on the execution hosts: "
                "use letters, digits and . _ / + , = : @ % - only"
            )
    return problems


def _hosts_problems(where, hosts):
    if not isinstance(hosts, dict) or not hosts:
        return [f'{where} must map group numbers to IPv4 lists, e.g. {{"1": ["10.0.0.5"]}}']
    problems = []
    numbers = {}
    for group, ips in sorted(hosts.items()):
        if not is_ascii_number(group):
            problems.append(f"{where}: group {one_line(group)!r} is not a number (ASCII digits)")
        elif int(group) in numbers:
            problems.append(
                f"{where}: groups {numbers[int(group)]!r} and {group!r} are the same group"
            )
        else:
            numbers[int(group)] = group
        if isinstance(ips, str):
            ips = ips.split(",")
        if not isinstance(ips, list) or not ips:
            problems.append(f"{where}.{one_line(group)} must list at least one IPv4 address")
            continue
        if len(ips) > MAX_HOSTS_PER_GROUP:
            problems.append(
                f"{where}.{one_line(group)} has {len(ips)} hosts; the platform takes at most {MAX_HOSTS_PER_GROUP} a group: split it"
            )
        for ip in ips:
            if not isinstance(ip, str) or not is_ipv4(ip):
                problems.append(
                    f"{where}.{one_line(group)}: {one_line(ip)!r} is not an IPv4 address (the platform connects by IP)"
                )
    return problems


def is_ipv4(text):
    """Dotted quad of ASCII digits, no leading zeros: what the platform's own check accepts."""
    parts = text.split(".")
    return len(parts) == 4 and all(
        0 < len(part) <= 3 and set(part) <= DIGITS and part == str(int(part)) and int(part) < 256
        for part in parts
    )


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
    """A finite JSON number: NaN and the infinities (1e999 parses as one) are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value - value == 0


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
    """Release, skip or refuse one tag update, before anything is sent. Run it under a Budget:
    the rules' regular expressions are the config's, and one may backtrack for minutes."""
    odd = odd_character(update.tag)
    if odd:
        return Decision(
            "refuse",
            "tag {} holds {} ({}): tag names with spaces, line breaks or invisible characters are never "
            "released; delete it and push a plain name".format(
                shown(update.tag), ascii(odd), _char_name(odd)
            ),
        )
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


def _char_name(char):
    import unicodedata

    if "\udc80" <= char <= "\udcff":
        return "a byte that is not UTF-8"
    return unicodedata.name(char, "a control character").lower()


def unsafe_tag_reason(config, tag):
    """Why a tag name must not reach a shell on the execution hosts, or '' when it is safe."""
    import re

    if not config.tag_name_re.fullmatch(tag) or not re.match(SHELL_SAFE_TAG, tag, re.ASCII):
        return (
            "tag {} is not a safe release name: it goes into a shell command on the execution hosts; "
            "use letters, digits and . _ / - (tag_name_pattern {})".format(
                shown(tag), config.top["tag_name_pattern"]
            )
        )
    return ""


# ---------------------------------------------------------------------------
# 4. Request bodies: field by field what the seed hook sent
# ---------------------------------------------------------------------------

TASK_ACCEPT_PATH = "/api/task/v2/task/accept/"
GIT_HOOKS_PATH = "/api/task/other/v1/git/hooks/"


def task_accept_body(project, rule, tag, now=None, who=None):
    import json

    args = {
        "TAG": tag,
        "GIT_URL": project.settings["git_url"],
        "APP_NAME": project.settings["app_name"],
    }
    args.update((str(key), str(value)) for key, value in rule.settings["args"].items())
    for name, field in sorted(rule.settings["pusher_args"].items()):
        value = str((who or {}).get(field) or "")
        # These go into the hosts' shell too: only what is plainly safe, else "unknown".
        args[name] = value if value and set(value) <= SHELL_SAFE_CHARS else "unknown"
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

    return json.dumps(
        {"git_url": config.codo["gitlab_url"], "relative_path": project.path, "tag_name": tag}
    )


def request_for(config, project, rule, tag, who=None):
    """(path, body) of the one request that releases this tag; who: the push's WHO_FIELDS."""
    if config.codo["api"] == "git_hooks":
        return GIT_HOOKS_PATH, git_hooks_body(config, project, tag)
    return TASK_ACCEPT_PATH, task_accept_body(project, rule, tag, who=who)


# ---------------------------------------------------------------------------
# 5. The platform
# ---------------------------------------------------------------------------

PLATFORM_SKIP_MESSAGES = ("No hooks, ignore",)
PLATFORM_UNKNOWN_PROJECT = "No related items were found"
REPLY_LIMIT = (
    64 * 1024
)  # the platform's replies are a few hundred bytes; anything larger is not its reply
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
        except _Unreachable as error:
            return Result("retry", str(error))
        except _NotSent as error:
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
        except _NotSent as error:
            return Result(PENDING, str(error), platform_down=error.platform_down)
        except _Unreachable as error:
            return Result("retry", str(error))
        except _MaybeSent as error:
            return Result(UNCERTAIN, str(error), platform_down=True)
        return self._classify(path, url, status, headers, payload, template_id)

    def _request(self, method, url, budget, body=None, csrf=None):
        """(status, headers, parsed JSON or None) of one request; the body read up to REPLY_LIMIT.

        Raises _Unreachable (no connection made), _NotSent (TLS) or, for a POST whose body may have
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
            raise _NotSent(f"TLS failed: {_reason(error)}; set codo.ca_file for a private CA")
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as error:
            if method == "GET" or _connection_never_made(error):
                raise _Unreachable(f"platform unreachable: {_reason(error)}")
            raise _MaybeSent(f"connection lost after the task was sent: {_reason(error)}")
        except requests.exceptions.RequestException as error:
            if method == "GET":
                raise _Unreachable(f"no reply from the platform: {_reason(error)}")
            raise _MaybeSent(f"no reply to the task: {_reason(error)}")
        try:
            raw = _read_limited(reply)
        except (requests.exceptions.RequestException, ValueError, OSError) as error:
            problem = (
                f"HTTP {reply.status_code} with a reply that could not be read: {_reason(error)}"
            )
            if method == "GET":
                raise _Unreachable(problem)
            raise _MaybeSent(problem)
        finally:
            reply.close()
        if raw is None:
            problem = f"HTTP {reply.status_code} with a reply over {REPLY_LIMIT // 1024} KiB: not the platform's"
            if method == "GET":
                raise _NotSent(problem + "; check codo.url", platform_down=True)
            raise _MaybeSent(problem)
        return reply.status_code, reply.headers, _json(raw)

    def _csrf_key(self, url, budget):
        """GET a single-use csrf key. Nothing is created by a GET, so every failure here is safe."""
        status, headers, payload = self._request("GET", url, budget)
        if status == 200:
            key = payload.get("csrf_key") if isinstance(payload, dict) else None
            if isinstance(key, str) and 0 < len(key) <= 64 and set(key) <= CSRF_KEY_CHARS:
                return key
            raise _NotSent(
                f"{url} answered, but not with the platform's csrf key: check codo.url",
                platform_down=True,
            )
        if 300 <= status < 400:
            raise _NotSent(_redirected(url, status, headers))
        if status == 401:
            raise _NotSent(self._key_refused())
        if status == 404:
            raise _NotSent(
                f"{url} is not the platform's task API (HTTP 404): check codo.url, the platform's address"
            )
        if status == 500:
            raise _NotSent(
                "the platform failed on the csrf request (HTTP 500): it is broken or cannot read the key "
                f"(a key that is not one of its JWTs gets 500): check {self.key_file} and the platform's log",
                platform_down=True,
            )
        if status in (502, 503, 504):
            raise _Unreachable(
                f"the gateway in front of the platform answered HTTP {status}: the task service is down"
            )
        raise _NotSent(f"HTTP {status} to the csrf request: check codo.url", platform_down=True)

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
                        TASK_HISTORY_PATH, wanted, budget, 500, posted["task_name"]
                    )
        except BudgetExceeded:
            return "unknown", "the time budget ran out while reading the platform's task lists"
        except (_Unreachable, _NotSent, _MaybeSent, _Unreadable) as error:
            return "unknown", str(error)
        return ("found", task_id) if task_id is not None else ("absent", None)

    def _search(self, path, wanted, budget, limit, search):
        """The list_id of the wanted task in one of the platform's task lists, or None once the
        list is read to its end (or past where the task could be)."""
        oldest = _day_before(wanted[3])
        for page in range(1, SEARCH_PAGES + 1):
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
            if page * limit >= count:
                return None
            # Newest first: past rows older than the task (a day's slack for the two clocks) it cannot be.
            times = [
                row.get("start_time" if path == TASK_LIST_PATH else "create_time") for row in rows
            ]
            if times and all(
                isinstance(t, str) and t < (wanted[3] if path == TASK_LIST_PATH else oldest)
                for t in times
            ):
                return None
        raise _Unreadable(
            f"the platform's task list is longer than {SEARCH_PAGES} pages: not searched to its end"
        )

    def _read(self, path, query, budget):
        """(status, JSON payload or None) of one GET of the platform's read API, within the budget.
        Raises _Unreadable when no reply could be had."""
        from urllib.parse import urlencode

        try:
            with budget:
                status, _headers, payload = self._request(
                    "GET", f"{self.base}{path}?{urlencode(query)}", budget
                )
        except BudgetExceeded:
            raise _Unreadable("the time budget ran out while reading the platform")
        except (_Unreachable, _NotSent, _MaybeSent) as error:
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
        steps = [step for step in data.get("scheduler_list") or [] if isinstance(step, dict)]
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
        return [step for step in data.get("scheduler_list") or [] if isinstance(step, dict)]

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
            or not isinstance(payload.get("data"), list)
        ):
            return None
        return bool(payload["data"])

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
SEARCH_PAGES = 40


def _day_before(exec_time):
    """exec_time less a day, in the platform's format: how far apart its clock and ours may be."""
    try:
        stamp = time.mktime(time.strptime(exec_time, "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp - 86400))


def key_sees_submitter(key, submitter):
    """'' when the key can see tasks posted with this submitter (a superuser's key, or submitter
    equal to its username or nickname), else why not: then a lookup proves nothing."""
    data = jwt_claims(key).get("data")
    data = data if isinstance(data, dict) else {}
    if data.get("is_superuser") in (True, 1):
        return ""
    names = [
        name
        for name in (data.get("username"), data.get("nickname"))
        if isinstance(name, str) and name
    ]
    if submitter in names:
        return ""
    return (
        "the key cannot see the hook's tasks (not a superuser's key, and submitter {} is not its username "
        "or nickname{}): set the project's submitter to {} so that flush can look its tasks up".format(
            one_line(repr(submitter), 60),
            " " + one_line(repr(names), 80) if names else "",
            one_line(repr(names[0]), 60) if names else "the key's username",
        )
    )


def _read_limited(reply):
    """The reply's body, or None when it is longer than REPLY_LIMIT (not read further)."""
    chunks, size = [], 0
    for chunk in reply.iter_content(8192):
        size += len(chunk)
        if size > REPLY_LIMIT:
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


KEY_FILE_LIMIT = 16 * 1024
JWT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=")
_KEYS = {}  # read once a process


def read_auth_key(codo):
    """The platform key, checked: $CODO_AUTH_KEY (admin use) or the key file. Never shown.

    Raises ConfigError with one line that says what is wrong and never echoes the file.
    """
    source = os.environ.get("CODO_AUTH_KEY")
    where = "$CODO_AUTH_KEY" if source else codo["auth_key_file"]
    if where not in _KEYS:
        raw = source.encode("utf-8", "surrogateescape") if source else _read_key_file(where)
        key = _checked_key(raw, where)
        SECRETS.add(key)
        _KEYS[where] = key
    return _KEYS[where]


def _read_key_file(path):
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise ConfigError(
            f"cannot read the platform key {path}: {error.strerror or type(error).__name__}"
        )
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"the platform key {path} is not a regular file: point codo.auth_key_file at the key"
            )
        if info.st_mode & 0o077:
            raise ConfigError(
                "the platform key {} can be read by others (mode {:04o}): chmod 600 it, owned by the git user, "
                "as the role installs it; the key is not used until then".format(
                    path, stat.S_IMODE(info.st_mode)
                )
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"the platform key {path} belongs to uid {info.st_uid}, not to this user: chown it"
            )
        data = os.read(fd, KEY_FILE_LIMIT + 1)
    except OSError as error:
        raise ConfigError(
            f"cannot read the platform key {path}: {error.strerror or type(error).__name__}"
        )
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_LIMIT:
        raise ConfigError(
            f"the platform key file {path} is too long to hold a key: point codo.auth_key_file at the key"
        )
    return data


def _checked_key(raw, where):
    key = raw.strip(b" \t\r\n")
    if not key:
        raise ConfigError(
            f"the platform key file {where} is empty: write the platform's auth_key there (the role takes it from "
            "vault_codo_hooks_auth_key); releases wait in the spool until it is there"
        )
    parts = key.split(b".")
    shape = (
        len(parts) == 3
        and parts[0]
        and parts[1]
        and all(set(part.decode("latin-1")) <= JWT_CHARS for part in parts)
    )
    if not shape:
        inside = " (it holds more than one line)" if b"\n" in key or b"\r" in key else ""
        raise ConfigError(
            f"{where} does not hold a platform key{inside}: the key is one line, a JWT: three base64url "
            "parts joined by dots; releases wait in the spool until it is fixed"
        )
    key = key.decode("ascii")
    if not jwt_claims(key):
        raise ConfigError(
            f"{where} does not hold a platform key: its middle part is not a JWT's JSON payload (the platform "
            "answers such a key with HTTP 500); releases wait in the spool until it is fixed"
        )
    return key


def jwt_claims(key):
    """The key's payload (its middle part), read without verifying anything; {} if it is not JSON."""
    import base64

    middle = key.split(".")[1]
    try:
        claims = parse_json(
            base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)).decode("utf-8")
        )
    except (ValueError, RecursionError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


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
ENTRY_LIMIT = 64 * 1024
ENTRY_FIELDS = ("id", "old", "new", "ref", "tag")


class SpoolError(Exception):
    pass


class Claim:
    """An entry being worked on: its inflight file stays locked until it is settled."""

    def __init__(self, spool, entry, handle):
        self.spool, self.entry, self.handle = spool, entry, handle

    def settle(self, state, **fields):
        """Record the entry's new state durably, then let go of it.

        With no room for the new record (a full disk), the journal itself is moved into the new
        state: a rename needs no space. SpoolError only when even that fails: the entry then stays
        in flight, and the next flush counts it uncertain."""
        self.entry.update(fields, state=state, updated=_now_text())
        inflight = self.spool.path("inflight", self.entry["id"])
        try:
            if state is None:
                os.unlink(inflight)
                return
            try:
                self.spool.write_entry(state, self.entry)
            except OSError:
                os.rename(inflight, self.spool.path(state, self.entry["id"]))
                return
            os.unlink(inflight)
        except OSError as error:
            raise SpoolError(
                f"cannot record the release in {self.spool.root}: {error.strerror or error}"
            )
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

    The spool is the hook's alone: its directories are made 0750 whatever the umask and must
    belong to this user, entries are opened without following links, and an entry that another
    user owns, that others may write, or that is not an entry is ignored and listed by `status`.
    """

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.root = os.path.join(state_dir, "spool")
        self.owners = {os.geteuid(), 0}  # root is above the hook anyway
        if os.geteuid() == 0:  # an admin's root shell reads the git user's spool
            try:
                self.owners.add(os.lstat(state_dir).st_uid)
            except OSError:
                pass
        self.ignored = {}  # path: why it is not trusted

    def path(self, state, entry_id):
        return os.path.join(self.root, state, entry_id + ".json")

    def ensure(self):
        for directory in [self.state_dir, self.root] + [
            os.path.join(self.root, s) for s in SPOOL_STATES + ("tmp",)
        ]:
            private_dir(directory, self.owners)

    def journal(self, entry):
        """Write a new entry straight into `inflight/`, locked by us. Raises SpoolError."""
        import fcntl

        entry = dict(
            entry,
            id=_new_id(),
            created=_now_text(),
            updated=_now_text(),
            attempts=0,
            state="inflight",
        )
        tmp = os.path.join(self.root, "tmp", entry["id"] + ".json")
        try:
            self.ensure()
            handle = _create(tmp)
            fcntl.flock(handle, fcntl.LOCK_EX)
            _dump(handle, entry)
            os.rename(tmp, self.path("inflight", entry["id"]))
            _fsync_dir(os.path.join(self.root, "inflight"))
        except OSError as error:
            _unlink_quietly(tmp)
            raise SpoolError(f"cannot write the spool in {self.root}: {error.strerror or error}")
        return Claim(self, entry, handle)

    def claim(self, state, entry_id):
        """Take an entry out of `state` for sending; None if someone else has it or it is not trusted."""
        import fcntl

        source = self.path(state, entry_id)
        handle = self._open_entry(source)
        if handle is None:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.lstat(source).st_ino:
                raise FileNotFoundError(
                    source
                )  # settled anew while we waited: not the entry we locked
            entry = self._parse(handle, source, entry_id)
            if entry is None:
                raise ValueError(source)
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
            if any(
                os.path.lexists(self.path(state, entry_id))
                for state in (SENT, FAILED, PENDING, UNCERTAIN)
            ):
                _unlink_quietly(self.path("inflight", entry_id))
                claim.handle.close()
                continue
            try:
                claim.settle(UNCERTAIN, last_error="the process sending it stopped mid-send")
            except SpoolError:
                pass

    def write_entry(self, state, entry):
        tmp = os.path.join(self.root, "tmp", entry["id"] + "." + state)
        try:
            with _create(tmp) as handle:
                _dump(handle, entry)
            os.rename(tmp, self.path(state, entry["id"]))
            _fsync_dir(os.path.join(self.root, state))
        except OSError:
            _unlink_quietly(tmp)
            raise

    def ids(self, state):
        try:
            names = os.listdir(os.path.join(self.root, state))
        except OSError:
            return []
        found = []
        for name in names:
            if _is_entry_name(name):
                found.append(name[:-5])
            else:
                self.ignored[os.path.join(self.root, state, name)] = "not a spool entry's name"
        return sorted(found)

    def entries(self, state):
        found = []
        for entry_id in self.ids(state):
            path = self.path(state, entry_id)
            handle = self._open_entry(path)
            if handle is None:
                continue
            with handle:
                entry = self._parse(handle, path, entry_id)
            if entry is not None:
                found.append(dict(entry, state=state))
        return found

    def prune_sent(self, keep=SENT_KEPT):
        for entry_id in self.ids(SENT)[:-keep]:
            _unlink_quietly(self.path(SENT, entry_id))

    def _open_entry(self, path):
        """A handle on an entry file, or None (noted in self.ignored) when it is not one the hook wrote."""
        import errno

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:
            self.ignored[path] = (
                "a symbolic link"
                if error.errno == errno.ELOOP
                else (error.strerror or "unreadable")
            )
            return None
        why = untrusted_file(os.fstat(fd), self.owners, ENTRY_LIMIT)
        if why:
            os.close(fd)
            self.ignored[path] = why
            return None
        return os.fdopen(fd, encoding="utf-8")

    def _parse(self, handle, path, entry_id):
        import json

        try:
            entry = json.loads(handle.read(ENTRY_LIMIT + 1), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            entry = None
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(field), str) for field in ENTRY_FIELDS)
            and entry["id"] == entry_id
            and entry["ref"] == "refs/tags/" + entry["tag"]
            and isinstance(entry.get("project"), (str, type(None)))
            and isinstance(entry.get("attempts", 0), int)
        ):
            self.ignored[path] = "not a spool entry"
            return None
        return entry


def private_dir(path, owners):
    """Make `path` 0750 (the umask has no say), or check that it is a directory of ours no one else writes."""
    import stat

    try:
        os.mkdir(path, 0o750)
        os.chmod(path, 0o750)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or info.st_mode & 0o022:
        raise OSError(
            0,
            f"{path} must be a directory of this user's that no one else can write (chown, chmod 750)",
        )


def untrusted_file(info, owners, limit):
    """Why a file the hook reads back is not one it could have written; '' when it is."""
    import stat

    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid not in owners:
        return f"belongs to uid {info.st_uid}, not to this user"
    if info.st_mode & 0o022:
        return "others may write it (mode {:04o})".format(stat.S_IMODE(info.st_mode))
    if info.st_nlink != 1:
        return "it has other names (hard links)"
    if info.st_size > limit:
        return f"over {limit} bytes"
    return ""


def _is_entry_name(name):
    # <16 digits>-<pid>-<6 hex>.json, as _new_id makes it
    stem, dot, suffix = name.rpartition(".")
    parts = stem.split("-")
    return (
        suffix == "json"
        and len(parts) == 3
        and len(parts[0]) == 16
        and set(parts[0]) <= DIGITS
        and 0 < len(parts[1]) <= 10
        and set(parts[1]) <= DIGITS
        and len(parts[2]) == 6
        and set(parts[2]) <= frozenset("0123456789abcdef")
    )


def _create(path):
    """A new file of ours, 0640 whatever the umask, never through a link."""
    _unlink_quietly(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    os.fchmod(fd, 0o640)
    return os.fdopen(fd, "w", encoding="utf-8")


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
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
            return time.time() - os.lstat(self.path).st_mtime < self.seconds
        except OSError:
            return False

    def set(self, detail):
        try:
            with _create(self.path) as handle:
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
    append_log(config.state_dir, config.top["log_max_bytes"], event)


def append_log(state_dir, max_bytes, event):
    """One JSON line, secrets scrubbed, in one write; True if it was written. The log never costs a release."""
    import json

    path = os.path.join(state_dir, "hook.log")
    text = json.dumps(dict(event, time=_now_text()), sort_keys=True)
    for secret in SECRETS:
        text = text.replace(secret, "********")
    try:
        private_dir(
            state_dir,
            {os.geteuid()} | ({os.lstat(state_dir).st_uid} if os.path.isdir(state_dir) else set()),
        )
        if os.path.exists(path) and os.path.getsize(path) > max_bytes:
            os.replace(path, path + ".1")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        try:
            os.write(
                fd, (text + "\n").encode("utf-8", "backslashreplace")
            )  # one write: no interleaving
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------
# 8. Hook stages
# ---------------------------------------------------------------------------


class Push:
    """One hook run: who pushed what to which project, under which config."""

    def __init__(self, stage, updates, config_path):
        self.stage = stage
        self.updates = updates  # [old, new, ref] of new and moved tags
        self.user = os.environ.get("GL_USERNAME")
        self.gl_id = os.environ.get("GL_ID")
        self.protocol = os.environ.get("GL_PROTOCOL")
        self.project_path = os.environ.get("GL_PROJECT_PATH")
        self.config_path = config_path
        self.kept = (
            set()
        )  # refs whose release is journaled: an unexpected error leaves them where they are


def run_stage(push, malformed):
    wrong_ids = wrong_id_length(push.updates)
    if wrong_ids:
        push.updates = []  # every record has the one length the entry saw first: none can be trusted
    if malformed or wrong_ids:
        say(
            f"ref updates not read: {_few(malformed + wrong_ids)}; only what git writes is acted on"
        )
        if push.stage != "post-receive":
            refuse_line("push refused: the ref updates handed to the hook are malformed")
            return EXIT_REFUSED
    try:
        config = Config.load(push.config_path, push.project_path, patterns=False)
        project = config.project(push.project_path)
        if project is None:
            return EXIT_OK
        candidates = release_candidates(project, push)
        if not candidates:
            return EXIT_OK
        budget = Budget(config.codo["budget_s"])
        with budget:
            config.check_patterns(project.path)
            decisions = [
                (update, decide(config, project, update, push.user)) for update in candidates
            ]
            decisions = guarded(push, decisions)
    except ConfigError as error:
        return config_broken(push, str(error))
    except BudgetExceeded:
        return config_broken(push, too_slow(config))
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
    for update, decision in decisions:
        if decision.kind == "release" and decision.rule.settings["mode"] == "shadow":
            report_shadow(config, project, push, update, decision.rule)
    decisions = [
        (u, d) for u, d in decisions if d.kind != "release" or d.rule.settings["mode"] != "shadow"
    ]
    releases = [
        (update, decision.rule) for update, decision in decisions if decision.kind == "release"
    ]
    if not releases:
        return EXIT_OK
    sender = Sender(config, project, push, budget)
    outcomes = [sender.release(update, rule) for update, rule in releases]
    if push.stage == "update" and outcomes[0] == "refused":
        return EXIT_REFUSED
    return EXIT_OK


def guarded(push, decisions):
    """The rules' guards on what a push may release: at most max_per_push new release tags a rule
    (a mirror or an import refuses instead of queueing hundreds of deployments), the tagged commit
    on from_branch, and not older than max_age_days. Only releases pay for them."""
    per_rule = {}
    for update, decision in decisions:
        if decision.kind == "release" and decision.rule.settings["mode"] != "shadow":
            per_rule.setdefault(decision.rule.index, []).append(update)
    checked = []
    for update, decision in decisions:
        reason = ""
        if decision.kind == "release" and decision.rule.settings["mode"] != "shadow":
            rule = decision.rule
            count = len(per_rule[rule.index])
            if count > rule.settings["max_per_push"]:
                reason = (
                    f"this push creates {count} release tags for rule {rule.index}, at most "
                    f"{rule.settings['max_per_push']} (max_per_push): push them a few at a time"
                )
            else:
                reason = commit_guard_reason(rule, update)
        checked.append((update, Decision("refuse", reason, decision.rule) if reason else decision))
    return checked


def commit_guard_reason(rule, update):
    """Why the tagged commit may not be released (from_branch, max_age_days), or ''."""
    branch, days = rule.settings["from_branch"], rule.settings["max_age_days"]
    if branch is None and days is None:
        return ""
    commit = update.new + "^{commit}"
    if branch is not None:
        code, _ = _git("merge-base", "--is-ancestor", commit, "refs/heads/" + branch)
        if code == 1:
            return f"tag {shown(update.tag)} is not on branch {branch}: only what was merged there is released (from_branch of rule {rule.index})"
        if code != 0:
            return f"cannot tell whether tag {shown(update.tag)} is on branch {branch} (does it exist?); push the branch first"
    if days is not None:
        code, out = _git("log", "-1", "--format=%ct", commit)
        if code != 0 or not out.strip().isdigit():
            return f"cannot read the date of tag {shown(update.tag)}'s commit"
        age = (time.time() - int(out.strip())) / 86400
        if age > days:
            return f"tag {shown(update.tag)} points at a commit {age:.0f} days old, more than {days:g} (max_age_days of rule {rule.index})"
    return ""


def _git(*args):
    """(exit code, stdout) of git in the repository the hook runs in (quarantined objects included)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
        )
    except OSError:
        return -1, ""
    return done.returncode, done.stdout


def report_shadow(config, project, push, update, rule):
    say(
        f"{shown(update.tag)} shadow: rule {rule.index} would submit it to template "
        f"{rule.settings['template_id']} ({rule.settings['schedule']}); nothing sent (mode: shadow)"
    )
    log_event(config, outcome="shadow", rule=rule.index, **event_of(push, update, project.path))


def event_of(push, update, project):
    """Who released what: the fields every log event of a push's tag carries."""
    return {
        "project": project,
        "ref": update.ref,
        "stage": push.stage,
        "user": push.user,
        "gl_id": push.gl_id,
        "protocol": push.protocol,
        "old": update.old,
        "new": update.new,
    }


def who_of(push, update):
    return {
        "username": push.user,
        "gl_id": push.gl_id,
        "protocol": push.protocol,
        "old": update.old,
        "new": update.new,
    }


def too_slow(config):
    return (
        "matching the pushed tags against the rules took longer than codo.budget_s ({} s): a rule's tag or "
        "tag_name_pattern backtracks catastrophically (check-config warns of it)".format(
            config.codo["budget_s"]
        )
    )


def wrong_id_length(updates):
    """Object ids whose length is not the repository's (40 hex digits for SHA-1, 64 for SHA-256)."""
    expected = repository_id_length()
    if expected is None or not updates or len(updates[0][0]) == expected:
        return []
    return [f"object ids of {len(updates[0][0])} digits in a repository whose ids have {expected}"]


def repository_id_length():
    """40 or 64, read from the repository's config (extensions.objectformat); None when unreadable."""
    try:
        with open(os.path.join(os.environ.get("GIT_DIR") or ".", "config"), "rb") as handle:
            text = handle.read(1 << 20).lower()
    except OSError:
        return None
    for line in text.split(b"\n"):
        key, _, value = line.partition(b"=")
        if key.strip() == b"objectformat":
            return 64 if value.strip() == b"sha256" else 40
    return 40


def _few(problems):
    return "; ".join(problems[:3]) + (
        f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    )


def release_candidates(project, push):
    """Tag updates whose name starts with some rule's literal prefix (the only ones worth a regex),
    and those whose name holds a space, control or invisible character (refused whatever the rules).

    Every pushed tag goes through this loop, before re is imported: it stays lean.
    """
    prefixes = tuple(rule.prefix for rule in project.rules)
    return [
        RefUpdate(*update)
        for update in push.updates
        if update[2][10:].startswith(prefixes) or odd_character(update[2][10:])
    ]


def config_broken(push, message):
    """A config that cannot be used refuses new tags before the push, and keeps them after it."""
    if push.stage in ("pre-receive", "update"):
        created = [update for update in (RefUpdate(*raw) for raw in push.updates) if update.created]
        if created:
            refuse_line(
                f"{message}; tags cannot be released until it is fixed: run codo_release_hook.py check-config"
            )
            log_broken(push, created, "refused", message)
            return EXIT_REFUSED
        return EXIT_OK
    keep(push, message, "run check-config, then flush")
    return EXIT_OK


def log_broken(push, updates, outcome, message, spool_ids=None):
    """Log events of a push whose config could not be used (the metrics count them); an error path only."""
    state_dir = _state_dir_of_broken(push.config_path)
    for update in updates:
        event = dict(
            event_of(push, update, push.project_path), outcome=outcome, detail=message, rule=None
        )
        if spool_ids:
            event["spool_id"] = spool_ids.get(update.ref)
        append_log(state_dir, TOP_DEFAULTS["log_max_bytes"], event)


def keep(push, message, then):
    """Journal the push's new tags not journaled yet as pending, with one line each saying whether it worked."""
    spool = Spool(_state_dir_of_broken(push.config_path))
    kept = {}
    for update in (RefUpdate(*raw) for raw in push.updates):
        if not update.created or update.ref in push.kept:
            continue
        try:
            claim = spool.journal(_entry(push, update, None))
            claim.settle(PENDING, last_error=message)
        except SpoolError as error:
            say(
                f"{shown(update.tag)} NOT kept ({error}): delete the tag and push it again once it is fixed"
            )
            continue
        push.kept.add(update.ref)
        kept[update.ref] = (update, claim.entry["id"])
        say(f"{shown(update.tag)} kept in the spool: {message}; {then}")
    log_broken(
        push,
        [update for update, _ in kept.values()],
        PENDING,
        message,
        {ref: spool_id for ref, (_, spool_id) in kept.items()},
    )


def _state_dir_of_broken(path):
    try:
        state_dir = read_config(path).get("state_dir")
    except ConfigError:
        state_dir = None
    return state_dir if _is_absolute_path(state_dir) else TOP_DEFAULTS["state_dir"]


def report_refusal(config, project, push, update, decision):
    if push.stage == "post-receive":
        say(f"{shown(update.tag)} NOT released: {decision.reason}")
    else:
        refuse_line(f"push refused: {decision.reason}")
    log_event(
        config,
        rule=decision.rule.index if decision.rule else None,
        outcome="refused",
        detail=decision.reason,
        **event_of(push, update, project.path),
    )


def _entry(push, update, rule):
    return dict(
        update.as_dict(),
        tag=update.tag,
        project=push.project_path,
        user=push.user,
        gl_id=push.gl_id,
        protocol=push.protocol,
        stage=push.stage,
        config_path=os.path.abspath(push.config_path),
        rule=rule.index if rule else None,
    )


class Sender:
    """Sends the releases of one push under the push's time budget; anything not sent stays in the spool."""

    def __init__(self, config, project, push, budget):
        self.config, self.project, self.push = config, project, push
        self.spool = Spool(config.state_dir)
        self.down = DownMarker(config.state_dir, config.codo["down_memory_s"])
        self.budget = budget
        self.reject = push.stage == "update" and config.on_failure == "reject"
        self.platform = None

    def release(self, update, rule):
        started = time.monotonic()
        try:
            claim = self.spool.journal(_entry(self.push, update, rule))
        except SpoolError as error:
            return self._unjournaled(update, rule, error)
        self.push.kept.add(update.ref)
        try:
            result = self._send(update, rule)
        except BaseException:
            # An error of our own mid-send: the release stays, uncertain once its body may have left.
            posted = self.platform is not None and self.platform.posted
            claim.settle(
                UNCERTAIN if posted else PENDING,
                last_error="an unexpected error of the hook (see hook.log)",
            )
            raise
        claim.entry["attempts"] += 1
        outcome = self._settle(claim, update, result)
        log_event(
            self.config,
            **event_of(self.push, update, self.project.path),
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
                importing = time.monotonic()
                self.platform = Platform(
                    self.config.codo, read_auth_key(self.config.codo), self._key_file()
                )
                self.budget.extend(
                    time.monotonic() - importing
                )  # a loaded CPU is not the platform's fault
        except ConfigError as error:
            return Result(PENDING, str(error))
        path, body = request_for(
            self.config, self.project, rule, update.tag, who_of(self.push, update)
        )
        result = self.platform.submit(path, body, self.budget, _template_of(self.config, rule))
        if result.platform_down:
            self.down.set(result.detail)
        elif result.outcome in (SENT, SKIPPED, FAILED):
            self.down.clear()
        return result

    def _key_file(self):
        return (
            "$CODO_AUTH_KEY"
            if os.environ.get("CODO_AUTH_KEY")
            else self.config.codo["auth_key_file"]
        )

    def _settle(self, claim, update, result):
        """Record the result, tell the pusher, and return the outcome."""
        tag = shown(update.tag)
        if self.reject and result.outcome in (PENDING, FAILED):
            claim.drop()
            refuse_line(
                f"tag {tag} refused: {result.detail}. Nothing was created; push the tag again later"
            )
            return "refused"
        state = {SKIPPED: SENT}.get(result.outcome, result.outcome)
        fields = {"last_error": None if state == SENT else result.detail}
        if result.outcome == SENT:
            fields.update(
                task_id=result.task_id,
                sent_at=time.time(),
                link=task_link(self.config.codo, result.task_id),
            )
        if result.outcome == SKIPPED:
            fields["skipped"] = result.detail
        fields.update(uncertain_fields(result))
        try:
            claim.settle(state, **fields)
            unrecorded = ""
        except SpoolError as error:
            unrecorded = f" ({error}: it stays in flight; the next flush counts it uncertain)"
        if result.outcome == SENT:
            say_submitted(self.config.codo, update.tag, result.task_id)
        elif result.outcome == SKIPPED:
            say(f"{tag} skipped: {result.detail}")
        elif result.outcome == UNCERTAIN:
            say(
                f"WARNING {tag} may or may not have become a task ({result.detail}). Check the platform before "
                "anything else: if there is no task, run codo_release_hook.py flush --include-uncertain"
                + unrecorded
            )
        elif result.outcome == FAILED:
            say(
                f"{tag} not released: {result.detail}. Fix the rule, then run codo_release_hook.py flush "
                "--include-failed" + unrecorded
            )
        else:
            then = "when the platform answers" if result.platform_down else "once that is fixed"
            say(f"{tag} spooled: {result.detail}; the spool timer sends it {then}{unrecorded}")
        return result.outcome

    def _unjournaled(self, update, rule, error):
        """No spool to keep it in: the update stage refuses; after the push, try once, loudly."""
        tag = shown(update.tag)
        if self.push.stage == "update":
            refuse_line(
                f"tag {tag} refused: {error}. Nothing was sent; push the tag again once it is fixed"
            )
            return "refused"
        result = self._send(update, rule)
        if result.outcome == SENT:
            say(f"{tag} submitted as task {result.task_id} ({error})")
            return SENT
        say(
            f"{tag} NOT released and NOT kept: {result.detail}; {error}. Delete the tag and push it again"
        )
        return "lost"


def uncertain_fields(result):
    """What an uncertain release keeps so that flush can settle it: the body as posted, and when."""
    if result.outcome != UNCERTAIN:
        return {}
    return {
        "posted_body": result.body,
        "uncertain_since": time.time(),
        "error_reply": result.error_reply,
    }


def _template_of(config, rule):
    return rule.settings["template_id"] if config.codo["api"] == "task_accept" else None


def unexpected_error(stage, push, config_path):
    """Any error of the hook's own: one line with an id that finds the traceback in the log, never the traceback."""
    import traceback

    error_id = os.urandom(4).hex()
    state_dir = _state_dir_of_broken(config_path) if config_path else TOP_DEFAULTS["state_dir"]
    try:  # whatever put the key into the error's text, the log masks it: know the key to mask
        read_auth_key(_with_defaults(read_config(config_path).get("codo") or {}, CODO_DEFAULTS))
    except Exception:
        pass
    logged = append_log(
        state_dir,
        TOP_DEFAULTS["log_max_bytes"],
        {
            "outcome": "internal_error",
            "error_id": error_id,
            "stage": stage,
            "traceback": traceback.format_exc(),
        },
    )
    where = os.path.join(state_dir, "hook.log") if logged else "no log (it cannot be written)"
    if stage in ("pre-receive", "update"):
        refuse_line(
            f"internal error {error_id} (traceback: {where}); push refused: tell the GitLab admin"
        )
        return EXIT_REFUSED
    if stage == "post-receive" and push is not None:
        say(
            f"internal error {error_id} (traceback: {where}); this push's releases are kept in the spool"
        )
        keep(push, f"internal error {error_id}", "tell the GitLab admin; flush sends it once fixed")
        return EXIT_OK
    say(f"internal error {error_id} (traceback: {where}): please report it")
    return EXIT_REFUSED


# ---------------------------------------------------------------------------
# 9. Admin commands
# ---------------------------------------------------------------------------

HELP = """codo_release_hook.py: GitLab server hook that turns release tags into OpenDevOps tasks.

As a hook (linked into custom_hooks as pre-receive.d/, update.d/ or post-receive.d/):
the stage is the name it runs under; the config is codo-release.json in custom_hooks.

Admin commands:
  check-config [FILE]                       list every problem in a config
  match --project P TAG [--user U]          show what a push of TAG would send (sends nothing)
  match --project P --replay [--repo R]     which of the repository's tags would be released
  flush [--include-uncertain] [--include-failed] [--metrics-dir D]
                                            send the spooled releases (and write the metrics)
  status [--json]                           what the spool holds
  --version                                 the hook's version
Each takes --help. Exit codes: 0 done, 1 refused or something left undelivered,
2 bad usage or config."""


def main(stage, updates, argv, config_path, malformed=None):
    """Called by the entry with the stage it runs as (None: admin), the tag updates, the config's path
    and the records it could not read. Whatever goes wrong, the person sees one line, never a traceback."""
    os.umask(0o027)
    push = None
    try:
        if stage is not None and updates is not None:
            push = Push(stage, updates, config_path)
            return run_stage(push, malformed or [])
        if stage is not None:
            say(
                f"unknown hook stage {one_line(stage)!r}: name the hook pre-receive, update or post-receive"
            )
            return EXIT_USAGE
        return admin(argv, config_path)
    except (Exception, BudgetExceeded):
        return unexpected_error(stage, push, config_path)


def admin(argv, default_config):
    import argparse

    parser = argparse.ArgumentParser(
        prog="codo_release_hook.py",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + VERSION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check-config", help="list every problem in a config (exit 2 if any)"
    )
    check.add_argument(
        "file", nargs="?", default=default_config, help="config file (default: %(default)s)"
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also ask the platform: the key, its expiry, each rule's template, groups and args",
    )

    match = commands.add_parser(
        "match", help="show the request a push of TAG would send; sends nothing"
    )
    match.add_argument("tag", nargs="?", help="tag name, without refs/tags/")
    match.add_argument(
        "--replay",
        action="store_true",
        help="instead of TAG: every tag of the repository, and which would be released",
    )
    match.add_argument(
        "--repo",
        help="the repository whose tags --replay reads (default: the one whose custom_hooks holds "
        "the config, else the current directory)",
    )
    match.add_argument(
        "--project", help="project path with namespace (needed when the config has several)"
    )
    match.add_argument("--user", help="GitLab username of the pusher")
    match.add_argument(
        "--moved", action="store_true", help="the tag already existed and is being moved"
    )
    match.add_argument(
        "--config", default=default_config, help="config file (default: %(default)s)"
    )

    for name, text in (
        ("flush", "send the spooled releases (exit 1 if any is left undelivered)"),
        ("status", "count the spool's entries and show the last errors"),
    ):
        command = commands.add_parser(name, help=text)
        where = command.add_mutually_exclusive_group()
        where.add_argument("--state-dir", help="state directory (default: the config's state_dir)")
        where.add_argument(
            "--config",
            default=default_config,
            help="config whose state_dir to use (default: %(default)s)",
        )
    commands.choices["flush"].add_argument(
        "--include-uncertain",
        action="store_true",
        help="also resend releases that may already be tasks: check the platform first",
    )
    commands.choices["flush"].add_argument(
        "--metrics-dir",
        help="also write codo_release.prom there (node_exporter's textfile collector directory)",
    )
    commands.choices["flush"].add_argument(
        "--include-failed",
        action="store_true",
        help="also resend releases the platform refused, after fixing the config",
    )
    commands.choices["status"].add_argument(
        "--json", action="store_true", help="machine-readable output"
    )

    args = parser.parse_args(argv[1:])
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return {"check-config": check_config, "match": match_tag, "flush": flush, "status": status}[
            args.command
        ](args)
    except ConfigError as error:
        say(str(error))
        return EXIT_USAGE


def check_config(args):
    raw = read_config(args.file, stream=True)
    problems = config_problems(raw) + index_problems(args.file, raw)
    for problem in problems:
        say(f"{args.file}: {problem}")
    for warning in pattern_warnings(raw) + key_warnings(raw):
        say(f"{args.file}: warning: {warning}")
    if problems:
        say(
            f"{args.file}: {len(problems)} problem(s); nothing is released from this config until they are fixed"
        )
        return EXIT_USAGE
    if args.probe:
        problems, warnings = probe(Config(raw, args.file))
        for warning in warnings:
            say(f"{args.file}: warning: {warning}")
        for problem in problems:
            say(f"{args.file}: {problem}")
        if problems:
            say(f"{args.file}: {len(problems)} problem(s) found by asking the platform")
            return EXIT_USAGE
    rules = sum(len(project.get("rules", [])) for project in raw["projects"].values())
    say("{}: OK ({} project(s), {} rule(s))".format(args.file, len(raw["projects"]), rules))
    return EXIT_OK


KEY_EXPIRY_WARNING_S = 14 * 86400


def key_expiry(key, now=None):
    """(problem, warning) about the key's `exp` claim; this platform ignores it, a gateway may not."""
    exp = jwt_claims(key).get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not exp - exp == 0:
        return "", ""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d", time.gmtime(min(exp, 253402300799)))
    if exp <= now:
        return (
            f"the platform key expired on {when}: mint a new one (a gateway in front may refuse it)",
            "",
        )
    if exp - now < KEY_EXPIRY_WARNING_S:
        return (
            "",
            f"the platform key expires on {when}, in {int((exp - now) // 86400)} day(s): mint a new one",
        )
    return "", ""


def probe(config):
    """(problems, warnings) found by asking the platform with the configured key; sends no task."""
    try:
        key = read_auth_key(config.codo)
    except ConfigError as error:
        return [str(error)], []
    problem, warning = key_expiry(key)
    problems, warnings = [problem] if problem else [], [warning] if warning else []
    platform = Platform(config.codo, key, config.codo["auth_key_file"])
    api_path = GIT_HOOKS_PATH if config.codo["api"] == "git_hooks" else TASK_ACCEPT_PATH
    try:
        with Budget(config.codo["budget_s"]) as budget:
            platform._csrf_key(platform.base + api_path, budget)
    except BudgetExceeded:
        return problems + ["the platform did not answer within codo.budget_s"], warnings
    except (_Unreachable, _NotSent) as error:
        return problems + [f"the platform refused the key or could not be asked: {error}"], warnings
    if config.codo["api"] != "task_accept":
        return problems, warnings
    templates = {}
    for path in sorted(config.projects):
        project = config.project(path)
        unseen = key_sees_submitter(key, project.settings["submitter"])
        if unseen:
            warnings.append(
                f"projects.{one_line(path)}: flush cannot settle uncertain releases: {unseen}"
            )
        for rule in project.rules:
            where = f"projects.{one_line(path)}.rules[{rule.index}]"
            template = str(rule.settings["template_id"])
            if template not in templates:
                templates[template] = platform.template_steps(
                    template, Budget(config.codo["budget_s"])
                )
            problems += rule_template_problems(where, rule, template, templates[template])
    return problems, warnings


def rule_template_problems(where, rule, template, steps):
    if steps is None:
        return [f"{where}: the platform could not show template {template}"]
    if not steps:
        return [
            f"{where}: the platform has no template {template} (or it has no steps): fix template_id"
        ]
    groups = {str(step.get("group")) for step in steps}
    problems = [
        f"{where}: host group {group} is not one of template {template}'s step groups "
        f"({', '.join(sorted(groups))}): the platform drops it silently"
        for group in sorted(rule.settings["hosts"], key=int)
        if str(int(group)) not in groups
    ]
    supplied = set(SEED_ARGS) | set(rule.settings["args"]) | {"FLOW_ID"}
    used = sorted({word for step in steps for word in str(step.get("args") or "").split()})
    problems += [
        f"{where}: template {template}'s steps use {one_line(name, 40)}, which the rule does not supply: "
        "add it to the rule's args"
        for name in used
        if name not in supplied
    ]
    return problems


def key_warnings(raw):
    """The key file as a push will read it; a warning only, since check-config may run as another user."""
    codo = raw.get("codo") if isinstance(raw.get("codo"), dict) else {}
    if os.environ.get("CODO_AUTH_KEY") or not _is_absolute_path(codo.get("auth_key_file", "/")):
        return []
    try:
        read_auth_key(_with_defaults(codo, CODO_DEFAULTS))
    except ConfigError as error:
        return [str(error)]
    return []


def pattern_warnings(raw):
    """Rules whose regular expression nests a repeat in a repeat: `(a+)+` backtracks for minutes on a
    long tag. A push stops matching at codo.budget_s whatever the pattern; this says which to fix."""
    found = []
    patterns = [("tag_name_pattern", raw.get("tag_name_pattern"))]
    projects = raw.get("projects") if isinstance(raw.get("projects"), dict) else {}
    for path, project in sorted(projects.items()):
        rules = project.get("rules") if isinstance(project, dict) else None
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict):
                patterns.append(
                    ("projects.{}.rules[{}].tag".format(one_line(path), index), rule.get("tag"))
                )
    for where, pattern in patterns:
        if isinstance(pattern, str) and nested_repeat(pattern):
            found.append(
                f"{where} repeats a group that itself repeats ({one_line(pattern, 80)}): it can backtrack "
                "catastrophically on a long tag; a push gives up matching at codo.budget_s and keeps the tag"
            )
    return found


def nested_repeat(pattern):
    """True when a repeat (* + {m,}) holds another unbounded-ish repeat: the shape of catastrophic backtracking."""
    try:
        from re import _parser as parser  # 3.11+
    except ImportError:
        import sre_parse as parser
    try:
        tree = parser.parse(pattern)
    except Exception:  # any error: the structural checks report patterns that do not compile
        return False
    return _nests(tree, False, parser)


def _nests(items, inside, parser):
    constants = parser  # the parser module re-exports the opcodes it builds trees of
    repeats = (constants.MAX_REPEAT, constants.MIN_REPEAT)
    for op, value in items:
        children = []
        if op in repeats:
            low, high, sub = value
            if high > 1:
                if inside or _nests(sub, True, parser):
                    return True
                continue
            children = [sub]
        elif op == constants.SUBPATTERN:
            children = [value[-1]]
        elif op == constants.BRANCH:
            children = value[1]
        elif op in (constants.ASSERT, constants.ASSERT_NOT):
            children = [value[1]]
        if any(_nests(child, inside, parser) for child in children):
            return True
    return False


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


def config_and_project(args):
    """The config --config names and its project --project, or ConfigError naming those it has."""
    config = Config.load(args.config, args.project)
    project = config.project(args.project)
    if project is None:
        raise ConfigError(
            "no project {!r} in {} (it has: {})".format(
                args.project, args.config, ", ".join(sorted(config.projects))
            )
        )
    return config, project


def match_tag(args):
    if args.replay:
        return replay_tags(args)
    if args.tag is None:
        raise ConfigError("match needs a TAG, or --replay for every tag of the repository")
    config, project = config_and_project(args)
    old = "1" * 40 if args.moved else "0" * 40
    try:
        with Budget(config.codo["budget_s"]):
            decision = decide(
                config, project, RefUpdate(old, "1" * 40, "refs/tags/" + args.tag), args.user
            )
    except BudgetExceeded:
        raise ConfigError(too_slow(config))
    if decision.kind != "release":
        say(
            "{} would be {}: {}".format(
                shown(args.tag),
                {"skip": "skipped", "refuse": "refused"}[decision.kind],
                decision.reason,
            )
        )
        return EXIT_REFUSED
    path, body = request_for(config, project, decision.rule, args.tag, {"username": args.user})
    say(
        "{} matches rule {} ({}); a push would send:".format(
            shown(args.tag), decision.rule.index, one_line(repr(decision.rule.settings["tag"]))
        )
    )
    print("GET  {}{}  Cookie: auth_key=********".format(config.codo["url"].rstrip("/"), path))
    print(
        "POST {}{}  Cookie: auth_key=********; csrf_key=<from the GET>".format(
            config.codo["url"].rstrip("/"), path
        )
    )
    print(body)
    return EXIT_OK


def replay_tags(args):
    """Every tag of the repository through the rules as if pushed now, one line each: the rule that
    would submit it, or why not (no rule, an unsafe name, a guard). Sends nothing."""
    if args.tag is not None:
        raise ConfigError("match --replay takes no TAG: it reads every tag of the repository")
    config, project = config_and_project(args)
    repo = args.repo or replay_repository(config.path)
    tags = repository_tags(repo)
    # The guards ask git about the tagged commits: in this repository, never one around it.
    os.environ["GIT_DIR"] = os.path.abspath(git_dir_of(repo))
    os.chdir(repo)
    tally = {"release": 0, "shadow": 0, "refuse": 0, "skip": 0}
    try:
        with Budget(config.codo["budget_s"] + len(tags) // 10):
            for ref, new in tags:
                update = RefUpdate("0" * 40, new, ref)
                kind, text = replay_one(config, project, update, args.user)
                tally[kind] += 1
                say(f"{shown(update.tag)}: {text}")
    except BudgetExceeded:
        raise ConfigError(too_slow(config))
    say(
        "{} tag(s) in {}: {release} would be released, {shadow} only shown (shadow), {refuse} "
        "refused, {skip} skipped; nothing sent".format(len(tags), one_line(repo), **tally)
    )
    return EXIT_OK


def replay_repository(config_path):
    """The repository a config in <repo>/custom_hooks/ belongs to; else the current directory."""
    hooks_dir = os.path.dirname(config_path)
    if os.path.basename(hooks_dir) == "custom_hooks":
        return os.path.dirname(hooks_dir)
    return "."


def git_dir_of(repo):
    """The repository's git directory: REPO itself (bare, as GitLab keeps them) or REPO/.git. Given
    to git as --git-dir, so that a directory that is no repository is not taken for one it is in."""
    dot_git = os.path.join(repo, ".git")
    return dot_git if os.path.isdir(dot_git) else repo


def repository_tags(repo):
    """[(ref, object id)] of the repository's tags, names read as git stores them (bytes)."""
    import subprocess

    try:
        done = subprocess.run(
            [
                "git",
                "--git-dir=" + git_dir_of(repo),
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/tags/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as error:
        raise ConfigError(f"cannot run git: {error.strerror or error}")
    if done.returncode != 0:
        raise ConfigError(
            f"{one_line(repo)} is not a git repository git can read: "
            f"{one_line(done.stderr.decode('utf-8', 'replace').strip(), 200)}"
        )
    tags = []
    for line in done.stdout.split(b"\n")[:-1]:  # git allows no line feed in a ref name
        new, _, ref = line.partition(b" ")
        tags.append((ref.decode("utf-8", "surrogateescape"), new.decode("ascii", "replace")))
    return tags


def replay_one(config, project, update, user):
    """(kind, text) for one existing tag as if pushed now by `user` (None: any allowed user)."""
    rule = None if odd_character(update.tag) else project.rule_for(update.tag)
    allowed = rule.settings["allowed_users"] if rule is not None else []
    decision = decide(config, project, update, user if user or not allowed else allowed[0])
    if decision.kind == "skip":
        return "skip", "skipped: " + decision.reason
    if decision.kind == "refuse":
        return "refuse", "refused: " + decision.reason
    rule = decision.rule
    if rule.settings["mode"] == "shadow":
        return "shadow", f"shadow: rule {rule.index} matches; a push sends nothing (mode: shadow)"
    guard = commit_guard_reason(rule, update)
    if guard:
        return "refuse", "refused: " + guard
    who = "" if user or not allowed else " (by " + ", ".join(map(one_line, allowed)) + ")"
    target = (
        f"template {rule.settings['template_id']}, schedule {rule.settings['schedule']}"
        if config.codo["api"] == "task_accept"
        else "the platform's git_hooks rules"
    )
    return "release", f"released by rule {rule.index} ({target}){who}"


def _state_dir(args):
    if args.state_dir:
        return args.state_dir
    return Config(read_config(args.config), args.config).state_dir


def flush(args):
    spool = Spool(_state_dir(args))
    record_metrics(spool, None)  # the pushes' lines first: this flush's own may rotate the log
    spool.recover_abandoned()
    if not args.include_uncertain:
        settle_uncertain(spool)
    follow_tasks(spool)
    states = [PENDING] + [UNCERTAIN] * args.include_uncertain + [FAILED] * args.include_failed
    queue = sorted((entry_id, state) for state in states for entry_id in spool.ids(state))
    delivered = 0
    for entry_id, state in queue:
        claim = spool.claim(state, entry_id)
        if claim is None:
            continue  # another flush or push has it, or it is not the hook's
        outcome = resend(spool, claim)
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
            f"{left[UNCERTAIN]} uncertain release(s) not settled yet: flush looks them up in the platform once "
            "codo.settle_after_s has passed (`status` says why one cannot be); to resend one unlooked, after "
            "checking the platform by hand: flush --include-uncertain"
        )
    if spool.ignored:
        say(
            f"flush: {len(spool.ignored)} file(s) in the spool were not written by the hook and were ignored: run status"
        )
    record_metrics(spool, args.metrics_dir)
    return EXIT_REFUSED if any(left.values()) else EXIT_OK


def resend(spool, claim):
    """Send one spooled release with the installed config it names; the claim is settled whatever happens.

    The entry says only which config and project: the URL and the key come from that config, and
    only if the config is one the hook's user (or root) wrote, reached without a link, that no one
    else may write, whose state_dir is this spool's. A planted entry cannot send the key elsewhere."""
    entry = claim.entry
    entry["attempts"] = entry.get("attempts", 0) + 1
    started = time.monotonic()
    try:
        config = installed_config(spool, entry)
        project = config.project(entry["project"])
        if project is None:
            raise ConfigError(
                "project {} is no longer in {}".format(one_line(entry["project"]), config.path)
            )
        auth_key = read_auth_key(config.codo)
        budget = Budget(config.codo["budget_s"])
        update = RefUpdate(entry["old"], entry["new"], entry["ref"])
        with budget:
            decision = decide(config, project, update, entry.get("user"))
    except UntrustedConfig as error:
        return _settle_quietly(claim, FAILED, str(error))
    except ConfigError as error:
        return _settle_quietly(claim, PENDING, str(error))
    except BudgetExceeded:
        return _settle_quietly(claim, PENDING, too_slow(config))
    if decision.kind != "release":
        say(f"{shown(update.tag)} not sent: {decision.reason}")
        _settle_quietly(claim, SENT, None, skipped=decision.reason)
        return SKIPPED
    who = {
        "username": entry.get("user"),
        "gl_id": entry.get("gl_id"),
        "protocol": entry.get("protocol"),
    }
    who.update(old=update.old, new=update.new)
    path, body = request_for(config, project, decision.rule, update.tag, who)
    platform = Platform(config.codo, auth_key, config.codo["auth_key_file"])
    result = platform.submit(
        path, body, Budget(config.codo["budget_s"]), _template_of(config, decision.rule)
    )
    outcome = {SENT: SENT, SKIPPED: SENT}.get(result.outcome, result.outcome)
    _settle_quietly(
        claim,
        outcome,
        None if outcome == SENT else result.detail,
        task_id=result.task_id,
        sent_at=time.time(),
        **uncertain_fields(result),
    )
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
        gl_id=entry.get("gl_id"),
        protocol=entry.get("protocol"),
        old=entry["old"],
        new=entry["new"],
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


def settle_uncertain(spool):
    """Look each uncertain release up in the platform, once codo.settle_after_s has passed since it
    became uncertain: found, it is sent (with its task id); proven absent, it goes back to pending
    and this flush sends it again, once; anything else leaves it uncertain with the reason."""
    now = time.time()
    for entry in spool.entries(UNCERTAIN):
        since = entry.get("uncertain_since")
        if not isinstance(since, (int, float)) or isinstance(since, bool):
            continue  # from before settling existed, or without a body: a person's call
        try:
            config = installed_config(spool, entry)
        except ConfigError as error:
            note = f"not settled: {error}"
            config = None
        if config is not None and now - since < config.codo["settle_after_s"]:
            continue  # resting: the platform may still be handling it
        if config is None and entry.get("settle_note") == note:
            continue  # said already
        claim = spool.claim(UNCERTAIN, entry["id"])
        if claim is None:
            continue
        if config is None:
            _settle_quietly(claim, UNCERTAIN, claim.entry.get("last_error"), settle_note=note)
        else:
            settle_one(config, claim)


def settle_one(config, claim):
    entry = claim.entry
    tag = shown(entry["tag"])
    outcome, detail, task_id = UNCERTAIN, "", None
    try:
        posted = parse_json(entry.get("posted_body") or "")
        key = read_auth_key(config.codo)
    except (ValueError, RecursionError):
        posted, key = None, None
    except ConfigError as error:
        posted, key, detail = None, None, f"not settled: {error}"
    if config.codo["api"] != "task_accept" or not isinstance(posted, dict):
        detail = (
            detail
            or "not settled: the platform's git_hooks API builds the task itself, so it cannot be looked up"
        )
    elif not all(
        isinstance(posted.get(k), str)
        for k in ("task_name", "temp_id", "args", "exec_time", "submitter")
    ):
        detail = "not settled: the posted body is not the hook's"
    else:
        detail = key_sees_submitter(key, posted["submitter"])
        if detail:
            detail = "not settled: " + detail
        else:
            platform = Platform(config.codo, key, config.codo["auth_key_file"])
            found, task_id = platform.find_task(posted, Budget(config.codo["budget_s"] * 3))
            if found == "found":
                outcome = SENT
            elif (
                found == "absent"
                and entry.get("error_reply")
                and platform.template_exists(posted["temp_id"], Budget(config.codo["budget_s"]))
                is False
            ):
                outcome = FAILED
                detail = "the platform has no template {} (its 500 created nothing): fix the rule's template_id, then flush --include-failed".format(
                    one_line(posted["temp_id"], 20)
                )
            elif found == "absent":
                outcome, detail = PENDING, "the platform has no such task: sent again"
            else:
                detail = f"not settled: {task_id}"
                task_id = None
    reply_failed = bool(entry.get("error_reply"))
    if outcome == UNCERTAIN:  # the reason it is uncertain stays; why it is not settled beside it
        _settle_quietly(claim, UNCERTAIN, entry.get("last_error"), settle_note=detail)
    else:
        cleared = dict.fromkeys(("posted_body", "uncertain_since", "error_reply", "settle_note"))
        _settle_quietly(
            claim,
            outcome,
            None if outcome == SENT else detail,
            task_id=task_id,
            settled=outcome,
            sent_at=time.time(),
            **cleared,
        )
    if outcome == SENT:
        failure = (
            "; the platform reported a failure when it took it, so the task may need restarting there "
            "(a task created while its queue was down stays at ready)"
            if reply_failed
            else ""
        )
        detail = f"found as task {task_id}" + failure
        link = task_link(config.codo, task_id)
        say(
            f"{tag} settled: the platform has it as task {task_id}{': ' + link if link else ''}{failure}"
        )
    elif outcome != UNCERTAIN:
        say(f"{tag} settled: {detail}")
    log_event(
        config,
        project=entry.get("project"),
        ref=entry["ref"],
        stage="flush",
        user=entry.get("user"),
        outcome="settled",
        detail=f"{outcome}: {detail}",
        task_id=task_id,
        spool_id=entry["id"],
    )


def follow_tasks(spool, limit=FOLLOW_PER_RUN):
    """Read the state of submitted tasks not finished yet, least recently read first, a few a run;
    record each one's outcome, and log and say it when it changes. Past codo.follow_deadline_s a
    task still queued, running or unanswered is stuck: likely lost by the platform's queue, or
    args it cannot parse."""
    now = time.time()
    following = [
        entry
        for entry in spool.entries(SENT)
        if type(entry.get("task_id")) is int
        and isinstance(entry.get("sent_at"), (int, float))
        and entry.get("follow") not in FOLLOW_DONE
    ]
    following.sort(key=lambda entry: entry.get("followed_at") or 0)
    for entry in following[:limit]:
        claim = spool.claim(SENT, entry["id"])
        if claim is not None:
            follow_one(spool, claim, now)


def follow_one(spool, claim, now):
    entry = claim.entry
    try:
        config = installed_config(spool, entry)
        key = read_auth_key(config.codo)
    except ConfigError as error:
        _settle_quietly(claim, SENT, None, follow_note=f"not followed: {error}", followed_at=now)
        return
    platform = Platform(config.codo, key, config.codo["auth_key_file"])
    outcome, detail = platform.task_state(entry["task_id"], Budget(config.codo["budget_s"]))
    deadline = config.codo["follow_deadline_s"]
    if now - entry["sent_at"] > deadline and outcome in ("running", "waiting_approval", "unknown"):
        outcome, detail = (
            "stuck",
            (
                f"{detail} {deadline:g} s after it was sent: likely lost by the platform's queue, "
                "or its args cannot be parsed; restart it there"
            ),
        )
    changed = outcome not in ("unknown", entry.get("follow"))
    fields = {
        "followed_at": now,
        "follow_note": detail,
        "link": task_link(config.codo, entry["task_id"]),
    }
    if outcome != "unknown":
        fields["follow"] = outcome
    _settle_quietly(claim, SENT, None, **fields)
    if not changed:
        return
    link = task_link(config.codo, entry["task_id"])
    say(
        f"{shown(entry['tag'])} task {entry['task_id']} {outcome}: {detail}{': ' + link if link else ''}"
    )
    log_event(
        config,
        project=entry.get("project"),
        ref=entry["ref"],
        stage="follow",
        user=entry.get("user"),
        outcome=outcome,
        detail=detail,
        task_id=entry["task_id"],
        spool_id=entry["id"],
    )


def installed_config(spool, entry):
    """The config a spool entry names, if it is trustworthy for this spool; else UntrustedConfig."""
    path = entry.get("config_path")
    if not _is_absolute_path(path):
        raise UntrustedConfig("the entry names no config file: not sent")
    try:
        config = Config.load(path, entry["project"], owners=spool.owners)
    except UntrustedConfig as error:
        raise UntrustedConfig(f"{error}: not sent (a spool entry cannot choose where the key goes)")
    if os.path.realpath(config.state_dir) != os.path.realpath(spool.state_dir):
        raise UntrustedConfig(
            f"config {path} keeps its releases in {config.state_dir}, not in this spool: not sent"
        )
    return config


def _settle_quietly(claim, state, error, **fields):
    """Settle, saying so when even the spool cannot record it; returns the state."""
    try:
        claim.settle(state, last_error=error, **fields)
    except SpoolError as problem:
        say(f"{shown(claim.entry['tag'])}: {problem}; it stays in flight")
    return state


def status_key_expiry(config_path):
    """The key's expiry, when the config can be read here; '' otherwise."""
    try:
        raw = read_config(config_path)
        key = read_auth_key(_with_defaults(raw.get("codo") or {}, CODO_DEFAULTS))
    except (ConfigError, AttributeError, TypeError):
        return ""
    problem, warning = key_expiry(key)
    exp = jwt_claims(key).get("exp")
    if problem or warning:
        return "WARNING " + (problem or warning)
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp - exp == 0:
        return "the platform key expires on " + time.strftime(
            "%Y-%m-%d", time.gmtime(min(exp, 253402300799))
        )
    return ""


def status_document(args, spool, entries):
    """`status --json`: the spool's counts, waiting entries and ignored files, and what a fleet
    report needs of a node (every time in epoch seconds, every age in seconds; null when unknown)."""
    now = time.time()
    counts = {state: len(found) for state, found in entries.items()}
    waiting = [entry for state in (PENDING, UNCERTAIN, FAILED) for entry in entries[state]]
    figures = spool_figures(spool, now, entries)
    try:
        tally = current_tally(spool)
    except OSError:
        tally = new_tally()
    key_expires = status_key_exp(args.config)
    return {
        "counts": counts,
        "entries": waiting,
        "ignored": spool.ignored,
        "version": VERSION,
        "key_expires": key_expires if key_expires is not None else figures["key_expires"],
        "last_run": tally["last_run"],
        "last_flush": tally["last_flush"],
        "oldest_pending_s": figures["oldest"][PENDING],
        "oldest_uncertain_s": figures["oldest"][UNCERTAIN],
    }


def status_key_exp(config_path):
    """The expiry of the key of the config `status` was given, or None."""
    try:
        raw = read_config(config_path)
        return key_exp(read_auth_key(_with_defaults(raw.get("codo") or {}, CODO_DEFAULTS)))
    except (ConfigError, AttributeError, TypeError):
        return None


def status(args):
    import json

    spool = Spool(_state_dir(args))
    entries = {
        state: spool.entries(state) for state in (PENDING, UNCERTAIN, FAILED, SENT, "inflight")
    }
    counts = {state: len(found) for state, found in entries.items()}
    waiting = [entry for state in (PENDING, UNCERTAIN, FAILED) for entry in entries[state]]
    if args.json:
        print(json.dumps(status_document(args, spool, entries), sort_keys=True, indent=1))
        return EXIT_OK
    say(
        "spool {}: {} pending, {} uncertain, {} failed, {} sent, {} in flight".format(
            spool.root,
            counts[PENDING],
            counts[UNCERTAIN],
            counts[FAILED],
            counts[SENT],
            counts["inflight"],
        )
    )
    for entry in waiting[-20:]:
        say(
            "  {:<9} {} {} {} (tries {}): {}".format(
                entry["state"],
                one_line(entry.get("updated"), 40),
                one_line(entry.get("project"), 100),
                shown(entry["tag"]),
                entry.get("attempts", 0),
                one_line(entry.get("last_error"), 300)
                + (f" ({one_line(entry['settle_note'], 300)})" if entry.get("settle_note") else ""),
            )
        )
    expiry = status_key_expiry(args.config)
    if expiry:
        say(expiry)
    recent = sorted(entries[SENT], key=lambda entry: entry.get("updated") or "")[-STATUS_RECENT:]
    if recent:
        say("recent releases:")
    for entry in recent:
        say(
            "  {:<16} {} {} {} task {}{}{}".format(
                one_line(
                    entry.get("follow") or ("skipped" if entry.get("skipped") else "submitted"), 16
                ),
                one_line(entry.get("updated"), 40),
                one_line(entry.get("project"), 100),
                shown(entry["tag"]),
                entry.get("task_id"),
                f": {one_line(entry['follow_note'], 200)}" if entry.get("follow_note") else "",
                f" {one_line(entry['link'], 200)}" if entry.get("link") else "",
            )
        )
    for path, why in sorted(spool.ignored.items()):
        say(f"  ignored   {one_line(path, 200)}: {why} (the hook did not write it; remove it)")
    return EXIT_OK


# ---------------------------------------------------------------------------
# 10. Metrics: what flush counts from the log, for node_exporter and status
# ---------------------------------------------------------------------------
#
# A push pays nothing for them: every release a hook stage decides is already one hook.log line.
# Each flush folds the lines written since the last one into <state_dir>/metrics-state.json (the
# counters, and where in the log it stopped) and, with --metrics-dir, writes codo_release.prom for
# node_exporter's textfile collector. Counters survive the spool's pruning and the log's rotation.

METRICS_STATE = "metrics-state.json"
METRICS_FILE = "codo_release.prom"
METRICS_STATE_LIMIT = 8 * 1024 * 1024
METRICS_PROJECTS_LIMIT = 1000  # more projects are counted together, as OTHER_PROJECTS
OTHER_PROJECTS = "(other)"  # no GitLab path holds parentheses
RELEASE_OUTCOMES = (
    "submitted",
    "spooled",
    "refused",
    "uncertain",
    "settled",
    "deployed",
    "failed",
    "stuck",
    "skipped",
    "shadow",
)
HOOK_RUN_STAGES = ("pre-receive", "update", "post-receive")
PUSH_OUTCOMES = {
    SENT: "submitted",
    SKIPPED: "skipped",
    PENDING: "spooled",
    UNCERTAIN: "uncertain",
    FAILED: "failed",
    "refused": "refused",
    "shadow": "shadow",
}
# A resend that is still pending was counted as spooled when the push kept it.
FLUSH_OUTCOMES = {SENT: "submitted", SKIPPED: "skipped", UNCERTAIN: "uncertain", FAILED: "failed"}
FOLLOW_OUTCOMES = ("deployed", "failed", "stuck")


def counted_outcome(event):
    """The releases_total outcome a hook.log event counts as, or None."""
    stage, outcome = event.get("stage"), event.get("outcome")
    if not isinstance(stage, str) or not isinstance(outcome, str):
        return None
    if stage in HOOK_RUN_STAGES:
        return PUSH_OUTCOMES.get(outcome)
    if stage == "flush" and outcome == "settled":
        settled_as = str(event.get("detail") or "").partition(":")[0]
        return "settled" if settled_as in (SENT, PENDING, FAILED) else None
    if stage == "flush":
        return FLUSH_OUTCOMES.get(outcome)
    if stage == "follow" and outcome in FOLLOW_OUTCOMES:
        return outcome
    return None


def new_tally():
    return {
        "log": None,  # {"inode", "offset"}: where the last flush stopped reading hook.log
        "releases": {},  # project: {outcome: count}
        "internal_errors": 0,
        "last_run": None,
        "last_submission": None,
        "last_flush": None,
    }


def _is_count(value):
    return type(value) is int and value >= 0


def _is_epoch(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11


def checked_tally(raw):
    """The tally as metrics-state.json holds it, any part that is not well formed started afresh."""
    tally = new_tally()
    if not isinstance(raw, dict):
        return tally
    log = raw.get("log")
    if isinstance(log, dict) and _is_count(log.get("inode")) and _is_count(log.get("offset")):
        tally["log"] = {"inode": log["inode"], "offset": log["offset"]}
    releases = raw.get("releases")
    if isinstance(releases, dict):
        for project, counts in list(releases.items())[: METRICS_PROJECTS_LIMIT + 1]:
            if isinstance(counts, dict):
                tally["releases"][project] = {
                    outcome: counts[outcome]
                    for outcome in RELEASE_OUTCOMES
                    if _is_count(counts.get(outcome))
                }
    if _is_count(raw.get("internal_errors")):
        tally["internal_errors"] = raw["internal_errors"]
    for name in ("last_run", "last_submission", "last_flush"):
        if _is_epoch(raw.get(name)):
            tally[name] = raw[name]
    return tally


def load_tally(state_dir, owners):
    """The tally the last flush kept; a fresh one when there is none or it is not the hook's."""
    import json

    handle = _open_own_file(os.path.join(state_dir, METRICS_STATE), owners, METRICS_STATE_LIMIT)
    if handle is None:
        return new_tally()
    with handle:
        try:
            raw = json.loads(handle.read(METRICS_STATE_LIMIT + 1), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raw = None
    return checked_tally(raw)


def save_tally(state_dir, tally):
    """metrics-state.json replaced whole (temp file and rename), owned like the state directory."""
    import json

    path = os.path.join(state_dir, METRICS_STATE)
    tmp = path + ".tmp"
    try:
        with _create(tmp) as handle:
            json.dump(tally, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        if os.geteuid() == 0:  # an admin's root shell: the git user's next flush must read it
            info = os.lstat(state_dir)
            os.chown(tmp, info.st_uid, info.st_gid)
        os.rename(tmp, path)
    except OSError:
        _unlink_quietly(tmp)
        raise


def _open_own_file(path, owners, limit=None):
    """A binary handle on a regular file of ours reached without a link, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if untrusted_file(info, owners, limit if limit is not None else info.st_size):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def new_log_lines(state_dir, position, owners):
    """(complete lines of hook.log past `position`, the position after them), following a rotation
    to hook.log.1. With no position (the first flush), or one lost to two rotations, both files
    are read whole."""
    log = os.path.join(state_dir, "hook.log")
    current = _open_own_file(log, owners)
    rotated = _open_own_file(log + ".1", owners)
    inode = {
        name: os.fstat(handle.fileno()).st_ino if handle else None
        for name, handle in (("current", current), ("rotated", rotated))
    }
    if rotated is not None and inode["rotated"] == inode["current"]:
        rotated.close()  # renamed between the two opens: one file
        rotated = None
    position = position or {}
    if current is not None and position.get("inode") == inode["current"]:
        sources = [(current, position["offset"])]
    elif rotated is not None and position.get("inode") == inode["rotated"]:
        sources = [(rotated, position["offset"]), (current, 0)]
    else:
        sources = [(rotated, 0), (current, 0)]
    lines, after = [], position or None
    for handle, offset in sources:
        if handle is None:
            continue
        with handle:
            size = os.fstat(handle.fileno()).st_size
            offset = offset if offset <= size else 0  # truncated by hand: read it again
            handle.seek(offset)
            data = handle.read(size - offset)
            complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            lines.extend(complete.split(b"\n")[:-1])
            after = {"inode": os.fstat(handle.fileno()).st_ino, "offset": offset + len(complete)}
    for handle in (current, rotated):
        if handle is not None:
            handle.close()
    return lines, after


def _event_time(text):
    """Epoch seconds of a log event's `time` (%Y-%m-%dT%H:%M:%S%z), or None."""
    import datetime

    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def tally_events(tally, lines):
    """Count each log line's release outcome by project, internal errors, and the last run and submission."""
    import json

    for line in lines:
        try:
            event = json.loads(line.decode("utf-8", "replace"), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            continue
        if not isinstance(event, dict):
            continue
        when = _event_time(event.get("time"))
        if event.get("stage") in HOOK_RUN_STAGES and when is not None:
            tally["last_run"] = max(tally["last_run"] or 0, when)
        if event.get("outcome") == "internal_error":
            tally["internal_errors"] += 1
        outcome = counted_outcome(event)
        if outcome is None:
            continue
        project = event.get("project") if isinstance(event.get("project"), str) else ""
        releases = tally["releases"]
        if project not in releases and len(releases) >= METRICS_PROJECTS_LIMIT:
            project = OTHER_PROJECTS
        counts = releases.setdefault(project, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "submitted" and when is not None:
            tally["last_submission"] = max(tally["last_submission"] or 0, when)


def update_tally(spool, now):
    """Fold the log's new lines into the kept tally, under a lock (two flushes may run at once)."""
    import fcntl

    private_dir(spool.state_dir, spool.owners)  # ours, no one else writes it
    fd = os.open(
        os.path.join(spool.state_dir, "metrics.lock"),
        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
        0o640,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tally = load_tally(spool.state_dir, spool.owners)
        lines, tally["log"] = new_log_lines(spool.state_dir, tally["log"], spool.owners)
        tally_events(tally, lines)
        tally["last_flush"] = now
        save_tally(spool.state_dir, tally)
    finally:
        os.close(fd)
    return tally


def current_tally(spool):
    """The kept tally with the log's lines since the last flush counted in; nothing is written."""
    tally = load_tally(spool.state_dir, spool.owners)
    lines, _ = new_log_lines(spool.state_dir, tally["log"], spool.owners)
    tally_events(tally, lines)
    return tally


def entry_created(entry):
    """Epoch seconds an entry was journaled: its id starts with the time in microseconds."""
    return int(entry["id"][:16]) / 1e6


def oldest_age(entries, now):
    """Seconds since the oldest of the entries was journaled; None when there are none."""
    if not entries:
        return None
    return max(0.0, round(now - min(entry_created(entry) for entry in entries), 3))


def key_exp(key):
    """The key's `exp` claim as epoch seconds, or None."""
    exp = jwt_claims(key).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp - exp == 0:
        return exp
    return None


def known_configs(spool, entries):
    """{config path: (key expiry or None, problem or '')} for each config the spool's entries name
    (each release keeps its config's path), loaded as flush would trust it to send."""
    found = {}
    for entry in entries:
        path = entry.get("config_path")
        if not isinstance(path, str) or path in found:
            continue
        try:
            config = installed_config(spool, entry)
            found[path] = (key_exp(read_auth_key(config.codo)), "")
        except ConfigError as error:
            found[path] = (None, str(error))
    return found


def spool_figures(spool, now, entries=None):
    """What the metrics and `status --json` tell of the spool now."""
    if entries is None:
        entries = {state: spool.entries(state) for state in SPOOL_STATES}
    configs = known_configs(spool, [entry for found in entries.values() for entry in found])
    expiries = [exp for exp, _ in configs.values() if exp is not None]
    return {
        "counts": {state: len(entries[state]) for state in SPOOL_STATES},
        "ignored": len(spool.ignored),
        "oldest": {state: oldest_age(entries[state], now) for state in (PENDING, UNCERTAIN)},
        "key_expires": min(expiries) if expiries else None,
        "config_problems": sum(1 for _, problem in configs.values() if problem),
    }


def label_value(text):
    """A label value in the text exposition format: \\, " and line feeds escaped, valid UTF-8."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name, labels, value):
    inside = ",".join('{}="{}"'.format(key, label_value(labels[key])) for key in sorted(labels))
    number = str(value) if type(value) is int else repr(float(value))
    return "{}{} {}".format(name, "{" + inside + "}" if inside else "", number)


def metrics_text(tally, figures):
    """The whole textfile: HELP and TYPE for each family, no timestamps, nothing secret."""
    families = []

    def family(name, kind, text, samples):
        families.append(
            "\n".join(
                [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                + [_sample(name, labels, value) for labels, value in samples]
            )
        )

    family(
        "codo_release_releases_total",
        "counter",
        "Release tags by project and outcome, counted by flush from hook.log.",
        [
            ({"project": project, "outcome": outcome}, counts.get(outcome, 0))
            for project, counts in sorted(tally["releases"].items())
            for outcome in RELEASE_OUTCOMES
        ],
    )
    family(
        "codo_release_internal_errors_total",
        "counter",
        "Errors of the hook's own (each one an internal_error event in hook.log).",
        [({}, tally["internal_errors"])],
    )
    family(
        "codo_release_spool_entries",
        "gauge",
        "Entries in the spool by state.",
        [({"state": state}, figures["counts"][state]) for state in SPOOL_STATES],
    )
    family(
        "codo_release_spool_ignored_files",
        "gauge",
        "Files in the spool the hook did not write (ignored; codo_release_hook.py status lists them).",
        [({}, figures["ignored"])],
    )
    family(
        "codo_release_spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest pending or uncertain release in the spool; 0 when there is none.",
        [({"state": state}, figures["oldest"][state] or 0) for state in (PENDING, UNCERTAIN)],
    )
    for key, text in (
        ("last_submission", "Last time a release was submitted; 0: never."),
        ("last_flush", "Last time flush ran."),
        ("last_run", "Last time a push stage handled a release tag; 0: never."),
    ):
        family(f"codo_release_{key}_timestamp_seconds", "gauge", text, [({}, tally[key] or 0)])
    if figures["key_expires"] is not None:
        family(
            "codo_release_key_expiry_timestamp_seconds",
            "gauge",
            "When the platform key expires (its exp claim), from the configs the spool names.",
            [({}, figures["key_expires"])],
        )
    family(
        "codo_release_config_problems",
        "gauge",
        "Configs named by the spool's entries that flush cannot use (unreadable, invalid, untrusted, key unreadable).",
        [({}, figures["config_problems"])],
    )
    family(
        "codo_release_build_info",
        "gauge",
        "The installed hook's version.",
        [({"version": VERSION}, 1)],
    )
    return "\n".join(families) + "\n"


def write_metrics(directory, text):
    """<directory>/codo_release.prom replaced whole: a temp file node_exporter ignores (not *.prom),
    made without following links, 0644, then renamed over it."""
    import stat

    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(0, f"{directory} is not a directory")
    path = os.path.join(directory, METRICS_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    _unlink_quietly(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, 0o644)
            handle.write(text)
            handle.flush()
            os.fsync(fd)
        os.rename(tmp, path)
    except OSError:
        _unlink_quietly(tmp)
        raise


def record_metrics(spool, metrics_dir):
    """After a flush: the tally brought up to date and, with a metrics directory, the textfile.
    A failure costs no release: one line says what is wrong."""
    now = time.time()
    try:
        if os.path.isdir(spool.state_dir):
            tally = update_tally(spool, now)
        else:  # nothing has run here yet (or a typo): nothing to count, nothing made
            tally = dict(new_tally(), last_flush=now)
    except OSError as error:
        say(f"metrics: cannot keep the counters in {spool.state_dir}: {error.strerror or error}")
        return
    if not metrics_dir:
        return
    try:
        write_metrics(metrics_dir, metrics_text(tally, spool_figures(spool, now)))
    except OSError as error:
        say(
            f"metrics: cannot write {os.path.join(metrics_dir, METRICS_FILE)}: "
            f"{error.strerror or error} (the git user must be able to write that directory)"
        )
