"""The config (codo-release.json): read, defaults applied, every problem listed.

A config is read only if the hook's user (or root) wrote it and no one else may write it
(`read_config`); a push whose tags no rule can match reads it with json's own C scanner and
compares tags with each rule's literal prefix, without `re`. `config_problems` lists every
problem at once, each naming where it is, for `check-config` and for a push that meets it.
"""

import os

from .fileio import untrusted_file
from .output import odd_character, one_line

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
        raw = parse_json(b"".join(chunks).decode("utf-8"), _UniqueKeysJsonOptions)
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


def parse_json(text, options=None):
    """json.loads without importing json (and with it re), through the C scanner json itself uses.

    Anything but a clean parse is handed to json.loads, for its exact error message.
    """
    options = options or _JsonOptions
    try:
        from _json import make_scanner

        stripped = text.strip(" \t\n\r")
        value, end = make_scanner(options)(stripped, 0)
        if end == len(stripped):
            return value
    except Exception:  # any failure at all: json.loads says what is wrong
        pass
    import json

    return json.loads(text, parse_constant=no_constant, object_pairs_hook=options.object_pairs_hook)


def no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


class _JsonOptions:
    """What the C scanner reads off a json.JSONDecoder: its defaults, less NaN and Infinity."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, staticmethod(no_constant)


def unique_keys(pairs):
    """A JSON object whose names are unique: a config that names a key twice reads one way to a
    person and another to json.loads (the last wins), so it is refused."""
    value = dict(pairs)
    if len(value) != len(pairs):
        names = [name for name, _ in pairs]
        twice = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"{one_line(twice, 60)!r} appears twice in one object")
    return value


class _UniqueKeysJsonOptions(_JsonOptions):
    object_pairs_hook = staticmethod(unique_keys)


class Config:
    """A checked config, with defaults filled in."""

    def __init__(self, raw, path):
        self.path = os.path.abspath(path)
        self.top = with_defaults(raw, TOP_DEFAULTS)
        self.codo = with_defaults(raw.get("codo") or {}, CODO_DEFAULTS)
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
        self.settings = with_defaults(raw, PROJECT_DEFAULTS)
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
        self.settings = with_defaults(raw, RULE_DEFAULTS)
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


def with_defaults(raw, defaults):
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
        if value not in unset and not is_absolute_path(value):
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


def is_absolute_path(value):
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
    if not is_absolute_path(raw.get("state_dir", "/")):
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
        elif isinstance(rule.get("args"), dict) and name in rule["args"]:
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
    except (re.error, ValueError, OverflowError) as error:  # (?u) under ASCII, a{99999999999}
        return [f"{where} is not a valid regular expression: {one_line(error, 120)}"]
    except RecursionError:
        return [f"{where} is not a valid regular expression: its groups nest too deeply"]
    return []


def _is_number(value):
    """A finite JSON number: NaN and the infinities (1e999 parses as one) are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value - value == 0


def state_dir_of(args):
    if args.state_dir:
        return args.state_dir
    return Config(read_config(args.config), args.config).state_dir
