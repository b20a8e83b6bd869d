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
