"""A careless or hostile config: what check-config accepts, a push can use; the budget bounds matching."""

import copy
import json
import os
import time

import pytest
from conftest import PROJECT, assert_key_nowhere, new_tag_line


def rules(config):
    return config["projects"][PROJECT]["rules"]


def write_raw(site, text):
    with open(site.config_path, "w", encoding="utf-8") as handle:
        handle.write(text)


BAD_CONFIGS = {
    "budget 1e308": lambda c: c["codo"].update(budget_s=1e308),
    "budget 1e999 (infinite)": lambda c: c["codo"].update(budget_s="INF"),
    "read timeout 0": lambda c: c["codo"].update(read_timeout_s=0),
    "down memory negative": lambda c: c["codo"].update(down_memory_s=-1),
    "log bytes float": lambda c: c.update(log_max_bytes=1.5),
    "template superscript two": lambda c: rules(c)[0].update(template_id="²"),
    "template arabic-indic digits": lambda c: rules(c)[0].update(template_id="٣٢"),
    "template with underscore": lambda c: rules(c)[0].update(template_id="3_2"),
    "template negative": lambda c: rules(c)[0].update(template_id=-32),
    "group superscript": lambda c: rules(c)[0].update(hosts={"²": ["10.0.0.5"]}),
    "group fullwidth digit": lambda c: rules(c)[0].update(hosts={"１": ["10.0.0.5"]}),
    "groups 1 and 01": lambda c: rules(c)[0].update(hosts={"1": ["10.0.0.5"], "01": ["10.0.0.6"]}),
    "host with arabic-indic digits": lambda c: rules(c)[0].update(hosts={"1": ["١٠.0.0.5"]}),
    "host with a space": lambda c: rules(c)[0].update(hosts={"1": [" 10.0.0.5"]}),
    "url with a user": lambda c: c["codo"].update(url="http://user:pw@127.0.0.1:1"),
    "url port out of range": lambda c: c["codo"].update(url="http://127.0.0.1:99999"),
    "url with a query": lambda c: c["codo"].update(url="http://127.0.0.1:1/?x=1"),
    "url with a newline": lambda c: c["codo"].update(url="http://127.0.0.1:1/\nHost: x"),
    "app name with shell": lambda c: c["projects"][PROJECT].update(app_name="DBTT;reboot"),
    "git url with a space": lambda c: c["projects"][PROJECT].update(git_url="git@x:a b.git"),
    "args value with backquotes": lambda c: rules(c)[0].update(args={"ENV": "`id`"}),
    "args name not a word": lambda c: rules(c)[0].update(args={"A B": "x"}),
    "task name with a line break": lambda c: c["projects"][PROJECT].update(task_name="a\nb"),
    "state dir relative": lambda c: c.update(state_dir="state"),
    "key file relative": lambda c: c["codo"].update(auth_key_file="auth_key"),
    # re.compile raises more than re.error: ValueError, OverflowError, RecursionError
    "tag_name_pattern (?u) under ASCII": lambda c: c.update(tag_name_pattern="(?u)^[a-z0-9-]+$"),
    "rule tag with the LOCALE flag": lambda c: rules(c)[1].update(tag="(?L)release"),
    "rule tag repeat too large": lambda c: rules(c)[1].update(tag=r"\Arelease-dbtt\w{99999999999}"),
    "rule tag nested 2000 deep": lambda c: rules(c)[1].update(
        tag=r"\Arelease-dbtt" + "(" * 2000 + ")" * 2000
    ),
    "args a number beside pusher_args": lambda c: rules(c)[1].update(
        args=5, pusher_args={"PUSHER": "username"}
    ),
}


@pytest.mark.parametrize("change", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_check_config_refuses_what_a_push_could_not_use(site, change):
    config = copy.deepcopy(site.config)
    change(config)
    text = json.dumps(config).replace('"INF"', "1e999")
    write_raw(site, text)
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # and a push with it refuses new tags with one line, never a crash
    pushed = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert pushed.returncode == 1 and "check-config" in pushed.stdout
    assert "Traceback" not in pushed.stdout + pushed.stderr


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_that_are_not_numbers_are_refused(site, constant):
    write_raw(site, json.dumps(site.config).replace('"budget_s": 6', f'"budget_s": {constant}'))
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 2
    assert f"{constant} is not a number JSON allows" in result.stdout


def test_deep_nesting_in_the_config_is_a_one_line_error(site):
    write_raw(site, "[" * 100000 + "]" * 100000)
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 2 and "not valid JSON" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# Mutations a careless admin makes; for each one check-config accepts, a push must work end to end.
ODD_BUT_VALID = {
    "template as int": lambda c: rules(c)[1].update(template_id=32),
    "template as text": lambda c: rules(c)[1].update(template_id="32"),
    "hosts as one comma string": lambda c: rules(c)[1].update(
        hosts={"1": "118.25.0.10,118.25.0.11"}
    ),
    "budget as int": lambda c: c["codo"].update(budget_s=5),
    "budget tiny": lambda c: c["codo"].update(budget_s=0.5),
    "numeric arg": lambda c: rules(c)[1].update(args={"PORT": 8080}),
    "url with port and path": lambda c: c["codo"].update(url=c["codo"]["url"] + "/"),
    "empty details": lambda c: c["projects"][PROJECT].update(details=""),
    "unicode task name": lambda c: c["projects"][PROJECT].update(task_name="发布 DBTT"),
    "log bytes 1": lambda c: c.update(log_max_bytes=1),
}


@pytest.mark.parametrize("change", ODD_BUT_VALID.values(), ids=ODD_BUT_VALID.keys())
def test_whatever_check_config_accepts_a_push_can_use(site, change):
    change(site.config)
    site.write_config()
    assert site.admin("check-config", site.config_path).returncode == 0
    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-5")])
    assert "Traceback" not in result.stdout + result.stderr
    assert "submitted as task" in result.stdout, result.stdout
    assert len(site.fake.tasks) == 1
    assert_key_nowhere(site, result.stdout)


CATASTROPHIC = "release-" + "a" * 40 + "!"


@pytest.mark.parametrize(
    "where, tag",
    [
        (lambda c: rules(c)[1].update(tag=r"\Arelease-(a+)+\Z"), CATASTROPHIC),
        (
            lambda c: c.update(tag_name_pattern=r"^([a-z-]+)*[0-9]$"),
            "release-dbtt-" + "a" * 40 + "!",
        ),
    ],
    ids=["rule tag", "tag_name_pattern"],
)
def test_a_pattern_that_backtracks_cannot_hold_a_push_past_the_budget(site, where, tag):
    where(site.config)
    site.config["codo"]["budget_s"] = 2
    site.write_config()
    site.link("pre-receive")
    started = time.monotonic()
    refused = site.run_hook("pre-receive", [new_tag_line(tag)])  # unbounded: hours
    kept = site.run_hook("post-receive", [new_tag_line(tag)])
    assert time.monotonic() - started < 50  # the runs' own timeout is 60 s each
    assert refused.returncode == 1 and "backtracks catastrophically" in refused.stdout
    assert "kept in the spool" in kept.stdout and len(site.spool("pending")) == 1
    warned = site.admin("check-config", site.config_path)
    assert warned.returncode == 0 and "can backtrack catastrophically" in warned.stdout
    flushed = site.flush()
    assert "Traceback" not in flushed.stdout + flushed.stderr and len(site.spool("pending")) == 1


def test_check_config_reads_a_deeply_nested_rule_tag_without_an_internal_error(site):
    # re compiles it; the look for nested repeats recursed deeper than Python allows
    rules(site.config)[1]["tag"] = r"\Arelease-dbtt" + "(" * 400 + "a+" + ")" * 400
    site.write_config()
    result = site.admin("check-config", site.config_path)
    assert result.returncode == 0, result.stdout
    assert "internal error" not in result.stdout


def test_match_is_bounded_too(site):
    rules(site.config)[1]["tag"] = r"\Arelease-(a+)+\Z"
    site.config["codo"]["budget_s"] = 1
    site.write_config()
    result = site.admin("match", "--config", site.config_path, CATASTROPHIC)
    assert result.returncode == 2 and "backtracks catastrophically" in result.stdout


def test_a_config_that_is_not_a_file_is_refused_by_a_push_without_hanging(site):
    os.unlink(site.config_path)
    os.mkfifo(site.config_path, 0o600)
    result = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert result.returncode == 1 and "not a regular file" in result.stdout


def test_empty_optional_settings_mean_unset_as_older_ansible_renders_null(site):
    # ansible-core before 2.19 renders `{{ x or none }}` as "" in a module's arguments.
    site.config["codo"].update(ca_file="", task_link="")
    site.write_config()
    assert site.admin("check-config", site.config_path).returncode == 0
    result = site.run_hook("post-receive", [new_tag_line("release-dbtt-3")])
    assert "submitted as task 1" in result.stdout and "http" not in result.stdout
    site.config["codo"]["auth_key_file"] = ""
    site.write_config()
    assert site.admin("check-config", site.config_path).returncode == 2


NOBODY = 65534


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda path: os.chmod(path, 0o666), "others may write it"),
        (lambda path: os.chown(path, NOBODY, -1), f"belongs to uid {NOBODY}"),
        (lambda path: os.link(path, path + ".hardlink"), "other names"),
        (
            lambda path: os.rename(path, path + ".real") or os.symlink(path + ".real", path),
            "symbolic link",
        ),
    ],
    ids=["others may write it", "another user's", "hard link", "symbolic link (flush refuses it)"],
)
def test_a_config_another_local_user_could_write_sends_no_key(site, other_platform, spoil, why):
    # whoever can write the config chooses codo.url: the next release push would hand them the key
    site.config["codo"]["url"] = other_platform.url
    site.write_config()
    spoil(site.config_path)
    refused = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert refused.returncode == 1 and why in refused.stdout and "check-config" in refused.stdout
    kept = site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    assert why in kept.stdout and "kept in the spool" in kept.stdout
    assert other_platform.requests == [] and len(site.spool("pending")) == 1
    checked = site.admin("check-config", site.config_path)
    assert checked.returncode == 2 and why in checked.stdout
    assert_key_nowhere(site, refused.stdout, kept.stdout, checked.stdout)


def test_a_key_given_twice_in_the_config_is_refused_not_silently_the_last(site, other_platform):
    # a reviewer reads the first "url"; json.loads keeps the last, and the key would go there
    text = json.dumps(site.config).replace(
        '"codo": {', '"codo": {"url": "https://codo.example.com", ', 1
    )
    write_raw(site, text.replace(f'"url": "{site.fake.url}"', f'"url": "{other_platform.url}"'))
    checked = site.admin("check-config", site.config_path)
    assert checked.returncode == 2 and "'url' appears twice in one object" in checked.stdout
    refused = site.run_hook("pre-receive", [new_tag_line("release-dbtt-1")])
    assert refused.returncode == 1 and "appears twice" in refused.stdout
    kept = site.run_hook("post-receive", [new_tag_line("release-dbtt-1")])
    assert "kept in the spool" in kept.stdout and other_platform.requests == []
