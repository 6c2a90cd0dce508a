"""Release tags to OpenDevOps (CODO) tasks: everything behind codo_release_hook.py.

One module a concern, each readable top to bottom; read in this order:
  output      what the pusher sees: one short `codo:` line per event, secrets scrubbed
  config      loading, defaults, every problem listed
  decisions   release, skip or refuse a tag update; the request bodies the seed hook sent
  keys        the platform key: read, checked, never shown; its JWT claims and expiry
  platform    the client: one budget per push, retry only what surely created nothing
  fileio      files of the hook's own: private directories, no links, atomic writes
  spool       every release journaled before it is sent, claimed by rename
  log         one JSON line per event, bounded
  stages      pre-receive, update, post-receive
  flush       the timer's work: resend, settle uncertain releases, follow tasks
  status      what the spool holds, for a person or as JSON
  metrics     what flush counts from the log, for node_exporter and status
  admin       the commands: check-config (and --probe), match, flush, status

A push imports what its stage needs (stages and below), never admin, flush, status or
metrics. Only os, sys and time are imported up front. `json` and `re` cost most of a bare
interpreter start, so a push whose tags no rule can match reads its config with json's own
C scanner and tells tags apart by each rule's literal prefix; `re` comes in when a tag may
be a release, `requests` when it is about to be sent.
"""

import os

# The hook's version: in `--version`, `status --json` and the metrics. Raise it with every change
# to the program that a node should be told apart by.
VERSION = "1.16.0"

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

# Outcomes of one release.
SENT, SKIPPED, PENDING, UNCERTAIN, FAILED = "sent", "skipped", "pending", "uncertain", "failed"


def main(stage, updates, argv, config_path, malformed=None):
    """Called by the entry with the stage it runs as (None: admin), the tag updates, the config's path
    and the records it could not read. Whatever goes wrong, the person sees one line, never a traceback."""
    os.umask(0o027)
    from .output import one_line, say
    from .platform import BudgetExceeded
    from .stages import Push, run_stage, unexpected_error

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
        from .admin import admin

        return admin(argv, config_path)
    except (Exception, BudgetExceeded):
        return unexpected_error(stage, push, config_path, state_dir_argument(argv))


def state_dir_argument(argv):
    """The --state-dir an admin command was given, if absolute: where its traceback is logged."""
    for index, arg in enumerate(argv[1:], 1):
        value = None
        if arg == "--state-dir" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--state-dir="):
            value = arg[len("--state-dir=") :]
        if value and value.startswith("/") and "\0" not in value:
            return value
    return None
