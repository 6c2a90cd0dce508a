#!/usr/bin/python
# -*- coding: utf-8 -*-
"""One execution host's read-only deploy key on the GitLab projects it deploys, by GitLab's API."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_executor_deploy_keys
short_description: Register one host's read-only deploy key on many GitLab projects, and remove its old ones
description:
  - For each project, lists its deploy keys with GitLab's API (C(GET /projects/:id/deploy_keys)) and
    makes only what differs. A project the host deploys gets the key, read-only (C(can_push=false)),
    added when missing, made read-only when it can push. A key with the host's I(title) but
    another key text is the host's retired key (the host was rebuilt) and is removed, and so is the
    host's key on a project it no longer deploys.
  - Idempotent by key. In check mode nothing is sent; C(changed), C(actions) and C(diff) say what
    would be done.
  - Run it where GitLab's API is reachable and the token may live, usually the control node
    (C(delegate_to=localhost)). The token is a C(no_log) parameter, sent only in the
    C(PRIVATE-TOKEN) header.
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  api_url:
    description: GitLab's API base, e.g. C(https://gitlab.example.com/api/v4).
    type: str
    required: true
  token:
    description: A token with the api scope and Maintainer role on the projects.
    type: str
    required: true
  validate_certs:
    description: Verify GitLab's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: CA bundle for a private CA.
    type: path
  timeout:
    description: Seconds to wait for each of GitLab's replies.
    type: int
    default: 15
  title:
    description: The deploy key's title on GitLab, one per host.
    type: str
    required: true
  key:
    description:
      - The host's public key (C(<type> <base64>), a comment is ignored). Empty when it does not
        exist yet (check mode on a new host), then an add is planned.
    type: str
    default: ""
  projects:
    description: The projects of this host, each with C(path) (or C(id)) and whether it C(deploy)s it.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Project path with namespace.
        type: str
        required: true
      id:
        description: Project id; used instead of the path in the API's URLs.
        type: int
      deploy:
        description: The host deploys the project (gets the key); false removes the host's key from it.
        type: bool
        default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - The role projects list at most 100 deploy keys per project; more is an error naming the project.
"""

EXAMPLES = r"""
- name: Register this host's deploy key on the projects it deploys
  codo_executor_deploy_keys:
    api_url: https://gitlab.example.com/api/v4
    token: "{{ vault_gitlab_api_token }}"
    title: "codo-deploy@web-01"
    key: "{{ deploy_public_key }}"
    projects:
      - {path: ops/dbtt, id: 1, deploy: true}
      - {path: ops/old-project, deploy: false}
  delegate_to: localhost
"""

RETURN = r"""
actions:
  description: What was done (in check mode, what would be), one line each.
  returned: always
  type: list
  elements: str
  sample: ["ops/dbtt: add the read-only deploy key codo-deploy@web-01"]
diff:
  description: With C(--diff), per project whose keys change, this host's keys on it before and after.
  returned: when something changes, in diff mode
  type: list
  elements: dict
"""

import json  # noqa: E402 (after the docs, as Ansible modules are)

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.six.moves.urllib.error import HTTPError  # noqa: E402
from ansible.module_utils.six.moves.urllib.parse import quote  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402

ADVICE = (
    "A 401 means the token is missing, expired or revoked; a 403 or 404 that the token cannot see "
    "the project (it needs the api scope and Maintainer role) or that the path or id is wrong"
)


class GitLab:
    def __init__(self, module):
        params = module.params
        self.base = params["api_url"].rstrip("/")
        self.token = params["token"]
        self.options = dict(
            validate_certs=params["validate_certs"], timeout=params["timeout"]
        )
        if params["ca_path"]:
            self.options["ca_path"] = params["ca_path"]

    def url(self, project, *rest):
        ref = str(project["id"]) if project.get("id") is not None else quote(project["path"], safe="")
        return "/".join([self.base, "projects", ref, "deploy_keys"] + [str(r) for r in rest])

    def call(self, method, url, body=None):
        """(status, parsed JSON or None, headers)."""
        headers = {"PRIVATE-TOKEN": self.token, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            # A redirect is never followed: the token would go with it to wherever it points.
            reply = open_url(
                url, method=method, headers=headers, data=data, follow_redirects="none", **self.options
            )
            status, text, got = reply.getcode(), reply.read(), reply.headers
        except HTTPError as error:
            status, text, got = error.code, error.read(), error.headers
        except Exception as error:  # unreachable, TLS: one line
            return None, str(error), {}
        if 300 <= status < 400:
            return None, "a redirect ({} to {}), not followed with the token: set codo_executor_gitlab_url " \
                "to GitLab's own URL".format(status, " ".join(str(got.get("Location") or "nowhere").split())), {}
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return status, parsed, got


def said(status, body):
    if isinstance(body, dict):
        return "{} {}".format(status, json.dumps(body.get("message") or body.get("error") or ""))
    return str(body) if status is None else "{} ".format(status)


def documented(key):
    """An entry of GitLab's deploy key list as its API documents it (the id goes into a URL)."""
    return (
        isinstance(key, dict)
        and type(key.get("id")) is int
        and isinstance(key.get("key"), str)
        and isinstance(key.get("title"), str)
    )


def key_text(key):
    return " ".join((key or "").split()[:2])


def plan(project, listed, mine, title, deploy, check):
    """The calls that bring this project's keys in line: (label, method, rest, body, ok statuses)."""
    calls, ours = [], None
    for key in listed:
        same = bool(mine) and key_text(key.get("key")) == mine
        if same and deploy:
            ours = key
        elif same or key.get("title") == title:
            label = "{}: remove deploy key {} ({})".format(project["path"], key["id"], key.get("title"))
            calls.append((label, "DELETE", [key["id"]], None, (204, 404)))
    if deploy and ours is None and (mine or check):
        label = "{}: add the read-only deploy key {}".format(project["path"], title)
        calls.append((label, "POST", [], {"title": title, "key": mine, "can_push": False}, (201,)))
    elif deploy and ours.get("can_push"):
        label = "{}: make deploy key {} read-only".format(project["path"], ours["id"])
        calls.append((label, "PUT", [ours["id"]], {"can_push": False}, (200,)))
    return calls


def keys_text(keys, mine, title):
    """This host's keys on a project, as the diff shows them."""
    lines = [
        "{} {} can_push={}\n".format(k.get("title"), key_text(k.get("key"))[:40], bool(k.get("can_push")))
        for k in keys
        if k.get("title") == title or (mine and key_text(k.get("key")) == mine)
    ]
    return "".join(lines)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            api_url=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            timeout=dict(type="int", default=15),
            title=dict(type="str", required=True),
            key=dict(type="str", default="", no_log=False),
            projects=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    path=dict(type="str", required=True),
                    id=dict(type="int"),
                    deploy=dict(type="bool", default=True),
                ),
            ),
        ),
        supports_check_mode=True,
    )
    gitlab = GitLab(module)
    title, mine = module.params["title"], key_text(module.params["key"])
    errors, work = [], []
    for project in module.params["projects"]:
        status, listed, headers = gitlab.call("GET", gitlab.url(project) + "?per_page=100")
        if status != 200 or not isinstance(listed, list):
            errors.append("{} ({})".format(project["path"], said(status, listed)))
        elif not all(documented(key) for key in listed):
            errors.append("{} (a list whose entries are not deploy keys with an integer id, a key and a "
                          "title: is codo_executor_gitlab_url GitLab?)".format(project["path"]))
        elif headers.get("X-Next-Page"):
            errors.append("{} (more than 100 deploy keys: not paged through)".format(project["path"]))
        else:
            work.append((project, listed))
    if errors:
        module.fail_json(
            msg="GitLab did not list the deploy keys of: {}. {}.".format("; ".join(errors), ADVICE)
        )
    actions, diff, failed, done = [], [], [], []
    for project, listed in work:
        calls = plan(project, listed, mine, title, project["deploy"], module.check_mode)
        if not calls:
            continue
        actions.extend(label for label, _, _, _, _ in calls)
        wanted = "{} {} can_push=False\n".format(title, mine[:40]) if project["deploy"] else ""
        diff.append(
            {
                "before_header": "{}: deploy keys of this host".format(project["path"]),
                "after_header": "{}: deploy keys of this host".format(project["path"]),
                "before": keys_text(listed, mine, title),
                "after": wanted,
            }
        )
        if module.check_mode:
            continue
        for label, method, rest, body, ok in calls:
            status, reply, _ = gitlab.call(method, gitlab.url(project, *rest), body)
            if status in ok:
                done.append(label)
            else:
                failed.append("{} ({})".format(label, said(status, reply)))
    result = dict(changed=bool(actions) if module.check_mode else bool(done), actions=actions)
    if module._diff and diff:
        result["diff"] = diff
    if failed:
        module.fail_json(
            msg="GitLab refused: {}. Done before: {}. A 400 \"has already been taken\" on a new key "
            "means the key is a user's SSH key or a deploy key this token cannot see; a 403 that the "
            "token lacks Maintainer on the project.".format("; ".join(failed), "; ".join(done) or "nothing"),
            done=done,
            **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
