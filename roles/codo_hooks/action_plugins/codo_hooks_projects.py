# -*- coding: utf-8 -*-
"""The control node's part of codo_hooks_projects (documented in library/codo_hooks_projects.py).

Before the module runs on the node, with the same arguments:
  1. checks every project against the module's own argument_spec (config.PROJECT: the keys, their
     types and choices; the role's meta/argument_specs.yml only documents them, see config.py) and
     refuses project paths outside GitLab's path rules, in one line;
  2. works every project's state out and runs the hook's own check-config (the role's
     files/codo_release_hook.py) over every present project's config, in one process;
then runs the module, which works the same state out with the same code, and returns its result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

import ansible.module_utils
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

# The role's module_utils/ on the controller: the same code the module runs on the node.
_ROLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODULE_UTILS = os.path.join(_ROLE, "module_utils")
# The hook's entry as the role installs it: its check-config judges the configs.
HOOK = os.path.join(_ROLE, "files", "codo_release_hook.py")
if _MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MODULE_UTILS)

from ansible.module_utils.codo_hooks_core import config, desired  # noqa: E402

MODULE = "codo_hooks_projects"
DEFAULTS = {
    "located": {},
    "method": "files",
    "cluster": False,
    "stages": ["pre-receive", "post-receive"],
    "submitter": "githook",
    "executor": "githook",
    "details": "git hook auto exec",
    "settings": {},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        if isinstance(args.get("projects"), list):
            # Plain data from here on: the controller's tagged copies (ansible-core 2.19) of a
            # thousand projects cost more to check, copy and send than all the rest.
            args["projects"] = json.loads(json.dumps(args["projects"], default=str))
        projects, refused = checked_projects(args["projects"])
        if refused:
            return dict(result, failed=True, msg=refused)
        args.setdefault("located", {})
        self.probe = ([], {})
        errors = self.check_config(dict(DEFAULTS, **args), projects)
        if errors:
            return dict(result, failed=True, msg=" ".join(errors), errors=errors)
        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        uncounted = update_only(args.get("stages") or DEFAULTS["stages"], projects)
        if uncounted:
            result.setdefault("warnings", []).append(
                "max_per_push is not enforced for {} project(s) ({}): their hook runs in update alone, "
                "once per ref, so it cannot count a push's release tags; add pre-receive to "
                "codo_hooks_stages (or the project's stages)".format(
                    len(uncounted), ", ".join(uncounted[:5]) + (", ..." if len(uncounted) > 5 else "")
                )
            )
        # For codo_hooks_probe (tasks/probe.yml): one project of each shape it asks about.
        result["probe_projects"], result["probe_alike"] = self.probe
        return result

    def check_config(self, args, projects):
        """The inventory's mistakes, and the hook's check-config over every present project."""
        try:
            want = desired.want_of(dict(args, projects=projects))
            states, errors = desired.work_out(want)
        except (KeyError, TypeError, AttributeError) as error:
            return ["codo_hooks_projects: a project is not what the role expects ({})".format(error)]
        if errors:
            return errors
        self.probe = desired.probe_groups(projects, states)
        return desired.check_config_errors(sys.executable, HOOK, states)


def update_only(default_stages, projects):
    """The present projects whose hook runs in update and not in pre-receive: max_per_push needs a
    stage that sees the whole push."""
    found = []
    for project in projects:
        stages = project.get("stages") or default_stages
        if project.get("state", "present") == "present" and "update" in stages and "pre-receive" not in stages:
            found.append(project["path"])
    return found


def checked_projects(projects):
    """(the projects as the module reads them, None) or (None, why they are refused: one line)."""
    if not isinstance(projects, list) or not all(isinstance(p, dict) for p in projects):
        return None, "projects must be a list of dicts (codo_hooks_projects)"
    spec = {"projects": dict(type="list", elements="dict", required=True, options=config.PROJECT)}
    checked = ArgumentSpecValidator(spec).validate({"projects": projects})
    if checked.error_messages:
        said = "; ".join(str(message) for message in checked.error_messages)
        return None, "codo_hooks_projects: " + config.CONTROL.sub(escaped, said)
    projects = checked.validated_parameters["projects"]
    return projects, config.path_errors(projects)


def escaped(match):
    return "\\x{:02x}".format(ord(match.group()))
