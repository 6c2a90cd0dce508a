#!/usr/bin/env python3
"""A GitLab REST API just large enough for deploy keys: projects and their deploy keys, on 127.0.0.1.

What it answers, the way GitLab (API v4) answers it:
- every request needs the header ``PRIVATE-TOKEN``; without it or with a wrong one: 401
  ``{"message": "401 Unauthorized"}``;
- ``GET /api/v4/projects/:id``, ``:id`` a number or the URL-encoded ``path_with_namespace``; 404
  ``{"message": "404 Project Not Found"}``;
- ``GET /api/v4/projects/:id/deploy_keys`` (paginated: ``page``, ``per_page`` 20 by default, at most 100,
  ``X-Total`` and ``X-Next-Page`` headers) and ``GET .../deploy_keys/:key_id``;
- ``POST /api/v4/projects/:id/deploy_keys`` with ``title``, ``key``, ``can_push`` (JSON or form): 201;
  the same key (type and blob; the comment does not count) already on this project: 400
  ``{"message": {"deploy_key.fingerprint_sha256": ["has already been taken"]}}``; already on another
  project: that deploy key is joined to this project, as GitLab does;
- ``PUT /api/v4/projects/:id/deploy_keys/:key_id`` (``title``, ``can_push``): 200;
- ``DELETE /api/v4/projects/:id/deploy_keys/:key_id``: 204; a key left on no project is deleted.
- ``GET /api/v4/projects/:id/storage`` (administrators only: a token given as ``user_token`` gets 403
  ``{"message": "403 Forbidden"}``): ``project_id``, ``disk_path`` (no ``.git``: hashed storage
  ``@hashed/ab/cd/<sha256 of the id>``, or ``namespace/name`` for a project in legacy storage),
  ``created_at`` and ``repository_storage``.

For tests: ``GET /_fake/requests`` lists what was asked (method, path, whether a token came; never the
token), and with ``authorized_keys_file`` every change rewrites that file with one line per deploy key,
so an sshd beside it lets exactly the registered keys clone, as gitlab-shell does.

Importable (``FakeGitLab(token=...).start()``) or standalone::

    python3 tests/fakes/fake_gitlab.py --port 18182 --token-file TOKEN --project 1:ops/dbtt \
        [--legacy 1] [--storage 1:storage-2] [--authorized-keys-file PATH] [--pid-file PATH]
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import json
import os
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
API = "/api/v4"
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
TAKEN = {"message": {"deploy_key.fingerprint_sha256": ["has already been taken"]}}


class BadRequest(Exception):
    """A 400 with GitLab's body."""

    def __init__(self, body):
        super().__init__(body)
        self.body = body


def parse_key(text):
    """(type, blob) of an OpenSSH public key line, or BadRequest as GitLab refuses it."""
    fields = str(text or "").split()
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise BadRequest({"message": {"key": ["is invalid"]}})
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest({"message": {"key": ["is invalid"]}}) from None
    return fields[0], fields[1], blob


def fingerprint_sha256(blob):
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def as_bool(value):
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes")


class GitLabState:
    """Projects, deploy keys and which project has which key, behind one lock."""

    def __init__(self, projects, authorized_keys_file=None):
        self.lock = threading.Lock()
        self.projects = {}
        self.storages = {}
        for project_id, path in (projects or {}).items():
            self.add_project(int(project_id), path)
        self.keys = {}
        self.links = {}  # (project_id, key_id) -> can_push
        self.next_key_id = 1
        self.requests = []
        self.authorized_keys_file = authorized_keys_file
        self.write_authorized_keys()

    def add_project(self, project_id, path, storage="default", legacy=False):
        namespace, _, name = path.rpartition("/")
        digest = hashlib.sha256(str(project_id).encode()).hexdigest()
        self.storages[project_id] = {
            "project_id": project_id,
            "disk_path": path if legacy else f"@hashed/{digest[:2]}/{digest[2:4]}/{digest}",
            "created_at": "2019-03-20T10:00:00.000Z",
            "repository_storage": storage,
        }
        self.projects[project_id] = {
            "id": project_id,
            "name": name,
            "path": name,
            "path_with_namespace": path,
            "namespace": {"full_path": namespace},
            "ssh_url_to_repo": f"git@gitlab.example.com:{path}.git",
            "http_url_to_repo": f"https://gitlab.example.com/{path}.git",
        }

    def find_project(self, ident):
        if ident.isdigit():
            return self.projects.get(int(ident))
        for project in self.projects.values():
            if project["path_with_namespace"] == ident:
                return project
        return None

    def deploy_key_view(self, project_id, key_id):
        key = self.keys[key_id]
        return dict(key, can_push=self.links[(project_id, key_id)])

    def project_keys(self, project_id):
        return [
            self.deploy_key_view(pid, kid) for (pid, kid) in sorted(self.links) if pid == project_id
        ]

    def add_key(self, project_id, title, key_text, can_push):
        if not title:
            raise BadRequest({"error": "title is missing"})
        key_type, key_blob_b64, blob = parse_key(key_text)
        existing = next(
            (k for k in self.keys.values() if k["_blob"] == (key_type, key_blob_b64)), None
        )
        if existing is not None:
            if (project_id, existing["id"]) in self.links:
                raise BadRequest(TAKEN)
            key_id = existing["id"]
        else:
            key_id = self.next_key_id
            self.next_key_id += 1
            self.keys[key_id] = {
                "id": key_id,
                "title": title,
                "key": " ".join(str(key_text).split()[:3]),
                "fingerprint_sha256": fingerprint_sha256(blob),
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="milliseconds"
                ),
                "expires_at": None,
                "_blob": (key_type, key_blob_b64),
            }
        self.links[(project_id, key_id)] = can_push
        self.write_authorized_keys()
        return self.deploy_key_view(project_id, key_id)

    def delete_key(self, project_id, key_id):
        del self.links[(project_id, key_id)]
        if not any(kid == key_id for (_, kid) in self.links):
            del self.keys[key_id]
        self.write_authorized_keys()

    def write_authorized_keys(self):
        if not self.authorized_keys_file:
            return
        lines = [
            f"{k['_blob'][0]} {k['_blob'][1]} deploy-key-{k['id']}\n" for k in self.keys.values()
        ]
        temporary = self.authorized_keys_file + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.authorized_keys_file)


def public(view):
    return {name: value for name, value in view.items() if not name.startswith("_")}


class Handler(BaseHTTPRequestHandler):
    server_version = "nginx"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def state(self):
        return self.server.state

    def reply(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                body = json.loads(raw)
            except ValueError:
                raise BadRequest({"error": "400 Bad request - body is not valid JSON"}) from None
            return body if isinstance(body, dict) else {}
        return {name: values[-1] for name, values in urllib.parse.parse_qs(raw.decode()).items()}

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        token = self.headers.get("PRIVATE-TOKEN")
        with self.state.lock:
            self.state.requests.append(
                {"method": method, "path": url.path, "query": url.query, "token": token is not None}
            )
        if url.path == "/_fake/requests" and method == "GET":
            with self.state.lock:
                return self.reply(200, list(self.state.requests))
        if not url.path.startswith(API + "/"):
            return self.reply(404, {"error": "404 Not Found"})
        if token is None or token not in (self.server.token, self.server.user_token):
            return self.reply(401, {"message": "401 Unauthorized"})
        self.admin = token == self.server.token
        # Split before unquoting: a project path arrives as ops%2Fdbtt.
        parts = [urllib.parse.unquote(part) for part in url.path[len(API) + 1 :].split("/")]
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        try:
            body = self.read_body() if method in ("POST", "PUT") else {}
            with self.state.lock:
                return self.route(method, parts, query, body)
        except BadRequest as error:
            return self.reply(400, error.body)

    def do_GET(self):  # noqa: N802 (http.server's names)
        self.handle_any("GET")

    def do_POST(self):  # noqa: N802
        self.handle_any("POST")

    def do_PUT(self):  # noqa: N802
        self.handle_any("PUT")

    def do_DELETE(self):  # noqa: N802
        self.handle_any("DELETE")

    def do_PATCH(self):  # noqa: N802
        self.handle_any("PATCH")

    # --- the API --------------------------------------------------------------------------------
    def route(self, method, parts, query, body):
        if len(parts) < 2 or parts[0] != "projects":
            return self.reply(404, {"error": "404 Not Found"})
        project = self.state.find_project(parts[1])
        if project is None:
            return self.reply(404, {"message": "404 Project Not Found"})
        rest = parts[2:]
        if not rest:
            if method != "GET":
                return self.reply(405, {"error": "405 Method Not Allowed"})
            return self.reply(200, project)
        if rest == ["storage"]:
            if method != "GET":
                return self.reply(405, {"error": "405 Method Not Allowed"})
            if not self.admin:
                return self.reply(403, {"message": "403 Forbidden"})
            return self.reply(200, self.state.storages[project["id"]])
        if rest[0] != "deploy_keys" or len(rest) > 2:
            return self.reply(404, {"error": "404 Not Found"})
        if len(rest) == 1:
            if method == "GET":
                return self.list_keys(project["id"], query)
            if method == "POST":
                view = self.state.add_key(
                    project["id"],
                    body.get("title"),
                    body.get("key"),
                    as_bool(body.get("can_push", False)),
                )
                return self.reply(201, public(view))
            return self.reply(405, {"error": "405 Method Not Allowed"})
        key_id = int(rest[1]) if rest[1].isdigit() else -1
        if (project["id"], key_id) not in self.state.links:
            return self.reply(404, {"message": "404 Deploy key Not Found"})
        if method == "GET":
            return self.reply(200, public(self.state.deploy_key_view(project["id"], key_id)))
        if method == "PUT":
            if "title" in body:
                self.state.keys[key_id]["title"] = body["title"]
            if "can_push" in body:
                self.state.links[(project["id"], key_id)] = as_bool(body["can_push"])
            return self.reply(200, public(self.state.deploy_key_view(project["id"], key_id)))
        if method == "DELETE":
            self.state.delete_key(project["id"], key_id)
            return self.reply(204)
        return self.reply(405, {"error": "405 Method Not Allowed"})

    def list_keys(self, project_id, query):
        keys = [public(view) for view in self.state.project_keys(project_id)]
        per_page = min(max(int(query.get("per_page") or 20), 1), 100)
        page = max(int(query.get("page") or 1), 1)
        pages = max((len(keys) + per_page - 1) // per_page, 1)
        headers = {
            "X-Total": len(keys),
            "X-Total-Pages": pages,
            "X-Per-Page": per_page,
            "X-Page": page,
            "X-Next-Page": page + 1 if page < pages else "",
            "X-Prev-Page": page - 1 if page > 1 else "",
        }
        return self.reply(200, keys[(page - 1) * per_page : page * per_page], headers)


class FakeGitLab:
    """The fake GitLab API in a thread: ``start()``, ``url``, ``stop()``; state readable for asserts."""

    def __init__(self, token, projects=None, port=0, authorized_keys_file=None, user_token=None):
        self.token = token
        self.state = GitLabState(
            projects if projects is not None else {1: "ops/dbtt"}, authorized_keys_file
        )
        self.httpd = ThreadingHTTPServer((HOST, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.httpd.token = token
        self.httpd.user_token = user_token
        self.thread = None

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def start(self):
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-gitlab",
            daemon=True,
        )
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def deploy_keys(self, project_id):
        """The project's deploy keys as the API lists them."""
        with self.state.lock:
            return [public(view) for view in self.state.project_keys(project_id)]

    @property
    def requests(self):
        with self.state.lock:
            return list(self.state.requests)


def project_argument(text):
    match = re.fullmatch(r"(\d+):([\w.-]+(?:/[\w.-]+)+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected ID:namespace/name, got {text!r}")
    return int(match.group(1)), match.group(2)


def storage_argument(text):
    match = re.fullmatch(r"(\d+):([\w.-]+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected ID:STORAGE, got {text!r}")
    return int(match.group(1)), match.group(2)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fake GitLab deploy-keys API on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--token-file", required=True, help="file holding the PRIVATE-TOKEN to accept"
    )
    parser.add_argument(
        "--project", type=project_argument, action="append", default=[], help="ID:namespace/name"
    )
    parser.add_argument(
        "--authorized-keys-file", help="rewrite this file with every deploy key, as gitlab-shell"
    )
    parser.add_argument("--pid-file", help="write this process's id here")
    parser.add_argument(
        "--legacy", type=int, action="append", default=[], help="ID: this project is in legacy storage"
    )
    parser.add_argument(
        "--storage", type=storage_argument, action="append", default=[], help="ID:STORAGE (default: default)"
    )
    args = parser.parse_args(argv)
    with open(args.token_file, encoding="utf-8") as handle:
        token = handle.read().strip()
    projects = dict(args.project) if args.project else None
    server = FakeGitLab(
        token=token,
        projects=projects,
        port=args.port,
        authorized_keys_file=args.authorized_keys_file,
    )
    storages = dict(args.storage)
    for project_id, project in list(server.state.projects.items()):
        server.state.add_project(
            project_id,
            project["path_with_namespace"],
            storage=storages.get(project_id, "default"),
            legacy=project_id in args.legacy,
        )
    if args.pid_file:
        with open(args.pid_file, "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
    print(f"fake GitLab listening on {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
