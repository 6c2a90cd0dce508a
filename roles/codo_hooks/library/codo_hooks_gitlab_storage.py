#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Where GitLab keeps the repositories of projects given by path only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_gitlab_storage
short_description: Ask GitLab's API where the repositories of projects given by path only are
description:
  - For each project with neither C(id) nor C(disk_path), asks C(GET /api/v4/projects/<path>/storage),
    a few at a time, and returns each one's C(disk_path) and C(repository_storage).
  - Read-only; runs the same in check mode. Meant to run once a play on the control node
    (C(delegate_to=localhost), C(run_once=true)), its result given to C(codo_hooks_projects) as
    C(located).
  - The token is a C(no_log) parameter, sent only in the C(PRIVATE-TOKEN) header, never returned.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  url:
    description: GitLab's URL.
    type: str
    required: true
  token:
    description: An administrator's personal access token with the read_api scope.
    type: str
    required: true
  validate_certs:
    description: Verify GitLab's TLS certificate.
    type: bool
    default: true
  projects:
    description: The projects as C(codo_hooks_projects) lists them; only those with neither C(id) nor C(disk_path) are asked for.
    type: list
    elements: dict
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Ask GitLab where the projects given by path only are
  codo_hooks_gitlab_storage:
    url: https://gitlab.example.com
    token: "{{ vault_gitlab_api_token }}"
    projects: "{{ codo_hooks_projects }}"
  delegate_to: localhost
  run_once: true
  register: located
"""

RETURN = r"""
located:
  description: By project path, where its repository is.
  returned: success
  type: dict
  sample: {"ops/dbtt": {"disk_path": "@hashed/6b/86/6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b", "repository_storage": "default"}}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the docs, as Ansible modules are)
from ansible.module_utils.codo_hooks_core import config, gitlab  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            validate_certs=dict(type="bool", default=True),
            projects=dict(type="list", elements="dict", required=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    refused = config.path_errors(params["projects"])
    if refused:
        module.fail_json(msg=refused)
    located, errors = gitlab.locate(
        params["url"], params["token"], params["validate_certs"], params["projects"]
    )
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    module.exit_json(changed=False, located=located)


if __name__ == "__main__":
    main()
