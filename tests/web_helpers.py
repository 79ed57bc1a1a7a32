"""Fixtures and helpers for the console's tests (collector/web): a real uvicorn server, users, logins.

Use in a test module:

    from web_helpers import PASSWORD, console, login  # noqa: F401  (console is a fixture)

    def test_something(console):
        c = login(console, "tracer")            # an httpx.Client signed in as the tracer user
        assert c.get("/api/fleet").status_code == 200

`console` runs on SQLite and on PostgreSQL (a fresh database per test); it has one user per role
(named after the role; `ward_officer` and `checkpoint_staff` see the checkpoints "market" and
"ward7-*"), the collector's keys (personal queries, paper declarations) and a `Console` object:
`.url`, `.cfg`, `.storage`, `.accounts`, `.server`, `.token(name, *scopes)`.
"""

import re
from dataclasses import dataclass

import httpx
import pytest

from chotdemo.testing import collector_config, make_keys
from collector.storage import Storage
from collector.web import WebServer
from collector.web.accounts import Accounts, Role

PASSWORD = "a long test password"
SESSION = "chot_session"
SCOPE = ("market", "ward7-*")


@dataclass
class Console:
    url: str
    cfg: object
    storage: object
    accounts: Accounts
    server: WebServer

    def client(self, **kw):
        """A plain httpx client for this console (no login)."""
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def token(self, name, *scopes, checkpoints=None):
        with self.storage.connection():
            return self.accounts.add_token(name, list(scopes), "test", checkpoints=checkpoints)

    def bearer(self, secret):
        return self.client(headers={"Authorization": f"Bearer {secret}"})


def login_token(client):
    r = client.get("/login")
    assert r.status_code == 200, r.text
    return re.search(r'name="login_token" value="([^"]+)"', r.text).group(1)


def try_login(console, client, name, password=PASSWORD):
    """The answer of the login form posted by `client` (303 signed in, 401 wrong, 429 throttled)."""
    return client.post("/login", data={"name": name, "password": password, "login_token": login_token(client),
                                       "next": "/"}, headers={"Origin": console.url})


def login(console, name, password=PASSWORD, client=None, expect=303):
    """An httpx client signed in as `name` (asserts the login answered `expect`)."""
    c = client or console.client()
    r = try_login(console, c, name, password)
    assert r.status_code == expect, r.text
    return c


def csrf_of(client, path="/"):
    """The CSRF token of the signed-in client's session (from a page's sign-out form)."""
    r = client.get(path)
    return re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)


def make_console(url, tmp_path, **http):
    cfg = collector_config(url, key_dir=tmp_path / "keys", http={"enabled": True, "port": 0, **http})
    st = Storage(url, keys=make_keys(tmp_path / "keys"), retention_days=3650)
    acc = Accounts(st)
    with st.connection():
        for role in Role:
            acc.add_user(role.value, PASSWORD, role, SCOPE if role in ("ward_officer", "checkpoint_staff") else ())
    server = WebServer(cfg, st).start()
    return Console(server.url, cfg, st, server.app.state.web.accounts, server)


@pytest.fixture(params=["sqlite", "pg"])
def console(request, tmp_path):
    url = f"sqlite:///{tmp_path}/web.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    c = make_console(url, tmp_path)
    yield c
    c.server.stop()
    c.storage.close()


@pytest.fixture
def console_sqlite(tmp_path):
    """The console on SQLite only (tests of the HTTP layer alone)."""
    c = make_console(f"sqlite:///{tmp_path}/web.db", tmp_path)
    yield c
    c.server.stop()
    c.storage.close()
