"""A webhook receiver for the tests, run as its own process: ``python receiver.py SECRET LOG
[CERT KEY]`` (with CERT and KEY it serves https).

It listens on a free port of 127.0.0.1 (printed as the first line of stdout), verifies each
POST's Standard Webhooks signature with SECRET by plain ``hmac`` (independently of
workers/notify/signing.py) and appends one JSON line per request to LOG. Answers by path:
``/fail2...`` 500 to its first two requests then 200, ``/gone...`` 410, ``/redirect...`` 307 to
``/ok``, anything else 200.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


def signature_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether any ``v1`` signature in the headers matches ``secret`` and the timestamp is fresh."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    given = [s.partition(",")[2].encode() for s in headers.get("webhook-signature", "").split()
             if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


def main() -> None:
    """Serve until killed."""
    secret, log_path = sys.argv[1], sys.argv[2]
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                seen[self.path] += 1
                count = seen[self.path]
            if self.path.startswith("/fail2"):
                code = 500 if count <= 2 else 200
            elif self.path.startswith("/gone"):
                code = 410
            elif self.path.startswith("/redirect"):
                code = 307
            else:
                code = 200
            entry = {"path": self.path, "host": headers.get("host"), "id": headers.get("webhook-id"),
                     "timestamp": headers.get("webhook-timestamp"),
                     "signature": headers.get("webhook-signature"), "body": body.decode(),
                     "valid": signature_valid(secret, headers, body), "answered": code,
                     "event": json.loads(body) if body else None}
            with lock, open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
            self.send_response(code)
            if code == 307:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if len(sys.argv) > 4:  # https: certificate and key files
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
