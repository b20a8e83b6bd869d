"""Pieces of the small real HTTP servers tests start in-process (http.server on 127.0.0.1)."""
from __future__ import annotations

import json


def send_json(handler, code: int, obj) -> None:
    """Reply ``obj`` as JSON with status ``code`` from a BaseHTTPRequestHandler."""
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class PostRecorder:
    """A real HTTP endpoint on 127.0.0.1 (a free port, its own thread) that answers every POST with 200 and keeps
    ``(path, JSON body)`` of each: e.g. the receiving end of an Apprise ``json://`` alert channel.

    ``with PostRecorder() as rec: ... rec.url("hook/token")``; ``rec.posts`` is the list of what arrived."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []

    def __enter__(self) -> "PostRecorder":
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                posts.append((self.path, body))
                send_json(self, 200, {"ok": True})

            def log_message(self, *args):   # quiet: the test reads self.posts
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "hook") -> str:
        """An Apprise URL that posts JSON here."""
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}"


def refused_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed): connections to it are refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
