#!/usr/bin/env python3
"""Make a bare repository run its custom hooks the way Gitaly does (shared/gitlab-hooks.md).

  python3 gitaly_runner.py install BARE_REPO [--project-path ops/dbtt] [--project-id 1]
                                   [--custom-hooks-dir DIR]
      writes hooks/{pre-receive,update,post-receive}: shims that call `run`, and keeps the
      project in the repository's git config (gitlab.fullpath, gitlab.projectid), and Gitaly's
      server-wide custom_hooks_dir when given (gitlab.customhooksdir).
  python3 gitaly_runner.py run [--repo BARE_REPO] STAGE [ARGS...]
      runs custom_hooks/STAGE, then custom_hooks/STAGE.d/* in alphabetical order, then the
      server-wide <custom_hooks_dir>/STAGE.d/* in alphabetical order, skipping what is not
      executable, a directory, or named `*~`; stops at the first non-zero exit.

Each hook gets the same stdin (pre-/post-receive) or argv (update), runs in the repository
directory with Gitaly's filtered environment plus GL_* and any CODO_* variable, and writes to
the pusher's terminal (`remote:` lines). GL_ID, GL_USERNAME and GL_PROTOCOL come from the
pusher's environment when set (`GL_USERNAME=alice git push`). Standard library only.
"""

import os
import sys

STAGES = ("pre-receive", "update", "post-receive")
# What Gitaly lets through to a hook; everything else (LANG, PYTHONPATH, ...) is dropped.
KEPT_VARIABLES = (
    "HOME",
    "PATH",
    "LD_LIBRARY_PATH",
    "TZ",
    "GIT_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "all_proxy",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
)
KEPT_PREFIX = "CODO_"  # for the tests
PUSHER_DEFAULTS = {"GL_ID": "user-1", "GL_USERNAME": "root", "GL_PROTOCOL": "ssh"}
# -I -S: the runner needs only the standard library; loading site-packages costs a push ~50 ms here.
SHIM = """#!/bin/sh
# Written by gitaly_runner.py: run custom_hooks/ the way Gitaly does.
exec {python} -I -S {runner} run --repo {repo} {stage} "$@"
"""


def install(repo, project_path, project_id, custom_hooks_dir=None):
    import shlex
    import subprocess

    repo = os.path.abspath(repo)
    settings = [("gitlab.fullpath", project_path), ("gitlab.projectid", str(project_id))]
    if custom_hooks_dir:
        settings.append(("gitlab.customhooksdir", os.path.abspath(custom_hooks_dir)))
    for name, value in settings:
        subprocess.run(["git", "config", "--file", os.path.join(repo, "config"), name, value], check=True)
    for stage in STAGES:
        shim = os.path.join(repo, "hooks", stage)
        with open(shim, "w", encoding="utf-8") as handle:
            handle.write(
                SHIM.format(
                    python=shlex.quote(sys.executable),
                    runner=shlex.quote(os.path.abspath(__file__)),
                    repo=shlex.quote(repo),
                    stage=stage,
                )
            )
        os.chmod(shim, 0o755)


def run(repo, stage, argv):
    """Run the stage's chain; the exit status of the first hook that fails, else 0."""
    stdin = os.open(os.devnull, os.O_RDONLY) if stage == "update" else _rewindable_stdin()
    project = _gitlab_config(repo)
    env = hook_environment(repo, os.environ, project)
    for hook in hook_chain(repo, stage, project.get("customhooksdir")):
        os.lseek(stdin, 0, os.SEEK_SET)
        status = _spawn([hook, *argv], stdin, repo, env)
        if status != 0:
            return status if status > 0 else 128 - status  # killed by a signal: as a shell reports it
    return 0


def hook_chain(repo, stage, custom_hooks_dir=None):
    """custom_hooks/<stage>, custom_hooks/<stage>.d/* by name, then the server-wide
    <custom_hooks_dir>/<stage>.d/* by name; only what Gitaly would run."""
    single = os.path.join(repo, "custom_hooks", stage)
    chained = _chain(single + ".d")
    server_wide = _chain(os.path.join(custom_hooks_dir, stage + ".d")) if custom_hooks_dir else []
    return [path for path in [single, *chained, *server_wide] if _runnable(path)]


def _chain(chain_dir):
    return [os.path.join(chain_dir, name) for name in sorted(os.listdir(chain_dir))] if os.path.isdir(chain_dir) else []


def _runnable(path):
    return not path.endswith("~") and not os.path.isdir(path) and os.access(path, os.X_OK)


def hook_environment(repo, pusher_env, project=None):
    env = {name: value for name, value in pusher_env.items() if name in KEPT_VARIABLES or name.startswith(KEPT_PREFIX)}
    env.update({name: pusher_env.get(name) or default for name, default in PUSHER_DEFAULTS.items()})
    project = _gitlab_config(repo) if project is None else project
    env["GL_PROJECT_PATH"] = project.get("fullpath", "")
    env["GL_REPOSITORY"] = "project-" + project.get("projectid", "1")
    return env


def _gitlab_config(repo):
    """The [gitlab] section of the repository's config, as `install` wrote it."""
    section, found = None, {}
    with open(os.path.join(repo, "config"), encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]").strip().lower()
            elif section == "gitlab" and "=" in line:
                name, value = line.split("=", 1)
                found[name.strip().lower()] = value.strip()
    return found


# The runner starts twice per push, so it spawns its hooks with os.fork/execve: importing
# subprocess alone would double what it costs.


def _rewindable_stdin():
    """Our stdin (the ref lines) in a memory file, so that each hook reads all of it."""
    copy = os.memfd_create("stdin")
    os.write(copy, sys.stdin.buffer.read())
    return copy


def _spawn(argv, stdin, cwd, env):
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            os.dup2(stdin, 0)
            os.execve(argv[0], argv, env)
        except OSError as error:
            os.write(2, f"gitaly_runner: cannot run {argv[0]}: {error.strerror}\n".encode())
        os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(argv):
    # `run` is on every push: parsed by hand, since argparse alone costs more than the rest.
    if argv[:1] == ["run"] and len(argv) > 1 and argv[1] != "--help":
        repo, rest = (argv[2], argv[3:]) if argv[1] == "--repo" else (".", argv[1:])
        if not rest or rest[0] not in STAGES:
            print(f"usage: gitaly_runner.py run [--repo BARE_REPO] {{{','.join(STAGES)}}} [ARGS...]", file=sys.stderr)
            return 2
        return run(os.path.abspath(repo), rest[0], rest[1:])
    return install_command(argv)


def install_command(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    installing = commands.add_parser("install", help="write the shims into BARE_REPO/hooks")
    installing.add_argument("repo", metavar="BARE_REPO")
    installing.add_argument("--project-path", help="GL_PROJECT_PATH (default: root/<repository name>)")
    installing.add_argument("--project-id", type=int, default=1, help="GL_REPOSITORY=project-<id> (default: 1)")
    installing.add_argument(
        "--custom-hooks-dir",
        metavar="DIR",
        help="Gitaly's server-wide custom_hooks_dir: its <stage>.d/* run after the project's own hooks",
    )
    commands.add_parser("run", help="run [--repo BARE_REPO] STAGE [ARGS...]: one stage's custom hooks")
    options = parser.parse_args(argv)
    if options.command != "install":
        parser.error("run needs a STAGE")
    name = os.path.basename(os.path.abspath(options.repo)).removesuffix(".git")
    install(options.repo, options.project_path or f"root/{name}", options.project_id, options.custom_hooks_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
