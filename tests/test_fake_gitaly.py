"""The `gitaly` stand-in does what Gitaly does with `gitaly hooks set` (shared/gitlab-hooks.md).

Archives are made with the real tar command, the two ways people make them: `tar -cf x.tar
custom_hooks` (rooted at custom_hooks/, what Gitaly wants) and `tar -C custom_hooks/.. -cf x.tar .`
(entries `./custom_hooks/...`: the wipe trap).
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakes import fake_gitaly

GITALY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes", "fake_gitaly.py")
REL = "@hashed/6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b.git"
OMNIBUS_CONFIG = """\
# Gitaly's config.toml as Omnibus renders it (shortened)
bin_dir = "/opt/gitlab/embedded/bin"
socket_path = "/var/opt/gitlab/gitaly/gitaly.socket"
runtime_dir = '/var/opt/gitlab/gitaly/run'

[logging]
dir = "{log_dir}"
level = "info"

[hooks]
custom_hooks_dir = "/var/opt/gitlab/gitaly/custom_hooks"

[[storage]]
name = "default"
path = "{storage}"

[gitlab]
url = "http+unix://%2Fvar%2Fopt%2Fgitlab%2Fgitlab-workhorse%2Fsockets%2Fsocket"

[[concurrency]]
rpc = "/gitaly.SmartHTTPService/PostReceivePack"
max_per_repo = 20
"""


class Node:
    """A Gitaly storage with one repository, the stand-in's config, and archives to send."""

    def __init__(self, base):
        self.base = base
        self.storage = os.path.join(base, "repositories")
        self.log_dir = os.path.join(base, "log")
        os.makedirs(self.log_dir)
        self.repo = os.path.join(self.storage, REL)
        subprocess.run(["git", "init", "-q", "--bare", self.repo], check=True)
        self.hooks = os.path.join(self.repo, "custom_hooks")
        self.config = os.path.join(base, "config.toml")
        self.write_config(OMNIBUS_CONFIG.format(storage=self.storage, log_dir=self.log_dir))

    def write_config(self, text):
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(text)

    def hook(self, relative, body="#!/bin/sh\nexit 0\n", mode=0o755, root=None):
        path = os.path.join(root or self.hooks, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.chmod(path, mode)
        return path

    def archive(self, build, *entries):
        """tar run in `build` (a directory holding custom_hooks/) with these arguments."""
        target = os.path.join(self.base, "hooks.tar")
        subprocess.run(["tar", "-C", build, "-cf", target, *entries], check=True)
        with open(target, "rb") as handle:
            return handle.read()

    def set(self, archive, *flags, user=None, python=sys.executable):
        args = flags or ("--storage", "default", "--repository", REL, "--config", self.config)
        return subprocess.run(
            [python, GITALY, "hooks", "set", *args],
            input=archive,
            capture_output=True,
            check=False,
            user=user,
        )

    def files(self):
        """Everything under custom_hooks/, relative, directories with a trailing /."""
        found = []
        for directory, dirs, names in os.walk(self.hooks):
            rel = os.path.relpath(directory, self.hooks)
            prefix = "" if rel == "." else rel + "/"
            found += [prefix + d + "/" for d in dirs] + [prefix + n for n in names]
        return sorted(found)

    def calls(self):
        path = os.path.join(self.log_dir, fake_gitaly.CALLS_LOG)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


@pytest.fixture
def node(tmp_path):
    return Node(str(tmp_path))


@pytest.fixture
def build(tmp_path):
    """A directory to make archives in: hooks go into build/custom_hooks/."""
    path = tmp_path / "build"
    (path / "custom_hooks").mkdir(parents=True)
    return str(path)


def test_an_archive_rooted_at_custom_hooks_becomes_the_projects_hooks(node, build):
    node.hook("custom_hooks/post-receive.d/codo-release", "#!/bin/sh\necho new\n", root=build)
    answer = node.set(node.archive(build, "custom_hooks"))
    assert answer.returncode == 0, answer.stderr
    assert node.files() == ["post-receive.d/", "post-receive.d/codo-release"]
    with open(os.path.join(node.hooks, "post-receive.d", "codo-release"), encoding="utf-8") as handle:
        assert handle.read() == "#!/bin/sh\necho new\n"
    assert os.stat(os.path.join(node.hooks, "post-receive.d", "codo-release")).st_mode & 0o777 == 0o755


def test_hooks_missing_from_the_archive_are_deleted(node, build):
    node.hook("update")
    node.hook("pre-receive.d/own-check")
    node.hook("custom_hooks/post-receive", root=build)
    node.set(node.archive(build, "custom_hooks"))
    assert node.files() == ["post-receive"]


def test_an_archive_of_dot_custom_hooks_wipes_every_hook(node, build):
    node.hook("update")
    node.hook("custom_hooks/update", root=build)
    node.hook("custom_hooks/post-receive.d/codo-release", root=build)
    archive = node.archive(build, ".")
    assert "./custom_hooks/update" in fake_gitaly.archive_entries(archive)
    answer = node.set(archive)
    assert answer.returncode == 0, answer.stderr
    assert os.path.isdir(node.hooks) and node.files() == []
    assert node.calls()[-1]["outcome"] == "wiped"


def test_an_archive_without_custom_hooks_wipes_every_hook(node, tmp_path):
    node.hook("update")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "update").write_text("#!/bin/sh\n")
    answer = node.set(node.archive(str(tmp_path), "hooks"))
    assert answer.returncode == 0
    assert node.files() == []


def test_an_empty_stdin_removes_every_hook(node):
    node.hook("update")
    assert node.set(b"").returncode == 0
    assert os.path.isdir(node.hooks) and node.files() == []
    assert node.calls()[-1]["outcome"] == "emptied"


def test_symbolic_links_in_the_archive_stay_links(node, build):
    os.makedirs(os.path.join(build, "custom_hooks", "post-receive.d"))
    os.symlink("/opt/codo-release/codo_release_hook.py", os.path.join(build, "custom_hooks", "post-receive.d", "codo-release"))
    node.set(node.archive(build, "custom_hooks"))
    link = os.path.join(node.hooks, "post-receive.d", "codo-release")
    assert os.path.islink(link) and os.readlink(link) == "/opt/codo-release/codo_release_hook.py"


def test_the_archives_modes_are_kept(node, build):
    os.chmod(os.path.join(build, "custom_hooks"), 0o750)
    node.hook("custom_hooks/codo-release.json", "{}", mode=0o640, root=build)
    node.set(node.archive(build, "custom_hooks"))
    assert stat.S_IMODE(os.stat(node.hooks).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(os.path.join(node.hooks, "codo-release.json")).st_mode) == 0o640


def test_the_project_gets_custom_hooks_when_it_had_none(node, build):
    node.hook("custom_hooks/update", root=build)
    assert not os.path.exists(node.hooks)
    node.set(node.archive(build, "custom_hooks"))
    assert node.files() == ["update"]


def test_nothing_is_left_in_gitalys_temporary_directory(node, build):
    node.hook("update")
    node.hook("custom_hooks/post-receive", root=build)
    node.set(node.archive(build, "custom_hooks"))
    assert os.listdir(os.path.join(node.storage, "+gitaly", "tmp")) == []
    assert not os.path.exists(os.path.join(node.repo, "custom_hooks.lock"))


def test_a_broken_archive_fails_and_leaves_the_hooks_alone(node):
    node.hook("update")
    answer = node.set(b"this is not a tar archive" * 40)
    assert answer.returncode == 1
    assert b"extracting hooks" in answer.stderr
    assert node.files() == ["update"]


def test_a_set_in_flight_holds_the_lock(node, build):
    node.hook("update")
    open(os.path.join(node.repo, "custom_hooks.lock"), "w").close()
    node.hook("custom_hooks/post-receive", root=build)
    answer = node.set(node.archive(build, "custom_hooks"))
    assert answer.returncode == 1 and b"locking hooks: file already locked" in answer.stderr
    assert node.files() == ["update"]


def test_storage_may_be_left_out_when_the_config_has_one(node, build):
    node.hook("custom_hooks/update", root=build)
    answer = node.set(node.archive(build, "custom_hooks"), "--repository", REL, "--config", node.config)
    assert answer.returncode == 0, answer.stderr
    assert node.files() == ["update"]


def test_storage_is_required_when_the_config_has_several(node, build):
    with open(node.config, "a", encoding="utf-8") as handle:
        handle.write('\n[[storage]]\nname = "other"\npath = "/nowhere"\n')
    answer = node.set(b"", "--repository", REL, "--config", node.config)
    assert answer.returncode == 1
    assert b"multiple storages configured: use --storage" in answer.stderr


def test_an_unknown_storage_is_refused(node):
    answer = node.set(b"", "--storage", "gitaly-2", "--repository", REL, "--config", node.config)
    assert answer.returncode == 1 and b'no such storage: "gitaly-2"' in answer.stderr


def test_a_repository_that_does_not_exist_is_refused(node):
    answer = node.set(b"", "--storage", "default", "--repository", "@hashed/00/00/nothing.git", "--config", node.config)
    assert answer.returncode == 1 and b"repository not found" in answer.stderr
    assert not os.path.exists(os.path.join(node.storage, "@hashed", "00"))


def test_a_path_out_of_the_storage_is_refused(node):
    answer = node.set(b"", "--storage", "default", "--repository", "../../etc", "--config", node.config)
    assert answer.returncode == 1 and b"escapes root directory" in answer.stderr


def test_repository_and_config_are_required(node):
    answer = node.set(b"", "--storage", "default")
    assert answer.returncode == 1 and b'Required flags "repository, config" not set' in answer.stderr


def test_every_call_is_logged_with_the_archives_entries(node, build):
    node.hook("custom_hooks/update", root=build)
    node.set(node.archive(build, "custom_hooks"))
    node.set(b"", "--storage", "nope", "--repository", REL, "--config", node.config)
    first, second = node.calls()
    assert (first["outcome"], first["repository"], first["storage"]) == ("set", REL, "default")
    assert first["entries"] == ["custom_hooks/", "custom_hooks/update"]
    assert second["outcome"] == "error" and "no such storage" in second["error"]


def test_the_version_answers():
    answer = subprocess.run([sys.executable, GITALY, "--version"], capture_output=True, text=True, check=True)
    assert answer.stdout.startswith("Gitaly, version")


@pytest.fixture
def shared_node():
    """A node under a directory another user can reach (pytest's tmp_path is root's alone)."""
    base = tempfile.mkdtemp(prefix="codo-fake-gitaly-")
    os.chmod(base, 0o755)
    yield Node(base)
    shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play two users")
def test_run_as_root_the_work_is_done_as_the_storage_owner(shared_node, build):
    nobody = 65534
    for directory, dirs, names in os.walk(shared_node.storage):
        for name in [directory] + [os.path.join(directory, n) for n in dirs + names]:
            os.lchown(name, nobody, nobody)
    os.chown(shared_node.log_dir, nobody, nobody)
    shared_node.hook("custom_hooks/update", root=build)
    answer = shared_node.set(shared_node.archive(build, "custom_hooks"))
    assert answer.returncode == 0, answer.stderr
    for path in (shared_node.hooks, os.path.join(shared_node.hooks, "update")):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (nobody, nobody)
    assert shared_node.calls()[-1]["uid"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play two users")
def test_a_caller_who_is_not_gitalys_user_is_refused(shared_node):
    # Another user cannot run the virtualenv's Python (under /root): the system's, which Debian has.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", GITALY], check=False).returncode:
        pytest.skip("no interpreter or stand-in another user can run")
    answer = shared_node.set(b"", user=65534, python=python)
    assert answer.returncode == 1 and b"permission denied" in answer.stderr


def test_the_fallback_config_reader_agrees_with_tomllib(node):
    tomllib = pytest.importorskip("tomllib")
    with open(node.config, "rb") as handle:
        text = handle.read().decode()
    assert fake_gitaly.parse_toml_subset(text) == tomllib.loads(text)
    assert fake_gitaly.storages(fake_gitaly.parse_toml_subset(text)) == {"default": node.storage}
