"""The console's gate (collector/web): sign-in, sessions, CSRF/Origin, Host allowlist, roles, API tokens,
bounds. Real uvicorn on a free port, real SQLite and PostgreSQL, httpx as the client."""

import io
import json
import socket
from datetime import timedelta

import httpx
import pytest
from web_helpers import PASSWORD, SESSION, csrf_of, login, login_token, try_login

from collector.storage import utcnow
from collector.web.accounts import LoginThrottle

PAGES = ["/", "/api/"]
API_GETS = ["/api/", "/api/visits?person=001090000001&case=C1", "/api/contacts?person=001090000001&case=C1",
            "/api/traffic", "/api/fleet", "/api/stats", "/api/export.csv?case=C1"]
PAPER = {"checkpoint": "market", "direction": "in", "id_number": "001090000099", "time": "2021-08-15T09:01:00Z"}


@pytest.fixture(autouse=True)
def _open_cases(request):
    """The personal reads below name the cases C1 and C7: open them (collector/cases.py refuses unknown ones),
    straight in the table so that the audit log these tests count holds only their reads."""
    for name in ("console", "console_sqlite"):
        if name in request.fixturenames:
            st = request.getfixturevalue(name).storage
            with st.connection():
                for number in ("C1", "C7"):
                    st.case_book.Case.create(number=number, person_key="0" * 64, reason="test", status="open",
                                             opened_by="test", opened_at=utcnow())


def _json_post(client, path, obj, origin=None, ctype="application/json"):
    headers = {"Content-Type": ctype}
    if origin:
        headers["Origin"] = origin
    return client.post(path, content=json.dumps(obj).encode(), headers=headers)


def test_no_session_gets_nothing(console):
    c = console.client()
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
    for path in API_GETS:
        r = c.get(path)
        assert r.status_code == 401, path
        assert "sign in" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert _json_post(c, "/api/manual", PAPER, console.url).status_code == 401
    # a made-up session cookie or bearer token is nobody
    c.cookies.set(SESSION, "x" * 43)
    assert c.get("/api/fleet").status_code == 401
    assert console.bearer("chot_" + "y" * 43).get("/api/fleet").status_code == 401
    with console.storage.connection():
        assert console.storage.audit_log() == []


def test_wrong_password_is_throttled_per_user_and_address(console_sqlite):
    console = console_sqlite

    def client_from(addr):  # loopback has many addresses: each is another client
        return console.client(transport=httpx.HTTPTransport(local_address=addr))

    c = client_from("127.0.0.1")
    # an unknown user name fails like a wrong password (same answer, same cost)
    r = try_login(console, c, "nobody", "whatever!!")
    assert r.status_code == 401 and "Sai tên đăng nhập hoặc mật khẩu" in r.text
    for _ in range(2):
        r = try_login(console, c, "tracer", "wrong password!")
        assert r.status_code == 401 and "Sai tên đăng nhập hoặc mật khẩu" in r.text
    # 3 failures from 127.0.0.1: even the right password is refused there for a while (429)
    r = try_login(console, c, "tracer")
    assert r.status_code == 429 and "Thử lại sau" in r.text and SESSION not in c.cookies
    login(console, "viewer", client=c, expect=429)  # per address: another user from there too
    for _ in range(3):
        login(console, "admin", "wrong password!", client=client_from("127.0.0.2"), expect=401)
    login(console, "admin", client=client_from("127.0.0.3"), expect=429)  # per user: from anywhere
    login(console, "viewer", client=client_from("127.0.0.4"), expect=303)  # others are not held up


def test_login_throttle_is_exponential_and_bounded():
    now = [0.0]
    t = LoginThrottle(free=3, base_s=2.0, cap_s=60.0, max_keys=100, clock=lambda: now[0])
    for _ in range(2):
        t.failed("user:a", "addr:1")
    assert t.wait_s("user:a") == 0
    waits = []
    for _ in range(6):
        t.failed("user:a")
        waits.append(t.wait_s("user:a"))
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    t.succeeded("user:a")
    assert t.wait_s("user:a") == 0
    for i in range(1000):
        t.failed(f"addr:{i}")
    assert len(t._fails) == 100


def test_session_expiry_idle_and_logout(console):
    c = login(console, "tracer")
    token = c.cookies[SESSION]
    assert c.get("/").status_code == 200 and c.get("/api/fleet").status_code == 200
    # the cookie: HttpOnly, SameSite=Strict (Secure only under TLS)
    c2 = console.client()
    r = c2.post("/login", data={"name": "tracer", "password": PASSWORD, "login_token": login_token(c2)},
                headers={"Origin": console.url})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    # the database keeps only the token's hash
    acc = console.accounts
    with console.storage.connection():
        assert not acc.Session.select().where(acc.Session.token_hash == token).exists()
        acc.expire_session_now(token)
    assert c.get("/").status_code == 303 and c.get("/api/fleet").status_code == 401
    # idle too long
    with console.storage.connection():
        token2 = c2.cookies[SESSION]
        from collector.web.accounts import _hash_token

        acc.Session.update(last_seen=utcnow() - timedelta(minutes=31)).where(
            acc.Session.token_hash == _hash_token(token2)).execute()
    assert c2.get("/api/fleet").status_code == 401
    # logout ends the session in the database, not only the cookie
    c3 = login(console, "tracer")
    token3 = c3.cookies[SESSION]
    r = c3.post("/logout", data={"csrf_token": csrf_of(c3)}, headers={"Origin": console.url})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    stolen = console.client()
    stolen.cookies.set(SESSION, token3)
    assert stolen.get("/api/fleet").status_code == 401


def test_foreign_origin_missing_csrf_and_text_plain_are_refused(console):
    c = login(console, "admin")
    csrf = csrf_of(c)
    # a form post without the CSRF token, with a wrong one, or from another site
    assert c.post("/logout", data={}, headers={"Origin": console.url}).status_code == 403
    assert c.post("/logout", data={"csrf_token": "x" * 43}, headers={"Origin": console.url}).status_code == 403
    assert c.post("/logout", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert c.get("/api/fleet").status_code == 200  # still signed in
    # the paper declaration of issue 12's report: text/plain from a foreign Origin was 201
    before = console.storage.event_count()
    r = _json_post(c, "/api/manual", PAPER, "https://evil.example", ctype="text/plain")
    assert r.status_code == 403
    r = _json_post(c, "/api/manual", PAPER, console.url, ctype="text/plain")
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = _json_post(c, "/api/manual", PAPER, "https://evil.example")
    assert r.status_code == 403
    r = _json_post(c, "/api/manual", PAPER, None)  # a session without Origin (or Referer): refused
    assert r.status_code == 403
    r = _json_post(c, "/api/manual", PAPER, f"http://localhost:{console.server.port + 1}")  # another port
    assert r.status_code == 403
    with console.storage.connection():
        assert console.storage.event_count() == before
    r = _json_post(c, "/api/manual", PAPER, console.url)
    assert r.status_code == 201 and r.json()["checkpoint"] == "market"
    # the login form needs its token and this console's Origin too
    c2 = console.client()
    tok = login_token(c2)
    assert c2.post("/login", data={"name": "admin", "password": PASSWORD, "login_token": "nope"},
                   headers={"Origin": console.url}).status_code == 403
    assert c2.post("/login", data={"name": "admin", "password": PASSWORD, "login_token": tok},
                   headers={"Origin": "https://evil.example"}).status_code == 403
    assert SESSION not in c2.cookies


def test_wrong_host_is_refused(console_sqlite):
    console = console_sqlite
    c = login(console, "admin")
    for host in ("evil.example", "evil.example:80", f"rebind.attacker.example:{console.server.port}", "[::2]", ""):
        r = c.get("/api/export.csv?case=C1", headers={"Host": host})
        assert r.status_code == 400 and "http.allowed_hosts" in r.text, host
    for host in (f"localhost:{console.server.port}", f"127.0.0.1:{console.server.port}", "localhost"):
        assert c.get("/api/fleet", headers={"Host": host}).status_code == 200, host
    with console.storage.connection():
        assert console.storage.audit_log() == []


def test_allowed_hosts_setting(tmp_path):
    from web_helpers import make_console

    con = make_console(f"sqlite:///{tmp_path}/h.db", tmp_path, allowed_hosts=["chot.example.vn"])
    try:
        c = con.client()
        assert c.get("/login", headers={"Host": "chot.example.vn"}).status_code == 200
        assert c.get("/login", headers={"Host": "other.example.vn"}).status_code == 400
    finally:
        con.server.stop()
        con.storage.close()


def test_roles_limit_what_each_user_sees(console):
    st = console.storage
    viewer = login(console, "viewer")
    for path in ("/api/visits?person=001090000001&case=C1", "/api/contacts?person=001090000001&case=C1",
                 "/api/export.csv?case=C1"):
        r = viewer.get(path)
        assert r.status_code == 403 and "personal:read" in r.json()["error"], path
    assert viewer.get("/api/fleet").status_code == 200 and viewer.get("/api/traffic").status_code == 200
    assert _json_post(viewer, "/api/manual", PAPER, console.url).status_code == 403
    # checkpoint staff: paper declarations at their checkpoints only, no queries at all
    staff = login(console, "checkpoint_staff")
    for path in API_GETS[1:]:
        assert staff.get(path).status_code == 403, path
    assert _json_post(staff, "/api/manual", PAPER, console.url).status_code == 201
    assert _json_post(staff, "/api/manual", {**PAPER, "checkpoint": "ward7-school"}, console.url).status_code == 201
    r = _json_post(staff, "/api/manual", {**PAPER, "checkpoint": "station"}, console.url)
    assert r.status_code == 403 and "market" in r.json()["error"]
    # the 403 page of a page route is a page, in Vietnamese first
    r = staff.get("/api/")
    assert r.status_code == 200  # the endpoint list is for everyone signed in
    # ward officer: traffic of their checkpoints only
    admin = login(console, "admin")
    assert _json_post(admin, "/api/manual", {**PAPER, "checkpoint": "station"}, console.url).status_code == 201
    span = "from=2021-08-15T00:00:00Z&to=2021-08-16T00:00:00Z"
    assert {h["checkpoint"] for h in admin.get(f"/api/traffic?{span}").json()["hours"]} == {
        "market", "ward7-school", "station"}
    ward = login(console, "ward_officer")
    res = ward.get(f"/api/traffic?{span}").json()
    assert {h["checkpoint"] for h in res["hours"]} == {"market", "ward7-school"} and res["totals"]["in"] == 2
    assert ward.get("/api/traffic?checkpoint=station").status_code == 403
    assert ward.get("/api/export.csv?case=C1&checkpoint=station").status_code == 403
    assert ward.get("/api/export.csv?case=C1").status_code == 403
    assert ward.get("/api/export.csv?case=C1&checkpoint=market").status_code == 200
    with st.connection():
        audit = st.audit_log()
    assert [a["actor"] for a in audit] == ["ward_officer"]  # the user's name, not an address


def test_forbidden_page_is_a_page(console_sqlite):
    console = console_sqlite
    staff = login(console, "checkpoint_staff")
    r = staff.get("/")
    assert r.status_code == 200 and "checkpoint_staff" in r.text
    # no nav entry this role may not use; the 403 of a page is the translated page
    r = staff.post("/logout", data={}, headers={"Origin": console.url})
    assert r.status_code == 403 and "Bạn không được xem nội dung này" in r.text
    r = staff.post("/logout", data={}, headers={"Origin": console.url, "Accept-Language": "en"})
    assert "You may not see this" in r.text


def test_api_token_scopes(console):
    st = console.storage
    fleet = console.bearer(console.token("dashboard", "fleet:read"))
    assert fleet.get("/api/fleet").status_code == 200
    assert fleet.get("/api/traffic").status_code == 403
    assert fleet.get("/api/visits?person=001090000001&case=C1").status_code == 403
    paper = console.bearer(console.token("kiosk", "paper:write", checkpoints=["market"]))
    # a machine client sends JSON without Origin: fine for a token (a browser cannot attach it cross-site)
    assert _json_post(paper, "/api/manual", PAPER).status_code == 201
    assert _json_post(paper, "/api/manual", PAPER, ctype="text/plain").status_code == 415
    assert _json_post(paper, "/api/manual", PAPER, origin="https://evil.example").status_code == 403
    assert _json_post(paper, "/api/manual", {**PAPER, "checkpoint": "station"}).status_code == 403
    assert paper.get("/api/fleet").status_code == 403
    personal = console.bearer(secret := console.token("reporting", "personal:read"))
    r = personal.get("/api/visits?person=001090000099&case=C7")
    assert r.status_code == 200 and r.json()["count"] == 1
    with st.connection():
        assert st.audit_log()[0]["actor"] == "token:reporting"
        assert all(secret not in json.dumps(t) for t in console.accounts.tokens())
        console.accounts.revoke_token("reporting")
    assert personal.get("/api/visits?person=001090000099&case=C7").status_code == 401
    assert console.bearer("Basic abc").get("/api/fleet").status_code == 401


def test_security_headers_and_no_store(console_sqlite):
    c = login(console_sqlite, "admin")
    for path in ("/", "/login", "/api/fleet", "/nothing"):
        h = c.get(path).headers
        assert "script-src 'self'" in h["content-security-policy"] and "unsafe-inline" not in h[
            "content-security-policy"], path
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "same-origin" and h["cache-control"] == "no-store", path
    assert c.get("/static/console.css").status_code == 200


def test_request_body_is_capped(console_sqlite):
    console = console_sqlite
    c = console.bearer(console.token("kiosk", "paper:write"))
    big = {**PAPER, "name": "x" * (300 * 1024)}
    r = _json_post(c, "/api/manual", big)
    assert r.status_code == 413
    # without Content-Length (chunked): counted as it arrives
    def chunks():
        for _ in range(400):
            yield b"x" * 1024
    r = c.post("/api/manual", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # too large headers: refused by the server, the next request still served
    r = c.get("/api/", headers={"X-Big": "y" * (64 * 1024)})
    assert r.status_code in (400, 431)
    assert c.get("/api/").status_code == 200


def test_stalled_sockets_do_not_stop_the_service(console_sqlite):
    console = console_sqlite
    c = login(console, "viewer")
    idle = []
    try:
        for i in range(400):
            s = socket.create_connection(("127.0.0.1", console.server.port), timeout=30)
            if i % 2:
                s.sendall(b"GET /api/fleet HTTP/1.1\r\nHost: localhost\r\n")  # headers never finished
            idle.append(s)
        r = c.get("/api/fleet")
        assert r.status_code == 200 and r.json()["total"] == 0
        # the server closes a connection that never sends a whole request (recv gives b"")
        idle[0].settimeout(60)
        assert idle[0].recv(1024) == b""
        idle[1].settimeout(60)
        assert idle[1].recv(1024) == b""
    finally:
        for s in idle:
            s.close()
    assert c.get("/api/fleet").status_code == 200


def test_language_by_query_cookie_and_browser(console_sqlite):
    c = login(console_sqlite, "viewer")
    assert "Đăng xuất" in c.get("/").text  # Vietnamese first
    assert "Sign out" in c.get("/", headers={"Accept-Language": "en-GB,en;q=0.9"}).text
    assert "Sign out" in c.get("/?lang=en").text
    r = c.get("/lang/en?next=/")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "Sign out" in c.get("/").text
    assert c.get("/lang/en?next=https://evil.example/").headers["location"] == "/"  # no open redirect
    assert c.get("/lang/en?next=//evil.example/").headers["location"] == "/"


def test_user_cli(tmp_path, capsys, monkeypatch):
    from chot.cli import main
    from chotdemo.testing import make_keys

    make_keys(tmp_path / "keys")
    conf = tmp_path / "collector.toml"
    conf.write_text(f'[collector]\ndatabase = "sqlite:///{tmp_path}/c.db"\nkey_dir = "{tmp_path / "keys"}"\n')
    pw = tmp_path / "pw"
    pw.write_text("first password 123\n")
    base = ["collector"]
    assert main(base + ["user", "add", "lan", "--role", "ward_officer", "--checkpoint", "ward7-*",
                        "--password-file", str(pw), "-c", str(conf)]) == 0
    assert "first password" not in capsys.readouterr().out
    assert main(base + ["user", "list", "-c", str(conf)]) == 0
    users = json.loads(capsys.readouterr().out)
    assert users[0]["name"] == "lan" and users[0]["role"] == "ward_officer" and users[0]["checkpoints"] == ["ward7-*"]
    assert "hash" not in json.dumps(users)
    # a second add of the same name, a short password, an unknown role: clear errors
    assert main(base + ["user", "add", "lan", "--role", "viewer", "--password-file", str(pw), "-c", str(conf)]) != 0
    assert "exists already" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_text("short\n")
    assert main(base + ["user", "passwd", "lan", "--password-file", str(short), "-c", str(conf)]) != 0
    assert "too short" in capsys.readouterr().err
    # passwd from stdin, role, disable
    monkeypatch.setattr("sys.stdin", io.StringIO("second password 456\n"))
    assert main(base + ["user", "passwd", "lan", "--password-file", "-", "-c", str(conf)]) == 0
    assert main(base + ["user", "role", "lan", "tracer", "-c", str(conf)]) == 0
    assert main(base + ["user", "disable", "lan", "-c", str(conf)]) == 0
    capsys.readouterr()
    assert main(base + ["user", "list", "-c", str(conf)]) == 0
    u = json.loads(capsys.readouterr().out)[0]
    assert u["role"] == "tracer" and u["disabled"] is True
    from collector.storage import Storage
    from collector.web.accounts import Accounts

    with Storage(f"sqlite:///{tmp_path}/c.db") as st:
        acc = Accounts(st)
        assert acc.authenticate("lan", "second password 456") is None  # disabled
        acc.set_disabled("lan", False)
        assert acc.authenticate("lan", "first password 123") is None
        assert acc.authenticate("lan", "second password 456").name == "lan"
        row = acc.User.get(acc.User.name == "lan")
        assert row.password_hash.startswith("$argon2id$") and "second" not in row.password_hash
    # tokens: shown once, listed without secret, revoked
    assert main(base + ["token", "add", "grafana", "--scope", "fleet:read", "--scope", "traffic:read", "-c",
                        str(conf)]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("chot_")
    assert main(base + ["token", "list", "-c", str(conf)]) == 0
    out = capsys.readouterr().out
    assert secret not in out and json.loads(out)[0]["scopes"] == ["fleet:read", "traffic:read"]
    assert main(base + ["token", "revoke", "grafana", "-c", str(conf)]) == 0


def test_password_rehashed_when_parameters_change(tmp_path):
    from argon2 import PasswordHasher

    from collector.storage import Storage
    from collector.web.accounts import Accounts

    with Storage(f"sqlite:///{tmp_path}/c.db") as st:
        weak = Accounts(st, hasher=PasswordHasher(time_cost=1, memory_cost=8192))
        weak.add_user("an", "password 1234567", "viewer")
        old = weak.User.get(weak.User.name == "an").password_hash
        strong = Accounts(st)
        assert strong.authenticate("an", "password 1234567") is not None
        new = strong.User.get(strong.User.name == "an").password_hash
        assert new != old and not strong.hasher.check_needs_rehash(new)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_refuses_to_listen_beyond_loopback_without_tls_or_proxy(tmp_path, host):
    from chot.errors import CollectorError
    from chotdemo.testing import collector_config
    from collector.storage import Storage
    from collector.web import WebServer

    cfg = collector_config(f"sqlite:///{tmp_path}/c.db", http={"port": 0})
    with Storage(cfg.collector.database) as st, pytest.raises(CollectorError, match="beyond loopback"):
        WebServer(cfg, st, host=host)


def test_httpx_is_the_client():  # the helpers' client library is there (test extra)
    assert httpx.__version__


def test_a_slow_request_gets_503_and_the_server_goes_on(tmp_path):
    import asyncio

    from fastapi import Depends

    from chotdemo.testing import collector_config
    from collector.storage import Storage
    from collector.web import WebServer, create_app
    from collector.web.accounts import Role
    from collector.web.app import require

    cfg = collector_config(f"sqlite:///{tmp_path}/c.db", http={"enabled": True, "port": 0, "request_timeout_s": 0.5})
    with Storage(cfg.collector.database) as st:
        app = create_app(cfg, st)
        app.state.web.accounts.add_token("t", ["fleet:read"], "test")
        secret = app.state.web.accounts.add_token("slow", ["fleet:read"], "test")

        async def slow(principal=Depends(require())):
            await asyncio.sleep(3600)

        app.add_api_route("/api/slow", slow)

        async def admins_only(principal=Depends(require(Role.ADMIN))):
            return {"ok": principal.actor}

        app.add_api_route("/api/admins-only", admins_only)
        with WebServer(cfg, st, app=app) as srv:
            c = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
            r = c.get("/api/slow")
            assert r.status_code == 503 and "too long" in r.text
            assert c.get("/api/fleet").status_code == 200
            # require(Role.X): the role itself, which no token has
            assert c.get("/api/admins-only").status_code == 403
            from web_helpers import Console

            acc = app.state.web.accounts
            acc.add_user("boss", PASSWORD, "admin")
            acc.add_user("lan", PASSWORD, "tracer")
            con = Console(srv.url, cfg, st, acc, srv)
            assert login(con, "boss").get("/api/admins-only").json() == {"ok": "boss"}
            assert login(con, "lan").get("/api/admins-only").status_code == 403


def test_behind_the_trusted_proxy_the_forwarded_client_is_throttled_and_cookies_are_secure(tmp_path):
    from web_helpers import make_console

    con = make_console(f"sqlite:///{tmp_path}/p.db", tmp_path, trusted_proxy="127.0.0.2")
    try:
        proxy = httpx.Client(base_url=con.url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2"))

        def via_proxy(client_addr, name, password, proto="https"):
            tok = login_token(proxy)
            return proxy.post("/login", data={"name": name, "password": password, "login_token": tok},
                              headers={"Origin": con.url, "X-Forwarded-For": f"9.9.9.9, {client_addr}",
                                       "X-Forwarded-Proto": proto})

        for _ in range(3):
            assert via_proxy("203.0.113.7", "tracer", "wrong password!").status_code == 401
        assert via_proxy("203.0.113.7", "viewer", PASSWORD).status_code == 429  # that client is throttled
        r = via_proxy("203.0.113.8", "viewer", PASSWORD)  # another client behind the same proxy is not
        assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
        assert "; secure" not in via_proxy("203.0.113.9", "admin", PASSWORD, proto="http").headers[
            "set-cookie"].lower()
        # a direct client cannot claim another address or HTTPS: it is itself (127.0.0.1)
        direct = con.client()
        for _ in range(3):
            r = direct.post("/login", data={"name": "admin", "password": "wrong password!",
                                            "login_token": login_token(direct)},
                            headers={"Origin": con.url, "X-Forwarded-For": "198.51.100.1",
                                     "X-Forwarded-Proto": "https"})
            assert r.status_code == 401 and "secure" not in r.headers.get("set-cookie", "").lower()
        assert via_proxy("127.0.0.1", "viewer", PASSWORD).status_code == 429
    finally:
        con.server.stop()
        con.storage.close()


def test_users_page_admin_only_and_its_form_needs_the_csrf_token(console_sqlite):
    console = console_sqlite
    viewer = login(console, "viewer")
    assert 'href="/users"' not in viewer.get("/").text  # not in a viewer's nav
    r = viewer.get("/users")
    assert r.status_code == 403 and "Bạn không được xem nội dung này" in r.text
    admin = login(console, "admin")
    page = admin.get("/")
    assert 'href="/users"' in page.text
    r = admin.get("/users")
    assert r.status_code == 200 and "ward_officer" in r.text and "cán bộ phường" in r.text
    assert admin.post("/users/viewer/disable", data={}, headers={"Origin": console.url}).status_code == 403
    r = admin.post("/users/viewer/disable", data={"csrf_token": csrf_of(admin)}, headers={"Origin": console.url})
    assert r.status_code == 303 and r.headers["location"] == "/users"
    assert viewer.get("/api/fleet").status_code == 401  # disabling ended the viewer's session
    login(console, "viewer", expect=401)
    assert admin.post("/users/admin/disable", data={"csrf_token": csrf_of(admin)},
                      headers={"Origin": console.url}).status_code == 403


def test_console_settings_are_checked():
    from chot.errors import ChotError
    from collector.config import config_from_dict

    for http, keys in (({"language": "fr", "max_body_kib": 0}, ("http.language", "http.max_body_kib")),
                       ({"timezone": "Mars/Olympus", "allowed_hosts": ["https://x.vn/"]},
                        ("http.timezone", "http.allowed_hosts"))):
        with pytest.raises(ChotError) as e:
            config_from_dict({"http": http})
        for key in keys:
            assert key in str(e.value), key
    assert config_from_dict({"http": {"timezone": "UTC", "allowed_hosts": ["chot.example.vn"]}}).http.timezone == "UTC"
