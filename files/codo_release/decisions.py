"""Release, skip or refuse one tag update; and the request body it becomes.

`decide` is the whole policy for a tag: unsafe names are refused, the first rule that matches
releases, and its guards (allowed users, moved tags) may refuse. The bodies are field by field
what the seed hook sent (tests/seed), so that the platform sees the same tasks.
"""

import time

from .config import SHELL_SAFE_CHARS
from .output import SHELL_SAFE_TAG, odd_character, shown


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
