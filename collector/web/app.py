"""The console's application: `create_app(cfg, storage, collector=None)` (FastAPI).

Pieces a page uses (see README.md in this folder for the recipe):

- `require(Permission.X, ...)`: the dependency every route takes. It finds who asks (session
  cookie or `Authorization: Bearer` API token), answers 401 / a redirect to the login page when
  nobody is signed in, 403 when the role lacks a permission, and on every write checks the CSRF
  token (forms: field `csrf_token`), or for JSON: `Content-Type: application/json` (415) and an
  Origin of this console (403). It returns the `Principal` (`.actor` for the audit log,
  `.sees_checkpoint(cp)` for ward scopes).
- `render(request, "page.html", {...})`: a template in the base layout, with `_`/`ngettext`,
  `lang.time(value)` (times in http.timezone), `user`, `csrf_token`, `nav`.
- `web(request)`: the `Web` context (cfg, storage, accounts, collector) and `await web.db(fn, ...)`
  to run a query in the bounded thread pool with a database connection.
"""

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from chot.errors import ChotError
from collector.cases import CaseBook
from collector.queries import QueryError
from collector.web.accounts import Accounts, LoginThrottle, Permission, Role
from collector.web.i18n import LANGUAGE_NAMES, LANGUAGES, Lang, load_catalogues, pick_language
from collector.web.security import GuardMiddleware, allowed_hosts

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "chot_session"
PRELOGIN_COOKIE = "chot_login"  # double-submit token of the login form (no session yet)
LANG_COOKIE = "lang"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def N_(message):
    """Mark a string for translation where it is defined (nav labels); it is translated when shown."""
    return message


@dataclass(frozen=True)
class NavItem:
    """A link of the navigation bar, shown only to those with `permission`; sorted by `order`."""

    path: str
    label: str  # an N_() string
    permission: Permission | None = None
    order: int = 50


# Role names as shown (translated in templates with _(user.role)).
ROLE_NAMES = (N_("admin"), N_("tracer"), N_("ward_officer"), N_("checkpoint_staff"), N_("viewer"), N_("API token"))

# The navigation bar. A page adds its own entry with `nav_item(...)` in its module.
NAV: list[NavItem] = []


def nav_item(path, label, permission=None, order=50):
    """Add a link to the navigation bar (once per path; the module of the page calls it when imported).

    `order`: where it goes (home 0, personal pages 10-39, fleet and traffic 40-59, paper 60-69, admin 90+).
    """
    if any(n.path == path for n in NAV):
        return
    NAV.append(NavItem(path, label, permission, order))
    NAV.sort(key=lambda n: (n.order, n.path))


class NotSignedIn(Exception):
    """Nobody (or an ended session) asks: a page redirects to /login, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but this role/token may not (page: the 403 page; API: 403 JSON)."""

    def __init__(self, message="", status=403):
        super().__init__(message)
        self.status = status


@dataclass
class Web:
    """What every request can reach: `request.app.state.web`."""

    cfg: object
    storage: object
    accounts: Accounts
    collector: object = None
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    tls: bool = False
    catalogues: dict = field(default_factory=dict)
    env: Environment | None = None
    hosts: frozenset = frozenset()
    api_endpoints: list = field(default_factory=list)  # GET /api/ lists them

    async def db(self, fn, *args, **kwargs):
        """Run `fn(*args, **kwargs)` in the bounded thread pool inside a database connection."""
        def call():
            with self.storage.connection():
                return fn(*args, **kwargs)
        return await run_in_threadpool(call)

    def lang(self, request):
        code = pick_language(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                             request.headers.get("accept-language"), self.cfg.http.language)
        return Lang(code, self.catalogues[code], self.cfg.http.timezone)


def web(request) -> Web:
    return request.app.state.web


def client(request):
    """The client's address (the proxy's X-Forwarded-For with http.trusted_proxy)."""
    return request.scope.get("state", {}).get("client") or (request.client.host if request.client else "")


def secure(request):
    """True when the browser talks HTTPS to us (TLS here, or through the trusted proxy): cookies get Secure."""
    return bool(request.scope.get("state", {}).get("https"))


def is_api(request):
    return request.url.path.startswith("/api/") or request.url.path == "/api"


# --- who asks ---------------------------------------------------------------------------------


def _identify(w, request):
    """(Principal, csrf or None, by_token) of the request, or (None, None, False)."""
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None, None, False
        with w.storage.connection():
            return w.accounts.token_principal(secret.strip()), None, True
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None, None, False
    with w.storage.connection():
        found = w.accounts.session(token, w.cfg.http.session_idle_minutes)
    if found is None:
        return None, None, False
    return found[0], found[1], False


def same_origin(w, request):
    """True when the request's Origin (or, lacking one, Referer) is this console's."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return None
    u = urlparse(origin)
    if u.scheme not in ("http", "https") or not u.hostname:
        return False
    if u.hostname.lower() not in w.hosts:
        return False
    # the port must be the one the browser used for this request (the Host header's)
    host = request.headers.get("host", "")
    want_port = host.rsplit(":", 1)[1] if host.rsplit(":", 1)[-1].isdigit() and not host.endswith("]") else None
    port = str(u.port) if u.port else None
    default = "443" if u.scheme == "https" else "80"
    return (port or default) == (want_port or default)


async def check_write(w, request, by_token, csrf):
    """A write (POST/PUT/PATCH/DELETE) must come from this console; see the module's docstring."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    origin_ok = same_origin(w, request)
    if origin_ok is False or (origin_ok is None and not by_token):
        raise Forbidden("the request does not come from this console (Origin); reload the page and try again")
    if is_api(request) or ctype == "application/json":
        if ctype != "application/json":
            raise Forbidden("JSON writes must be sent as Content-Type: application/json", status=415)
        return
    if by_token:
        return
    form = await request.form()
    sent = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
    if not csrf or not secrets.compare_digest(str(sent), csrf):
        raise Forbidden("the form's security token is missing or old; reload the page and try again")


def require(*permissions):
    """The dependency of a route: who asks, and may they. Returns the Principal.

    Each argument is a `Permission` the principal must have, or a `Role` it must be
    (`require(Role.ADMIN)`); prefer permissions, so that API tokens can be given them as scopes.
    """
    async def dependency(request: Request):
        w = web(request)
        principal, csrf, by_token = await run_in_threadpool(_identify, w, request)
        if principal is None:
            raise NotSignedIn()
        request.state.principal = principal
        request.state.csrf = csrf
        missing = [p for p in permissions
                   if not (principal.role == p if isinstance(p, Role) else principal.may(p))]
        if missing:
            raise Forbidden(f"{principal.actor} may not: {', '.join(str(p) for p in missing)}")
        if request.method not in SAFE_METHODS:
            await check_write(w, request, by_token, csrf)
        return principal

    return dependency


signed_in = require()  # any signed-in user or token


# --- templates --------------------------------------------------------------------------------


def render(request, template, context=None, status=200):
    """An HTML page in the base layout (see templates/base.html)."""
    w = web(request)
    lang = w.lang(request)
    principal = getattr(request.state, "principal", None)
    ctx = {
        "request": request,
        "lang": lang,
        "_": lang.gettext,
        "gettext": lang.gettext,
        "ngettext": lang.ngettext,
        "user": principal,
        "csrf_token": getattr(request.state, "csrf", None) or "",
        "nav": [n for n in NAV if principal is not None and (n.permission is None or principal.may(n.permission))],
        "languages": [(c, LANGUAGE_NAMES[c]) for c in LANGUAGES],
        "path": request.url.path,
        "here": quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/?=&"),
    }
    ctx.update(context or {})
    html = w.env.get_template(template).render(ctx)
    return HTMLResponse(html, status_code=status)


def _environment():
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    return env


def local_path(target, default="/"):
    """`target` when it is a path on this site (for ?next=), else `default` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    u = urlparse(target)
    if u.scheme or u.netloc:
        return default
    return target


# --- the app ----------------------------------------------------------------------------------


class ConsoleApp(FastAPI):
    """FastAPI with the guard (security.GuardMiddleware) outside everything, error pages included."""

    def build_middleware_stack(self):
        w = self.state.web
        return GuardMiddleware(super().build_middleware_stack(), w.cfg.http, w.tls)


def create_app(cfg, storage, collector=None, accounts=None, throttle=None):
    """The console: pages, the JSON API, login; `storage` a collector.storage.Storage."""
    from collector.web import api, auth, pages

    tls = bool(cfg.http.tls_cert and cfg.http.tls_key)
    w = Web(cfg=cfg, storage=storage, accounts=accounts or Accounts(storage), collector=collector,
            throttle=throttle or LoginThrottle(), tls=tls, catalogues=load_catalogues(), env=_environment(),
            hosts=allowed_hosts(cfg.http))
    app = ConsoleApp(title="Chot console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = w
    CaseBook(storage)  # storage.case_book: personal reads (pages and API) need an open case (collector/cases.py)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(auth.router)
    app.include_router(api.router)
    routers = pages.routers()
    for router in routers:
        app.include_router(router)
    for router in [api.router, *routers]:
        for r in router.routes:
            path = getattr(r, "path", "")
            if path.startswith("/api/") and path != "/api/":
                w.api_endpoints += [path if m == "GET" else f"{m} {path}" for m in sorted(getattr(r, "methods", ()))
                                    if m != "HEAD"]
    w.api_endpoints.sort(key=lambda e: (" " in e, e))

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request, exc):
        if is_api(request):
            return JSONResponse({"error": "sign in first: a session, or Authorization: Bearer <API token>"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request, exc):
        log.warning("refused %s %s: %s", request.method, request.url.path, exc)
        if is_api(request) or exc.status == 415:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return render(request, "error.html", {"status": exc.status, "message": str(exc), "kind": "forbidden"},
                      status=exc.status)

    @app.exception_handler(QueryError)
    async def query_error(request, exc):
        return _error(request, 400, str(exc))

    @app.exception_handler(ChotError)
    async def chot_error(request, exc):
        return _error(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
        return _error(request, 400, "; ".join(parts) or "bad request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def gone(request, exc):  # the client left (or the body was over the cap: 413 was sent)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal(request, exc):
        log.exception("the console failed on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal error; see the collector's log")

    return app


def _error(request, status, message):
    if is_api(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", {"status": status, "message": message, "kind": "error"}, status=status)
