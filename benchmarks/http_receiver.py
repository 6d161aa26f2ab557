"""A minimal HTTP receiver for the webhook benchmarks: answers every POST
with 204 over keep-alive connections, in a process of its own so that it
takes no CPU from the process measured.

    python benchmarks/http_receiver.py 8787 &
    python benchmarks/throughput.py --backend webhook --option webhook.url=http://127.0.0.1:8787/
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response_only(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver)
    server.daemon_threads = True
    server.serve_forever()
