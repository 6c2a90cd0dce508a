"""Hostile ref names and records: one branch update is never read as a tag, odd names are refused aloud.

Git allows Unicode line and space separators in ref names; git's records end with LF alone and
split on the first two ASCII spaces. Each test fails on a reader that uses str.splitlines()/split().
"""

import os

import pytest
from conftest import ZERO, assert_key_nowhere, git, run_hook_bytes

SEPARATORS = {"LINE SEPARATOR": "\u2028", "PARAGRAPH SEPARATOR": "\u2029", "NEXT LINE": "\u0085"}
SPACES = {"IDEOGRAPHIC SPACE": "\u3000", "NO-BREAK SPACE": "\u00a0", "EM SPACE": "\u2003"}


@pytest.fixture
def linked(site):
    site.link("pre-receive", "update", "post-receive")
    return site


def head(site):
    return git("rev-parse", "HEAD", cwd=site.clone).stdout.strip()


@pytest.mark.parametrize("separator", SEPARATORS.values(), ids=SEPARATORS.keys())
@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_a_branch_whose_name_smuggles_a_tag_record_never_releases(linked, separator, space):
    # One branch update; a reader splitting on Unicode breaks sees a second, made-up one for a release tag.
    sha = head(linked)
    branch = f"main{separator}{ZERO}{space}{sha}{space}refs/tags/release-dbtt-20190320-01"
    code, output = linked.push(f"HEAD:refs/heads/{branch}")
    assert code == 0, output
    assert linked.fake.tasks == [] and linked.fake.requests == []
    assert linked.spool("pending") == [] and linked.spool("inflight") == []
    assert "codo:" not in output
    assert f"refs/heads/{branch}" in linked.remote_refs()
    assert_key_nowhere(linked, output)


@pytest.mark.parametrize(
    "odd", {**SEPARATORS, **SPACES, "RLO": "\u202e", "ZWSP": "\u200b"}.values()
)
def test_a_release_tag_holding_an_invisible_or_separator_character_is_refused_with_a_line(
    linked, odd
):
    tag = f"release-dbtt-1{odd}x"
    linked.tag(tag)
    code, output = linked.push(f"refs/tags/{tag}")
    assert code != 0
    assert "tag names with spaces, line breaks or invisible characters are never released" in output
    ours = [
        line
        for line in output.split("\n")
        if line.startswith(("remote: codo:", "remote: GL-HOOK-ERR:"))
    ]
    assert ours and all(
        odd not in line for line in ours
    )  # named escaped, never raw (git's own lines are git's)
    assert ascii(odd)[1:-1] in output
    assert f"refs/tags/{tag}" not in linked.remote_refs()
    assert linked.fake.tasks == []


def test_a_tag_with_an_odd_character_is_refused_even_when_no_rule_would_match_it(linked):
    tag = "v1.0\u2028refs"
    linked.tag(tag)
    code, output = linked.push(f"refs/tags/{tag}")
    assert code != 0 and "\\u2028" in output
    assert linked.fake.requests == []


def test_the_update_stage_reads_its_argv_exactly(linked):
    # update gets refname old new; an IDEOGRAPHIC SPACE inside the name is part of the name.
    name = "refs/tags/release-dbtt-1\u3000" + "1" * 40
    result = linked.run_hook("update", argv=[name, ZERO, "2" * 40])
    assert result.returncode == 1
    assert "never released" in result.stdout
    assert linked.fake.requests == []


def test_update_with_the_wrong_number_of_arguments_is_refused(linked):
    result = linked.run_hook("update", argv=["refs/tags/release-dbtt-1", ZERO])
    assert result.returncode == 1
    assert "malformed" in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(f"{ZERO} {'1' * 40} refs/tags/release-dbtt-1".encode(), id="no final LF"),
        pytest.param(f"{ZERO} {'1' * 40} refs/tags/release-dbtt-1\r\n".encode(), id="CRLF"),
        pytest.param(f"{ZERO}\t{'1' * 40}\trefs/tags/release-dbtt-1\n".encode(), id="tabs"),
        pytest.param(f"{ZERO}  {'1' * 40} refs/tags/release-dbtt-1\n".encode(), id="two spaces"),
        pytest.param(f"{ZERO} {'A' * 40} refs/tags/release-dbtt-1\n".encode(), id="uppercase hex"),
        pytest.param(f"{ZERO} {'g' * 40} refs/tags/release-dbtt-1\n".encode(), id="not hex"),
        pytest.param(
            f"{'0' * 64} {'1' * 64} refs/tags/release-dbtt-1\n".encode(),
            id="sha256 ids in a sha1 repo",
        ),
        pytest.param(f"{ZERO} {'1' * 39} refs/tags/release-dbtt-1\n".encode(), id="short id"),
        pytest.param(
            f"{ZERO} {'1' * 40} xrefs/tags/release-dbtt-1\n".encode(), id="not under refs/"
        ),
        pytest.param(
            f"{ZERO} {'1' * 40} refs/heads/main\n{'0' * 64} {'1' * 64} refs/tags/release-dbtt-1\n".encode(),
            id="mixed id lengths",
        ),
    ],
)
def test_a_malformed_record_is_refused_before_the_push_and_not_acted_on_after(linked, record):
    code, output = run_hook_bytes(linked, "pre-receive", record)
    assert code == 1
    assert "malformed" in output and "GL-HOOK-ERR:" in output
    code, output = run_hook_bytes(linked, "post-receive", record)
    assert code == 0
    assert "ref updates not read" in output
    assert linked.fake.requests == [] and linked.spool("pending") == []
    assert "Traceback" not in output


def test_well_formed_records_beside_a_malformed_one_are_still_acted_on_after_the_push(linked):
    good = f"{ZERO} {'1' * 40} refs/tags/release-dbtt-7\n".encode()
    bad = f"{ZERO} {'1' * 40} refs/tags/release-dbtt-8\r\n".encode()
    code, output = run_hook_bytes(linked, "post-receive", bad + good)
    assert code == 0
    assert "ref updates not read: record 1" in output
    assert [task.args["TAG"] for task in linked.fake.tasks] == ["release-dbtt-7"]


def test_a_sha256_repository_takes_64_digit_ids(linked):
    git(
        "config", "--file", os.path.join(linked.repo, "config"), "extensions.objectformat", "sha256"
    )
    code, output = run_hook_bytes(
        linked, "post-receive", f"{'0' * 64} {'1' * 64} refs/tags/release-dbtt-9\n".encode()
    )
    assert code == 0, output
    assert [task.args["TAG"] for task in linked.fake.tasks] == ["release-dbtt-9"]
    code, output = run_hook_bytes(
        linked, "pre-receive", f"{ZERO} {'1' * 40} refs/tags/release-dbtt-10\n".encode()
    )
    assert code == 1 and "64" in output


def test_a_tag_name_that_is_not_utf8_is_refused_and_shown_escaped(linked):
    code, output = run_hook_bytes(
        linked, "pre-receive", f"{ZERO} {'1' * 40} refs/tags/release-dbtt-".encode() + b"\xff\xfe\n"
    )
    assert code == 1
    assert "not UTF-8" in output and "\\udcff" in output


def test_a_push_of_a_thousand_branches_with_separators_costs_no_config_read(linked, tmp_path):
    # The entry dismisses records naming no tag before anything else is read.
    os.chmod(linked.config_path, 0)  # root reads it anyway: rename it away instead
    os.rename(linked.config_path, linked.config_path + ".away")
    data = b"".join(f"{'1' * 40} {'2' * 40} refs/heads/b{n}\u2028x\n".encode() for n in range(1000))
    code, output = run_hook_bytes(linked, "pre-receive", data)
    assert code == 0 and output == ""
