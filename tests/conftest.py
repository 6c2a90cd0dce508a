"""Fixtures: an installed hook, a bare repository whose hooks run the way Gitaly runs them, the fake platform."""

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fakes.fake_codo import FakeCodo

FILES = os.path.join(ROOT, "files")
RUNNER = os.path.join(ROOT, "tests", "fakes", "gitaly_runner.py")
ZERO = "0" * 40
PROJECT = "ops/dbtt"
GIT_URL = "git@gitlab.example.com:ops/dbtt.git"
# The interpreter of the installed hook: ./dev test runs the hook_program tests once per line of
# tests/hook-matrix.txt with CODO_HOOK_PYTHON set to that Python (and its requests).
HOOK_PYTHON = os.environ.get("CODO_HOOK_PYTHON") or sys.executable
# A key no output, log or file may ever show.
AUTH_KEY = "eyJ0eXAi.codo-test-secret-" + secrets.token_hex(8)


def base_config(url, state_dir, key_file):
    return {
        "codo": {
            "url": url,
            "api": "task_accept",
            "auth_key_file": key_file,
            "verify_tls": True,
            "ca_file": None,
            "connect_timeout_s": 2,
            "read_timeout_s": 3,
            "budget_s": 6,
            "task_link": url + "/#/task/{list_id}",
        },
        "state_dir": state_dir,
        "on_failure": "spool",
        "projects": {
            PROJECT: {
                "git_url": GIT_URL,
                "app_name": "DBTT",
                "task_name": "DBTT",
                "rules": [
                    {"tag": r"\Aqa-dbtt[\w]*", "template_id": 32, "schedule": "ready", "hosts": {"1": ["118.25.0.10"]}},
                    {
                        "tag": r"\Arelease-dbtt[\w]*",
                        "template_id": 32,
                        "schedule": "new",
                        "hosts": {"1": ["118.25.0.10", "118.25.0.11"]},
                    },
                ],
            }
        },
    }


def install_program(directory):
    """What the role does: the entry and its module in one place, the entry's interpreter made absolute."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(FILES, "codo_release.py"), directory)
    entry = os.path.join(directory, "codo_release_hook.py")
    with open(os.path.join(FILES, "codo_release_hook.py"), encoding="utf-8") as source:
        lines = source.read().split("\n", 1)
    with open(entry, "w", encoding="utf-8") as target:
        target.write("#!" + HOOK_PYTHON + "\n" + lines[1])
    os.chmod(entry, 0o755)
    subprocess.run([HOOK_PYTHON, "-m", "compileall", "-q", directory], check=True)
    return entry


def git(*args, cwd=None, env=None, check=True):
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


class Site:
    """One GitLab-like project: bare repo with custom_hooks, a clone, the platform's config and state."""

    def __init__(self, tmp_path, fake):
        self.tmp = tmp_path
        self.fake = fake
        self.entry = install_program(str(tmp_path / "opt" / "codo-hooks"))
        self.state_dir = str(tmp_path / "state")
        self.key_file = str(tmp_path / "auth_key")
        with open(self.key_file, "w", encoding="utf-8") as handle:
            handle.write(AUTH_KEY + "\n")
        os.chmod(self.key_file, 0o600)
        self.repo = str(tmp_path / "repositories" / "@hashed" / "6b" / "86" / "project-1.git")
        git("init", "--bare", "-q", self.repo)
        subprocess.run(
            [sys.executable, RUNNER, "install", self.repo, "--project-path", PROJECT, "--project-id", "1"], check=True
        )
        self.hooks = os.path.join(self.repo, "custom_hooks")
        os.makedirs(self.hooks)
        self.config_path = os.path.join(self.hooks, "codo-release.json")
        self.config = base_config(fake.url, self.state_dir, self.key_file)
        self.write_config()
        self.clone = str(tmp_path / "clone")
        git("clone", "-q", self.repo, self.clone)
        git(
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "one",
            cwd=self.clone,
        )
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.clone)

    def write_config(self, config=None):
        with open(self.config_path, "w", encoding="utf-8") as handle:
            json.dump(config if config is not None else self.config, handle)

    def rule(self, index):
        return self.config["projects"][PROJECT]["rules"][index]

    def link(self, *stages):
        """Link the installed program into custom_hooks/<stage>.d/, as the role does."""
        for stage in stages:
            chain = os.path.join(self.hooks, stage + ".d")
            os.makedirs(chain, exist_ok=True)
            os.symlink(self.entry, os.path.join(chain, "codo-release"))

    def env(self, **extra):
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "GL_USERNAME": "alice"}
        env.update(extra)
        return env

    def push(self, *refspecs, user="alice", force=False):
        """git push from the clone; returns (exit code, all output)."""
        args = ["push", "origin", *refspecs] + (["--force"] if force else [])
        result = git(*args, cwd=self.clone, env=self.env(GL_USERNAME=user), check=False)
        return result.returncode, result.stdout

    def tag(self, name, commit="HEAD"):
        git("tag", "-f", name, commit, cwd=self.clone)

    def commit(self, message="more"):
        git(
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
            cwd=self.clone,
        )

    def remote_refs(self):
        return git("for-each-ref", "--format=%(refname)", cwd=self.repo).stdout.split()

    def run_hook(self, stage, lines=(), argv=(), user="alice", **env):
        """Run the linked program directly, as Gitaly would, with stdin lines or update's argv."""
        link = os.path.join(self.hooks, stage + ".d", "codo-release")
        if not os.path.exists(link):
            self.link(stage)
        base = self.env(GL_USERNAME=user, GL_PROJECT_PATH=PROJECT, GL_REPOSITORY="project-1", GL_PROTOCOL="ssh")
        base.update(env)
        return subprocess.run(
            [link, *argv],
            check=False,
            input="".join(line + "\n" for line in lines),
            cwd=self.repo,
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def admin(self, *args, **env):
        base = self.env(**env)
        return subprocess.run([self.entry, *args], check=False, env=base, capture_output=True, text=True, timeout=120)

    def flush(self, *args):
        return self.admin("flush", "--state-dir", self.state_dir, *args)

    def spool(self, state):
        directory = os.path.join(self.state_dir, "spool", state)
        if not os.path.isdir(directory):
            return []
        entries = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                entries.append(json.load(handle))
        return entries

    def log(self):
        path = os.path.join(self.state_dir, "hook.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def new_tag_line(tag, new="1" * 40):
    return f"{ZERO} {new} refs/tags/{tag}"


def pytest_configure(config):
    config.addinivalue_line("markers", "hook_program: runs the installed hook as a program (the interpreter matrix)")


def pytest_collection_modifyitems(items):
    """Every test that uses the installed hook (the `site` fixture, directly or not) runs it as a program."""
    for item in items:
        if "site" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.hook_program)


@pytest.fixture
def fake():
    server = FakeCodo(auth_key=AUTH_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def site(tmp_path, fake):
    return Site(tmp_path, fake)
