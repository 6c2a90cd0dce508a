"""The roles' Ansible modules run the way Ansible runs them: {"ANSIBLE_MODULE_ARGS": ...} on stdin,
the role's module_utils/ importable as ansible.module_utils.<subpackage> (what AnsiballZ gives a
module), and the result read as the JSON the module prints."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT = """\
import runpy, sys
import ansible.module_utils
ansible.module_utils.__path__.append(sys.argv.pop(1))
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def role_module_utils(role="codo_hooks"):
    """Make a role's module_utils importable in this process, as ansible.module_utils.<subpackage>."""
    import ansible.module_utils

    path = os.path.join(ROOT, "roles", role, "module_utils")
    if path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(path)


def run_module(name, args, check=False, diff=False, env=None, role="codo_hooks"):
    """roles/<role>/library/<name>.py run with these args: (rc, its JSON result, stderr)."""
    role_dir = os.path.join(ROOT, "roles", role)
    module_args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BOOT,
            os.path.join(role_dir, "module_utils"),
            os.path.join(role_dir, "library", name + ".py"),
        ],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": module_args}),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(
            "not a module result: rc {}\n{}\n{}".format(done.returncode, done.stdout, done.stderr)
        )
    return done.returncode, result, done.stderr
