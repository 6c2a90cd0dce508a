"""The hook stages: pre-receive, update and post-receive.

`run_stage` reads the config, decides each tag update, refuses what must be refused before the
push (pre-receive, update) and sends releases after it (post-receive, or wherever the config
says), each journaled in the spool before it is sent. Whatever goes wrong is one line for the
pusher and a traceback in the log (`unexpected_error`), never lost releases.
"""

import os
import time

from . import EXIT_OK, EXIT_REFUSED, FAILED, PENDING, SENT, SKIPPED, UNCERTAIN
from .config import (
    CODO_DEFAULTS,
    TOP_DEFAULTS,
    Config,
    ConfigError,
    is_absolute_path,
    read_config,
    with_defaults,
)
from .decisions import Decision, RefUpdate, decide, request_for
from .keys import read_auth_key
from .log import append_log, log_event
from .output import odd_character, refuse_line, say, shown
from .platform import Budget, BudgetExceeded, Platform, Result, say_submitted, task_link
from .spool import DownMarker, Spool, SpoolError


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
        config = Config.load(push.config_path, push.project_path, False, push_owners())
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


def push_owners():
    """Who may have written the config a push reads: the hook's user and root, as for flush.
    Whoever else can write it chooses codo.url, and the key would go there."""
    return {os.geteuid(), 0}


def _state_dir_of_broken(path):
    try:
        state_dir = read_config(path).get("state_dir")  # untrusted: still where the timer looks
    except ConfigError:
        state_dir = None
    return state_dir if is_absolute_path(state_dir) else TOP_DEFAULTS["state_dir"]


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
        result = self.platform.submit(path, body, self.budget, template_of(self.config, rule))
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


def template_of(config, rule):
    return rule.settings["template_id"] if config.codo["api"] == "task_accept" else None


def unexpected_error(stage, push, config_path, state_dir=None):
    """Any error of the hook's own: one line with an id that finds the traceback in the log, never the
    traceback. The log is the state_dir given (an admin command's --state-dir), else the config's."""
    import traceback

    error_id = os.urandom(4).hex()
    if state_dir is None:
        state_dir = _state_dir_of_broken(config_path) if config_path else TOP_DEFAULTS["state_dir"]
    try:  # whatever put the key into the error's text, the log masks it: know the key to mask
        read_auth_key(with_defaults(read_config(config_path).get("codo") or {}, CODO_DEFAULTS))
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
