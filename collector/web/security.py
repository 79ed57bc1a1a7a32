"""The console's guard: one ASGI middleware in front of every route, and the login throttle's keys.

In order, for every request:
1. the client address (with `http.trusted_proxy`: only the proxy and loopback may connect, and
   the proxy's last X-Forwarded-For entry names the client);
2. the Host header must be a loopback name, `http.host` or one of `http.allowed_hosts` (else 400:
   a page on another site cannot reach the console through DNS rebinding);
3. headers are capped at MAX_HEADER_BYTES (431) and the body at `http.max_body_kib` (413),
   counted as it arrives, not trusted from Content-Length alone;
4. a request still running after `http.request_timeout_s` gets 503;
5. every answer gets the security headers (CSP without inline script, frame-ancestors none,
   nosniff, no referrer to other sites) and `Cache-Control: no-store` except the static files.
"""

import asyncio
import ipaddress
import logging

from collector.config import is_loopback

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024  # also h11's limit while headers arrive (server.py)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` on its own form
    # posts and fetches, and the Origin check could not tell the console's own pages from another site
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def allowed_hosts(http):
    """The Host names the console answers to (lower case, no port)."""
    hosts = set(LOOPBACK_NAMES)
    if http.host and http.host not in ("0.0.0.0", "::", ""):
        hosts.add(http.host.lower())
    hosts.update(h.lower().strip("[]") for h in http.allowed_hosts)
    return frozenset(hosts)


def host_name(value):
    """'example.vn:8080' -> 'example.vn'; '[::1]:80' -> '::1'; None when malformed."""
    v = (value or "").strip().lower()
    if not v or len(v) > 300:
        return None
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else None
    if v.count(":") == 1:
        v, _, port = v.partition(":")
        if not port.isdigit():
            return None
    elif v.count(":") > 1:
        return None  # an IPv6 address must be in brackets
    return v


def client_address(scope, trusted_proxy):
    """The client's address: the proxy's last X-Forwarded-For entry when the request came through it."""
    addr = (scope.get("client") or ("", 0))[0]
    if trusted_proxy and addr == trusted_proxy:
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                parts = [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
                if parts:
                    return parts[-1]  # what the proxy saw; earlier entries are the client's own claims
    return addr


def may_connect(addr, trusted_proxy):
    if not trusted_proxy:
        return True
    try:
        return addr == trusted_proxy or is_loopback(addr) or ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


async def _plain(send, status, text, extra=()):
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            (b"connection", b"close"), *SECURITY_HEADERS, *extra]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app, http, tls):
        self.app = app
        self.hosts = allowed_hosts(http)
        self.trusted_proxy = http.trusted_proxy
        self.max_body = http.max_body_kib * 1024
        self.timeout = http.request_timeout_s
        self.extra = [(b"strict-transport-security", b"max-age=31536000")] if tls else []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        peer = (scope.get("client") or ("", 0))[0]
        if not may_connect(peer, self.trusted_proxy):
            log.warning("refused a request from %s: only http.trusted_proxy (%s) may connect", peer,
                        self.trusted_proxy)
            return await _plain(send, 403, "only the reverse proxy (http.trusted_proxy) may connect\n")
        scope.setdefault("state", {})["client"] = client_address(scope, self.trusted_proxy)
        raw = scope.get("headers", ())
        if sum(len(k) + len(v) + 4 for k, v in raw) > MAX_HEADER_BYTES:
            return await _plain(send, 431, f"the request's headers are larger than {MAX_HEADER_BYTES} bytes\n")
        headers = dict(raw)
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts:
            log.warning("refused a request for Host %r (not in http.allowed_hosts)", host)
            return await _plain(send, 400, "this host name is not served here; add it to http.allowed_hosts\n")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _plain(send, 400, "Content-Length must be a number\n")
            if too_big:
                return await _plain(send, 413, f"the request body is larger than {self.max_body} bytes\n")

        seen = 0
        started = blocked = False
        static = scope.get("path", "").startswith("/static/")

        async def capped_receive():
            # a body larger than the cap (chunked, no Content-Length): answer 413 and tell the app the
            # client left, so that it stops reading; whatever it answers then is dropped
            nonlocal seen, started, blocked
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    if not started:
                        started = blocked = True
                        await _plain(send, 413, f"the request body is larger than {self.max_body} bytes\n")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if blocked:
                return
            if message["type"] == "http.response.start":
                started = True
                hs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control" or static]
                hs += SECURITY_HEADERS + self.extra
                if not static:
                    hs.append((b"cache-control", b"no-store"))
                message = {**message, "headers": hs}
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, capped_receive, guarded_send), self.timeout)
        except TimeoutError:
            log.warning("%s %s took longer than http.request_timeout_s (%.0f s)", scope.get("method"),
                        scope.get("path"), self.timeout)
            if not started:
                await _plain(send, 503, "the request took too long; narrow it (fewer days, one checkpoint) and "
                             "try again\n")
