"""The codo_hooks_status module (roles/codo_hooks/library/) run the way Ansible runs it, on an
install codo_hooks_projects made: one node's program and config digests, what differs from the
inventory, and its hook's own `status --json`; read-only. The files and global methods, with this
test's own user as the git user, in a storage under tmp_path."""

import datetime
import json
import os
import re

import pytest
from ansible_module import role_module_utils, run_module
from conftest import FILES, PROGRAM_MODULES, base_config, install_program
from test_projects_playbook import hashed, snapshot

role_module_utils()
from ansible.module_utils.codo_hooks_core import digest  # noqa: E402

PATHS = ("ops/dbtt", "ops/web")


def checkout_program():
    modules = []
    for name in PROGRAM_MODULES:
        with open(os.path.join(FILES, name), "rb") as module:
            modules.append((name, module.read()))
    with open(os.path.join(FILES, "codo_release_hook.py"), "rb") as entry:
        return digest.program("codo_release_hook.py", entry.read(), modules)


class Node:
    """A GitLab-like node under tmp_path: the installed program, two projects, a spool."""

    def __init__(self, tmp_path, state_dir=None):
        self.tmp = tmp_path
        tmp_path.mkdir(exist_ok=True)
        self.storage = tmp_path / "storage"
        self.install_dir = tmp_path / "opt"
        self.state_dir = state_dir or tmp_path / "var"
        self.state_dir.mkdir(mode=0o750, exist_ok=True)
        self.hook = install_program(str(self.install_dir))
        for number, _ in enumerate(PATHS, 1):
            (self.storage / hashed(number)).mkdir(parents=True)

    def args(self, **extra):
        config = base_config(
            "https://codo.example.com", str(self.state_dir), "/etc/codo-hooks/auth_key"
        )
        entry = config["projects"]["ops/dbtt"]
        args = {
            "projects": [dict(entry, path=path, id=number) for number, path in enumerate(PATHS, 1)],
            "hook": self.hook,
            "codo": config["codo"],
            "settings": {"state_dir": str(self.state_dir), "on_failure": "spool"},
            "repositories_root": str(self.storage),
            "git_user": "root",
            "git_group": "root",
        }
        return dict(args, **extra)

    def install(self, **extra):
        rc, result, _ = run_module("codo_hooks_projects", self.args(**extra))
        assert rc == 0, result

    def status(self, check=False, **extra):
        args = dict(
            self.args(**extra),
            install_dir=str(self.install_dir),
            state_dir=str(self.state_dir),
            modules=PROGRAM_MODULES,
        )
        rc, result, stderr = run_module("codo_hooks_status", args, check=check)
        assert rc == 0, (result, stderr)
        assert result["changed"] is False
        return result

    def hooks(self, number):
        return self.storage / hashed(number) / "custom_hooks"


@pytest.fixture
def node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip(
            "the configs are root-owned and status runs as the git user, as on a GitLab node"
        )
    made = Node(tmp_path)
    made.install()
    return made


def test_a_node_as_the_inventory_gives_it_matches_and_nothing_changes(node):
    before = snapshot(str(node.tmp))
    result = node.status(check=True)
    assert result["configs"] == result["expected_configs"] and result["configs_count"] == 2
    assert (result["projects"], result["hooked"], result["differences"]) == (2, 2, 0)
    assert result["program"] == checkout_program() and result["program_missing"] == []
    assert result["errors"] == [] and result["status_error"] is None
    assert result["spool"] == dict.fromkeys(
        ("pending", "uncertain", "failed", "inflight", "sent", "ignored"), 0
    )
    # The projects are counted, not echoed back (ansible-core 2.21 leaves invocation out entirely).
    echoed = result.get("invocation", {}).get("module_args", {}).get("projects", "(2 projects)")
    assert echoed == "(2 projects)"
    assert snapshot(str(node.tmp)) == before


def test_a_project_whose_config_was_left_behind_is_named_and_moves_the_digest(node):
    matching = node.status()
    config = node.hooks(2) / "codo-release.json"
    config.write_text(config.read_text().replace('"template_id": 32', '"template_id": 31'))
    result = node.status()
    assert result["differing"] == ["ops/web: codo-release.json differs from the inventory"]
    assert result["configs"] != matching["configs"]
    assert result["expected_configs"] == matching["expected_configs"]
    assert result["hooked"] == 1


def test_a_missing_link_and_a_fifo_for_a_config_are_named_without_reading_it(node):
    (node.hooks(1) / "post-receive.d" / "codo-release").unlink()
    config = node.hooks(2) / "codo-release.json"
    config.unlink()
    os.mkfifo(str(config))
    result = node.status()
    assert result["differing"] == [
        "ops/dbtt: post-receive not linked to the hook",
        "ops/web: codo-release.json is not a regular file of at most 64 MiB",
    ]
    assert result["configs_count"] == 1


def test_replicas_with_the_same_projects_in_other_storages_digest_alike(node, tmp_path):
    other = Node(tmp_path / "replica", state_dir=node.state_dir)
    other.install()
    assert other.status()["configs"] == node.status()["configs"]


def test_the_program_digest_ignores_the_interpreter_line_and_sees_any_other_change(node):
    entry = node.install_dir / "codo_release_hook.py"
    _, rest = entry.read_text().split("\n", 1)
    entry.write_text("#!/usr/libexec/platform-python\n" + rest)
    assert node.status()["program"] == checkout_program()
    module = node.install_dir / "codo_release" / "platform.py"
    module.write_text(module.read_text() + "# an older copy\n")
    assert node.status()["program"] != checkout_program()
    module.unlink()
    result = node.status()
    assert result["program"] is None and result["program_missing"] == [str(module)]


def spool_entry(state_dir, state, created, number):
    directory = state_dir / "spool" / state
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    # The id starts with the time it was journaled, in microseconds, as the hook makes it.
    when = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    entry_id = "{:016d}-1-{:06x}".format(int(when * 1e6) + number, number)
    entry = {
        "id": entry_id,
        "old": "0" * 40,
        "new": "1" * 40,
        "ref": "refs/tags/release-dbtt-{}".format(number),
        "tag": "release-dbtt-{}".format(number),
        "project": "ops/dbtt",
        "created": created,
        "updated": created,
        "attempts": 1,
        "state": state,
    }
    path = directory / (entry_id + ".json")
    path.write_text(json.dumps(entry))
    path.chmod(0o640)


def test_the_spool_is_counted_and_the_oldest_waiting_age_comes_from_the_entries(node):
    spool_entry(node.state_dir, "pending", "2020-01-01T00:00:00+0000", 1)
    spool_entry(node.state_dir, "uncertain", "2021-01-01T00:00:00+0000", 2)
    spool_entry(node.state_dir, "failed", "2019-01-01T00:00:00+0000", 3)
    result = node.status()
    assert [result["spool"][state] for state in ("pending", "uncertain", "failed")] == [1, 1, 1]
    # Pending and uncertain are waiting to be sent; a failed one waits for a person.
    assert result["oldest_s"] == pytest.approx(result["now"] - 1577836800, abs=5)
    # The hook's own figures: its version; no key expiry, for no entry names a config.
    source = open(os.path.join(FILES, "codo_release", "__init__.py"), encoding="utf-8").read()
    assert result["version"] == re.search(r'^VERSION = "([^"]+)"', source, re.M).group(1)
    assert result["key_expires"] is None


def test_the_hooks_own_figures_win_when_it_gives_them(node):
    entry = node.install_dir / "codo_release_hook.py"
    entry.write_text(
        "#!/bin/sh\n"
        'echo \'{"counts": {"pending": 2}, "entries": [], "ignored": {},'
        ' "version": "1.4.0", "key_expires": 4102444800, "last_run": 1700000000,'
        ' "oldest_pending_s": 30, "oldest_uncertain_s": 90, "last_flush": null}\'\n'
    )
    result = node.status()
    assert (result["version"], result["key_expires"], result["oldest_s"]) == (
        "1.4.0",
        4102444800,
        90,
    )
    assert (result["last_run"], result["last_run_from"]) == (1700000000, "hook")
    assert result["spool"]["pending"] == 2 and result["last_flush"] is None


@pytest.mark.parametrize(
    "script, why",
    [
        ("echo 'Traceback: boom'; exit 3", "status exited 3: Traceback: boom"),
        ("echo not json", "printed something that is not JSON"),
        ('echo \'{"counts": {"pending": "many"}}\'', "a count that is not a number"),
    ],
)
def test_a_status_that_fails_is_one_line_and_the_rest_is_still_read(node, script, why):
    (node.install_dir / "codo_release_hook.py").write_text("#!/bin/sh\n" + script + "\n")
    result = node.status()
    assert why in result["status_error"] and "\n" not in result["status_error"]
    assert result["spool"] is None and result["configs"] == result["expected_configs"]


def test_a_missing_git_user_is_an_error_line_not_a_failed_task(node):
    result = node.status(git_user="no-such-user-codo")
    assert result["errors"] and "no-such-user-codo" in result["errors"][0]
    assert result["status_error"] == "no git user to run status as"


def test_the_global_method_reads_the_server_wide_config_and_index(node, tmp_path):
    hooks_dir = tmp_path / "gitaly-hooks"
    hooks_dir.mkdir()
    gitaly = tmp_path / "config.toml"
    gitaly.write_text(
        '[hooks]\ncustom_hooks_dir = "{}"\n\n[[storage]]\nname = "default"\npath = "{}"\n'.format(
            hooks_dir, node.storage
        )
    )
    node.install(method="global", gitaly_config=str(gitaly))
    result = node.status(method="global", gitaly_config=str(gitaly))
    assert (result["configs_count"], result["projects"], result["hooked"]) == (2, 2, 2)
    assert result["differences"] == 0
    assert result["configs"] == result["expected_configs"]
    (hooks_dir / "codo-release.projects").write_text("ops/dbtt\n")
    assert node.status(method="global", gitaly_config=str(gitaly))["differing"] == [
        "(server-wide): codo-release.projects differs from the inventory"
    ]


def test_a_project_the_inventory_removes_that_still_has_the_hook_is_named(node):
    args = node.args()
    args["projects"][1] = {"path": "ops/web", "id": 2, "state": "absent"}
    result = node.status(projects=args["projects"])
    assert result["projects"] == 1
    assert result["differing"] == [
        "ops/web: still has codo-release.json, post-receive.d/codo-release, "
        "pre-receive.d/codo-release (the inventory removes the hook there)"
    ]
