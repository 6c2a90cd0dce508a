"""The README's threat model names, for each claim, the test that shows it: each one must exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def threat_model_tests():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Threat model") : text.index("\n## ", text.index("## Threat model") + 1)]
    named, current = [], None
    for file_name, test in re.findall(r"`(test_\w+\.py)?(?:::(test_\w+))?`", section):
        if file_name:
            current = file_name
        if test or file_name:
            named.append((current, test))
    return named


def test_every_test_the_threat_model_names_exists():
    named = threat_model_tests()
    assert len(named) > 30
    missing = []
    for file_name, test in named:
        path = ROOT / "tests" / file_name
        if not path.is_file() or (test and f"def {test}(" not in path.read_text(encoding="utf-8")):
            missing.append(f"{file_name}::{test}" if test else file_name)
    assert missing == []
