"""The admin commands behind `codo_release_hook.py COMMAND`: check-config (and --probe, which
asks the platform), match (one tag, or --replay of a repository's tags) and the argument parsing
for flush and status (flush.py, status.py). Exit codes: 0 done, 1 refused or undelivered, 2 bad
usage or config.
"""

import os

from . import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, VERSION
from .config import (
    CODO_DEFAULTS,
    CONFIG_LIMIT,
    SEED_ARGS,
    Config,
    ConfigError,
    config_problems,
    is_absolute_path,
    read_config,
    with_defaults,
)
from .decisions import GIT_HOOKS_PATH, TASK_ACCEPT_PATH, RefUpdate, decide, request_for
from .fileio import untrusted_file
from .flush import flush
from .keys import key_expiry, key_sees_submitter, read_auth_key
from .output import odd_character, one_line, say, shown
from .platform import Budget, BudgetExceeded, NotSent, Platform, Unreachable
from .stages import commit_guard_reason, too_slow
from .status import status

HELP = """codo_release_hook.py: GitLab server hook that turns release tags into OpenDevOps tasks.

As a hook (linked into custom_hooks as pre-receive.d/, update.d/ or post-receive.d/):
the stage is the name it runs under; the config is codo-release.json in custom_hooks.

Admin commands:
  check-config [FILE]                       list every problem in a config
  match --project P TAG [--user U]          show what a push of TAG would send (sends nothing)
  match --project P --replay [--repo R]     which of the repository's tags would be released
  flush [--include-uncertain] [--include-failed] [--metrics-dir D | --no-metrics]
                                            send the spooled releases (and write the metrics)
  status [--json]                           what the spool holds
  --version                                 the hook's version
Each takes --help. Exit codes: 0 done, 1 refused or something left undelivered,
2 bad usage or config."""


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
    metrics = commands.choices["flush"].add_mutually_exclusive_group()
    metrics.add_argument(
        "--metrics-dir",
        type=absolute_path,
        help="also write codo_release.prom there (node_exporter's textfile collector directory)",
    )
    metrics.add_argument(
        "--no-metrics",
        action="store_true",
        help="metrics are off: remove the codo_release.prom an earlier flush wrote (the timer's flush "
        "says one or the other; by hand, neither leaves the metrics as they are)",
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


def absolute_path(text):
    """An argument that must be an absolute path (argparse's type)."""
    import argparse

    if not text.startswith("/") or "\0" in text:
        raise argparse.ArgumentTypeError(f"{one_line(text)!r} is not an absolute path")
    return text


def check_config(args):
    raw = read_config(args.file, stream=True)
    problems = trust_problems(args.file) + config_problems(raw) + index_problems(args.file, raw)
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
    except (Unreachable, NotSent) as error:
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
    if os.environ.get("CODO_AUTH_KEY") or not is_absolute_path(codo.get("auth_key_file", "/")):
        return []
    try:
        read_auth_key(with_defaults(codo, CODO_DEFAULTS))
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
    try:
        return _nests(tree, False, parser)
    except RecursionError:  # groups nested hundreds deep: re takes them, this walk cannot tell
        return False


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


def trust_problems(path):
    """What makes a push refuse a config whatever it holds: a link, another user's file, one others may write."""
    import stat

    try:
        info = os.lstat(path)
    except OSError:
        return []
    if stat.S_ISLNK(info.st_mode):
        return (
            ["a push does not read a config through a symbolic link: put the file itself there"]
            if os.path.isfile(path)
            else []
        )
    owners = {os.geteuid(), 0}
    if os.geteuid() == 0:  # root checks the git user's file: the user owning its directory
        owners.add(os.stat(os.path.dirname(os.path.abspath(path))).st_uid)
    why = untrusted_file(info, owners, CONFIG_LIMIT) if stat.S_ISREG(info.st_mode) else ""
    if not why:
        return []
    return [f"a push does not trust this file: {why}; make it the git user's or root's, mode 0640"]


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
