"""The entry: stage by invocation name, and refs that are not releases cost nothing."""

import os
import shutil
import subprocess
import sys

from conftest import FILES, PROJECT, ZERO, new_tag_line


def run(path, argv=(), stdin="", **env):
    """Run a script (None: `-c pass`, the bare interpreter) with -X importtime."""
    environment = {"PATH": os.environ["PATH"], "GL_PROJECT_PATH": PROJECT}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-X", "importtime", *([path] if path else ["-c", "pass"]), *argv],
        check=False,
        input=stdin,
        env=environment,
        capture_output=True,
        text=True,
    )


def imported(result):
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_a_branch_is_dismissed_by_the_entry_alone(tmp_path):
    alone = tmp_path / "update"
    shutil.copy(os.path.join(FILES, "codo_release_hook.py"), alone)  # no module beside it: it must not be needed
    result = run(str(alone), ["refs/heads/main", "1" * 40, "2" * 40])
    assert result.returncode == 0
    assert "codo_release" not in imported(result)


def test_a_tag_deletion_is_dismissed_by_the_entry_alone(tmp_path):
    chain = tmp_path / "post-receive.d"
    chain.mkdir()
    shutil.copy(os.path.join(FILES, "codo_release_hook.py"), chain / "codo-release")
    result = run(str(chain / "codo-release"), stdin=f"{'1' * 40} {ZERO} refs/tags/release-dbtt-1\n")
    assert result.returncode == 0
    assert "codo_release" not in imported(result)


def test_tags_no_rule_can_match_import_neither_requests_nor_re_nor_json(site):
    site.link("post-receive")
    lines = "".join(new_tag_line(f"v1.{n}") + "\n" for n in range(50))
    result = run(os.path.join(site.hooks, "post-receive.d", "codo-release"), stdin=lines)
    assert result.returncode == 0
    modules = imported(result) - imported(run(None))
    assert "codo_release" in modules
    assert not modules & {"requests", "re", "json"}
    assert site.fake.requests == []


def test_a_release_push_imports_the_stages_and_none_of_the_timer_or_admin_modules(site):
    site.link("post-receive")
    result = run(
        os.path.join(site.hooks, "post-receive.d", "codo-release"),
        stdin=new_tag_line("release-dbtt-1") + "\n",
    )
    assert result.returncode == 0 and len(site.fake.tasks) == 1, result.stdout
    modules = imported(result)
    assert {"codo_release", "codo_release.stages", "codo_release.platform", "codo_release.spool"} <= modules
    timer_and_admin = {"codo_release." + name for name in ("admin", "flush", "status", "metrics")}
    assert not modules & timer_and_admin


def test_a_tag_with_a_rules_prefix_is_decided_by_the_full_regex(site):
    site.rule(1)["tag"] = r"\Arelease-dbtt-\d+\Z"
    site.write_config()
    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-x"), new_tag_line("release-dbtt-7")])
    assert [task.args["TAG"] for task in site.fake.tasks] == ["release-dbtt-7"]
    assert "release-dbtt-x" not in result.stdout


def test_a_bad_rule_regex_refuses_tags_that_may_be_releases(site):
    site.rule(1)["tag"] = r"\Arelease-dbtt-(\d+"
    site.write_config()
    result = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert result.returncode == 1
    assert "not a valid regular expression" in result.stdout and "check-config" in result.stdout


def test_stage_comes_from_the_chain_directory_name(site):
    result = site.run_hook("pre-receive", [new_tag_line("release-dbtt-$(id)")])
    assert result.returncode == 1  # pre-receive validates only...
    assert site.fake.requests == []
    ok = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert ok.returncode == 0 and site.fake.requests == []  # ...and sends nothing


def test_codo_hook_stage_overrides_the_name(site):
    result = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")], CODO_HOOK_STAGE="post-receive")
    assert "submitted as task" in result.stdout


def test_codo_hook_config_overrides_the_config_path(site, tmp_path):
    moved = tmp_path / "elsewhere.json"
    os.rename(site.config_path, moved)
    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-1")], CODO_HOOK_CONFIG=str(moved))
    assert "submitted as task" in result.stdout


def test_without_gl_project_path_a_single_project_config_stands_for_it(site):
    link = os.path.join(site.hooks, "post-receive.d", "codo-release")
    site.link("post-receive")
    result = subprocess.run(
        [link],
        check=False,
        input=new_tag_line("release-dbtt-1") + "\n",
        cwd=site.repo,
        env={"PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert "submitted as task" in result.stdout


def test_the_key_can_come_from_the_environment_for_admin_use(site):
    os.unlink(site.key_file)
    from conftest import AUTH_KEY

    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-1")], CODO_AUTH_KEY=AUTH_KEY)
    assert "submitted as task" in result.stdout


def server_wide(site, listed):
    """One config holding several projects, with the index a server-wide install writes beside it."""
    other = dict(site.config["projects"][PROJECT], git_url="git@gitlab.example.com:ops/other.git")
    site.config["projects"]["ops/other"] = other
    site.write_config()
    with open(os.path.join(site.hooks, "codo-release.projects"), "w") as index:
        index.write("".join(path + "\n" for path in listed))


def test_server_wide_a_project_missing_from_the_index_costs_no_config_read(site):
    server_wide(site, ["ops/other"])
    site.link("post-receive")
    result = run(
        os.path.join(site.hooks, "post-receive.d", "codo-release"), stdin=new_tag_line("release-dbtt-1") + "\n"
    )
    assert result.returncode == 0
    assert "codo_release" not in imported(result)
    assert site.fake.requests == []


def test_server_wide_a_listed_project_is_released(site):
    server_wide(site, [PROJECT, "ops/other"])
    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-1")], GL_PROJECT_PATH="ops/other")
    assert "submitted as task 1" in result.stdout
    assert "ops/other.git" in site.fake.tasks[0].fields["args"]


def test_check_config_names_a_project_missing_from_the_index(site):
    server_wide(site, ["ops/other"])
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 2
    assert "projects.ops/dbtt is missing from the project index" in result.stdout
