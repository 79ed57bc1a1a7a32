"""The collector's JSON HTTP API and its small dashboard (stdlib ThreadingHTTPServer).

The same query code as the CLI (collector.queries):

    GET  /api/visits?person=..&case=..&from=..&to=..          (personal: case required, audited)
    GET  /api/contacts?person=..&case=..&days=..&window=..&at=..  (personal: case required, audited)
    GET  /api/traffic?checkpoint=..&from=..&to=..
    GET  /api/fleet
    GET  /api/stats                      the subscriber's counters (when running with it)
    GET  /api/export.csv?case=..&from=..&to=..&checkpoint=..    (clear columns; case required, audited)
    POST /api/manual   {"checkpoint", "direction", "id_number" | ("name", "dob"), "phone"?, "time"?}
    GET  /             the dashboard (collector/static/index.html)

`person` is an ID number or nd:NAME|YYYY-MM-DD. The audit log names the actor
"api:<client address>" (issue 12 puts authenticated tracers in front of it).

Errors are JSON {"error": "..."} with status 400 (bad arguments) or 404/500. It binds
127.0.0.1 by default: put a reverse proxy with authentication in front of it before opening
it to a network, since it answers tracing questions about people.
"""

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from chot.errors import ChotError
from collector import queries
from collector.config import is_loopback
from collector.queries import QueryError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_BODY = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server_version = "chot-collector"
    protocol_version = "HTTP/1.1"

    # --- plumbing -------------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # the query string names people: log only the route
        log.debug("%s %s -> %s", self.command, urlparse(self.path).path, args[1] if len(args) > 1 else "")

    def _send(self, status, body, ctype="application/json; charset=utf-8"):
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, obj, status=200):
        self._send(status, queries.dumps(obj) + "\n")

    def _error(self, status, message):
        self._json({"error": message}, status)

    def _args(self):
        q = parse_qs(urlparse(self.path).query, keep_blank_values=True)
        return {k: v[-1] for k, v in q.items()}

    def _dispatch(self, routes):
        path = urlparse(self.path).path
        fn = routes.get(path)
        if fn is None:
            return self._error(404, f"no such endpoint {path}; see /api/ for the list")
        storage = self.server.storage
        try:
            with storage.connection():
                fn(self, storage)
        except QueryError as exc:
            self._error(400, str(exc))
        except ChotError as exc:
            self._error(400, str(exc))
        except Exception:
            log.exception("the API failed on %s", path)
            self._error(500, "internal error; see the collector's log")

    # --- GET ----------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch(_GET)

    def do_HEAD(self):
        self._dispatch(_GET)

    def do_POST(self):
        self._dispatch(_POST)

    def _body_json(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise QueryError("Content-Length must be a number") from None
        if n <= 0 or n > MAX_BODY:
            raise QueryError(f"the request needs a JSON body of at most {MAX_BODY} bytes")
        try:
            obj = json.loads(self.rfile.read(n))
        except (UnicodeDecodeError, ValueError):
            raise QueryError("the body is not JSON") from None
        if not isinstance(obj, dict):
            raise QueryError("the body must be a JSON object")
        return obj


def _index(h, storage):
    h._send(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")


def _api_list(h, storage):
    h._json({"endpoints": [p for p in sorted(_GET) if p.startswith("/api/")] + ["POST /api/manual"]})


def _actor(h):
    return f"api:{_client(h)}"


def _client(h):
    """The client's address: the proxy's X-Forwarded-For when the request came through `http.trusted_proxy`."""
    addr = h.client_address[0]
    proxy = getattr(h.server, "trusted_proxy", None)
    if proxy and addr == proxy:
        forwarded = [a.strip() for a in (h.headers.get("X-Forwarded-For") or "").split(",") if a.strip()]
        if forwarded:
            return forwarded[-1]  # the address the proxy saw; earlier entries are the client's own claims
    return addr


def _visits(h, storage):
    a = h._args()
    h._json(queries.visits(storage, a.get("person"), a.get("case"), _actor(h), a.get("from"), a.get("to")))


def _contacts(h, storage):
    a = h._args()
    h._json(queries.contacts(storage, a.get("person"), a.get("case"), _actor(h), a.get("days"), a.get("window"),
                             a.get("at")))


def _traffic(h, storage):
    a = h._args()
    h._json(queries.traffic(storage, a.get("checkpoint") or None, a.get("from"), a.get("to")))


def _fleet(h, storage):
    h._json(queries.fleet(storage))


def _stats(h, storage):
    col = h.server.collector
    h._json(col.stats() if col is not None else {})


def _export(h, storage):
    a = h._args()
    buf = io.StringIO()
    queries.export_csv(storage, buf, a.get("case"), _actor(h), a.get("from"), a.get("to"), a.get("checkpoint") or None)
    h._send(200, buf.getvalue(), "text/csv; charset=utf-8")


def _manual(h, storage):
    body = h._body_json()
    allowed = {"checkpoint", "direction", "id_number", "time", "name", "phone", "dob", "decision"}
    extra = set(body) - allowed
    if extra:
        raise QueryError(f"unknown fields: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")
    ev = queries.record_manual(
        storage,
        h.server.collector_id,
        body.get("checkpoint"),
        body.get("direction"),
        id_number=body.get("id_number"),
        time=body.get("time"),
        name=body.get("name"),
        phone=body.get("phone"),
        dob=body.get("dob"),
        decision=body.get("decision") or "PASS",
    )
    h._json(ev, 201)


_GET = {
    "/": _index,
    "/index.html": _index,
    "/api/": _api_list,
    "/api/visits": _visits,
    "/api/contacts": _contacts,
    "/api/traffic": _traffic,
    "/api/fleet": _fleet,
    "/api/stats": _stats,
    "/api/export.csv": _export,
}
_POST = {"/api/manual": _manual}


class _Server(ThreadingHTTPServer):
    """With `http.trusted_proxy` set, only the proxy and this machine may connect (others are closed at once)."""

    trusted_proxy = None

    def verify_request(self, request, client_address):
        if not self.trusted_proxy:
            return True
        addr = client_address[0]
        if addr == self.trusted_proxy or is_loopback(addr):
            return True
        log.warning("refused a connection from %s: only http.trusted_proxy (%s) may connect", addr,
                    self.trusted_proxy)
        return False


class ApiServer:
    """The HTTP API in a background thread; `start()`, `stop()`, a context manager."""

    def __init__(self, cfg, storage, collector=None, host=None, port=None):
        from chot.errors import CollectorError

        h = cfg.http
        self.host = host or h.host
        self.port = h.port if port is None else port
        self.tls = bool(h.tls_cert and h.tls_key)
        if not (is_loopback(self.host) or self.tls or h.trusted_proxy):
            raise CollectorError(
                f"refusing to serve the console on {self.host}: beyond loopback it needs http.tls_cert and "
                "http.tls_key, or a reverse proxy with TLS and login in front of it (http.trusted_proxy)"
            )
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(h.tls_cert, h.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise CollectorError(f"cannot use http.tls_cert / http.tls_key: {exc}") from None
        try:
            self.httpd = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise CollectorError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}; change [http] port or stop what uses it"
            ) from None
        if context is not None:
            # the handshake happens in the request's thread, at its first read: a slow client holds no accept
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True,
                                                    do_handshake_on_connect=False)
        self.httpd.trusted_proxy = h.trusted_proxy
        self.httpd.daemon_threads = True
        self.httpd.storage = storage
        self.httpd.collector = collector
        self.httpd.collector_id = cfg.collector.id
        self.port = self.httpd.server_address[1]
        self._thread = None

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="collector-http", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
