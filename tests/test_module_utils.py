"""The codo_hooks role's shared module code (roles/codo_hooks/module_utils/codo_hooks_core/config.py):
GitLab's path rules, the hashed storage path, one config holding several projects."""

import os

import pytest
from ansible_module import role_module_utils

role_module_utils()
from ansible.module_utils.codo_hooks_core import config


@pytest.mark.parametrize("path", ["ops/dbtt", "group/sub/my.project_1", "a/b-c", "_x/.y"])
def test_paths_gitlab_allows_pass(path):
    assert config.bad_path(path) is None


@pytest.mark.parametrize(
    "path, why",
    [
        ("dbtt", "namespace"),
        ("ops/-x", "not start with '-'"),
        ("ops/x.git", ".git"),
        ("ops/x.atom", ".atom"),
        ("ops/../x", "letters"),
        ("ops//x", "letters"),
        ("ops/x y", "letters"),
        ("ops/x\n", "control character"),
        ("ops/\x7fx", "control character"),
        ("", "empty"),
    ],
)
def test_paths_outside_gitlabs_rules_say_why(path, why):
    assert why in config.bad_path(path)


def test_path_errors_name_every_refused_project_in_one_line():
    line = config.path_errors(
        [{"path": "ops/ok"}, {"path": "bad"}, {"path": "ops/x", "disk_path": "a\tb"}]
    )
    assert "\n" not in line and '"bad"' in line and "ops/x disk_path" in line
    assert "ops/ok" not in line
    assert config.path_errors([{"path": "ops/ok", "storage": "default"}]) is None


def test_hashed_is_gitlabs_hashed_storage_path():
    assert config.hashed(1) == (
        "@hashed/6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b.git"
    )


def test_combined_keeps_the_first_settings_and_every_project():
    first = {"codo": {"url": "a"}, "state_dir": "/s", "projects": {"ops/a": {"x": 1}}}
    second = {"codo": {"url": "b"}, "state_dir": "/t", "projects": {"ops/b": {"x": 2}}}
    merged = config.combined([first, second])
    assert merged["codo"] == {"url": "a"} and merged["state_dir"] == "/s"
    assert merged["projects"] == {"ops/a": {"x": 1}, "ops/b": {"x": 2}}
    assert first["projects"] == {"ops/a": {"x": 1}}  # the inputs are left as they were
    assert config.combined([]) is None


def action_plugin():
    import importlib.util
    import os

    path = os.path.join(
        os.path.dirname(__file__), "..", "roles", "codo_hooks", "action_plugins", "codo_hooks_projects.py"
    )
    spec = importlib.util.spec_from_file_location("codo_hooks_projects_action", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_projects_are_checked_with_the_modules_spec_in_one_line_with_no_control_character():
    checked, why = action_plugin().checked_projects(
        [{"path": "ops/a", "state": "gone\n\x1b[2J"}, {"id": 3}]
    )
    assert checked is None and why.startswith("codo_hooks_projects: ")
    assert "\n" not in why and "\x1b" not in why and "\\x0a" in why
    assert "path" in why and "state" in why


def test_checked_projects_come_out_as_the_module_reads_them():
    checked, why = action_plugin().checked_projects([{"path": "ops/a", "id": "7"}])
    assert why is None and checked[0]["id"] == 7 and checked[0]["state"] == "present"


def test_a_config_in_custom_hooks_is_read_only_as_the_regular_file_itself(tmp_path):
    # The git user owns custom_hooks and may swap a config for a link to root's file (the key)
    # or a FIFO between the module's lstat and its read: the diff's "before" must not show it.
    from ansible.module_utils.codo_hooks_core import sync

    secret = tmp_path / "auth_key"
    secret.write_text("the-platform-key\n")
    config_file = tmp_path / "codo-release.json"
    config_file.write_text('{"projects": {}}\n')
    assert sync.read_own_text(str(config_file)) == '{"projects": {}}\n'
    link = tmp_path / "linked.json"
    link.symlink_to(secret)
    assert sync.read_own_text(str(link)) is None
    fifo = tmp_path / "fifo.json"
    os.mkfifo(str(fifo))
    assert sync.read_own_text(str(fifo)) is None  # and did not block
    assert sync.read_own_text(str(tmp_path / "missing.json")) is None
