#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ask the platform, with the node's key and the installed hook, whether it will take the releases."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_probe
short_description: Ask the CODO platform whether it will take this node's releases, before one is pushed
description:
  - Runs the installed hook's C(check-config --probe) as the git user over one config holding every
    present project (worked out from the same arguments as C(codo_hooks_projects)), so the platform
    is asked once per template, with the node's key file, CA file and network path.
  - The hook asks whether the key is accepted and when it expires, whether flush can settle an
    uncertain release with this key and C(submitter), and for each rule whether its template exists,
    each host group it sends is one of the template's step groups and each name the template's steps
    use is one the rule's args supply. It only reads; no task is sent.
  - Fails with one line per problem, naming project and rule. Warnings (a key expiring within 14 days,
    releases that flush could not settle) are Ansible warnings.
  - Changes nothing, in check mode or not. In check mode on a node where the hook is not installed yet
    it is skipped, saying so.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  projects:
    description:
      - The projects, as C(codo_hooks_projects) takes them; the absent ones are not asked about.
      - The role gives one project of each shape, the C(probe_projects) that C(codo_hooks_projects)
        returns. The platform's answers depend only on a project's submitter and its rules'
        templates, host groups, args names and modes, not on its tags or names.
    type: list
    elements: dict
    required: true
  alike:
    description:
      - For a project of I(projects), the paths of the projects of the same shape it stands for; a
        problem or warning about it names how many projects it concerns, and some of them.
    type: dict
    default: {}
  hook:
    description: The installed hook's entry (its first line names the interpreter).
    type: path
    required: true
  codo:
    description: The config's C(codo) section, as C(codo_hooks_projects) takes it.
    type: dict
    required: true
  settings:
    description: The config's other top-level keys (C(state_dir), C(on_failure), C(tag_name_pattern)).
    type: dict
    default: {}
  method:
    description: The install method (how a project's repository is found does not matter here).
    type: str
    choices: [files, gitaly, global]
    default: files
  cluster:
    description: Whether the node is in a Gitaly Cluster.
    type: bool
    default: false
  stages:
    description: Stages linked in every project.
    type: list
    elements: str
    default: [pre-receive, post-receive]
  submitter:
    description: Submitter of the projects that set none.
    type: str
    default: githook
  executor:
    description: Executor of the projects that set none.
    type: str
    default: githook
  details:
    description: Task details of the projects that set none.
    type: str
    default: git hook auto exec
  located:
    description: GitLab's storage answers for projects given by path only (C(codo_hooks_gitlab_storage)).
    type: dict
    default: {}
  git_user:
    description: User the hook runs as; it must own the key file.
    type: str
    default: git
  git_group:
    description: Group of I(git_user).
    type: str
    default: git
  timeout_s:
    description: Most seconds the probe may take before it is reported as a problem.
    type: int
    default: 300
notes:
  - Check mode is supported; the module never changes anything.
"""

EXAMPLES = r"""
- name: Ask the platform whether it will take the releases
  codo_hooks_probe:
    projects: "{{ codo_hooks_projects }}"
    hook: /opt/codo-release/codo_release_hook.py
    codo:
      url: https://codo.example.com
      api: task_accept
      auth_key_file: /etc/codo-release/auth_key
    settings:
      state_dir: /var/opt/codo-release
  run_once: true
"""

RETURN = r"""
problems:
  description: What the platform (or the config) says is wrong, one line each, naming project and rule.
  returned: always
  type: list
  elements: str
  sample: ["projects.ops/dbtt.rules[0]: template 99 does not exist on the platform"]
warnings_found:
  description: What the probe warns about, one line each (also shown as Ansible warnings).
  returned: always
  type: list
  elements: str
summary:
  description: The hook's last line (e.g. C(OK (3 project(s), 4 rule(s)))).
  returned: always
  type: str
skipped_reason:
  description: Why nothing was asked (check mode before the hook is installed, or no present project).
  returned: when nothing was asked
  type: str
"""

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the docs, as Ansible modules are)
from ansible.module_utils.codo_hooks_core import config, desired, sync  # noqa: E402

ARGUMENT_SPEC = dict(
    projects=dict(type="list", elements="dict", required=True),
    alike=dict(type="dict", default={}),
    hook=dict(type="path", required=True),
    codo=dict(type="dict", required=True),
    settings=dict(type="dict", default={}),
    method=dict(type="str", choices=["files", "gitaly", "global"], default="files"),
    cluster=dict(type="bool", default=False),
    stages=dict(type="list", elements="str", default=["pre-receive", "post-receive"]),
    submitter=dict(type="str", default="githook"),
    executor=dict(type="str", default="githook"),
    details=dict(type="str", default="git hook auto exec"),
    located=dict(type="dict", default={}),
    git_user=dict(type="str", default="git"),
    git_group=dict(type="str", default="git"),
    timeout_s=dict(type="int", default=300),
)
WHERE = "<config>"
# Each line the hook says starts with this.
SAID = "codo: "


def probe_config(params):
    """(one config holding every present project or None, the errors that stop the probe)."""
    refused = config.path_errors(params["projects"])
    if refused:
        return None, [refused]
    states, errors = desired.work_out(desired.want_of(params))
    if errors:
        return None, errors
    return desired.present_config(states), []


def run_probe(hook, probe, owner, timeout):
    """The hook's check-config --probe over PROBE as OWNER: (exit code, its lines, the file's name)."""
    work = tempfile.mkdtemp(prefix="codo-probe-")
    try:
        os.chown(work, owner.uid, owner.gid)
        os.chmod(work, 0o700)
        path = os.path.join(work, "codo-release.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(config.config_text(probe))
        os.chown(path, owner.uid, owner.gid)
        os.chmod(path, 0o600)
        try:
            done = subprocess.run(
                [hook, "check-config", "--probe", path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=owner.become,
                cwd=work,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None, ["the probe took longer than {} s (timeout_s)".format(timeout)], path
        except OSError as error:
            return (
                None,
                ["the installed hook {} could not be run: {}".format(hook, error.strerror)],
                path,
            )
        text = done.stdout.decode("utf-8", "replace")
        return done.returncode, text.splitlines(), path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sort_lines(lines, path):
    """The hook's lines, its file name taken off: (problems, warnings, summary)."""
    problems, warnings, summary = [], [], ""
    prefix = path + ": "
    for line in lines:
        line = line[len(SAID) :] if line.startswith(SAID) else line
        line = line[len(prefix) :] if line.startswith(prefix) else line
        line = line.replace(path, WHERE)
        if line.startswith("warning: "):
            warnings.append(line[len("warning: ") :])
        elif (
            line.startswith("OK (")
            or line.endswith("problem(s) found by asking the platform")
            or ("problem(s); nothing is released" in line)
        ):
            summary = line
        elif line.strip():
            problems.append(line)
    return problems, warnings, summary


def for_alike(line, alike):
    """A line about a project that stands for others of its shape, saying so."""
    for path, others in alike.items():
        if others and line.startswith(("projects.{}.".format(path), "projects.{}:".format(path))):
            shown = ", ".join(str(other) for other in others[:3])
            more = ", ..." if len(others) > 3 else ""
            return "{} (the same for {} other project(s) alike: {}{})".format(
                line, len(others), shown, more
            )
    return line


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    result = dict(changed=False, problems=[], warnings_found=[], summary="")
    probe, errors = probe_config(params)
    if errors:
        module.fail_json(msg=" ".join(errors), **dict(result, problems=errors))
    if probe is None:
        module.exit_json(
            skipped_reason="no present project: nothing to ask the platform about", **result
        )
    if not os.path.isfile(params["hook"]):
        if module.check_mode:
            module.exit_json(
                skipped_reason="the hook is not installed yet ({}): the platform is asked after it is".format(
                    params["hook"]
                ),
                **result,
            )
        module.fail_json(msg="the installed hook {} is missing".format(params["hook"]), **result)
    try:
        owner = sync.Owner(params["git_user"], params["git_group"])
    except KeyError as error:
        module.fail_json(
            msg="no user or group {} on this server (codo_hooks_git_user)".format(error), **result
        )
    rc, lines, path = run_probe(params["hook"], probe, owner, params["timeout_s"])
    problems, warnings, summary = sort_lines(lines, path)
    problems = [for_alike(line, params["alike"]) for line in problems]
    warnings = [for_alike(line, params["alike"]) for line in warnings]
    result.update(problems=problems, warnings_found=warnings, summary=summary)
    for warning in warnings:
        module.warn(warning)
    if rc != 0:
        if not problems:
            problems = [
                "the hook's check-config --probe failed (exit {}) without saying why".format(rc)
            ]
            result["problems"] = problems
        module.fail_json(
            msg="the platform will not take these releases ({} problem(s)): {}".format(
                len(problems), " | ".join(problems)
            ),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
