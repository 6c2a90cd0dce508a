"""The fast path: tags no rule can match cost no import of re or json. Wrong here means a missed release."""

import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "files"))

from codo_release.config import literal_prefix, parse_json


@pytest.mark.parametrize(
    "pattern, prefix",
    [
        (r"\Arelease-dbtt[\w]*", "release-dbtt"),
        (r"\Aqa-dbtt[\w]*", "qa-dbtt"),
        (r"^release/", "release/"),
        (r"release-\d+", "release-"),
        (r"releases?-", "release"),
        (r"rel*", "re"),
        (r"v{1,2}", ""),
        (r"release|hotfix", ""),
        (r"(?i)release", ""),
        (r"(release)-x", ""),
        (r"rel.ase", "rel"),
        (r"release\-x", "release"),
        ("", ""),
    ],
)
def test_literal_prefix(pattern, prefix):
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize(
    "pattern",
    [r"\Arelease-dbtt[\w]*", r"releases?-\d", r"rel*ease", r"a+b", r"ab{0,3}c", r"x?y", r"release|hotfix", r"(?i)rel"],
)
@pytest.mark.parametrize(
    "tag", ["release-dbtt-1", "releases-1", "release-2", "relase", "reease", "ab", "aab", "ac", "y", "xy", "HOTFIX", "REL"]
)
def test_every_tag_the_regex_matches_starts_with_the_prefix(pattern, tag):
    if re.match(pattern, tag):
        assert tag.startswith(literal_prefix(pattern))


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "\\u00e9\\n"}}',
        '  \n{"projects": {"ops/dbtt": {"rules": []}}}\n\t ',
        '"just text"',
        "[]",
        '{"k": "中文"}',
    ],
)
def test_parse_json_reads_what_json_reads(text):
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("text", ["{not json", '{"a": 1} x', "", '{"a": 1,}', "[1, 2"])
def test_parse_json_refuses_what_json_refuses_with_jsons_message(text):
    with pytest.raises(ValueError) as ours:
        parse_json(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)
