#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The platform's execution user (CODO task_layout), idempotent by alias."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: codo_executor_platform_user
short_description: Register, update or remove the CODO platform's execution user
description:
  - Lists the platform's execution users (C(GET /api/task/v2/task_layout/user/)), finds the one
    with I(alias), and adds, updates or deletes it only when it differs from what is wanted.
  - Each change carries the C(auth_key) cookie and a single-use C(csrf_key) from the list just
    read; after a 402 (a stale key) a fresh one is fetched and the change is sent once more. The
    platform answers code 0 even to a PUT with an unknown id, so the list is read back and the
    change is believed only when it shows.
  - In check mode nothing is sent; C(changed), C(action) and C(diff) say what would be done.
  - The list holds every execution user's private key; the module returns none of it, and the
    C(auth_key) and I(user_key) parameters are C(no_log).
version_added: "1.0.0"
author:
  - codo-hooks maintainers
options:
  url:
    description: The execution users' URL, C(<platform>/api/task/v2/task_layout/user/).
    type: str
    required: true
  auth_key:
    description: A platform C(auth_key) allowed to manage execution users.
    type: str
    required: true
  validate_certs:
    description: Verify the platform's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: CA bundle for a private CA.
    type: path
  timeout:
    description: Seconds to wait for each reply.
    type: int
    default: 15
  alias:
    description: The execution user's alias on the platform (its key here).
    type: str
    required: true
  exec_user:
    description: The login on the execution hosts.
    type: str
    default: ""
  ssh_port:
    description: The execution hosts' SSH port.
    type: int
    default: 22
  user_key:
    description: The executor's private key, which the platform uses to log in.
    type: str
    default: ""
  remarks:
    description: Remarks shown on the platform.
    type: str
    default: ""
  state:
    description: C(absent) deletes the execution user.
    type: str
    choices: [present, absent]
    default: present
  always_update:
    description: Send an update even when the record looks the same (the key it holds cannot be compared).
    type: bool
    default: false
  missing_hosts:
    description:
      - Execution hosts not in this run. When the platform holds another key (a rotation), the
        module refuses to switch it while any is missing, since they would keep only the old key.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Register the execution user on the platform
  codo_executor_platform_user:
    url: https://codo.example.com/api/task/v2/task_layout/user/
    auth_key: "{{ vault_codo_auth_key }}"
    alias: codo-executor
    exec_user: codo
    ssh_port: 22
    user_key: "{{ executor_private_key }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
action:
  description: C(add), C(update), C(delete) or C(none) (what was done, or in check mode would be).
  returned: always
  type: str
rotates:
  description: The platform holds another key for the alias, which this run replaces.
  returned: always
  type: bool
has_key:
  description: The platform now holds the wanted key (in check mode, already holds it).
  returned: always
  type: bool
has_user:
  description: The platform now has an execution user with the alias.
  returned: always
  type: bool
"""

import json  # noqa: E402 (after the docs, as Ansible modules are)

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.six.moves.http_cookies import SimpleCookie  # noqa: E402
from ansible.module_utils.six.moves.urllib.error import HTTPError  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402

CODES = {
    -2: "Code -2: another execution user has this alias.",
    -1: "Code -1: a field is empty or holds Chinese characters.",
}


class Platform:
    def __init__(self, params):
        self.url = params["url"]
        self.auth_key = params["auth_key"]
        self.options = dict(validate_certs=params["validate_certs"], timeout=params["timeout"])
        if params["ca_path"]:
            self.options["ca_path"] = params["ca_path"]

    def call(self, method, csrf=None, body=None):
        """(status, parsed JSON or None, csrf_key cookie or None)."""
        cookie = "auth_key=" + self.auth_key + ("; csrf_key=" + csrf if csrf else "")
        headers = {"Cookie": cookie, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            # A redirect is never followed: the auth_key cookie would go with it to wherever it points.
            reply = open_url(
                self.url, method=method, headers=headers, data=data, follow_redirects="none", **self.options
            )
            status, text, got = reply.getcode(), reply.read(), reply.headers
        except HTTPError as error:
            status, text, got = error.code, error.read(), error.headers
        except Exception as error:  # unreachable, TLS
            return None, {"msg": str(error)}, None
        if 300 <= status < 400:
            where = " ".join(str(got.get("Location") or "nowhere").split())
            return status, {"msg": "a redirect to {}, not followed with the auth_key: set codo_executor_codo_url "
                            "to the platform's own URL".format(where)}, None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return status, parsed, csrf_from(got)


def csrf_from(headers):
    jar = SimpleCookie()
    for value in (headers.get_all("Set-Cookie") if hasattr(headers, "get_all") else []) or []:
        try:
            jar.load(value)
        except Exception:
            continue
    return jar["csrf_key"].value if "csrf_key" in jar else None


def message(body):
    return (body or {}).get("msg", "") if isinstance(body, dict) else ""


def documented(user):
    """An execution user as the platform lists it: an integer id, the other fields text (or null)."""
    return (
        isinstance(user, dict)
        and type(user.get("id")) is int
        and all(isinstance(user.get(k), (str, type(None))) for k in ("alias_user", "exec_user", "user_key", "remarks"))
    )


def record_of(body, alias):
    data = (body or {}).get("data") or [] if isinstance(body, dict) else []
    return next((r for r in data if r.get("alias_user") == alias), None)


def shown(record):
    """A record as the diff shows it: never its key, only whether it is the wanted one."""
    if record is None:
        return {}
    return {k: record.get(k) for k in ("alias_user", "exec_user", "ssh_port", "remarks")}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            auth_key=dict(type="str", required=True, no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            timeout=dict(type="int", default=15),
            alias=dict(type="str", required=True),
            exec_user=dict(type="str", default=""),
            ssh_port=dict(type="int", default=22),
            user_key=dict(type="str", default="", no_log=True),
            remarks=dict(type="str", default=""),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            always_update=dict(type="bool", default=False),
            missing_hosts=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    platform = Platform(p)
    present = p["state"] == "present"
    key = (p["user_key"] or "").strip()
    status, listed, csrf = platform.call("GET")
    if status != 200 or not isinstance(listed, dict) or listed.get("code") != 0:
        hint = {
            401: " A 401 means codo_executor_auth_key is not a valid auth_key on this platform.",
            404: " A 404 means codo_executor_codo_url is not the platform gateway, or the task "
            "service is older than task_layout.",
        }.get(status, "")
        module.fail_json(msg="GET {} answered {} ({}).{}".format(p["url"], status, message(listed), hint))
    data = listed.get("data") or []
    if not isinstance(data, list) or not all(documented(user) for user in data):
        module.fail_json(msg="GET {} answered code 0, but its data is not a list of execution users (each "
                         "with an integer id and text fields): is codo_executor_codo_url the platform's "
                         "gateway?".format(p["url"]))
    record = record_of(listed, p["alias"])
    rotates = bool(present and record is not None and (record.get("user_key") or "").strip() != key)
    if not present:
        action = "delete" if record is not None else "none"
    elif record is None:
        action = "add"
    elif p["always_update"]:
        action = "update"
    else:
        same = (
            record.get("exec_user") == p["exec_user"]
            and str(record.get("ssh_port")) == str(p["ssh_port"])
            and not rotates
            and (record.get("remarks") or "") == p["remarks"]
        )
        action = "none" if same else "update"
    if action == "update" and rotates and p["missing_hosts"]:
        module.fail_json(
            msg="The platform holds another key for {}: this run would rotate it, but {} are not in "
            "it (--limit, unreachable or failed). They would keep only the old key the platform no "
            "longer uses. Run again without --limit once every host is reachable.".format(
                p["alias"], ", ".join(p["missing_hosts"])
            )
        )
    wanted = {"alias_user": p["alias"], "exec_user": p["exec_user"], "ssh_port": p["ssh_port"]}
    wanted["remarks"] = p["remarks"]
    result = dict(changed=action != "none", action=action, rotates=rotates)
    if module._diff and action != "none":
        before = dict(shown(record), user_key="(the wanted key)" if record and not rotates else "(another key)")
        after = {} if action == "delete" else dict(wanted, user_key="(the wanted key)")
        result["diff"] = {
            "before_header": "execution user " + p["alias"],
            "after_header": "execution user " + p["alias"],
            "before": before if record else {},
            "after": after,
        }
    if module.check_mode or action == "none":
        result.update(has_key=present and action == "none", has_user=record is not None if action == "none" else False)
        module.exit_json(**result)
    if action == "delete":
        body = {"exec_user_id": record["id"]}
    else:
        body = dict(wanted, user_key=key)
        if action == "update":
            body = dict(body, id=record["id"])
    method = {"add": "POST", "update": "PUT", "delete": "DELETE"}[action]
    status, reply, _ = platform.call(method, csrf, body)
    if status == 402:  # a stale or used csrf_key: a fresh one, and once more
        _, _, fresh = platform.call("GET")
        status, reply, _ = platform.call(method, fresh, body)
    code = reply.get("code") if isinstance(reply, dict) else None
    if status != 200 or code != 0:
        module.fail_json(
            msg="{} {} for {} answered {}, code {}: {}. {}".format(
                method, p["url"], p["alias"], status, "-" if code is None else code,
                message(reply), CODES.get(code, "")
            ).strip(),
            **result
        )
    _, again, _ = platform.call("GET")
    now = record_of(again, p["alias"])
    has_key = present and now is not None and (now.get("user_key") or "").strip() == key
    result.update(has_key=has_key, has_user=now is not None)
    if (present and not has_key) or (not present and now is not None):
        module.fail_json(
            msg="The platform answered code 0 to the {} of {}, but its list {}. The hosts' "
            "authorized_keys stay as they are; check the platform's task_layout service and run "
            "again.".format(
                action, p["alias"], "does not show the current key" if present else "still shows the user"
            ),
            **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
