"""The codo_hooks_runtime module (roles/codo_hooks/library/) run the way Ansible runs it: the hook
program, its directories and the flush schedule in one call, only what differs, nothing in check mode."""

import grp
import os
import pwd
import stat
import subprocess
import sys

import pytest
from ansible_module import run_module

ENTRY = "#!/usr/bin/env python3\nfrom codo_release.value import VALUE\nprint(VALUE)\n"
MODULE = "VALUE = 1\n"


@pytest.fixture
def base(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the program is root-owned, as on a GitLab node")
    return tmp_path


def args(base, scheduler="cron", module=MODULE):
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return {
        "install_dir": str(base / "opt"),
        "python": sys.executable,
        "entry": {"name": "codo_release_hook.py", "source": ENTRY},
        "modules": {"codo_release/__init__.py": "", "codo_release/value.py": module},
        "obsolete": ["codo_release.py"],
        "key_dir": str(base / "etc"),
        "state_dir": str(base / "var"),
        "git_user": user,
        "git_group": group,
        "scheduler": scheduler,
        "units": [{"path": str(base / "unit.timer"), "content": "[Timer]\n"}],
        "cron_file": str(base / "cron"),
        "cron": "* * * * * git flush\n",
    }


def test_first_run_installs_everything_and_the_second_changes_nothing(base):
    rc, result, _ = run_module("codo_hooks_runtime", args(base))
    assert rc == 0 and result["changed"] is True and result["scheduler"] == "cron"
    entry = base / "opt" / "codo_release_hook.py"
    assert entry.read_text() == "#!" + sys.executable + "\n" + ENTRY.split("\n", 1)[1]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    package = base / "opt" / "codo_release"
    info = package.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o755)
    cache = os.listdir(package / "__pycache__")
    assert any(name.startswith("value.") for name in cache)
    assert any(name.startswith("__init__.") for name in cache)
    assert subprocess.run([str(entry)], capture_output=True, text=True).stdout == "1\n"
    assert (base / "cron").read_text() == "* * * * * git flush\n"
    assert stat.S_IMODE((base / "var").stat().st_mode) == 0o750
    rc, again, _ = run_module("codo_hooks_runtime", args(base))
    assert rc == 0 and again["changed"] is False and again["done"] == []


def test_check_mode_says_what_would_change_and_changes_nothing(base):
    assert run_module("codo_hooks_runtime", args(base))[0] == 0
    before = sorted(os.listdir(base))
    rc, result, _ = run_module("codo_hooks_runtime", args(base, scheduler="systemd", module="VALUE = 2\n"), check=True, diff=True)
    assert rc == 0 and result["changed"] is True and result["units_changed"] is True
    assert any("codo_release/value.py" in line for line in result["done"])
    assert (base / "opt" / "codo_release" / "value.py").read_text() == MODULE
    assert (base / "cron").exists() and sorted(os.listdir(base)) == before
    assert "VALUE" not in str(result["diff"])  # the program's modules are not shown


def test_a_missing_metrics_dir_is_made_for_the_git_group_and_then_left_alone(base):
    wanted = dict(args(base), metrics_dir=str(base / "textfile"))
    rc, result, _ = run_module("codo_hooks_runtime", wanted)
    assert rc == 0 and any("textfile" in line for line in result["done"])
    info = (base / "textfile").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, os.getegid(), 0o775)
    rc, again, _ = run_module("codo_hooks_runtime", wanted)
    assert rc == 0 and again["changed"] is False


def test_an_existing_metrics_dir_the_git_user_cannot_write_fails_and_is_not_changed(base):
    nobody = pwd.getpwnam("nobody")
    textfile = base / "textfile"
    textfile.mkdir(mode=0o755)
    os.chmod(textfile, 0o755)
    group = grp.getgrgid(nobody.pw_gid).gr_name
    run = dict(args(base), metrics_dir=str(textfile), git_user="nobody", git_group=group)
    rc, result, _ = run_module("codo_hooks_runtime", run)
    assert rc != 0 and "chmod g+w" in result["msg"] and str(textfile) in result["msg"]
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o755 and textfile.stat().st_uid == 0


def test_an_existing_metrics_dir_the_git_group_may_write_is_accepted_as_it_is(base):
    textfile = base / "textfile"
    textfile.mkdir()
    os.chown(textfile, 0, os.getegid())
    os.chmod(textfile, 0o2770)
    group = grp.getgrgid(os.getegid()).gr_name  # nobody is not the owner: only the group lets it in
    run = dict(args(base), metrics_dir=str(textfile), git_user="nobody", git_group=group)
    rc, result, _ = run_module("codo_hooks_runtime", run)
    assert rc == 0 and not any("textfile" in line for line in result["done"])
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o2770


def test_an_unmanaged_key_is_copied_from_the_retired_place_and_the_retired_paths_are_named(base):
    # codo_hooks_manage_auth_key false: the key was provisioned at /etc/codo-hooks/auth_key.
    old_key = base / "old-etc" / "auth_key"
    old_key.parent.mkdir()
    old_key.write_text("the-old-key\n")
    given = dict(
        args(base),
        auth_key_file=str(base / "etc" / "auth_key"),
        auth_key_from=str(old_key),
        retired=[str(old_key), str(base / "never-there")],
    )
    rc, result, _ = run_module("codo_hooks_runtime", given, check=True, diff=True)
    assert rc == 0 and not (base / "etc").exists() and "the-old-key" not in str(result)
    rc, result, _ = run_module("codo_hooks_runtime", given)
    assert rc == 0 and result["retired_found"] == [str(old_key)]
    assert (base / "etc" / "auth_key").read_text() == "the-old-key\n"
    assert stat.S_IMODE((base / "etc" / "auth_key").stat().st_mode) == 0o600
    assert "the-old-key" not in str(result)
    (base / "etc" / "auth_key").write_text("rotated\n")
    assert run_module("codo_hooks_runtime", given)[0] == 0
    assert (base / "etc" / "auth_key").read_text() == "rotated\n"  # copied once, never over


def test_an_upgrade_from_the_single_file_program_removes_it_and_its_bytecode(base):
    opt = base / "opt"
    (opt / "__pycache__").mkdir(parents=True)
    (opt / "codo_release.py").write_text("VALUE = 0\n")
    (opt / "__pycache__" / "codo_release.cpython-36.pyc").write_bytes(b"")
    (opt / "__pycache__" / "other.cpython-36.pyc").write_bytes(b"")  # not the program's: kept
    rc, result, _ = run_module("codo_hooks_runtime", args(base), check=True, diff=True)
    assert rc == 0 and result["changed"] is True
    assert (opt / "codo_release.py").exists() and not (opt / "codo_release").exists()
    removed = [d["before_header"] for d in result["diff"] if isinstance(d["after"], dict) and d["after"]["state"] == "absent"]
    assert removed == [str(opt / "codo_release.py"), str(opt / "__pycache__" / "codo_release.cpython-36.pyc")]
    rc, result, _ = run_module("codo_hooks_runtime", args(base))
    assert rc == 0 and not (opt / "codo_release.py").exists()
    assert os.listdir(opt / "__pycache__") == ["other.cpython-36.pyc"]
    assert subprocess.run([str(opt / "codo_release_hook.py")], capture_output=True, text=True).stdout == "1\n"


def test_a_module_the_program_no_longer_has_is_removed_with_its_bytecode(base):
    given = args(base)
    given["modules"]["codo_release/gone.py"] = "GONE = 1\n"
    assert run_module("codo_hooks_runtime", given)[0] == 0
    package = base / "opt" / "codo_release"
    assert any(name.startswith("gone.") for name in os.listdir(package / "__pycache__"))
    rc, result, _ = run_module("codo_hooks_runtime", args(base))
    assert rc == 0 and any(line == "removed " + str(package / "gone.py") for line in result["done"])
    assert not (package / "gone.py").exists()
    assert not any(name.startswith("gone.") for name in os.listdir(package / "__pycache__"))
    assert run_module("codo_hooks_runtime", args(base))[1]["changed"] is False


@pytest.mark.parametrize("name", ["../escape.py", "/etc/escape.py", "codo_release/../../escape.py", ""])
def test_a_module_path_outside_the_install_dir_is_refused_before_anything_is_written(base, name):
    given = args(base)
    given["modules"][name] = "X = 1\n"
    rc, result, _ = run_module("codo_hooks_runtime", given)
    assert rc != 0 and "not a path inside install_dir" in result["msg"]
    assert not (base / "escape.py").exists() and not (base / "opt" / "codo_release").exists()
