#!/usr/bin/env python3
"""glustereventsd's design, for the events benchmark: a per-node daemon receiving one
UDP datagram per event and POSTing `{"nodeid", "ts", "event", "message"}` to a
webhook, once, with no retry and no persistence (what glustereventsd does).

Usage: udp_forwarder.py UDP_PORT WEBHOOK_URL
A datagram is `EVENT_TYPE key=value key=value ...` (gluster's wire form).
"""

import json
import socket
import sys
import time
import urllib.request

PORT, URL = int(sys.argv[1]), sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", PORT))
while True:
    data, _ = sock.recvfrom(65536)
    words = data.decode().split()
    message = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    body = json.dumps({"nodeid": "n1", "ts": int(time.time()), "event": words[0],
                       "message": message, "id": message.get("id")}).encode()
    request = urllib.request.Request(URL, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
    except Exception:
        pass  # glustereventsd logs and forgets
