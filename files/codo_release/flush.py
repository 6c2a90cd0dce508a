"""What the flush timer does every minute: resend pending releases, settle uncertain ones
against the platform, follow submitted tasks to their end, and (with --metrics-dir) write the
metrics.

Settling looks an uncertain submission up by (task_name, temp_id, args, exec_time) once
codo.settle_after_s has passed: found, it is sent; proven absent, it is sent again, once;
anything else leaves it uncertain with the reason. Following reads each unfinished task's state,
a bounded number per run, until it is deployed, failed or stuck.
"""

import time

from . import EXIT_OK, EXIT_REFUSED, FAILED, PENDING, SENT, SKIPPED, UNCERTAIN
from .config import ConfigError, UntrustedConfig, parse_json, state_dir_of
from .decisions import RefUpdate, decide, request_for
from .keys import key_sees_submitter, read_auth_key
from .log import log_event
from .metrics import record_metrics
from .output import one_line, say, shown
from .platform import (
    FOLLOW_DONE,
    FOLLOW_PER_RUN,
    Budget,
    BudgetExceeded,
    Platform,
    say_submitted,
    task_link,
)
from .spool import DownMarker, Spool, SpoolError, installed_config
from .stages import template_of, too_slow, uncertain_fields


def flush(args):
    spool = Spool(state_dir_of(args))
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
    record_metrics(spool, "" if args.no_metrics else args.metrics_dir)
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
        path, body, Budget(config.codo["budget_s"]), template_of(config, decision.rule)
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


def _settle_quietly(claim, state, error, **fields):
    """Settle, saying so when even the spool cannot record it; returns the state."""
    try:
        claim.settle(state, last_error=error, **fields)
    except SpoolError as problem:
        say(f"{shown(claim.entry['tag'])}: {problem}; it stays in flight")
    return state
