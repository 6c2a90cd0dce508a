"""`match --replay`: a repository's existing tags through the rules, as if each were pushed now;
nothing is sent."""

import subprocess

from conftest import PROJECT, git

HOSTILE = {
    "release-dbtt-$(id)": "is not a safe release name",
    "release-dbtt-\u202egpj.exe": "right-to-left override",
    "release-dbtt-a\u2028b": "line separator",
    "release-dbtt-'x\"": "is not a safe release name",
}


def add_tags(repo, names, commit="refs/heads/main"):
    """Tags made straight in the repository (no hook runs), names given as git stores them."""
    target = git("rev-parse", commit, cwd=repo).stdout.strip().encode()
    lines = b"".join(
        b"create refs/tags/"
        + (name if isinstance(name, bytes) else name.encode())
        + b" "
        + target
        + b"\n"
        for name in names
    )
    subprocess.run(["git", "update-ref", "--stdin"], input=lines, cwd=repo, check=True)


def replay(site, *args):
    result = site.admin(
        "match", "--config", site.config_path, "--project", PROJECT, "--replay", *args
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


def lines_by_tag(result):
    return dict(line[len("codo: ") :].split(": ", 1) for line in result.stdout.splitlines()[:-1])


def test_every_tag_of_a_repository_with_hundreds_is_listed_with_its_rule_and_nothing_sent(site):
    names = [f"release-dbtt-{n}" for n in range(150)] + [f"qa-dbtt-{n}" for n in range(150)]
    add_tags(site.repo, names + [f"v1.{n}" for n in range(200)])
    result = replay(site)
    assert result.returncode == 0
    shown = lines_by_tag(result)
    assert len(shown) == 500
    assert shown["release-dbtt-7"] == "released by rule 1 (template 32, schedule new)"
    assert shown["qa-dbtt-7"] == "released by rule 0 (template 32, schedule ready)"
    assert shown["v1.7"] == "skipped: no rule matches"
    assert result.stdout.splitlines()[-1].endswith(
        "500 tag(s) in " + site.repo + ": 300 would be released, 0 only shown (shadow), 0 refused, "
        "200 skipped; nothing sent"
    )
    assert site.fake.requests == []


def test_hostile_tag_names_are_shown_escaped_on_one_line_each_and_refused(site):
    add_tags(site.repo, list(HOSTILE) + [b"release-dbtt-\xff"])
    result = replay(site)
    assert result.returncode == 0
    assert "\u202e" not in result.stdout and "\u2028" not in result.stdout
    body = result.stdout.splitlines()[:-1]
    assert len(body) == len(HOSTILE) + 1 and all(line.startswith("codo: ") for line in body)
    refused = [line for line in body if ": refused: " in line]
    assert len(refused) == len(HOSTILE) + 1
    text = "\n".join(body)
    for reason in HOSTILE.values():
        assert reason in text
    assert "\\u202e" in text and "\\udcff" in text and "a byte that is not UTF-8" in text


def test_the_guards_are_applied_to_each_tagged_commit(site):
    site.rule(1).update(from_branch="main", max_age_days=7)
    site.write_config()
    add_tags(site.repo, ["release-dbtt-on-main"])
    base = git("rev-parse", "HEAD", cwd=site.clone).stdout.strip()
    site.commit("off main")
    git("push", "-q", "origin", "HEAD:refs/heads/topic", cwd=site.clone)
    add_tags(site.repo, ["release-dbtt-on-topic"], commit="refs/heads/topic")
    git("reset", "-q", "--hard", base, cwd=site.clone)
    site.commit("old", days_old=30)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=site.clone)
    add_tags(site.repo, ["release-dbtt-old"], commit="refs/heads/main")
    shown = lines_by_tag(replay(site))
    assert shown["release-dbtt-on-main"].startswith("released by rule 1")
    assert "is not on branch main" in shown["release-dbtt-on-topic"]
    assert "days old, more than 7" in shown["release-dbtt-old"]


def test_allowed_users_are_named_unless_a_user_is_given(site):
    site.rule(1)["allowed_users"] = ["alice", "carol"]
    site.write_config()
    add_tags(site.repo, ["release-dbtt-1"])
    assert lines_by_tag(replay(site))["release-dbtt-1"].endswith("(by alice, carol)")
    assert "bob may not release" in lines_by_tag(replay(site, "--user", "bob"))["release-dbtt-1"]
    assert lines_by_tag(replay(site, "--user", "carol"))["release-dbtt-1"] == (
        "released by rule 1 (template 32, schedule new)"
    )


def test_a_shadow_rule_is_shown_as_sending_nothing(site):
    site.rule(0)["mode"] = "shadow"
    site.write_config()
    add_tags(site.repo, ["qa-dbtt-1"])
    assert lines_by_tag(replay(site))["qa-dbtt-1"].startswith("shadow: rule 0 matches")


def test_another_repository_is_read_with_repo(site, tmp_path):
    other = str(tmp_path / "other.git")
    git("init", "--bare", "-q", other)
    git("push", "-q", other, "HEAD:refs/heads/main", cwd=site.clone)
    add_tags(other, ["release-dbtt-elsewhere"])
    assert "release-dbtt-elsewhere" in lines_by_tag(replay(site, "--repo", other))


def test_a_directory_that_is_not_a_repository_is_one_line_and_exit_2(site, tmp_path):
    result = replay(site, "--repo", str(tmp_path))
    assert result.returncode == 2
    assert result.stdout.count("\n") == 1 and "is not a git repository" in result.stdout


def test_replay_and_a_tag_together_or_neither_is_a_usage_error(site):
    both = replay(site, "release-dbtt-1")
    assert both.returncode == 2 and "takes no TAG" in both.stdout
    neither = site.admin("match", "--config", site.config_path)
    assert neither.returncode == 2 and "needs a TAG, or --replay" in neither.stdout
