#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The codo_hooks role's status of one node: what is installed, against the inventory, and the spool."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_status
short_description: Read what the CODO release hook has installed on one node, and its spool, changing nothing
description:
  - Reads, in one call however many projects, what C(codo_hooks_projects) and C(codo_hooks_runtime)
    installed on this node, found where they install it for I(method), with the same code and arguments;
    each present project's C(codo-release.json) and C(<stage>.d/codo-release) links (or Gitaly's
    C(custom_hooks_dir) with the C(global) method).
  - Returns the digest of the installed configs (sha256 over their paths relative to their storage
    and their contents, so replicas of a project digest alike), the digest the inventory's configs
    would have, and one line per project that differs from the inventory.
  - Returns the digest of the installed hook program (the entry without its first line, which names
    the node's interpreter, and its modules).
  - Runs the installed hook's C(status --state-dir STATE_DIR --json) as I(git_user) and returns its
    counts, and its version, key expiry, last run, last flush and oldest waiting release when the
    hook gives them (the oldest from the entries' times, and the last run from C(hook.log)'s time,
    when it does not).
  - Never changes anything, in check mode or not, and never reads the platform key. A node that
    cannot be read (no git user, Gitaly's config unreadable) is not a failure of the task; I(errors)
    says why, and C(codo_hooks_fleet) names the node.
version_added: "1.1.0"
author:
  - codo-hooks maintainers
options:
  projects:
    description: The projects, as C(codo_hooks_projects) takes them (the role's C(codo_hooks_projects)).
    type: list
    elements: dict
    required: true
  method:
    description: The install method, as for C(codo_hooks_projects).
    type: str
    choices: [files, gitaly, global]
    default: files
  stages:
    description: Stages linked in every project that names none.
    type: list
    elements: str
    choices: [pre-receive, update, post-receive]
    default: [pre-receive, post-receive]
  hook:
    description: The installed hook entry the links point at.
    type: path
    required: true
  codo:
    description: The C(codo) section of every C(codo-release.json), as for C(codo_hooks_projects).
    type: dict
    required: true
  settings:
    description: The other top-level keys of every C(codo-release.json).
    type: dict
    default: {}
  submitter:
    description: Submitter of projects that set none.
    type: str
    default: githook
  executor:
    description: Executor of projects that set none.
    type: str
    default: githook
  details:
    description: Task details of projects that set none.
    type: str
    default: git hook auto exec
  cluster:
    description: The node is in a Gitaly Cluster; projects are found by their C(replica_path).
    type: bool
    default: false
  repositories_root:
    description: The storage directory, for the C(files) method.
    type: path
    default: /var/opt/gitlab/git-data/repositories
  global_dir:
    description: The C(global) method's directory; empty uses Gitaly's C(custom_hooks_dir).
    type: str
    default: ""
  gitaly_command:
    description: Not used here; accepted so that the arguments are those of C(codo_hooks_projects).
    type: path
    default: /opt/gitlab/embedded/bin/gitaly
  gitaly_config:
    description: Gitaly's config.toml; its storages and C(custom_hooks_dir) are read from it.
    type: path
    default: /var/opt/gitlab/gitaly/config.toml
  gitaly_storage:
    description: Storage of projects that name none.
    type: str
    default: default
  git_user:
    description: User Gitaly runs hooks as; C(status) runs as this user.
    type: str
    default: git
  git_group:
    description: Group of I(git_user).
    type: str
    default: git
  located:
    description: Where GitLab's API says the projects given by path only are, as C(codo_hooks_gitlab_storage) returns them.
    type: dict
    default: {}
  install_dir:
    description: Where the hook program is installed.
    type: path
    default: /opt/codo-release
  entry:
    description: The program's entry, in I(install_dir).
    type: str
    default: codo_release_hook.py
  modules:
    description: The program's modules, paths relative to I(install_dir) (the role's C(_codo_hooks_modules)).
    type: list
    elements: str
    required: true
  state_dir:
    description: The hook's spool and log directory.
    type: path
    default: /var/opt/codo-release
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Python 3.6+ on the node, standard library only.
  - The configs hold no secret and are not returned, only their digests; the key file is not opened.
"""

EXAMPLES = r"""
- name: Read the hook's install and spool
  codo_hooks_status:
    projects: "{{ codo_hooks_projects }}"
    method: gitaly
    hook: /opt/codo-release/codo_release_hook.py
    codo: {url: https://codo.example.com, api: task_accept, auth_key_file: /etc/codo-release/auth_key}
    settings: {state_dir: /var/opt/codo-release, on_failure: spool}
  register: node_status
"""

RETURN = r"""
changed:
  description: Always false.
  returned: always
  type: bool
method:
  description: The install method read.
  returned: always
  type: str
program:
  description: sha256 of the installed hook program (entry without its first line, and modules), or null when a file is missing.
  returned: always
  type: str
program_missing:
  description: The program's files that are not there (or not regular files).
  returned: always
  type: list
  elements: str
configs:
  description: sha256 over the installed configs' paths relative to their storage and their contents; null when none is installed.
  returned: always
  type: str
configs_count:
  description: How many configs (and index) were found where the inventory puts them.
  returned: always
  type: int
expected_configs:
  description: The same digest over the configs the inventory gives this node; null when it gives none.
  returned: always
  type: str
projects:
  description: Present projects the inventory gives this node (not those in a storage it lacks).
  returned: always
  type: int
hooked:
  description: Of those, the projects whose config and links are all in place as the inventory wants.
  returned: always
  type: int
elsewhere:
  description: Projects in a storage this node's Gitaly does not have.
  returned: always
  type: list
  elements: str
differences:
  description: How many projects differ from the inventory.
  returned: always
  type: int
differing:
  description: The first 50 of them, one line each, naming the project and what differs.
  returned: always
  type: list
  elements: str
  sample: ["ops/dbtt: codo-release.json differs from the inventory"]
spool:
  description:
    - The spool's entries by state, as the hook's C(status --json) counts them, and how many files in it
      the hook ignores (not its own); null when C(status) could not be read.
  returned: always
  type: dict
  sample: {"pending": 0, "uncertain": 0, "failed": 0, "inflight": 0, "sent": 12, "ignored": 0}
version:
  description: The hook's version, when its C(status --json) gives one.
  returned: always
  type: str
oldest_s:
  description: Seconds the oldest pending or uncertain release has waited, or null.
  returned: always
  type: float
key_expires:
  description: When the platform key expires (epoch seconds), when the hook says.
  returned: always
  type: float
last_run:
  description: When the hook last ran (epoch seconds), as the hook says, else when it last wrote C(hook.log).
  returned: always
  type: float
last_run_from:
  description: C(hook) or C(hook.log), where I(last_run) comes from; null without one.
  returned: always
  type: str
last_flush:
  description: When C(flush) last ran (epoch seconds), when the hook says.
  returned: always
  type: float
now:
  description: The node's clock when it was read (epoch seconds).
  returned: always
  type: float
status_error:
  description: Why the hook's C(status --json) could not be read, one line; null when it was.
  returned: always
  type: str
errors:
  description: Why this node's configs could not be read (no git user, Gitaly's config unreadable), one line each.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the docs, as Ansible modules are)
from ansible.module_utils.codo_hooks_core import config, desired, status  # noqa: E402
from ansible.module_utils.codo_hooks_core.options import ARGUMENT_SPEC, node_want  # noqa: E402

STATUS_SPEC = dict(
    ARGUMENT_SPEC,
    install_dir=dict(type="path", default="/opt/codo-release"),
    entry=dict(type="str", default="codo_release_hook.py"),
    modules=dict(type="list", elements="str", required=True),
    state_dir=dict(type="path", default="/var/opt/codo-release"),
)


def main():
    module = AnsibleModule(argument_spec=STATUS_SPEC, supports_check_mode=True)
    params = module.params
    refused = config.path_errors(params["projects"])
    if refused:
        module.fail_json(msg=refused)
    states, errors = desired.work_out(desired.want_of(params))
    if errors:
        module.fail_json(msg=" ".join(errors), errors=errors)
    program = {key: params[key] for key in ("install_dir", "entry", "modules")}
    result = status.read(node_want(params, states), program, params["state_dir"])
    # The projects counted, not echoed: a thousand projects' rules would otherwise travel back.
    result["invocation"] = {
        "module_args": dict(params, projects="({} projects)".format(len(states)))
    }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
