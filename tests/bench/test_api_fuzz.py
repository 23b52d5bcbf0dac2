"""The fuzz's own failure path, against a real HTTP server that breaks its schema: what it counts and keeps
(the app's passing run is in tests/serve_app/test_app.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import api_fuzz

SCHEMA = {
    "openapi": "3.1.0",
    "info": {"title": "broken", "version": "1"},
    "paths": {
        "/recommend": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "k": {"type": "integer", "minimum": 1, "maximum": 5},
                                    "text": {"type": "string", "maxLength": 10},
                                    "history": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                                },
                                "required": ["history"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                # 413 documented, as the app documents it: only the broken answers below fail a check
                "responses": {
                    status: {"description": about, "content": {"application/json": {"schema": {}}}}
                    for status, about in (("200", "ok"), ("413", "too long"))
                },
            }
        }
    },
}


class Broken(BaseHTTPRequestHandler):
    """Serves the schema; answers a POST with a 413 when its body has a "text" over its bound (refused, as a
    body over a byte limit is), else with a 500 when it has no "k", else a 200 even when it breaks the schema."""

    def do_GET(self):
        self.answer(200, SCHEMA)

    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        except ValueError:
            body = None
        fields = body if isinstance(body, dict) else {}
        if isinstance(fields.get("text"), str) and len(fields["text"]) > 10:
            self.answer(413, {"error": "too long"})
        else:
            self.answer(200 if "k" in fields else 500, {"items": []})

    def answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_server_errors_and_accepted_bad_requests_are_counted_and_kept():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        found = api_fuzz.fuzz(f"http://127.0.0.1:{server.server_port}", cases=60, seconds=60)
    finally:
        server.shutdown()
        server.server_close()
    assert found["server_errors"] == found["statuses"].get("500", 0) > 0 and found["statuses"].get("413", 0) > 0
    assert found["check_failures"].get("Server error", 0) > 0, found["check_failures"]
    assert found["check_failures"].get("Schema-violating request accepted", 0) > 0, found["check_failures"]
    assert 0 < len(found["failures"]) <= 10 and all(f["failed"] for f in found["failures"])
    # a 413 for a text over its bound counts as refusing it: no failure kept is a 413
    assert all(f.get("status") != 413 for f in found["failures"])
