"""The codo_hooks_projects module (roles/codo_hooks/library/) run the way Ansible runs it
({"ANSIBLE_MODULE_ARGS": ...} on stdin; `plan` and `--check` are check mode), against real bare
repositories owned by an
unprivileged account that stands for GitLab's git user, with the `gitaly` stand-in
(tests/fakes/fake_gitaly.py) behind `gitaly hooks set`.

The git user is `nobody`; its storage lives under a directory it can reach (pytest's tmp_path is
root's alone), made for each test and removed after it. Nothing is created system-wide.
"""

import grp
import hashlib
import io
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile

import pytest
from ansible_module import role_module_utils, run_module
from conftest import ROOT, base_config, install_program

FAKE_GITALY = os.path.join(ROOT, "tests", "fakes", "fake_gitaly.py")
CALLS_LOG = "fake-gitaly-hooks-set.log"
ALL_STAGES = ["pre-receive", "update", "post-receive"]
STAGES = ["pre-receive", "post-receive"]
RUNUSER = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
OWN_HOOK = b"#!/bin/sh\n# the project's own hook, not ours\necho checked >&2\nexit 0\n"


def relative(project_id):
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return "@hashed/{}/{}/{}.git".format(digest[:2], digest[2:4], digest)


def load_sync_hooks():
    role_module_utils()
    from ansible.module_utils.codo_hooks_core import sync

    return sync


def run_sync(mode, want, *flags, env=None):
    """The module as the role's tasks run it: `plan` and `--check` in check mode; (rc, result, stderr)."""
    check = mode == "plan" or "--check" in flags
    return run_module("codo_hooks_projects", want, check=check, diff=True, env=env)


def snapshot(top):
    """Everything under top: kind, mode, owner, and a link's target or a file's bytes."""
    found = {}
    if not os.path.lexists(top):
        return found
    for directory, dirs, names in os.walk(top):
        for name in [os.curdir] + dirs + names:
            path = os.path.normpath(os.path.join(directory, name))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    what = ("file", handle.read())
            else:
                what = ("dir",)
            found[os.path.relpath(path, top)] = what + (
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
            )
    return found


def owner_of(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class GitalyNode:
    """A Gitaly node: storages owned by the git user, Gitaly's config.toml, `gitaly` on a path."""

    def __init__(self, base, hook, python):
        account = pwd.getpwnam("nobody")
        self.user, self.uid, self.gid = account.pw_name, account.pw_uid, account.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name
        self.base = base
        self.hook = hook
        self.python = python
        self.storage = self.owned_dir("storage-default")
        self.log_dir = self.owned_dir("log")
        os.makedirs(os.path.join(base, "gitaly"))
        self.global_dir = os.path.join(base, "gitaly", "custom_hooks")
        self.config = os.path.join(base, "gitaly", "config.toml")
        self.write_config()
        os.makedirs(os.path.join(base, "bin"))
        self.gitaly = self.script("gitaly", 'exec {} {} "$@"\n'.format(python, FAKE_GITALY))

    def owned_dir(self, name):
        path = os.path.join(self.base, name)
        os.mkdir(path, 0o755)
        os.chown(path, self.uid, self.gid)
        return path

    def write_config(self, custom_hooks_dir=True):
        lines = [
            'bin_dir = "/opt/gitlab/embedded/bin"',
            "",
            "[logging]",
            'dir = "{}"'.format(self.log_dir),
            "",
        ]
        if custom_hooks_dir:
            lines += ["[hooks]", "custom_hooks_dir = '{}'".format(self.global_dir), ""]
        lines += ["[[storage]]", 'name = "default"', 'path = "{}"'.format(self.storage), ""]
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines))

    def script(self, name, body):
        path = os.path.join(self.base, "bin", name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        return path

    def as_git(self, *argv):
        env = {"PATH": "/usr/bin:/bin", "HOME": self.base}
        return subprocess.run(
            [RUNUSER, "-u", self.user, "--", *argv],
            env=env,
            cwd="/",
            check=True,
            capture_output=True,
            text=True,
        )

    def repo(self, project_id):
        path = os.path.join(self.storage, relative(project_id))
        self.as_git("git", "init", "--bare", "-q", path)
        return path

    def own_hook(self, repo, name="update", body=OWN_HOOK):
        """The project's own hook, as GitLab's admins put it there: owned by git, 0755."""
        path = os.path.join(repo, "custom_hooks", name)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        while directory != repo:
            os.chown(directory, self.uid, self.gid)
            directory = os.path.dirname(directory)
        with open(path, "wb") as handle:
            handle.write(body)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o755)
        return path

    def project(self, path, project_id, state="present", storage=None, **rule_changes):
        """The inventory's entry (codo_hooks_projects) and, under "config", the config it gets."""
        config = base_config(
            "https://codo.example.com", "/var/opt/codo-release", "/etc/codo-release/auth_key"
        )
        entry = config["projects"].pop("ops/dbtt")
        entry["rules"][0].update(rule_changes)
        entry = dict(entry, app_name=path.upper(), task_name=path.upper())
        entry.update(submitter="githook", executor="githook", details="git hook auto exec")
        config["projects"] = {path: entry}
        return dict(entry, path=path, id=project_id, storage=storage, state=state, config=config)

    def want(self, method, projects, global_dir=""):
        """The module's arguments, as tasks/projects.yml gives them."""
        config = projects[0]["config"]
        return {
            "projects": [{k: v for k, v in p.items() if k != "config"} for p in projects],
            "hook": self.hook,
            "method": method,
            "stages": list(STAGES),
            "codo": config["codo"],
            "settings": {k: v for k, v in config.items() if k not in ("codo", "projects")},
            "repositories_root": self.storage,
            "global_dir": global_dir,
            "gitaly_command": self.gitaly,
            "gitaly_config": self.config,
            "gitaly_storage": "default",
            "git_user": self.user,
            "git_group": self.group,
        }

    def calls(self):
        path = os.path.join(self.log_dir, CALLS_LOG)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def installed(self, repo, project):
        """Our entries are in the project's custom_hooks, as the role wants them, owned by git."""
        hooks = os.path.join(repo, "custom_hooks")
        for stage in STAGES:
            link = os.path.join(hooks, stage + ".d", "codo-release")
            assert os.readlink(link) == self.hook
            assert owner_of(link) == (self.uid, self.gid)
            assert owner_of(os.path.dirname(link)) == (self.uid, self.gid)
        assert not os.path.lexists(os.path.join(hooks, "update.d"))
        config = os.path.join(hooks, "codo-release.json")
        with open(config, encoding="utf-8") as handle:
            assert json.load(handle) == project["config"]
        assert owner_of(config) == (self.uid, self.gid) and mode_of(config) == 0o640


def system_python_for(user):
    """An interpreter the git user can run (the virtualenv's lives under /root), or None."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        return None
    probe = subprocess.run(
        [
            RUNUSER,
            "-u",
            user,
            "--",
            python,
            "-c",
            "import sys; open(sys.argv[1]).close()",
            FAKE_GITALY,
        ],
        capture_output=True,
        check=False,
        cwd="/",
    )
    return python if probe.returncode == 0 else None


@pytest.fixture
def node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to the git user and dropping privileges need root")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no unprivileged account `nobody` to stand for the git user")
    python = system_python_for("nobody")
    if python is None:
        pytest.skip("no python3 in /usr/bin that `nobody` can run the gitaly stand-in with")
    hook = install_program(str(tmp_path / "opt" / "codo-release"))
    base = tempfile.mkdtemp(prefix="codo-sync-hooks-")
    os.chmod(base, 0o755)
    try:
        yield GitalyNode(base, hook, python)
    finally:
        shutil.rmtree(base)


# --- gitaly ----------------------------------------------------------------------------------


def test_gitaly_first_apply_sends_each_project_once_and_keeps_its_own_hooks(node):
    web, dbtt = node.repo(1), node.repo(2)
    own = node.own_hook(web)
    projects = [node.project("ops/web", 1), node.project("ops/dbtt", 2)]
    rc, report, stderr = run_sync("apply", node.want("gitaly", projects))
    assert rc == 0, (report, stderr)
    assert report["changed"] is True and report["sends"] == ["ops/web", "ops/dbtt"]
    calls = node.calls()
    assert [(c["repository"], c["storage"], c["outcome"]) for c in calls] == [
        (relative(1), "default", "set"),
        (relative(2), "default", "set"),
    ]
    assert [d.split(" (")[0] for d in report["done"]] == ["sent ops/web", "sent ops/dbtt"]
    with open(own, "rb") as handle:
        assert handle.read() == OWN_HOOK
    assert mode_of(own) == 0o755 and owner_of(own) == (node.uid, node.gid)
    node.installed(web, projects[0])
    node.installed(dbtt, projects[1])


def test_gitaly_never_sends_an_archive_that_is_not_rooted_at_custom_hooks(node):
    """The wipe trap (tests/test_fake_gitaly.py shows it): every entry sent is under custom_hooks/."""
    web = node.repo(1)
    node.own_hook(web)
    node.own_hook(web, "pre-receive.d/site-check")
    rc, report, _ = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))
    assert rc == 0, report
    (call,) = node.calls()
    assert call["entries"][0] == "custom_hooks/"
    assert all(entry.startswith("custom_hooks/") for entry in call["entries"])
    assert "custom_hooks/update" in call["entries"]
    assert "custom_hooks/pre-receive.d/site-check" in call["entries"]
    assert "custom_hooks/pre-receive.d/codo-release" in call["entries"]


def test_gitaly_second_apply_sends_nothing_and_changes_nothing(node):
    web = node.repo(1)
    node.own_hook(web)
    want = node.want("gitaly", [node.project("ops/web", 1)])
    assert run_sync("apply", want)[0] == 0
    before = snapshot(os.path.join(web, "custom_hooks"))
    rc, report, _ = run_sync("apply", want)
    assert rc == 0, report
    assert report["changed"] is False and report["sends"] == [] and report["done"] == []
    assert len(node.calls()) == 1
    assert snapshot(os.path.join(web, "custom_hooks")) == before


def test_gitaly_check_lists_what_it_would_send_and_changes_nothing(node):
    web, dbtt = node.repo(1), node.repo(2)
    node.own_hook(web)
    want = node.want("gitaly", [node.project("ops/web", 1), node.project("ops/dbtt", 2)])
    before = snapshot(node.storage)
    rc, report, _ = run_sync("apply", want, "--check")
    assert rc == 0, report
    assert report["sends"] == ["ops/web", "ops/dbtt"] and report["done"] == []
    assert os.path.join(web, "custom_hooks", "post-receive.d", "codo-release") in report["links"]
    assert os.path.join(dbtt, "custom_hooks", "codo-release.json") in [
        c["dest"] for c in report["configs"]
    ]
    assert node.calls() == []
    assert snapshot(node.storage) == before
    rc, planned, _ = run_sync("plan", want)
    assert rc == 0 and planned["sends"] == report["sends"] and planned["links"] == report["links"]
    assert snapshot(node.storage) == before


def test_gitaly_leaves_a_project_in_another_storage_to_its_own_node(node):
    node.repo(1)
    elsewhere = node.project("ops/far", 3, storage="storage-2")
    want = node.want("gitaly", [node.project("ops/web", 1), elsewhere])
    rc, report, _ = run_sync("apply", want)
    assert rc == 0, report
    assert report["elsewhere"] == ["ops/far"] and report["sends"] == ["ops/web"]
    assert report["missing_repos"] == []
    assert [c["repository"] for c in node.calls()] == [relative(1)]


def test_gitaly_state_absent_removes_our_entries_and_keeps_the_projects_hook(node):
    web = node.repo(1)
    own = node.own_hook(web)
    assert run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))[0] == 0
    want = node.want("gitaly", [node.project("ops/web", 1, state="absent")])
    rc, report, _ = run_sync("apply", want)
    assert rc == 0, report
    assert report["sends"] == ["ops/web"] and len(node.calls()) == 2
    assert node.calls()[-1]["outcome"] == "set"
    assert sorted(os.listdir(os.path.join(web, "custom_hooks"))) == ["update"]
    with open(own, "rb") as handle:
        assert handle.read() == OWN_HOOK
    assert mode_of(own) == 0o755
    rc, again, _ = run_sync("apply", want)
    assert rc == 0 and again["changed"] is False and len(node.calls()) == 2


def test_a_failing_gitaly_stops_with_one_line_naming_the_project(node):
    for project_id in (1, 2, 3):
        node.repo(project_id)
    node.gitaly = node.script(
        "gitaly-failing",
        'case " $* " in *" {} "*) echo "rpc error: code = Unavailable desc = storage on fire" >&2; '
        "exit 1;; esac\n"
        'exec {} {} "$@"\n'.format(relative(2), node.python, FAKE_GITALY),
    )
    projects = [
        node.project("ops/one", 1),
        node.project("ops/two", 2),
        node.project("ops/three", 3),
    ]
    rc, report, _ = run_sync("apply", node.want("gitaly", projects))
    assert rc == 1
    assert "\n" not in report["msg"]
    assert "ops/two" in report["msg"] and "storage on fire" in report["msg"]
    assert [d.split(" (")[0] for d in report["done"]] == ["sent ops/one"]
    assert report["changed"] is True
    assert [c["repository"] for c in node.calls()] == [relative(1)]
    assert not os.path.lexists(os.path.join(node.storage, relative(3), "custom_hooks"))


def test_an_unknown_gitaly_storage_fails_naming_the_project(node):
    """Gitaly's config names a storage the `gitaly` command's own config does not have."""
    node.repo(1)
    other = os.path.join(node.base, "gitaly", "other.toml")
    with open(other, "w", encoding="utf-8") as handle:
        handle.write(
            '[logging]\ndir = "{}"\n\n[[storage]]\nname = "nope"\npath = "{}"\n'.format(
                node.log_dir, node.storage
            )
        )
    node.gitaly = node.script(
        "gitaly-other-config",
        # Same storages for sync_hooks, another config for the command: --storage default is unknown.
        'for a; do shift; [ "$a" = "{}" ] && a="{}"; set -- "$@" "$a"; done\nexec {} {} "$@"\n'.format(
            node.config, other, node.python, FAKE_GITALY
        ),
    )
    rc, report, _ = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))
    assert rc == 1 and "\n" not in report["msg"]
    assert "ops/web" in report["msg"] and "no such storage" in report["msg"]
    assert report["done"] == []
    assert [c["outcome"] for c in node.calls()] == ["error"]


def test_a_config_the_hooks_check_config_refuses_sends_nothing(node):
    web = node.repo(1)
    node.own_hook(web)
    before = snapshot(node.storage)
    bad = node.project("ops/web", 1, hosts={"1": ["not-an-address"]})
    rc, report, _ = run_sync("apply", node.want("gitaly", [bad]))
    assert rc == 1
    assert "check-config" in report["msg"] and "not-an-address" in report["msg"]
    assert report["done"] == [] and report["changed"] is False
    assert node.calls() == []
    assert snapshot(node.storage) == before


def test_a_missing_repository_or_a_file_in_the_way_stops_apply_before_anything_is_sent(node):
    web = node.repo(1)
    in_the_way = node.own_hook(web, "post-receive.d/codo-release")  # not a link: not ours
    before = snapshot(node.storage)
    projects = [node.project("ops/web", 1), node.project("ops/gone", 9)]
    rc, report, _ = run_sync("apply", node.want("gitaly", projects))
    assert rc == 1 and "nothing was changed" in report["msg"]
    assert report["missing_repos"] == [
        {"path": "ops/gone", "repo": os.path.join(node.storage, relative(9))}
    ]
    assert [(c["path"], c["file"], c["is"]) for c in report["conflicts"]] == [
        ("ops/web", in_the_way, "file")
    ]
    assert node.calls() == [] and snapshot(node.storage) == before


def test_gitaly_a_project_hook_with_group_write_does_not_make_apply_fail(node):
    web = node.repo(1)
    own = node.own_hook(web)
    os.chmod(own, 0o775)
    want = node.want("gitaly", [node.project("ops/web", 1)])
    rc, report, _ = run_sync("apply", want)
    assert (rc, report.get("failed")) == (0, None)
    assert [d.split(" (")[0] for d in report["done"]] == ["sent ops/web"]


def test_a_tar_that_makes_a_wiping_archive_is_refused_before_gitaly_is_called(node):
    web = node.repo(1)
    node.own_hook(web)
    before = snapshot(node.storage)
    trap = os.path.join(node.base, "trap")
    os.mkdir(trap)
    tar = shutil.which("tar")
    with open(os.path.join(trap, "tar"), "w", encoding="utf-8") as handle:
        # `tar -cf X -C WORK custom_hooks` made as `tar -C WORK -cf X .`: entries ./custom_hooks/...
        handle.write(
            '#!/bin/sh\n[ "$1" = -cf ] && exec {0} -C "$4" -cf "$2" .\nexec {0} "$@"\n'.format(tar)
        )
    os.chmod(os.path.join(trap, "tar"), 0o755)
    env = dict(os.environ, PATH=trap + os.pathsep + os.environ["PATH"])
    rc, report, _ = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]), env=env)
    assert rc == 1
    assert "not rooted at custom_hooks/" in report["msg"] and "ops/web" in report["msg"]
    assert report["done"] == []
    assert node.calls() == []
    assert snapshot(node.storage) == before


def sender_for(tmp_path):
    """sync_hooks imported, and a GitalySender on a node of this test's own user (no root needed)
    whose `gitaly` command only records that it was called."""
    module = load_sync_hooks()
    storage = tmp_path / "storage"
    repo = storage / relative(1)
    subprocess.run(["git", "init", "--bare", "-q", str(repo)], check=True)
    (repo / "custom_hooks").mkdir()
    (repo / "custom_hooks" / "update").write_bytes(OWN_HOOK)
    config = tmp_path / "config.toml"
    config.write_text('[[storage]]\nname = "default"\npath = "{}"\n'.format(storage))
    gitaly = tmp_path / "gitaly"
    gitaly.write_text('#!/bin/sh\ntouch "{}"\n'.format(tmp_path / "gitaly-called"))
    gitaly.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    hook = str(tmp_path / "codo_release_hook.py")
    want = {
        "hook": hook,
        "link_name": "codo-release",
        "config_name": "codo-release.json",
        "index_name": "codo-release.projects",
        "method": "gitaly",
        "stages": list(STAGES),
        "repositories_root": str(storage),
        "global_dir": "",
        "gitaly": {"command": str(gitaly), "config": str(config), "storage": "default"},
        "all_stages": list(ALL_STAGES),
        "git_user": user,
        "git_group": group,
        "dir_mode": "0750",
        "file_owner": user,
        "file_group": group,
        "config_mode": "0640",
        "projects": [
            {
                "path": "ops/web",
                "repo": relative(1),
                "storage": None,
                "state": "present",
                "stages": list(STAGES),
                "config": base_config("https://codo.example.com", "/var/opt/codo-release", "/k"),
            }
        ],
    }
    node = module.Node(want)
    (target,), _ = node.targets()
    return module, module.GitalySender(node), target


def test_archive_of_a_work_dir_without_custom_hooks_is_refused(tmp_path):
    module, sender, target = sender_for(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(module.Refused, match="ops/web"):
        sender.archive(str(work), target)


def test_archive_not_rooted_at_custom_hooks_is_refused_and_gitaly_never_called(
    tmp_path, monkeypatch
):
    module, sender, target = sender_for(tmp_path)
    before = snapshot(target.hooks_dir)
    real_run = module.subprocess.run

    def dot_archive(argv, **kwargs):  # the trap: `tar -C WORK -cf X .`
        if argv[:2] == ["tar", "-cf"]:
            argv = ["tar", "-C", argv[4], "-cf", argv[2], "."]
        return real_run(argv, **kwargs)

    monkeypatch.setattr(module.subprocess, "run", dot_archive)
    plan = module.Plan(sender.node.want).add(target)
    assert plan.changes()
    with pytest.raises(module.Refused, match=r"ops/web is not rooted at custom_hooks/ \(\./"):
        sender.send(target, plan)
    assert not (tmp_path / "gitaly-called").exists()
    assert snapshot(target.hooks_dir) == before


# --- global ----------------------------------------------------------------------------------


def test_global_apply_installs_server_wide_and_takes_our_entries_out_of_the_projects(node):
    web, dbtt, old = node.repo(1), node.repo(2), node.repo(3)
    own = node.own_hook(web)
    projects = [node.project("ops/web", 1), node.project("ops/dbtt", 2), node.project("ops/old", 3)]
    assert run_sync("apply", node.want("gitaly", projects))[0] == 0
    projects[2] = node.project("ops/old", 3, state="absent")
    rc, report, _ = run_sync("apply", node.want("global", projects))
    assert rc == 0, report
    assert report["changed"] is True and report["sends"] == []
    group = (0, node.gid)
    for stage in STAGES:
        link = os.path.join(node.global_dir, stage + ".d", "codo-release")
        assert os.readlink(link) == node.hook and owner_of(link) == group
        assert owner_of(os.path.dirname(link)) == group and mode_of(os.path.dirname(link)) == 0o750
    assert not os.path.lexists(os.path.join(node.global_dir, "update.d"))
    config = os.path.join(node.global_dir, "codo-release.json")
    index = os.path.join(node.global_dir, "codo-release.projects")
    with open(config, encoding="utf-8") as handle:
        written = json.load(handle)
    assert written["projects"] == {
        "ops/web": projects[0]["config"]["projects"]["ops/web"],
        "ops/dbtt": projects[1]["config"]["projects"]["ops/dbtt"],
    }
    assert written["codo"] == projects[0]["config"]["codo"]
    with open(index, encoding="utf-8") as handle:
        assert handle.read() == "ops/dbtt\nops/web\n"
    for path in (config, index):
        assert owner_of(path) == group and mode_of(path) == 0o640
    assert sorted(os.listdir(os.path.join(web, "custom_hooks"))) == ["update"]
    with open(own, "rb") as handle:
        assert handle.read() == OWN_HOOK
    assert not os.path.lexists(os.path.join(dbtt, "custom_hooks"))
    assert not os.path.lexists(os.path.join(old, "custom_hooks"))
    assert len(node.calls()) == 3  # the first, gitaly, install only
    rc, again, _ = run_sync("apply", node.want("global", projects))
    assert rc == 0 and again["changed"] is False and again["done"] == []


def test_global_without_custom_hooks_dir_in_gitalys_config_says_to_set_it_in_gitlab_rb(node):
    node.repo(1)
    node.write_config(custom_hooks_dir=False)
    rc, report, _ = run_sync("apply", node.want("global", [node.project("ops/web", 1)]))
    assert rc == 1 and report["changed"] is False
    (error,) = report["errors"]
    assert "\n" not in error and "gitlab.rb" in error and "custom_hooks_dir" in error
    assert not os.path.lexists(node.global_dir)


def test_global_dir_other_than_gitalys_is_an_error(node):
    node.repo(1)
    other = os.path.join(node.base, "elsewhere", "custom_hooks")
    want = node.want("global", [node.project("ops/web", 1)], global_dir=other)
    rc, report, _ = run_sync("apply", want)
    assert rc == 1 and report["changed"] is False
    (error,) = report["errors"]
    assert other in error and node.global_dir in error
    assert not os.path.lexists(node.global_dir) and not os.path.lexists(other)


def test_switching_back_to_gitaly_puts_the_project_hooks_back_and_empties_the_server_wide_dir(node):
    web = node.repo(1)
    own = node.own_hook(web)
    projects = [node.project("ops/web", 1)]
    assert run_sync("apply", node.want("global", projects))[0] == 0
    assert os.path.lexists(os.path.join(node.global_dir, "codo-release.projects"))
    rc, report, _ = run_sync("apply", node.want("gitaly", projects))
    assert rc == 0, report
    assert report["sends"] == ["ops/web"]
    assert os.listdir(node.global_dir) == []
    node.installed(web, projects[0])
    with open(own, "rb") as handle:
        assert handle.read() == OWN_HOOK
    rc, again, _ = run_sync("apply", node.want("gitaly", projects))
    assert rc == 0 and again["changed"] is False


# --- files -----------------------------------------------------------------------------------


def test_files_links_are_roots_and_the_config_0640_in_the_git_group(node):
    web = node.repo(1)
    project = node.project("ops/web", 1)
    rc, report, _ = run_sync("apply", node.want("files", [project]))
    assert rc == 0, report
    assert report["sends"] == [] and node.calls() == []
    hooks = os.path.join(web, "custom_hooks")
    assert owner_of(hooks) == (node.uid, node.gid) and mode_of(hooks) == 0o750
    for stage in STAGES:
        link = os.path.join(hooks, stage + ".d", "codo-release")
        assert os.readlink(link) == node.hook and owner_of(link) == (0, node.gid)
    config = os.path.join(hooks, "codo-release.json")
    assert owner_of(config) == (0, node.gid) and mode_of(config) == 0o640
    rc, again, _ = run_sync("apply", node.want("files", [project]))
    assert rc == 0 and again["changed"] is False


def test_files_links_to_the_retired_install_dir_are_pointed_at_the_hook_or_removed(node):
    # An older release of the role installed the hook in /opt/codo-hooks (tasks/migrate.yml).
    web, old = node.repo(1), node.repo(2)
    retired = "/opt/codo-hooks/codo_release_hook.py"
    projects = [node.project("ops/web", 1), node.project("ops/old", 2)]
    assert run_sync("apply", node.want("files", projects))[0] == 0
    for repo in (web, old):
        for stage in STAGES:
            link = os.path.join(repo, "custom_hooks", stage + ".d", "codo-release")
            os.unlink(link)
            os.symlink(retired, link)
    projects[1] = node.project("ops/old", 2, state="absent")
    want = dict(node.want("files", projects), retired_hooks=[retired])
    rc, report, _ = run_sync("apply", want)
    assert rc == 0, report
    for stage in STAGES:
        assert os.readlink(os.path.join(web, "custom_hooks", stage + ".d", "codo-release")) == node.hook
    assert not os.path.lexists(os.path.join(old, "custom_hooks"))
    rc, again, _ = run_sync("apply", want)
    assert rc == 0 and again["changed"] is False


# --- what the module refuses to touch ------------------------------------------------------


@pytest.mark.parametrize("state", ["present", "absent"])
def test_a_custom_hooks_that_is_a_link_is_a_conflict_never_written_or_cleaned_through(node, state):
    web, other = node.repo(1), node.repo(2)
    own = node.own_hook(other, "post-receive.d/codo-release")  # another project's, a file
    os.symlink(os.path.join(other, "custom_hooks"), os.path.join(web, "custom_hooks"))
    before = snapshot(node.storage)
    rc, report, _ = run_sync("apply", node.want("files", [node.project("ops/web", 1, state=state)]))
    assert rc == 1 and "nothing was changed" in report["msg"]
    assert [(c["path"], c["file"], c["is"]) for c in report["conflicts"]] == [
        ("ops/web", os.path.join(web, "custom_hooks"), "link")
    ]
    assert "ops/web" in report["msg"] and "\n" not in report["msg"]
    assert snapshot(node.storage) == before
    with open(own, "rb") as handle:
        assert handle.read() == OWN_HOOK


@pytest.mark.parametrize("state", ["present", "absent"])
def test_a_stage_d_that_is_a_file_is_a_named_conflict(node, state):
    web = node.repo(1)
    in_the_way = node.own_hook(web, "post-receive.d")
    before = snapshot(node.storage)
    rc, report, stderr = run_sync(
        "apply", node.want("files", [node.project("ops/web", 1, state=state)])
    )
    assert rc == 1, report
    assert "Traceback" not in stderr
    assert ("ops/web", in_the_way, "file") in [
        (c["path"], c["file"], c["is"]) for c in report["conflicts"]
    ]
    assert in_the_way in report["msg"] and "nothing was changed" in report["msg"]
    assert snapshot(node.storage) == before


@pytest.mark.parametrize(
    "path",
    ["ops/web\nevil", "ops/we\x1bb", "web", "ops/../web", "ops/-web", "ops/web.git", "ops//web", "ops/w b"],
)
def test_a_project_path_outside_gitlabs_rules_is_refused_in_one_line(node, path):
    node.repo(1)
    before = snapshot(node.storage)
    project = node.project("ops/web", 1)
    project["path"] = path
    rc, report, _ = run_sync("apply", node.want("files", [project]))
    assert rc == 1 and report["msg"].startswith("codo_hooks_projects: refused")
    assert "\n" not in report["msg"] and json.dumps(path) in report["msg"]
    assert snapshot(node.storage) == before


def test_check_mode_diff_shows_each_config_before_and_after_and_each_link_added(node):
    web = node.repo(1)
    assert run_sync("apply", node.want("files", [node.project("ops/web", 1)]))[0] == 0
    before = snapshot(node.storage)
    changed = node.project("ops/web", 1, template_id=33)
    rc, report, _ = run_sync("apply", node.want("files", [changed]), "--check")
    assert rc == 0 and report["changed"] is True and report["done"] == []
    config = os.path.join(web, "custom_hooks", "codo-release.json")
    (diff,) = report["diff"]
    assert diff["before_header"] == diff["after_header"] == config
    assert '"template_id": 32' in diff["before"] and '"template_id": 33' in diff["after"]
    assert snapshot(node.storage) == before
    os.unlink(os.path.join(web, "custom_hooks", "pre-receive.d", "codo-release"))
    rc, report, _ = run_sync("apply", node.want("files", [changed]), "--check")
    link = os.path.join(web, "custom_hooks", "pre-receive.d", "codo-release")
    assert {"before_header": link, "after_header": link,
            "before": {"path": link, "state": "absent"},
            "after": {"path": link, "state": "link", "src": node.hook}} in report["diff"]


# --- what the git user may do while the module runs --------------------------------------


def test_a_chain_directory_swapped_for_a_link_during_check_config_is_never_chowned_through(node):
    # The git user owns custom_hooks: it gives pre-receive.d another mode and deletes the config,
    # so the next run fixes the one and checks the other with the hook's check-config; while
    # that runs, it puts a link to root's file where the directory was.
    web = node.repo(1)
    hooks = os.path.join(web, "custom_hooks")
    chain = os.path.join(hooks, "pre-receive.d")
    victim = os.path.join(node.base, "shadow")  # stands for /etc/shadow
    with open(victim, "w", encoding="utf-8") as handle:
        handle.write("root:secret\n")
    os.chmod(victim, 0o600)
    trigger = os.path.join(node.base, "swap-now")
    swapping_hook = node.script(
        "swapping-hook",
        'if [ -e {t} ] && [ -d {c} ]; then mv {c} {c}.away && ln -s {v} {c}; fi\nexec {h} "$@"\n'.format(
            t=trigger, c=chain, v=victim, h=node.hook
        ),
    )
    want = dict(node.want("files", [node.project("ops/web", 1)]), hook=swapping_hook)
    assert run_sync("apply", want)[0] == 0
    os.chmod(chain, 0o755)
    os.unlink(os.path.join(hooks, "codo-release.json"))
    open(trigger, "w").close()
    rc, report, stderr = run_sync("apply", want)
    assert (owner_of(victim), mode_of(victim)) == ((0, 0), 0o600)
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert chain in report["msg"] and "\n" not in report["msg"], report["msg"]
    assert "no longer a directory" in report["msg"]


def test_gitaly_a_fifo_the_git_user_left_in_custom_hooks_stops_apply_in_one_line(node):
    web = node.repo(1)
    node.own_hook(web)
    fifo = os.path.join(web, "custom_hooks", "pipe")
    os.mkfifo(fifo)
    os.chown(fifo, node.uid, node.gid)
    rc, report, stderr = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert "ops/web" in report["msg"] and fifo in report["msg"] and "\n" not in report["msg"], report["msg"]
    assert "named pipe" in report["msg"] and node.calls() == []


def test_gitaly_copies_custom_hooks_with_the_git_users_rights_so_a_root_only_file_is_never_sent(node):
    # The copy sent with `gitaly hooks set` must read custom_hooks as the git user: made as root,
    # the git user could swap a file for a link to /etc/shadow between the copy's check and its
    # read and get root's file back, git-owned, in custom_hooks. A race is not testable; a root-only
    # file placed in custom_hooks is what root can read and the git user cannot.
    web = node.repo(1)
    node.own_hook(web)
    secret = os.path.join(web, "custom_hooks", "secret")
    with open(secret, "w", encoding="utf-8") as handle:
        handle.write("root:only-root-reads-this\n")
    os.chmod(secret, 0o600)
    before = snapshot(node.storage)
    rc, report, stderr = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert node.calls() == [] and snapshot(node.storage) == before
    msg = report["msg"]
    assert "ops/web" in msg and "secret" in msg and "\n" not in msg, msg
    assert "Permission denied" in msg and "readable by " + node.user in msg, msg


def test_gitaly_a_socket_the_git_user_left_in_custom_hooks_stops_apply_in_one_line(node):
    web = node.repo(1)
    node.own_hook(web)
    with socket.socket(socket.AF_UNIX) as listening:  # the full path is too long for bind
        cwd = os.getcwd()
        os.chdir(os.path.join(web, "custom_hooks"))
        try:
            listening.bind("sock")
        finally:
            os.chdir(cwd)
        os.chown(os.path.join(web, "custom_hooks", "sock"), node.uid, node.gid)
        before = snapshot(node.storage)
        rc, report, stderr = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]))
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert "ops/web" in report["msg"] and "sock" in report["msg"] and "\n" not in report["msg"]
    assert node.calls() == []
    assert snapshot(node.storage) == before


@pytest.mark.parametrize("escape", ["through a link", "with ..", "absolute"])
def test_gitaly_the_copy_the_git_user_shapes_is_never_unpacked_outside_the_staging_dir(node, escape):
    # The copy is read by a `tar` that runs as the git user, who may bend what it writes (same
    # user: ptrace). Root unpacks it: nothing may land outside, as root, whatever the entries.
    web = node.repo(1)
    node.own_hook(web)
    outside = os.path.join(node.base, "outside")
    os.mkdir(outside)
    crafted = os.path.join(node.base, "crafted.tar")
    with tarfile.open(crafted, "w", format=tarfile.GNU_FORMAT) as archive:
        top = tarfile.TarInfo("./")
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(top)
        name = {
            "through a link": "./esc/planted",
            "with ..": "./" + "../" * 12 + outside.lstrip("/") + "/planted",
            "absolute": os.path.join(outside, "planted"),
        }[escape]
        if escape == "through a link":
            link = tarfile.TarInfo("./esc")
            link.type, link.linkname = tarfile.SYMTYPE, outside
            archive.addfile(link)
        body = b"#!/bin/sh\necho planted by git, written by root\n"
        planted = tarfile.TarInfo(name)
        planted.size, planted.mode = len(body), 0o4755
        archive.addfile(planted, io.BytesIO(body))
    os.chmod(crafted, 0o644)
    trap = os.path.join(node.base, "trap")
    os.mkdir(trap)
    with open(os.path.join(trap, "tar"), "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\n[ "$1" = --create ] && exec cat {}\nexec {} "$@"\n'.format(
            crafted, shutil.which("tar")))
    os.chmod(os.path.join(trap, "tar"), 0o755)
    before = snapshot(node.storage)
    env = dict(os.environ, PATH=trap + os.pathsep + os.environ["PATH"])
    rc, report, stderr = run_sync("apply", node.want("gitaly", [node.project("ops/web", 1)]), env=env)
    assert os.listdir(outside) == []
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert "ops/web" in report["msg"] and "planted" in report["msg"] and "\n" not in report["msg"]
    assert node.calls() == [] and snapshot(node.storage) == before
