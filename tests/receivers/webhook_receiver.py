#!/usr/bin/env python3
"""A webhook receiver for the tests: verifies every delivery with an implementation
independent of georepd's (Python's hmac and hashlib), and records it.

Usage: webhook_receiver.py PORT OUT CONTROL [--token T] [--jwt-secret S]
                           [--standard-secret whsec_...] [--tls-cert PEM --tls-key PEM]

Each delivery is appended to OUT as one JSON line: the body's id, event, nodeid, ts,
message, the raw body, `received_at` (Unix seconds), and `verified` (with `why`
when false). CONTROL is re-read on
every request: `ok` answers 204, a number answers that status (with Retry-After: 1 for
503), `retry-after:N` answers 503 with Retry-After: N, `slow` answers 204 after 300 ms.
Every request, whatever the answer, is appended to OUT.attempts as `{"at", "status",
"id"}`.
With --tls-cert and --tls-key it serves HTTPS.
"""

import base64
import hashlib
import hmac
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, OUT, CONTROL = int(sys.argv[1]), sys.argv[2], sys.argv[3]
OPTS = dict(zip(sys.argv[4::2], sys.argv[5::2]))
LOCK = threading.Lock()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(headers, body, payload):
    """Returns None if the delivery is authentic, else why not."""
    if "--token" in OPTS:
        if headers.get("Authorization") != "Bearer " + OPTS["--token"]:
            return "bad bearer token: %r" % headers.get("Authorization")
    if "--jwt-secret" in OPTS:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return "no bearer JWT"
        parts = auth[len("Bearer "):].split(".")
        if len(parts) != 3:
            return "not a JWT"
        head = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        expected = hmac.new(OPTS["--jwt-secret"].encode(),
                            (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
        if head.get("alg") != "HS256" or not hmac.compare_digest(expected, b64url_decode(parts[2])):
            return "bad JWT signature"
        if claims.get("iss") != "gluster" or claims.get("sub") != payload.get("event"):
            return "bad JWT claims %r" % claims
        if claims.get("iat") != payload.get("ts") or claims.get("exp", 0) < time.time():
            return "bad JWT times %r" % claims
    if "--standard-secret" in OPTS:
        key = base64.b64decode(OPTS["--standard-secret"][len("whsec_"):])
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = headers.get("webhook-signature", "").split(" ")
        if expected not in offered:
            return "bad standard signature %r" % offered
        if abs(time.time() - int(stamp or 0)) > 300:
            return "stale webhook-timestamp"
        if msg_id != payload.get("id"):
            return "webhook-id %r is not the body's id" % msg_id
    if headers.get("Content-Type") != "application/json":
        return "content type %r" % headers.get("Content-Type")
    return None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.body = body
        try:
            with open(CONTROL) as f:
                mode = f.read().strip() or "ok"
        except OSError:
            mode = "ok"
        retry_after = "1"
        if mode.startswith("retry-after:"):
            mode, retry_after = "503", mode.split(":", 1)[1]
        if mode.isdigit():
            self.attempt(int(mode))
            self.send_response(int(mode))
            if mode == "503":
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"nope")
            return
        if mode == "slow":
            time.sleep(0.3)
        try:
            payload = json.loads(body)
            why = verify(self.headers, body, payload)
        except Exception as error:  # a malformed delivery is recorded, not fatal
            payload, why = {}, "undecodable: %s" % error
        record = {
            "id": payload.get("id"), "event": payload.get("event"),
            "nodeid": payload.get("nodeid"), "ts": payload.get("ts"),
            "message": payload.get("message"), "keys": sorted(payload.keys()),
            "body": body.decode("utf-8", "replace"), "verified": why is None, "why": why,
            "received_at": time.time(),
        }
        with LOCK, open(OUT, "a") as out:
            out.write(json.dumps(record) + "\n")
        self.attempt(204 if why is None else 401)
        self.send_response(204 if why is None else 401)
        self.end_headers()

    def attempt(self, status):
        try:
            first = json.loads(self.body)["id"]
        except Exception:
            first = None
        with LOCK, open(OUT + ".attempts", "a") as out:
            out.write(json.dumps({"at": time.time(), "status": status, "id": first}) + "\n")

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
if "--tls-cert" in OPTS:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(OPTS["--tls-cert"], OPTS["--tls-key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
