"""Where GitLab keeps the repositories of projects given by path only (control node only).

For each project with neither id nor disk_path, the action plugin asks
`GET /api/v4/projects/<path>/storage`, a few at a time. The token goes only into the
PRIVATE-TOKEN header: it is never returned or printed. Python 3.6+, standard library only.
"""

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.codo_hooks_core.config import CONTROL

TIMEOUT_S = 15
PARALLEL = 8
REFUSALS = {
    401: "GitLab refused codo_hooks_gitlab_api_token (401 Unauthorized): give an administrator's "
    "personal access token with the read_api scope",
    403: "GitLab does not let the token's user read repository storage (403 Forbidden): the "
    "token must belong to an administrator",
}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, never followed: urllib would send the token to wherever it points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Lookup:
    def __init__(self, url, token, validate_certs):
        self.url = url.rstrip("/")
        self.base = self.url + "/api/v4/projects/"
        self.token = token
        context = None if validate_certs else ssl._create_unverified_context()
        self.opener = urllib.request.build_opener(
            NoRedirect, urllib.request.HTTPSHandler(context=context)
        )

    def storage(self, path):
        """(path, {"disk_path", "repository_storage"} or None, error line or None)."""
        request = urllib.request.Request(
            self.base + urllib.parse.quote(path, safe="") + "/storage",
            headers={"PRIVATE-TOKEN": self.token, "Accept": "application/json"},
        )
        try:
            with self.opener.open(request, timeout=TIMEOUT_S) as reply:
                body = json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            if 300 <= error.code < 400:
                return path, None, self.redirected(error)
            return path, None, self.refusal(path, error.code)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            return path, None, "cannot reach GitLab at {}: {}".format(self.url, reason)
        except ValueError:
            return path, None, "GitLab's storage reply for {} is not JSON".format(path)
        if not isinstance(body, dict) or not body.get("disk_path"):
            return path, None, "GitLab's storage reply for {} has no disk_path".format(path)
        disk_path, storage = body["disk_path"], body.get("repository_storage") or None
        why, field = outside(disk_path), "disk_path"
        if not why and storage is not None:
            why, field = bad_name(storage), "repository_storage"
        if why:
            return path, None, (
                "GitLab's storage reply for {} has a {} that {}: not used; give the project's id "
                "or disk_path in the inventory".format(path, field, why)
            )
        return path, {"disk_path": disk_path, "repository_storage": storage}, None

    def redirected(self, error):
        location = CONTROL.sub("?", str(error.headers.get("Location") or "nowhere"))
        return (
            "GitLab's API at {} answered a redirect ({} to {}), which the role does not follow with "
            "the token: set codo_hooks_gitlab_api_url to GitLab's own URL".format(
                self.url, error.code, location
            )
        )

    @staticmethod
    def refusal(path, status):
        if status in REFUSALS:
            return REFUSALS[status]
        if status == 404:
            return "GitLab has no project {} (404): check its path, or give its id".format(path)
        return "GitLab answered {} for project {}".format(status, path)


def bad_name(value):
    """Why a name from GitLab's reply is refused, or None."""
    if not isinstance(value, str) or not value:
        return "is not text"
    if CONTROL.search(value):
        return "has a control character"
    return None


def outside(disk_path):
    """Why a disk_path from GitLab's reply is not a path below its storage, or None."""
    why = bad_name(disk_path)
    if why:
        return why
    if disk_path.startswith("/") or any(part in ("", ".", "..") for part in disk_path.split("/")):
        return "leads outside the storage"
    return None


def locate(url, token, validate_certs, projects):
    """({path: {"disk_path", "repository_storage"}}, [one line per error])."""
    lookup = Lookup(url, token, validate_certs)
    paths = [
        project["path"]
        for project in projects
        if project.get("id") is None and not project.get("disk_path")
    ]
    located, errors = {}, []
    if not paths:
        return located, errors
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(paths))) as pool:
        for path, found, error in pool.map(lookup.storage, paths):
            if found:
                located[path] = found
            elif error not in errors:
                errors.append(error)
    return located, errors
