"""A role's meta/argument_specs.yml is the one description of its variables: the README's
tables are generated from it and its defaults are those of defaults/main.yml."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "role_readme.py"
MARKER = "<!-- BEGIN GENERATED: variables"
ROLES = sorted(
    role
    for role in (ROOT / "roles").iterdir()
    if (role / "meta" / "argument_specs.yml").is_file()
    and (role / "README.md").is_file()
    and MARKER in (role / "README.md").read_text(encoding="utf-8")
)
TEMPLATED = re.compile(r"\{\{.*\}\}")


def options(role):
    """Every entry point's options (codo_hooks describes codo_hooks_projects outside main)."""
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    found = {}
    for entry_point in specs["argument_specs"].values():
        found.update(entry_point.get("options") or {})
    return found


def defaults(role):
    return yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8")) or {}


def test_codo_hooks_has_a_generated_variable_table():
    assert ROOT / "roles" / "codo_hooks" in ROLES


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_readme_variable_table_is_generated_from_argument_specs(role):
    run = subprocess.run(
        [sys.executable, str(GENERATOR), "--check", str(role)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_every_default_is_described_in_argument_specs(role):
    assert sorted(set(defaults(role)) - set(options(role))) == []


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_argument_specs_defaults_are_the_role_defaults(role):
    described = {name: spec["default"] for name, spec in options(role).items() if "default" in spec}
    assert described == defaults(role)


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_every_default_has_a_comment_line_above_it(role):
    lines = (role / "defaults" / "main.yml").read_text(encoding="utf-8").splitlines()
    bare = [
        line.split(":")[0]
        for number, line in enumerate(lines)
        if re.match(r"[a-z_]+:", line) and (number == 0 or not lines[number - 1].startswith("#"))
    ]
    assert bare == []


def test_generator_refuses_a_readme_without_markers(tmp_path):
    role = tmp_path / "some_role"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs: {main: {options: {}}}\n", encoding="utf-8"
    )
    (role / "README.md").write_text("# some_role\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(GENERATOR), str(role)], capture_output=True, text=True, check=False
    )
    assert run.returncode != 0
    assert "marker" in run.stderr


def test_generator_shows_ansible_markup_as_markdown(tmp_path):
    role = tmp_path / "some_role"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs: {main: {options: {some_role_x: {type: str, default: a|b, description: 'Use C(x) or I(y).'}}}}\n",
        encoding="utf-8",
    )
    (role / "README.md").write_text(
        "# some_role\n<!-- BEGIN GENERATED: variables (scripts/role_readme.py) -->\n<!-- END GENERATED: variables -->\n",
        encoding="utf-8",
    )
    subprocess.run([sys.executable, str(GENERATOR), str(role)], check=True, capture_output=True)
    readme = (role / "README.md").read_text(encoding="utf-8")
    assert "| `some_role_x` | `a\\|b` | str | Use `x` or *y*. |" in readme


MODULES = sorted((ROOT / "roles").glob("*/library/*.py"))


def module_docs(path):
    """The module's DOCUMENTATION, EXAMPLES and RETURN, read without running it."""
    import ast

    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                    found[target.id] = yaml.safe_load(node.value.value)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_every_module_documents_itself_its_examples_and_what_it_returns(path):
    docs = module_docs(path)
    assert sorted(docs) == ["DOCUMENTATION", "EXAMPLES", "RETURN"]
    assert docs["DOCUMENTATION"]["module"] == path.stem
    assert docs["DOCUMENTATION"]["short_description"] and docs["RETURN"]
    assert any(path.stem in task for task in docs["EXAMPLES"])


def test_the_role_installs_every_module_of_the_program_and_the_fleet_digests_them_all():
    package = ROOT / "files" / "codo_release"
    modules = sorted("codo_release/" + path.name for path in package.glob("*.py"))
    assert "codo_release/__init__.py" in modules and len(modules) > 1
    role_vars = yaml.safe_load((ROOT / "roles/codo_hooks/vars/main.yml").read_text(encoding="utf-8"))
    assert role_vars["_codo_hooks_modules"] == modules
    assert set(role_vars["_codo_hooks_obsolete"]).isdisjoint(modules)
    # The role's files/ is what it installs: the package through one link.
    assert (ROOT / "roles/codo_hooks/files/codo_release").resolve() == package
    sys.path.insert(0, str(ROOT / "roles/codo_hooks/action_plugins"))
    try:
        import codo_hooks_fleet
    finally:
        sys.path.pop(0)
    assert codo_hooks_fleet.program_modules() == modules
