"""A flaky stand-in for the national declaration system, run as its own process by tests/test_forward.py.

    python tests/forward_receiver.py PORT STATE_DIR TOKEN FAIL_RATE SEED

POST / with a JSON body: the `Authorization: Bearer TOKEN` must match (else 401) and the
`Idempotency-Key` header must equal the body's `idempotency_key` (else 422). It fails at random
(FAIL_RATE): 500, 429 with Retry-After, a stalled answer (the client times out), a connection
reset before recording, and a reset after recording (the client never learns it was accepted).
What it accepts it deduplicates by key: the first acceptance of a key is appended (and fsynced)
to STATE_DIR/accepted.jsonl as {"key", "body"}, so it survives a kill; a repeat is answered 200
and counted in STATE_DIR/duplicates. A body whose `refuse_field` value (STATE_DIR/refuse.json:
{"field": ..., "values": [...], "status": 400}) is listed gets that status (400: the refusal a dead
letter is for; 500: an event the receiver always fails on).
"""

import json
import os
import random
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT, STATE, TOKEN, FAIL_RATE, SEED = (int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]),
                                       int(sys.argv[5]))
ACCEPTED = STATE / "accepted.jsonl"
LOCK = threading.Lock()
RNG = random.Random(SEED * 1000 + os.getpid())
KEYS = set()
if ACCEPTED.exists():
    if not ACCEPTED.read_bytes().endswith(b"\n"):
        with open(ACCEPTED, "a") as f:
            f.write("\n")  # end a line torn by a kill: the next acceptance starts on its own line
    for line in ACCEPTED.read_text().splitlines():
        try:
            KEYS.add(json.loads(line)["key"])
        except ValueError:  # a line torn by a kill: that acceptance was never answered, the client sends it again
            continue


def _bump(name):
    """Count in a file, replaced whole (a kill never leaves it half written)."""
    p = STATE / name
    n = int(p.read_text()) if p.exists() else 0
    tmp = p.with_suffix(".tmp")
    tmp.write_text(str(n + 1))
    os.replace(tmp, p)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without it a delayed ACK costs 40 ms each

    def log_message(self, *args):
        pass

    def _answer(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _reset(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        with LOCK:
            _bump("requests")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"error": "unauthorized"})
        key = self.headers.get("Idempotency-Key")
        if not key or key != body.get("idempotency_key"):
            return self._answer(422, {"error": "key"})
        with LOCK:
            r = RNG.random()
            mode = RNG.choice(["500", "429", "stall", "reset", "accept_reset"]) if r < FAIL_RATE else "ok"
        if mode == "500":
            return self._answer(500, {"error": "busy"})
        if mode == "429":
            return self._answer(429, {"error": "slow down"}, [("Retry-After", "0")])
        if mode == "stall":
            time.sleep(1.5)
            return self._reset()
        if mode == "reset":
            return self._reset()
        refuse = STATE / "refuse.json"
        if refuse.exists():
            rule = json.loads(refuse.read_text())
            if body.get(rule["field"]) in rule["values"]:
                return self._answer(rule.get("status", 400), {"error": "invalid field"})
        with LOCK:
            if key in KEYS:
                _bump("duplicates")
            else:
                with open(ACCEPTED, "a") as f:
                    f.write(json.dumps({"key": key, "body": body}, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                KEYS.add(key)
        if mode == "accept_reset":
            return self._reset()
        return self._answer(200, {"ok": True})


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    STATE.mkdir(parents=True, exist_ok=True)
    Server(("127.0.0.1", PORT), Handler).serve_forever()
