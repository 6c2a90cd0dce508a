# -*- coding: utf-8 -*-
"""The control node's codo_hooks_fleet (documented in library/codo_hooks_fleet.py).

Runs the module's code here, in the play's process: the table needs only the nodes' results,
already on the control node. Fills `program` with this checkout's program digest (the role's
files/, what the role installs) and has the table printed at any verbosity, as debug does.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import ansible.module_utils
from ansible.plugins.action import ActionBase

_ROLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODULE_UTILS = os.path.join(_ROLE, "module_utils")
_FILES = os.path.join(_ROLE, "files")
if _MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MODULE_UTILS)

from ansible.module_utils.codo_hooks_core import digest, fleet  # noqa: E402

# The program as the role installs it (vars/main.yml: _codo_hooks_entry, _codo_hooks_modules:
# the package's modules).
ENTRY = "codo_release_hook.py"
PACKAGE = "codo_release"


def program_modules(files=_FILES):
    """The package's modules as the role names them: codo_release/<module>.py, sorted."""
    names = os.listdir(os.path.join(files, PACKAGE))
    return sorted(PACKAGE + "/" + name for name in names if name.endswith(".py"))


def checkout_program(files=_FILES):
    """The digest of the program this checkout installs, or "" when its files cannot be read."""
    try:
        with open(os.path.join(files, ENTRY), "rb") as handle:
            entry = handle.read()
        modules = []
        for name in program_modules(files):
            with open(os.path.join(files, name), "rb") as handle:
                modules.append((name, handle.read()))
    except OSError:
        return ""
    return digest.program(ENTRY, entry, modules)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(fleet.ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        validation, params = self.validate_argument_spec(argument_spec=fleet.ARGUMENT_SPEC)
        del validation
        params = dict(params)
        if not params.get("program"):
            params["program"] = checkout_program()
        result.update(fleet.result_of(params))
        result["_ansible_verbose_always"] = True
        return result
