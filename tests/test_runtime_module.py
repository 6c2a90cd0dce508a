"""The codo_hooks_runtime module (roles/codo_hooks/library/) run the way Ansible runs it: the hook
program, its directories and the flush schedule in one call, only what differs, nothing in check mode."""

import grp
import os
import pwd
import stat
import sys

import pytest
from ansible_module import run_module

ENTRY = "#!/usr/bin/env python3\nimport codo_release\n"
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
        "modules": {"codo_release.py": module},
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
    assert entry.read_text() == "#!" + sys.executable + "\nimport codo_release\n"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert any(name.startswith("codo_release.") for name in os.listdir(base / "opt" / "__pycache__"))
    assert (base / "cron").read_text() == "* * * * * git flush\n"
    assert stat.S_IMODE((base / "var").stat().st_mode) == 0o750
    rc, again, _ = run_module("codo_hooks_runtime", args(base))
    assert rc == 0 and again["changed"] is False and again["done"] == []


def test_check_mode_says_what_would_change_and_changes_nothing(base):
    assert run_module("codo_hooks_runtime", args(base))[0] == 0
    before = sorted(os.listdir(base))
    rc, result, _ = run_module("codo_hooks_runtime", args(base, scheduler="systemd", module="VALUE = 2\n"), check=True, diff=True)
    assert rc == 0 and result["changed"] is True and result["units_changed"] is True
    assert any("codo_release.py" in line for line in result["done"])
    assert (base / "opt" / "codo_release.py").read_text() == MODULE
    assert (base / "cron").exists() and sorted(os.listdir(base)) == before
    assert "VALUE" not in str(result["diff"])  # the program's modules are not shown
