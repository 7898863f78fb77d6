"""Wharf's example app: answers HTTP on $PORT and prints one log line per request.

Runs with the python3 every machine has; no packages needed.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps(
            {
                "app": os.environ.get("APP_NAME", "hello"),
                "dyno": os.environ.get("DYNO", "?"),
                "release": os.environ.get("RELEASE", "?"),
                "greeting": os.environ.get("GREETING", "hello from wharf"),
                "path": self.path,
            }
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        # One line per request on stdout: the log shuttle picks it up as the dyno's own line.
        print(
            "request method=%s path=%s request_id=%s"
            % (self.command, self.path, self.headers.get("x-request-id", "-")),
            flush=True,
        )


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    print("listening on port %d" % port, flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
