#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The codo_hooks role's fleet status: one table of every node's codo_hooks_status, and the nodes that differ."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_hooks_fleet
short_description: Print one table of the CODO release hook on every node, and fail naming the nodes that differ
description:
  - Takes every node's C(codo_hooks_status) result and returns one aligned table as I(table), a line
    per node (install method, hook version, program and config digests, projects, pending /
    uncertain / failed releases, the oldest one's age, the platform key's expiry, the last run),
    then the differences, one line each, and a verdict as I(msg).
  - Fails, naming them, when nodes that should match do not. Every node must run the same hook
    program, this checkout's (I(program)); every node's installed configs must be those the
    inventory gives it, so nodes the inventory gives the same projects (Gitaly Cluster replicas,
    Geo sites) hold the same; the nodes of each group in I(match_groups) must hold the same
    configs whatever the inventory gives them. A node not reached or not read fails it too.
  - Runs with an action plugin of the same name, on the control node and in the play's process
    (nothing is sent to a node), which fills I(program) from the role's C(files/) and has the
    table printed whatever the verbosity.
  - Reads and changes nothing; check mode changes nothing either.
version_added: "1.1.0"
author:
  - codo-hooks maintainers
options:
  nodes:
    description:
      - Every node's C(codo_hooks_status) result by inventory name, in the order to show them; null
        for a node that was not reached.
    type: dict
    required: true
  program:
    description:
      - The program digest every node must run. The action plugin gives this checkout's (the role's
        C(files/), what C(playbooks/deploy-hooks.yml) installs); empty compares the nodes with each other.
    type: str
    default: ""
  match_groups:
    description: Inventory groups whose nodes must hold the same configs (C(codo_hooks_status_match_groups)).
    type: list
    elements: str
    default: []
  groups:
    description: The inventory's groups and their hosts (C(groups)).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Cells show only letters, digits and C(. @ / + ~ = -), so a line stays one aligned line.
"""

EXAMPLES = r"""
- name: Print the fleet's table and fail naming the nodes that differ
  codo_hooks_fleet:
    nodes: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars)
      | map(attribute='node_status', default=none))) }}"
    match_groups: [gitaly_cluster_1]
    groups: "{{ groups }}"
  run_once: true
"""

RETURN = r"""
msg:
  description: The verdict, one line; when nodes differ, it names them and the playbook that brings them in line.
  returned: always
  type: str
  sample: "1 of 2 node(s) differ: gitaly-2. Bring them in line with ansible-playbook playbooks/deploy-hooks.yml --limit gitaly-2"
table:
  description:
    - One text, a line each (YAML output prints it as a block, aligned). The table, then notes worth a
      look (a key expiring, failed releases, a spool not read), then one line per difference, naming
      the node.
  returned: always
  type: str
  sample: |-
    node      method  version  program       configs       projects  pending  uncertain  failed  oldest  key expires  last run
    gitaly-1  gitaly  -        3f1c2a9b0d4e  8d2e61f0a7b3         4        0          0       0       -  -              2m ago
mismatched:
  description: The nodes that differ (or were not read), in the order given.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the docs, as Ansible modules are)
from ansible.module_utils.codo_hooks_core import fleet  # noqa: E402


def main():
    module = AnsibleModule(argument_spec=fleet.ARGUMENT_SPEC, supports_check_mode=True)
    result = fleet.result_of(module.params)
    if result.pop("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
