#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The codo_hooks role's core: every project's hook links and config in one call."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_projects
short_description: Link the CODO release hook into many GitLab projects and write their configs, in one call
description:
  - Brings every listed project's C(custom_hooks) (or Gitaly's server-wide C(custom_hooks_dir)) to
    what the inventory wants, in one call however many projects. It writes the C(<stage>.d/codo-release)
    links to the installed hook, each project's C(codo-release.json) and, with the C(global)
    method, one config holding every project and an index of their paths.
  - Touches only what it owns. A link is removed only when it points at the installed hook, a
    directory only when empty. A project whose C(custom_hooks) is a symbolic link, or whose
    C(<stage>.d) is not a directory, or whose own file stands where a link or config goes, is a
    conflict, named in the failure; nothing is changed then.
  - With I(method=gitaly) each differing project's complete hook set, ours changed, is sent with
    C(gitaly hooks set) as the git user (the archive is checked to be rooted at C(custom_hooks/),
    and what Gitaly left is compared with what was sent). A project that already matches is not sent.
  - Runs with an action plugin of the same name, which on the control node runs the hook's
    C(check-config) over every present project's config before anything changes.
    C(codo_hooks_gitlab_storage) finds the projects given by path only (I(located)).
  - Project paths with control characters or outside GitLab's path rules are refused with one line.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  projects:
    description:
      - The projects, as C(codo_hooks_projects) gives them (the role's C(meta/argument_specs.yml)
        describes every key).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Project path with namespace, as GitLab shows it (C(GL_PROJECT_PATH)).
        type: str
        required: true
      id:
        description: GitLab project id; the repository is then its C(@hashed) path.
        type: int
      disk_path:
        description: Repository directory relative to the storage (absolute with C(files) only). Wins over I(id).
        type: str
      storage:
        description: Gitaly storage of the repository; defaults to I(gitaly_storage).
        type: str
      replica_path:
        description: The repository's replica path in Gitaly Cluster, used when I(cluster=true).
        type: str
      state:
        description: C(absent) removes the hook's links and config from the project and keeps its own hooks.
        type: str
        choices: [present, absent]
        default: present
      stages:
        description: Stages for this project; defaults to I(stages).
        type: list
        elements: str
        choices: [pre-receive, update, post-receive]
      git_url:
        description: Clone URL the platform's template uses.
        type: str
      app_name:
        description: Application name.
        type: str
      task_name:
        description: Task name on the platform.
        type: str
      submitter:
        description: Submitter; defaults to I(submitter).
        type: str
      executor:
        description: Executor; defaults to I(executor).
        type: str
      details:
        description: Task details; defaults to I(details).
        type: str
      rules:
        description: Tag rules, first match wins (checked by the hook's C(check-config)).
        type: list
        elements: dict
  method:
    description: C(files) writes each project's custom_hooks, C(gitaly) sends them with C(gitaly hooks set), C(global) uses Gitaly's custom_hooks_dir.
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
  retired_hooks:
    description:
      - Where older releases of the role installed the hook. Links to them are ours too, removed
        with C(state=absent) (a present project's link is pointed at I(hook) anyway).
    type: list
    elements: path
    default: []
  codo:
    description: The C(codo) section of every C(codo-release.json) (platform URL, API, key file, timeouts).
    type: dict
    required: true
  settings:
    description: The other top-level keys of every C(codo-release.json) (C(state_dir), C(on_failure), C(tag_name_pattern)).
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
    description: The node is in a Gitaly Cluster; projects are found by their I(replica_path).
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
    description: The gitaly command, run as I(git_user) for C(hooks set).
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
    description: User Gitaly runs hooks as.
    type: str
    default: git
  git_group:
    description: Group of I(git_user).
    type: str
    default: git
  located:
    description:
      - Where GitLab's API says the projects given by path only are, by path
        (C(disk_path), C(repository_storage)), as C(codo_hooks_gitlab_storage) returns them.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Check mode fails, as a real run would, on a missing repository or a conflict, and otherwise says
    what would change; nothing is written and nothing is sent.
  - Python 3.6+ on the node, standard library only.
"""

EXAMPLES = r"""
- name: Link the hook into every project
  codo_hooks_projects:
    projects:
      - path: ops/dbtt
        id: 1
        git_url: git@gitlab.example.com:ops/dbtt.git
        app_name: DBTT
        rules:
          - {tag: '\Arelease-dbtt[\w]*', template_id: 32, schedule: new, hosts: {"1": [118.25.0.10]}}
      - path: ops/old-project
        disk_path: ops/old-project
        state: absent
    hook: /opt/codo-release/codo_release_hook.py
    codo:
      url: https://codo.example.com
      api: task_accept
      auth_key_file: /etc/codo-release/auth_key
    settings:
      state_dir: /var/opt/codo-release
      on_failure: spool

- name: Send the hooks with gitaly hooks set, projects given by path only located by GitLab's API
  codo_hooks_projects:
    projects: "{{ codo_hooks_projects }}"
    method: gitaly
    hook: /opt/codo-release/codo_release_hook.py
    codo: {url: https://codo.example.com, api: task_accept, auth_key_file: /etc/codo-release/auth_key}
    located: "{{ located.located }}"   # from codo_hooks_gitlab_storage
"""

RETURN = r"""
changed:
  description: Whether anything was (or in check mode would be) changed.
  returned: always
  type: bool
differs:
  description: Something differs from what is wanted (what C(changed) says, kept when a task overrides C(changed)).
  returned: always
  type: bool
done:
  description: What was done, one line each (empty in check mode). On failure, what was done before it stopped.
  returned: always
  type: list
  elements: str
  sample: ["created /var/opt/gitlab/git-data/repositories/@hashed/6b/86/6b86b273.git/custom_hooks"]
dirs:
  description: Directories created or whose owner or mode is fixed.
  returned: success or a missing repository or conflict
  type: list
  elements: str
links:
  description: The C(<stage>.d/codo-release) links made or fixed.
  returned: success or a missing repository or conflict
  type: list
  elements: str
configs:
  description: The configs (and the global method's index) written, by project.
  returned: success or a missing repository or conflict
  type: list
  elements: dict
  sample: [{"path": "ops/dbtt", "dest": "/var/opt/gitlab/git-data/repositories/@hashed/6b/86/6b86b273.git/custom_hooks/codo-release.json"}]
remove_files:
  description: Our links and configs removed.
  returned: success or a missing repository or conflict
  type: list
  elements: str
remove_dirs:
  description: Our directories removed once empty.
  returned: success or a missing repository or conflict
  type: list
  elements: str
sends:
  description: Projects whose hook set is (or would be) sent with C(gitaly hooks set).
  returned: always
  type: list
  elements: str
elsewhere:
  description: Projects in a storage this node's Gitaly does not have, left to the node that has it.
  returned: always
  type: list
  elements: str
missing_repos:
  description: Present projects whose repository directory is not on the node (the run fails).
  returned: success or a missing repository or conflict
  type: list
  elements: dict
  sample: [{"path": "ops/gone", "repo": "/var/opt/gitlab/git-data/repositories/@hashed/19/58/1958.git"}]
conflicts:
  description: Things the role did not make standing where it would write or clean (the run fails).
  returned: success or a missing repository or conflict
  type: list
  elements: dict
  sample: [{"path": "ops/web", "file": "/srv/x.git/custom_hooks", "is": "link", "want": "directory"}]
errors:
  description: Why nothing could be done on this node (no git user, Gitaly's config unreadable, no custom_hooks_dir).
  returned: on such a failure
  type: list
  elements: str
method:
  description: The install method.
  returned: always
  type: str
probe_projects:
  description:
    - Set by the action plugin. One present project of each shape C(codo_hooks_probe) asks the
      platform about (submitter; each rule's template, host groups, args names and mode).
  returned: success
  type: list
  elements: dict
probe_alike:
  description: Set by the action plugin. For each of I(probe_projects) that stands for others, their paths.
  returned: success
  type: dict
diff:
  description: With C(--diff), one before/after entry per config written and per link or directory added, fixed or removed.
  returned: success, in diff mode
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the docs, as Ansible modules are)
from ansible.module_utils.codo_hooks_core import config, desired, sync  # noqa: E402
from ansible.module_utils.codo_hooks_core.options import ARGUMENT_SPEC, node_want  # noqa: E402


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    refused = config.path_errors(params["projects"])
    if refused:
        module.fail_json(msg=refused)
    states, errors = desired.work_out(desired.want_of(params))
    if errors:
        module.fail_json(msg=" ".join(errors), errors=errors)
    result, failed = sync.run(node_want(params, states), module.check_mode)
    if not module._diff:
        result.pop("diff", None)
    # The arguments echoed back with the projects counted, not copied: a thousand projects' rules
    # would otherwise travel back to the controller on every run.
    result["invocation"] = {
        "module_args": dict(params, projects="({} projects)".format(len(states)))
    }
    if failed:
        module.fail_json(msg=failed, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
