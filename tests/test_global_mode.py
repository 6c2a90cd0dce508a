"""The server-wide install (method `global`): one hook in Gitaly's custom_hooks_dir, one config, one index.

Real pushes to bare repositories whose hooks run the way Gitaly runs them, server-wide directory
included (tests/fakes/gitaly_runner.py --custom-hooks-dir), against the fake platform.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import AUTH_KEY, RUNNER, base_config, git, install_program


class Server:
    """A Gitaly node with a server-wide hooks directory laid out as the role's global method does."""

    def __init__(self, tmp_path, fake):
        self.tmp = tmp_path
        self.entry = install_program(str(tmp_path / "opt" / "codo-release"))
        self.global_dir = tmp_path / "gitaly" / "custom_hooks"
        self.state_dir = tmp_path / "state"
        key_file = tmp_path / "auth_key"
        key_file.write_text(AUTH_KEY + "\n")
        key_file.chmod(0o600)
        config = base_config(fake.url, str(self.state_dir), str(key_file))
        listed = config["projects"]["ops/dbtt"]
        config["projects"] = {"ops/dbtt": listed, "ops/web": dict(listed, app_name="WEB", task_name="WEB")}
        for stage in ("pre-receive", "post-receive"):
            (self.global_dir / (stage + ".d")).mkdir(parents=True)
            os.symlink(self.entry, self.global_dir / (stage + ".d") / "codo-release")
        (self.global_dir / "codo-release.json").write_text(json.dumps(config))
        (self.global_dir / "codo-release.projects").write_text("ops/dbtt\nops/web\n")

    def project(self, path, project_id):
        """A bare repository of `path` and a clone of it with one commit; returns the clone."""
        bare = str(self.tmp / "repositories" / (path + ".git"))
        git("init", "--bare", "-q", bare)
        subprocess.run(
            [sys.executable, RUNNER, "install", bare, "--project-path", path, "--project-id", str(project_id),
             "--custom-hooks-dir", str(self.global_dir)],
            check=True,
        )
        clone = str(self.tmp / "clones" / path)
        git("clone", "-q", bare, clone)
        git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "one",
            cwd=clone)
        return clone

    def push_tag(self, clone, tag):
        git("tag", tag, cwd=clone)
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "GL_USERNAME": "alice"}
        result = git("push", "origin", tag, cwd=clone, env=env, check=False)
        return result.returncode, result.stdout

    def log(self):
        path = self.state_dir / "hook.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def server(tmp_path, fake):
    return Server(tmp_path, fake)


def test_a_release_pushed_to_a_listed_project_is_submitted_once(server, fake):
    code, output = server.push_tag(server.project("ops/dbtt", 1), "release-dbtt-1")
    assert code == 0, output
    assert len(fake.tasks) == 1 and "'TAG': 'release-dbtt-1'" in fake.tasks[0].fields["args"]


def test_each_listed_project_gets_its_own_entry_of_the_one_config(server, fake):
    server.push_tag(server.project("ops/web", 2), "release-dbtt-2")
    assert [task.fields["task_name"] for task in fake.tasks] == ["WEB"]


def test_a_project_not_in_the_index_is_left_alone_without_reading_the_config(server, fake):
    clone = server.project("ops/unlisted", 3)
    (server.global_dir / "codo-release.json").write_text("not json: an unlisted project never reads it")
    code, output = server.push_tag(clone, "release-dbtt-3")
    assert code == 0 and "codo" not in output
    assert fake.tasks == [] and server.log() == []


def test_an_unsafe_tag_to_a_listed_project_is_refused_by_the_server_wide_hook(server, fake):
    code, output = server.push_tag(server.project("ops/dbtt", 1), "release-dbtt-$(id)")
    assert code != 0 and "GL-HOOK-ERR" in output
    assert fake.tasks == []


def link_in_project(server, path, target=None, task_name="OWN"):
    """What a per-project method left in the project: its own links and codo-release.json."""
    hooks = server.tmp / "repositories" / (path + ".git") / "custom_hooks"
    for stage in ("pre-receive", "post-receive"):
        (hooks / (stage + ".d")).mkdir(parents=True)
        os.symlink(target or server.entry, hooks / (stage + ".d") / "codo-release")
    config = json.loads((server.global_dir / "codo-release.json").read_text())
    config["projects"] = {path: dict(config["projects"][path], task_name=task_name)}
    (hooks / "codo-release.json").write_text(json.dumps(config))


@pytest.mark.parametrize("own_link", [True, False], ids=["project-link-too", "server-wide-only"])
def test_a_release_is_submitted_once_whether_or_not_the_project_still_links_the_hook(server, fake, own_link):
    clone = server.project("ops/dbtt", 1)  # before the link: the runner is installed first
    if own_link:
        link_in_project(server, "ops/dbtt")
    code, output = server.push_tag(clone, "release-dbtt-1")
    assert code == 0, output
    assert [task.fields["task_name"] for task in fake.tasks] == ["OWN" if own_link else "DBTT"]
    submitted = [entry for entry in server.log() if entry.get("task_id") is not None]
    assert len(submitted) == 1 and output.count("submitted as task") == 1


def test_a_dangling_project_link_does_not_silence_the_server_wide_hook(server, fake):
    clone = server.project("ops/dbtt", 1)
    link_in_project(server, "ops/dbtt", target=str(server.tmp / "old-install" / "codo_release_hook.py"))
    code, output = server.push_tag(clone, "release-dbtt-1")
    assert code == 0, output
    assert len(fake.tasks) == 1
