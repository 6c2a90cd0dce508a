"""The codo_hooks_migrate module (roles/codo_hooks/library/) run the way Ansible runs it: what an
older release of the role installed under the codo-hooks names moves to the codo-release ones,
nothing lost, once; check mode moves nothing."""

import errno
import fcntl
import importlib.util
import os
import pathlib
import pwd
import shutil
import stat
import tempfile
import types

import pytest
from ansible_module import ROOT, run_module
from test_projects_playbook import snapshot

ENTRY_ID = "20260101T000000Z-abc123"


@pytest.fixture
def base():
    if os.geteuid() != 0:
        pytest.skip("the spool is the git user's and the program root's, as on a GitLab node")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no unprivileged account `nobody` to stand for the git user")
    # A directory the git user can reach, as /var/opt on a node (pytest's tmp_path is root's alone).
    top = tempfile.mkdtemp(prefix="codo-migrate-")
    os.chmod(top, 0o755)
    try:
        yield pathlib.Path(top)
    finally:
        shutil.rmtree(top)


def git_owned(path, mode):
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(path, mode)


def write(path, text, mode=0o640, git=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    if git:
        git_owned(path, mode)
    else:
        os.chmod(path, mode)
    return path


def old_layout(base):
    """What the role installed under the codo-hooks names: program, key, spool, log, cron."""
    old = base / "old"
    state = old / "var"
    for directory in [state, state / "spool", state / "spool" / "pending"]:
        os.makedirs(directory, exist_ok=True)
        git_owned(directory, 0o750)
    write(str(state / "spool" / "pending" / (ENTRY_ID + ".json")), '{"tag": "release-1"}\n')
    write(str(state / "hook.log"), '{"outcome": "spooled"}\n')
    os.makedirs(old / "etc")
    write(str(old / "etc" / "auth_key"), "the-key\n", 0o600)
    write(str(old / "opt" / "codo_release_hook.py"), "#!/usr/bin/python3\n", 0o755, git=False)
    write(str(old / "opt" / "codo_release.py"), "X = 1\n", 0o644, git=False)
    write(str(old / "opt" / "__pycache__" / "codo_release.cpython-311.pyc"), "", 0o644, git=False)
    write(str(base / "cron-old"), "* * * * * git flush\n", 0o644, git=False)
    return old


def new_layout(base):
    """What today's codo_hooks_runtime made before the migration runs: the new directories."""
    new = base / "new"
    os.makedirs(new / "var")
    git_owned(new / "var", 0o750)
    write(str(new / "etc" / "auth_key"), "the-key\n", 0o600)
    write(str(new / "opt" / "codo_release_hook.py"), "#!/usr/bin/python3\n", 0o755, git=False)
    return new


def args(base):
    old, new = base / "old", base / "new"
    return {
        "state_dir": {"old": str(old / "var"), "new": str(new / "var")},
        "auth_key_file": {"old": str(old / "etc" / "auth_key"), "new": str(new / "etc" / "auth_key")},
        "install_dir": {"old": str(old / "opt"), "new": str(new / "opt")},
        "flush_units": [str(base / "codo-migrate-test-none.timer")],
        "cron_file": str(base / "cron-old"),
    }


def test_the_spool_log_and_key_move_the_old_program_goes_and_a_second_run_does_nothing(base):
    old_layout(base)
    new = new_layout(base)
    rc, result, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0 and result["changed"] is True, result
    entry = new / "var" / "spool" / "pending" / (ENTRY_ID + ".json")
    assert entry.read_text() == '{"tag": "release-1"}\n'
    nobody = pwd.getpwnam("nobody")
    assert (os.stat(entry).st_uid, stat.S_IMODE(os.stat(entry).st_mode)) == (nobody.pw_uid, 0o640)
    spool = os.stat(new / "var" / "spool")
    assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (nobody.pw_uid, 0o750)
    assert (new / "var" / "hook.log").read_text() == '{"outcome": "spooled"}\n'
    assert (new / "etc" / "auth_key").read_text() == "the-key\n"
    assert os.listdir(base / "old") == [] and not (base / "cron-old").exists()
    assert "the-key" not in str(result)
    rc, again, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0 and again["changed"] is False and again["moved"] == again["removed"] == []


def test_check_mode_says_what_would_move_and_moves_nothing(base):
    old_layout(base)
    new_layout(base)
    before = snapshot(str(base))
    rc, result, _ = run_module("codo_hooks_migrate", args(base), check=True, diff=True)
    assert rc == 0 and result["changed"] is True
    assert any(line.endswith(ENTRY_ID + ".json") for line in result["moved"])
    assert str(base / "old" / "opt") in result["removed"] and result["kept"] == []
    assert snapshot(str(base)) == before


def test_a_name_the_new_state_directory_has_is_kept_beside_it(base):
    old_layout(base)
    new = new_layout(base)
    write(str(new / "var" / "hook.log"), '{"outcome": "sent"}\n')
    rc, result, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0, result
    assert (new / "var" / "hook.log").read_text() == '{"outcome": "sent"}\n'
    assert (new / "var" / "hook.log.from-var").read_text() == '{"outcome": "spooled"}\n'


def test_an_entry_a_hook_is_sending_stays_until_the_next_run(base):
    old = old_layout(base)
    new = new_layout(base)
    inflight = write(str(old / "var" / "spool" / "pending" / "x.json"), "{}\n")
    with open(inflight) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rc, result, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0 and any("a hook is sending it" in line for line in result["kept"])
    assert os.path.exists(inflight)
    assert (new / "var" / "spool" / "pending" / (ENTRY_ID + ".json")).exists()
    rc, result, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0 and (new / "var" / "spool" / "pending" / "x.json").exists()
    assert not (old / "var").exists()


def test_the_key_moves_when_none_is_there_and_a_file_the_role_did_not_install_stays(base):
    old = old_layout(base)
    new = new_layout(base)
    os.unlink(new / "etc" / "auth_key")
    write(str(old / "opt" / "local-notes.txt"), "mine\n", git=False)
    rc, result, _ = run_module("codo_hooks_migrate", args(base))
    assert rc == 0, result
    assert (new / "etc" / "auth_key").read_text() == "the-key\n"
    assert stat.S_IMODE(os.stat(new / "etc" / "auth_key").st_mode) == 0o600
    assert sorted(os.listdir(old / "opt")) == ["local-notes.txt"]
    assert any("did not install" in line for line in result["kept"])


def test_paths_the_inventory_kept_are_left_alone(base):
    old_layout(base)
    same = dict(args(base))
    for key in ("state_dir", "auth_key_file", "install_dir"):
        same[key] = {"old": same[key]["old"], "new": same[key]["old"]}
    same["cron_file"] = None
    before = snapshot(str(base / "old"))
    rc, result, _ = run_module("codo_hooks_migrate", same)
    assert rc == 0 and result["changed"] is False
    assert snapshot(str(base / "old")) == before


def migrate_module():
    """library/codo_hooks_migrate.py imported, to run a Migration in this process."""
    path = os.path.join(ROOT, "roles", "codo_hooks", "library", "codo_hooks_migrate.py")
    spec = importlib.util.spec_from_file_location("codo_hooks_migrate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("file_system", ["same", "other"])
def test_a_link_the_git_user_swaps_in_while_entries_move_leads_nowhere_it_could_not_write(
    base, monkeypatch, file_system
):
    # The git user owns both state directories. Just before an entry of old/var/spool is moved
    # (or, across file systems, copied), it puts a link where the entry goes: to root's
    # /etc/profile.d for a rename, to root's /etc/passwd for a copy.
    old_layout(base)
    new = new_layout(base)
    os.mkdir(new / "var" / "spool")
    git_owned(new / "var" / "spool", 0o750)
    profile_d = base / "profile.d"
    os.mkdir(profile_d, 0o755)
    passwd = write(str(base / "passwd"), "root:x:0:0::/root:/bin/sh\n", 0o644, git=False)
    evil = write(str(base / "old" / "var" / "spool" / "evil.sh"), "echo owned\n", 0o777)
    spool = str(new / "var" / "spool")
    migrate = migrate_module()
    real_rename = os.rename

    def git_user_wins_the_race(source, target, *args, **kwargs):
        if source == evil and file_system == "same":
            real_rename(spool, spool + ".away")
            os.symlink(str(profile_d), spool)
        if source == evil and file_system == "other":
            os.symlink(passwd, target)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", git_user_wins_the_race)
    migration = migrate.Migration(types.SimpleNamespace(check_mode=False))
    paths = args(base)["state_dir"]
    with pytest.raises(OSError):
        migration.state(paths["old"], paths["new"])
    monkeypatch.undo()
    assert os.listdir(profile_d) == []
    with open(passwd, encoding="utf-8") as handle:
        assert handle.read() == "root:x:0:0::/root:/bin/sh\n"
    assert stat.S_IMODE(os.stat(passwd).st_mode) == 0o644 and os.stat(passwd).st_uid == 0
    assert os.path.exists(evil) and os.geteuid() == 0 and os.getegid() == 0
