"""The example alerting rules beside the role: promtool checks them and runs their unit tests when
it is installed (Debian's `prometheus` package has it, or PROMTOOL=path); whether or not it is, each
rule is read here and its expression checked against the metrics the hook really writes."""

import os
import re
import shutil
import subprocess
import sys

import exposition
import pytest
import yaml
from conftest import FILES, ROOT

sys.path.insert(0, FILES)
from codo_release import metrics  # noqa: E402

RULES = os.path.join(ROOT, "roles", "codo_hooks", "examples", "codo-release-alerts.yml")
UNIT_TESTS = os.path.join(ROOT, "tests", "alerts", "codo-release-alerts.test.yml")
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")
# What the issue asks the examples to cover: each must have a rule.
WANTED = {
    "CodoReleaseSpoolNotDraining",
    "CodoReleaseUncertain",
    "CodoReleaseStuck",
    "CodoReleaseKeyExpiring",
    "CodoReleaseHookSilent",
}
FUNCTIONS = {"time", "increase", "rate", "sum", "max", "min", "count", "absent", "avg"}
GROUPING = {"by", "on", "without", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset"}
DURATION = re.compile(r"\d+[smhdwy]\Z")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|\Z)')
LABEL_VALUES = {
    "outcome": set(metrics.RELEASE_OUTCOMES),
    "state": set(metrics.SPOOL_STATES),
}


def rules():
    with open(RULES, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return [rule for group in document["groups"] for rule in group["rules"]]


def hook_families():
    """{metric name: its label names}, from the text the hook writes with every family present."""
    tally = metrics.new_tally()
    tally["releases"] = {"ops/dbtt": {}}
    figures = {
        "counts": dict.fromkeys(metrics.SPOOL_STATES, 0),
        "ignored": 0,
        "oldest": {"pending": None, "uncertain": None},
        "key_expires": 4102444800,
        "config_problems": 0,
    }
    families = exposition.parse(metrics.metrics_text(tally, figures))
    return {
        name: {label for labels in family.labelled() for label in labels}
        for name, family in families.items()
    }


@pytest.mark.skipif(
    not PROMTOOL, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    check = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", os.path.basename(UNIT_TESTS)],
        cwd=os.path.dirname(UNIT_TESTS),
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_the_issues_alerts_are_there_once_each_with_severity_and_text():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) and WANTED <= set(names)
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" not in rule or DURATION.match(rule["for"])


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_each_expression_uses_only_metrics_and_labels_the_hook_writes(rule):
    families = hook_families()
    expr = rule["expr"]
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
    used = set(re.findall(r"\bcodo_release_\w+", expr))
    assert used and used <= set(families), used - set(families)
    for name, inside in re.findall(r"\b(codo_release_\w+)\{([^}]*)\}", expr):
        assert MATCHER.sub("", inside) == "", f"matchers not understood: {inside}"
        for label, operator, value in MATCHER.findall(inside):
            assert label in families[name], f"{name} has no label {label}"
            if label in LABEL_VALUES:
                values = value.split("|") if operator in ("=~", "!~") else [value]
                assert set(values) <= LABEL_VALUES[label], f"{label}={value}"
    for duration in re.findall(r"\[([^\]]*)\]", expr):
        assert DURATION.match(duration), duration
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr))
    for call in re.findall(r"\b([a-z_]+)\s*\(", bare):
        assert call in FUNCTIONS | GROUPING, call
    grouped = set()
    for labels in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", bare):
        grouped |= {label.strip() for label in labels.split(",")}
    words = set(re.findall(r"\b[a-zA-Z_]\w*\b", bare))
    unknown = words - set(families) - FUNCTIONS - KEYWORDS - grouped
    assert not unknown, unknown
