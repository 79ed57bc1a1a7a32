"""Users, roles, sessions and API tokens of the console, stored in the collector's database.

The tables live next to the collector's own (`chot_user`, `chot_session`, `chot_token`) on the
same peewee database as `collector.storage.Storage` (SQLite or PostgreSQL), created on first use
(CREATE TABLE IF NOT EXISTS): `Accounts(storage)`.

- A user has one `Role`; a role is a set of `Permission`s (ROLE_PERMISSIONS). Ward officers and
  checkpoint staff also carry a checkpoint scope: checkpoint ids, or prefixes ending in `*`
  (`ward7-*`); an empty scope for them means no checkpoint at all, never "all".
- Passwords are hashed with Argon2id (argon2-cffi's PasswordHasher) and rehashed at login when
  its parameters changed. An unknown user costs the same hash as a known one.
- A session is a random token (32 bytes) in an HttpOnly cookie; the database keeps only its
  SHA-256, the user, a per-session CSRF token, its expiry and the time it was last used.
- An API token (`chot_...`) has scopes (permission names) and an optional checkpoint scope; the
  database keeps only its SHA-256. It is shown once, when made.

Everything that asks "may this request do X" works on a `Principal` (user or token).
"""

import enum
import hashlib
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from peewee import BigAutoField, BigIntegerField, BooleanField, CharField, IntegrityError, Model, TextField

from chot.errors import CollectorError
from collector.storage import _PgTime, _SqliteTime, format_time, utcnow

log = logging.getLogger(__name__)

MIN_PASSWORD = 10
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,126}\*?")
TOKEN_PREFIX = "chot_"


class AccountError(CollectorError):
    """A user or token command that cannot be done (unknown user, weak password, bad role...)."""


class Role(enum.StrEnum):
    ADMIN = "admin"
    TRACER = "tracer"
    WARD_OFFICER = "ward_officer"
    CHECKPOINT_STAFF = "checkpoint_staff"
    VIEWER = "viewer"


class Permission(enum.StrEnum):
    """What a route needs (`require(Permission.X)`); also the scope names of API tokens."""

    FLEET_READ = "fleet:read"  # terminals, collector health
    TRAFFIC_READ = "traffic:read"  # counts per checkpoint and hour, no person
    PERSONAL_READ = "personal:read"  # visits, contacts, exports: personal data (within a case, audited)
    CASE_WRITE = "case:write"  # open cases, mark contacts notified
    PAPER_WRITE = "paper:write"  # enter paper declarations
    AUDIT_READ = "audit:read"  # the audit log
    USERS_ADMIN = "users:admin"  # users and tokens


ROLE_PERMISSIONS = {
    Role.ADMIN: frozenset(Permission),
    Role.TRACER: frozenset({Permission.FLEET_READ, Permission.TRAFFIC_READ, Permission.PERSONAL_READ,
                            Permission.CASE_WRITE, Permission.PAPER_WRITE}),
    Role.WARD_OFFICER: frozenset({Permission.FLEET_READ, Permission.TRAFFIC_READ, Permission.PERSONAL_READ,
                                  Permission.CASE_WRITE, Permission.PAPER_WRITE}),
    Role.CHECKPOINT_STAFF: frozenset({Permission.PAPER_WRITE}),
    Role.VIEWER: frozenset({Permission.FLEET_READ, Permission.TRAFFIC_READ}),
}
SCOPED_ROLES = (Role.WARD_OFFICER, Role.CHECKPOINT_STAFF)  # only the checkpoints in their scope


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user (by session) or an API token.

    `checkpoints` None: every checkpoint; else ids or `prefix*` patterns (empty: none).
    `name` is what the audit log records as the actor (`token:NAME` for a token).
    """

    name: str
    kind: str  # "user" or "token"
    permissions: frozenset
    role: Role | None = None
    checkpoints: tuple | None = None
    user_id: int | None = None

    @property
    def actor(self):
        return self.name if self.kind == "user" else f"token:{self.name}"

    def may(self, permission):
        return Permission(permission) in self.permissions

    def sees_checkpoint(self, checkpoint):
        if self.checkpoints is None:
            return True
        return any(checkpoint_matches(p, checkpoint) for p in self.checkpoints)

    def checkpoint_filter(self, checkpoints):
        """The given checkpoint ids this principal may see."""
        return [c for c in checkpoints if self.sees_checkpoint(c)]


def checkpoint_matches(pattern, checkpoint):
    if pattern.endswith("*"):
        return str(checkpoint).startswith(pattern[:-1])
    return str(checkpoint) == pattern


def _hash_token(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name, what="user name"):
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise AccountError(f"{what} {name!r} is not allowed: 1-64 letters, digits, _ . @ - (starting with a letter "
                           "or digit)")
    return name


def check_password(password):
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AccountError("the password is too long: at most 1024 characters")
    return password


def check_scope(items):
    """Checkpoint ids / `prefix*` patterns."""
    out = []
    for c in items or ():
        if not _SCOPE_RE.fullmatch(c):
            raise AccountError(f"checkpoint scope {c!r} is not allowed: a checkpoint id, or a prefix ending in * "
                               "(ward7-*)")
        out.append(c)
    return tuple(dict.fromkeys(out))


def _make_models(db, sqlite):
    TimeField = _SqliteTime if sqlite else _PgTime

    class Base(Model):
        class Meta:
            database = db

    class User(Base):
        id = BigAutoField()
        name = CharField(max_length=64, unique=True)
        password_hash = CharField(max_length=255)
        role = CharField(max_length=32)
        checkpoints = TextField(default="[]")  # JSON list: ids or prefix* (ward officer, staff)
        disabled = BooleanField(default=False)
        created_at = TimeField()
        password_changed_at = TimeField()
        last_login = TimeField(null=True)

        class Meta:
            table_name = "chot_user"

    class Session(Base):
        token_hash = CharField(max_length=64, primary_key=True)  # SHA-256 of the cookie's token
        user_id = BigIntegerField(index=True)  # no foreign key: disable/passwd delete the sessions
        csrf = CharField(max_length=64)
        created_at = TimeField()
        last_seen = TimeField()
        expires_at = TimeField(index=True)
        client = CharField(max_length=64, default="")

        class Meta:
            table_name = "chot_session"

    class Token(Base):
        id = BigAutoField()
        name = CharField(max_length=64, unique=True)
        token_hash = CharField(max_length=64, unique=True)
        scopes = TextField()  # JSON list of Permission values
        checkpoints = TextField(null=True)  # JSON list, or NULL: every checkpoint
        created_by = CharField(max_length=200)
        created_at = TimeField()
        expires_at = TimeField(null=True)
        revoked = BooleanField(default=False)
        last_used = TimeField(null=True)

        class Meta:
            table_name = "chot_token"

    return User, Session, Token


class LoginThrottle:
    """Failed logins per user name and per client address; exponential lock-out, bounded memory.

    After `free` failures a key is locked for base * 2**(failures - free) seconds (at most `cap`).
    At most `max_keys` keys are remembered (the least recently failed are forgotten first).
    """

    def __init__(self, free=3, base_s=2.0, cap_s=900.0, max_keys=10000, clock=None):
        import time

        self.free, self.base_s, self.cap_s, self.max_keys = free, base_s, cap_s, max_keys
        self._clock = clock or time.monotonic
        self._fails = OrderedDict()  # key -> (failures, locked_until)
        self._lock = threading.Lock()

    def wait_s(self, *keys):
        """Seconds until these keys may try again (0: now)."""
        now = self._clock()
        with self._lock:
            return max([0.0] + [self._fails[k][1] - now for k in keys if k in self._fails])

    def failed(self, *keys):
        now = self._clock()
        with self._lock:
            for k in keys:
                n = self._fails.pop(k, (0, 0.0))[0] + 1
                until = now + min(self.cap_s, self.base_s * 2 ** (n - self.free)) if n >= self.free else 0.0
                self._fails[k] = (n, until)
                while len(self._fails) > self.max_keys:
                    self._fails.popitem(last=False)

    def succeeded(self, *keys):
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


class Accounts:
    """Users, sessions and tokens on a `Storage`'s database (tables made on first use)."""

    def __init__(self, storage, hasher=None):
        self.storage = storage
        self.hasher = hasher or PasswordHasher()
        self.User, self.Session, self.Token = _make_models(storage.db, storage.sqlite)
        self._dummy_hash = None
        with storage.connection():
            storage.db.create_tables([self.User, self.Session, self.Token], safe=True)

    # --- users ----------------------------------------------------------------------------------

    def add_user(self, name, password, role, checkpoints=()):
        check_name(name)
        role = self._role(role)
        scope = check_scope(checkpoints)
        now = utcnow()
        try:
            with self.storage.db.atomic():
                self.User.create(name=name, password_hash=self.hasher.hash(check_password(password)), role=role,
                                 checkpoints=json.dumps(list(scope)), created_at=now, password_changed_at=now)
        except IntegrityError:
            raise AccountError(f"user {name!r} exists already; change it with `chot collector user passwd|role`") \
                from None
        if role in SCOPED_ROLES and not scope:
            log.warning("a %s user was added without checkpoints: give --checkpoint to let them see any", role)

    def _role(self, role):
        try:
            return Role(role)
        except ValueError:
            raise AccountError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from None

    def _user(self, name):
        u = self.User.get_or_none(self.User.name == name)
        if u is None:
            raise AccountError(f"no user {name!r}; list them with `chot collector user list`")
        return u

    def users(self):
        U = self.User
        return [{"name": u.name, "role": u.role, "checkpoints": json.loads(u.checkpoints), "disabled": u.disabled,
                 "created_at": format_time(u.created_at), "last_login": format_time(u.last_login)}
                for u in U.select().order_by(U.name)]

    def set_disabled(self, name, disabled=True):
        u = self._user(name)
        self.User.update(disabled=bool(disabled)).where(self.User.id == u.id).execute()
        if disabled:
            self.Session.delete().where(self.Session.user_id == u.id).execute()

    def set_password(self, name, password):
        u = self._user(name)
        self.User.update(password_hash=self.hasher.hash(check_password(password)),
                         password_changed_at=utcnow()).where(self.User.id == u.id).execute()
        self.Session.delete().where(self.Session.user_id == u.id).execute()  # every login ends

    def set_role(self, name, role, checkpoints=None):
        u = self._user(name)
        fields = {"role": self._role(role)}
        if checkpoints is not None:
            fields["checkpoints"] = json.dumps(list(check_scope(checkpoints)))
        self.User.update(**fields).where(self.User.id == u.id).execute()

    def authenticate(self, name, password):
        """The user's Principal when name and password match an enabled user, else None."""
        u = self.User.get_or_none(self.User.name == name) if isinstance(name, str) else None
        if u is None:
            self._dummy_verify(password)
            return None
        try:
            self.hasher.verify(u.password_hash, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if u.disabled:
            return None
        fields = {"last_login": utcnow()}
        if self.hasher.check_needs_rehash(u.password_hash):
            fields["password_hash"] = self.hasher.hash(password)
        self.User.update(**fields).where(self.User.id == u.id).execute()
        return self._principal(u)

    def _dummy_verify(self, password):
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        try:
            self.hasher.verify(self._dummy_hash, password or "")
        except (VerificationError, InvalidHashError):
            pass

    def _principal(self, u):
        role = Role(u.role)
        scope = tuple(json.loads(u.checkpoints)) if role in SCOPED_ROLES else None
        return Principal(name=u.name, kind="user", permissions=ROLE_PERMISSIONS[role], role=role, checkpoints=scope,
                         user_id=u.id)

    # --- sessions -------------------------------------------------------------------------------

    def new_session(self, principal, hours, client=""):
        """(token for the cookie, csrf token) of a new session of this user."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        self.Session.create(token_hash=_hash_token(token), user_id=principal.user_id, csrf=csrf, created_at=now,
                            last_seen=now, expires_at=now + timedelta(hours=hours), client=str(client)[:64])
        # sessions that ended are removed as new ones start (no job needed)
        self.Session.delete().where(self.Session.expires_at < now).execute()
        return token, csrf

    def session(self, token, idle_minutes):
        """(Principal, csrf) of a live session token, or None (unknown, expired, idle too long, user disabled)."""
        if not token or len(token) > 200:
            return None
        S, U = self.Session, self.User
        th = _hash_token(token)
        s = S.get_or_none(S.token_hash == th)
        if s is None:
            return None
        now = utcnow()
        if s.expires_at <= now or s.last_seen + timedelta(minutes=idle_minutes) <= now:
            S.delete().where(S.token_hash == th).execute()
            return None
        u = U.get_or_none(U.id == s.user_id)
        if u is None or u.disabled:
            S.delete().where(S.token_hash == th).execute()
            return None
        if (now - s.last_seen).total_seconds() > 30:  # not a write per request
            S.update(last_seen=now).where(S.token_hash == th).execute()
        return self._principal(u), s.csrf

    def end_session(self, token):
        if token:
            self.Session.delete().where(self.Session.token_hash == _hash_token(token)).execute()

    def expire_session_now(self, token):
        """Tests and admins: make a session expired (as if its time ran out)."""
        self.Session.update(expires_at=utcnow() - timedelta(seconds=1)).where(
            self.Session.token_hash == _hash_token(token)).execute()

    # --- API tokens -----------------------------------------------------------------------------

    def add_token(self, name, scopes, created_by, checkpoints=None, days=None):
        """Make a token; returns its secret (shown once; only its hash is kept)."""
        check_name(name, "token name")
        if not scopes:
            raise AccountError(f"a token needs at least one --scope; scopes: {', '.join(p.value for p in Permission)}")
        perms = []
        for s in scopes:
            try:
                perms.append(Permission(s).value)
            except ValueError:
                raise AccountError(f"unknown scope {s!r}; scopes: {', '.join(p.value for p in Permission)}") \
                    from None
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        try:
            self.Token.create(name=name, token_hash=_hash_token(secret), scopes=json.dumps(sorted(set(perms))),
                              checkpoints=None if checkpoints is None else json.dumps(list(check_scope(checkpoints))),
                              created_by=str(created_by)[:200], created_at=now,
                              expires_at=None if days is None else now + timedelta(days=float(days)))
        except IntegrityError:
            raise AccountError(f"token {name!r} exists already; revoke it first or choose another name") from None
        return secret

    def tokens(self):
        T = self.Token
        return [{"name": t.name, "scopes": json.loads(t.scopes),
                 "checkpoints": None if t.checkpoints is None else json.loads(t.checkpoints),
                 "created_by": t.created_by, "created_at": format_time(t.created_at),
                 "expires_at": format_time(t.expires_at), "revoked": t.revoked, "last_used": format_time(t.last_used)}
                for t in T.select().order_by(T.name)]

    def revoke_token(self, name):
        n = self.Token.update(revoked=True).where(self.Token.name == name).execute()
        if not n:
            raise AccountError(f"no token {name!r}; list them with `chot collector token list`")

    def token_principal(self, secret):
        """The Principal of a live API token secret, or None."""
        if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        T = self.Token
        t = T.get_or_none(T.token_hash == _hash_token(secret))
        now = utcnow()
        if t is None or t.revoked or (t.expires_at is not None and t.expires_at <= now):
            return None
        if t.last_used is None or (now - t.last_used).total_seconds() > 60:
            T.update(last_used=now).where(T.id == t.id).execute()
        scope = None if t.checkpoints is None else tuple(json.loads(t.checkpoints))
        return Principal(name=t.name, kind="token", permissions=frozenset(Permission(s) for s in json.loads(t.scopes)),
                         checkpoints=scope)
