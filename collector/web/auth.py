"""Sign in, sign out and the language switch.

The login form carries a double-submit token (cookie `chot_login` = form field) and must come
from this console's Origin; failures are throttled per user name and per client address
(accounts.LoginThrottle: 429 with the wait). A session cookie is HttpOnly, SameSite=Strict,
Secure under TLS, and lives at most `http.session_hours` (idle: `http.session_idle_minutes`).
"""

import hashlib
import hmac
import logging
import math
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from collector.web.app import (
    LANG_COOKIE,
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    client,
    local_path,
    render,
    require,
    same_origin,
    secure,
    web,
)
from collector.web.i18n import LANGUAGES

log = logging.getLogger(__name__)
router = APIRouter()
_TAG_KEY = secrets.token_bytes(32)  # per process: a typed name's tag tells attempts apart, never the name


def _typed(name):
    """What the log says of a name typed into the login form: a tag (8 hex, keyed per process), never the
    text: the field may hold anything (a password typed in the wrong box, somebody's ID number)."""
    return "name#" + hmac.new(_TAG_KEY, name.lower().encode("utf-8"), hashlib.sha256).hexdigest()[:8]


def _login_page(request, nxt, error=None, status=200, name=""):
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", {"next": nxt, "error": error, "login_token": token, "name": name},
                  status=status)
    resp.set_cookie(PRELOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=secure(request), path="/login")
    return resp


@router.get("/login")
async def login_form(request: Request, next: str = "/"):  # noqa: A002 (the query parameter's name)
    return _login_page(request, local_path(next))


@router.post("/login")
async def login(request: Request):
    w = web(request)
    lang = w.lang(request)
    form = await request.form()
    nxt = local_path(str(form.get("next") or "/"))
    name = str(form.get("name") or "").strip()[:64]
    password = str(form.get("password") or "")[:1024]
    sent = str(form.get("login_token") or "")
    cookie = request.cookies.get(PRELOGIN_COOKIE) or ""
    if same_origin(w, request) is False or not cookie or not secrets.compare_digest(sent, cookie):
        return _login_page(request, nxt, lang.gettext("The form expired. Please sign in again."), 403, name)
    addr = client(request)
    keys = (f"user:{name.lower()}", f"addr:{addr}")
    wait = w.throttle.wait_s(*keys)
    if wait > 0:
        log.warning("login throttled for %s from %s (%.0f s)", _typed(name), addr, wait)
        return _login_page(request, nxt, lang.gettext("Too many failed attempts. Try again in %(s)d seconds.",
                                                      s=math.ceil(wait)), 429, name)

    def check():
        with w.storage.connection():
            p = w.accounts.authenticate(name, password)
            if p is None:
                return None, None
            return p, w.accounts.new_session(p, w.cfg.http.session_hours, addr)

    principal, made = await run_in_threadpool(check)
    if principal is None:
        w.throttle.failed(*keys)
        log.warning("failed login for %s from %s", _typed(name), addr)
        return _login_page(request, nxt, lang.gettext("Wrong user name or password."), 401, name)
    w.throttle.succeeded(*keys)
    log.info("%s signed in from %s", principal.name, addr)
    token, _csrf = made
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(SESSION_COOKIE, token, max_age=int(w.cfg.http.session_hours * 3600), httponly=True,
                    samesite="strict", secure=secure(request), path="/")
    resp.delete_cookie(PRELOGIN_COOKIE, path="/login")
    return resp


@router.post("/logout")
async def logout(request: Request, principal=Depends(require())):
    w = web(request)
    token = request.cookies.get(SESSION_COOKIE)
    await w.db(w.accounts.end_session, token)
    log.info("%s signed out", principal.name)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request))
    return resp


@router.get("/lang/{code}")
async def set_language(request: Request, code: str, next: str = "/"):  # noqa: A002
    resp = RedirectResponse(local_path(next), status_code=303)
    if code in LANGUAGES:
        resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", secure=secure(request), path="/")
    return resp
