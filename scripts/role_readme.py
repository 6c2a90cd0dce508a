#!/usr/bin/env python3
"""Write a role's variable tables into its README from meta/argument_specs.yml.

meta/argument_specs.yml is the one place a variable is described; the README
shows it between these markers, which this script owns:

    <!-- BEGIN GENERATED: variables (scripts/role_readme.py) -->
    <!-- END GENERATED: variables -->

    scripts/role_readme.py roles/codo_hooks            # rewrite the README's tables
    scripts/role_readme.py --check roles/codo_hooks    # exit 1 if they are out of date

Needs PyYAML (in the project's .venv with ansible).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

BEGIN = "<!-- BEGIN GENERATED: variables (scripts/role_readme.py) -->"
END = "<!-- END GENERATED: variables -->"
# Ansible's documentation markup: C(code), V(value), O(option), I(italic), B(bold), U(url), L(text,url).
MARKUP = [
    (re.compile(r"[CVOE]\(((?:[^()]|\([^()]*\))*)\)"), r"`\1`"),
    (re.compile(r"I\(([^)]*)\)"), r"*\1*"),
    (re.compile(r"B\(([^)]*)\)"), r"**\1**"),
    (re.compile(r"U\(([^)]*)\)"), r"<\1>"),
    (re.compile(r"L\(([^,)]*),\s*([^)]*)\)"), r"[\1](\2)"),
]


def text(description):
    """One table cell from a description (a string or a list of paragraphs)."""
    if description is None:
        return ""
    if isinstance(description, list):
        description = " ".join(str(part) for part in description)
    cell = " ".join(str(description).split())
    for pattern, replacement in MARKUP:
        cell = pattern.sub(replacement, cell)
    return cell.replace("|", "\\|")


def shown_default(spec):
    if "default" not in spec:
        return "*required*" if spec.get("required") else ""
    value = spec["default"]
    shown = value if isinstance(value, str) else json.dumps(value)
    shown = '""' if shown == "" else shown
    return "`{}`".format(shown.replace("|", "\\|"))


def shown_type(spec):
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        kind = "list of {}".format(spec["elements"])
    if spec.get("choices"):
        kind += ": " + ", ".join("`{}`".format(choice) for choice in spec["choices"])
    return kind


def table(options, columns=("Variable", "Default", "Type", "Description")):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, spec in options.items():
        lines.append(
            "| `{}` | {} | {} | {} |".format(
                name, shown_default(spec), shown_type(spec), text(spec.get("description"))
            )
        )
    return lines


def nested_tables(options, heading_level=3):
    """A table for each option whose items are dicts with their own options (list of dict)."""
    lines = []
    for name, spec in options.items():
        if not spec.get("options"):
            continue
        lines += ["", "{} Each item of `{}`".format("#" * heading_level, name), ""]
        lines += table(spec["options"], ("Key", "Default", "Type", "Description"))
        lines += nested_tables(
            {"{}[].{}".format(name, sub): sub_spec for sub, sub_spec in spec["options"].items()},
            heading_level + 1,
        )
    return lines


def all_options(role):
    """Every entry point's options in one table, in the file's order: a role may describe a
    variable outside main to keep Ansible from validating it on every run (codo_hooks does so
    with codo_hooks_projects)."""
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = {}
    for entry_point in specs["argument_specs"].values():
        options.update(entry_point.get("options") or {})
    return options


def generated(role):
    options = all_options(role)
    lines = [
        BEGIN,
        "<!-- Edit meta/argument_specs.yml, then run scripts/role_readme.py roles/{}. -->".format(
            role.name
        ),
        "",
    ]
    lines += table(options)
    lines += nested_tables(options)
    lines += ["", END]
    return "\n".join(lines)


def updated_readme(role):
    readme = role / "README.md"
    current = readme.read_text(encoding="utf-8")
    start, end = current.find(BEGIN), current.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            "{}: no generated section; add the two marker lines:\n{}\n{}".format(readme, BEGIN, END)
        )
    return current, current[:start] + generated(role) + current[end + len(END) :]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "roles", nargs="+", type=Path, help="role directories, e.g. roles/codo_hooks"
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a README is out of date"
    )
    args = parser.parse_args(argv)
    stale = []
    for role in args.roles:
        current, wanted = updated_readme(role)
        if current == wanted:
            continue
        if args.check:
            stale.append(role)
        else:
            (role / "README.md").write_text(wanted, encoding="utf-8")
            print("updated {}".format(role / "README.md"))
    for role in stale:
        print(
            "{}: the variable table differs from meta/argument_specs.yml; run scripts/role_readme.py {}".format(
                role / "README.md", role
            ),
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
