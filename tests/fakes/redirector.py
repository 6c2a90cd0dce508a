"""Something in front of an API that redirects every request elsewhere, and the elsewhere: on
127.0.0.1, for the tests that check a token or key never follows a redirect to another host.

``Elsewhere().start()`` answers every request 200 with ``body`` (JSON) and keeps the headers each
request came with (``headers``); ``Redirector(elsewhere.url, code=302).start()`` answers every
request ``code`` with ``Location: <elsewhere.url><the request's path>``.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer((HOST, 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = None

    @property
    def url(self):
        return "http://{}:{}".format(HOST, self.httpd.server_address[1])

    def start(self):
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


class _ElsewhereHandler(BaseHTTPRequestHandler):
    def answer(self):
        owner = self.server.owner
        owner.headers.append(dict(self.headers.items()))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(owner.body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


class _RedirectHandler(BaseHTTPRequestHandler):
    def answer(self):
        owner = self.server.owner
        self.send_response(owner.code)
        self.send_header("Location", owner.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


class Elsewhere(_Server):
    def __init__(self, body=None):
        super().__init__(_ElsewhereHandler)
        self.body = {} if body is None else body
        self.headers = []


class Redirector(_Server):
    def __init__(self, target, code=302):
        super().__init__(_RedirectHandler)
        self.target = target.rstrip("/")
        self.code = code
