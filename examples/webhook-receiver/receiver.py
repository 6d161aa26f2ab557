"""A webhook receiver for dask-eventbus: verifies each request's Standard
Webhooks signature and prints its events, one line each.

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... python receiver.py 8080 0.0.0.0

Point the scheduler at it with eventbus.backends.webhook.url
http://<this host>:8080/ and the same secret.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection for every request

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            webhook.verify(body, dict(self.headers), json_parse=False)
        except WebhookVerificationError:
            return self.answer(401)  # refused for good: counted and announced
        # application/cloudevents+json: one event; ...-batch+json: a list.
        document = json.loads(body)
        for event in document if isinstance(document, list) else [document]:
            print(event["sequence"], event["type"], event.get("subject"), flush=True)
        self.answer(204)  # any 2xx acknowledges; 429 or 5xx make it retry later

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    port, host = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ThreadingHTTPServer((host, port), Receiver).serve_forever()
