"""Fixtures: an installed hook, a bare repository whose hooks run the way Gitaly runs them, the fake platform."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fakes.fake_codo import FakeCodo, make_auth_key

FILES = os.path.join(ROOT, "files")
RUNNER = os.path.join(ROOT, "tests", "fakes", "gitaly_runner.py")
ZERO = "0" * 40
PROJECT = "ops/dbtt"
GIT_URL = "git@gitlab.example.com:ops/dbtt.git"
# The interpreter of the installed hook: ./dev test runs the hook_program tests once per line of
# tests/hook-matrix.txt with CODO_HOOK_PYTHON set to that Python (and its requests).
HOOK_PYTHON = os.environ.get("CODO_HOOK_PYTHON") or sys.executable
# A key no output, log or file may ever show: a JWT like the admin service mints, its signature random.
AUTH_KEY = make_auth_key()


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
                    {
                        "tag": r"\Aqa-dbtt[\w]*",
                        "template_id": 32,
                        "schedule": "ready",
                        "hosts": {"1": ["118.25.0.10"]},
                    },
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


# The program's modules as the role names and installs them (codo_release/*.py, no bytecode).
PROGRAM_MODULES = sorted(
    "codo_release/" + name
    for name in os.listdir(os.path.join(FILES, "codo_release"))
    if name.endswith(".py")
)


def install_program(directory):
    """What the role does: the entry and its package in one place, the entry's interpreter made absolute."""
    os.makedirs(directory, exist_ok=True)
    os.makedirs(os.path.join(directory, "codo_release"), exist_ok=True)
    for name in PROGRAM_MODULES:
        shutil.copy(os.path.join(FILES, name), os.path.join(directory, name))
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
        ["git", *args],
        cwd=cwd,
        env=env,
        check=check,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


REPO = os.path.join("repositories", "@hashed", "6b", "86", "project-1.git")


def build_site_tree(root):
    """What every test starts from, built once a session: the installed program, a bare repository
    whose hooks run as Gitaly runs them (custom_hooks empty), and a clone with one commit pushed."""
    root = str(root)
    install_program(os.path.join(root, "opt", "codo-release"))
    repo = os.path.join(root, REPO)
    git("init", "--bare", "-q", repo)
    subprocess.run(
        [sys.executable, RUNNER, "install", repo, "--project-path", PROJECT, "--project-id", "1"],
        check=True,
    )
    os.makedirs(os.path.join(repo, "custom_hooks"))
    clone = os.path.join(root, "clone")
    git("clone", "-q", repo, clone)
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    git(*identity, "commit", "-q", "--allow-empty", "-m", "one", cwd=clone)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=clone)
    return root


def copy_site_tree(template, root):
    """A copy of the template for one test: the few files naming the template's path name the copy's."""
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    repo = os.path.join(root, REPO)
    for path in [
        os.path.join(repo, "hooks", stage) for stage in ("pre-receive", "update", "post-receive")
    ] + [os.path.join(root, "clone", ".git", "config")]:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text.replace(template, root))


class Site:
    """One GitLab-like project: bare repo with custom_hooks, a clone, the platform's config and state."""

    def __init__(self, tmp_path, fake, template=None):
        self.tmp = tmp_path
        self.fake = fake
        if template is None:
            template = build_site_tree(tmp_path / "template")
        copy_site_tree(str(template), str(tmp_path))
        self.entry = os.path.join(str(tmp_path), "opt", "codo-release", "codo_release_hook.py")
        self.state_dir = str(tmp_path / "state")
        self.key_file = str(tmp_path / "auth_key")
        with open(self.key_file, "w", encoding="utf-8") as handle:
            handle.write(AUTH_KEY + "\n")
        os.chmod(self.key_file, 0o600)
        self.repo = str(tmp_path / REPO)
        self.hooks = os.path.join(self.repo, "custom_hooks")
        self.config_path = os.path.join(self.hooks, "codo-release.json")
        self.config = base_config(fake.url, self.state_dir, self.key_file)
        self.write_config()
        self.clone = str(tmp_path / "clone")

    def serve_key(self, key, **codo):
        """The platform restarted to accept `key` only (None: any well-formed key), the hook given it."""
        self.fake.stop()
        self.fake.__init__(auth_key=key)
        self.fake.start()
        self.config["codo"].update(url=self.fake.url, **codo)
        self.write_config()
        with open(self.key_file, "w", encoding="utf-8") as handle:
            handle.write(key or self.fake.auth_key)

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

    def commit(self, message="more", days_old=0):
        """An empty commit in the clone, dated days_old days ago when asked."""
        env = dict(os.environ)
        if days_old:
            stamp = f"@{int(time.time()) - days_old * 86400} +0000"
            env.update(GIT_COMMITTER_DATE=stamp, GIT_AUTHOR_DATE=stamp)
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
        git(*identity, "commit", "-q", "--allow-empty", "-m", message, cwd=self.clone, env=env)

    def remote_refs(self):
        return git("for-each-ref", "--format=%(refname)", cwd=self.repo).stdout.split("\n")[
            :-1
        ]  # names may hold spaces

    def run_hook(self, stage, lines=(), argv=(), user="alice", **env):
        """Run the linked program directly, as Gitaly would, with stdin lines or update's argv."""
        link = os.path.join(self.hooks, stage + ".d", "codo-release")
        if not os.path.exists(link):
            self.link(stage)
        base = self.env(
            GL_USERNAME=user, GL_PROJECT_PATH=PROJECT, GL_REPOSITORY="project-1", GL_PROTOCOL="ssh"
        )
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
        return subprocess.run(
            [self.entry, *args], check=False, env=base, capture_output=True, text=True, timeout=120
        )

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
    config.addinivalue_line(
        "markers", "hook_program: runs the installed hook as a program (the interpreter matrix)"
    )


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


@pytest.fixture(scope="session")
def site_template(tmp_path_factory):
    return build_site_tree(tmp_path_factory.mktemp("site-template"))


@pytest.fixture
def site(tmp_path, fake, site_template):
    return Site(tmp_path, fake, site_template)


@pytest.fixture
def other_platform():
    """A second platform on another port: where a redirect or a planted entry would take the key."""
    server = FakeCodo(auth_key=AUTH_KEY)
    server.start()
    yield server
    server.stop()


def assert_key_nowhere(site, *outputs):
    """The platform key (and its signature alone) in no output, log or state file."""
    secrets_ = (AUTH_KEY, AUTH_KEY.rsplit(".", 1)[-1])
    for text in outputs:
        for secret in secrets_:
            assert secret not in text
    for root, _dirs, files in os.walk(site.state_dir):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            for secret in secrets_:
                assert secret.encode() not in data, path


def run_hook_bytes(site, stage, data=b"", argv=(), **env):
    """Run the linked hook with stdin as raw bytes (what git writes need not be text)."""
    link = os.path.join(site.hooks, stage + ".d", "codo-release")
    if not os.path.exists(link):
        site.link(stage)
    base = site.env(
        GL_USERNAME="alice", GL_PROJECT_PATH=PROJECT, GL_REPOSITORY="project-1", GL_PROTOCOL="ssh"
    )
    base.update(env)
    result = subprocess.run(
        [link, *argv],
        check=False,
        input=data,
        cwd=site.repo,
        env=base,
        capture_output=True,
        timeout=60,
    )
    return result.returncode, result.stdout.decode("utf-8", "replace") + result.stderr.decode(
        "utf-8", "replace"
    )
