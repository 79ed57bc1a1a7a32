"""Cases: every read of personal data happens within an open case (issue 12).

A tracer (an admin, a ward officer) opens a case: a case number, the index person (kept only as
their index key, the HMAC under the index key) and a reason. The queries of collector.queries
(visits, contacts, export, find_person) refuse a case that is unknown or closed once a `CaseBook`
is attached to the storage (`CaseBook(storage)` does it; the console makes one at start), and
they write the case number into every audit row.

Tables (made on first use, on SQLite and PostgreSQL, next to the collector's own):

    chot_case       number (unique), person_key, reason, status (open / closed), who and when
                    it was opened and closed, the opener's checkpoint scope (JSON, NULL = all)
    chot_notified   (case number, person_key) of each contact marked notified, by whom, when

The audit log (chot_audit) is append-only: no code path updates or deletes it, and triggers
refuse UPDATE and DELETE on both databases (TRUNCATE too on PostgreSQL).
"""

import json
import logging
import re

from peewee import BigAutoField, CharField, IntegrityError, Model, TextField

from collector.queries import QueryError, person_key_for
from collector.storage import _PgTime, _SqliteTime, format_time, utcnow

log = logging.getLogger(__name__)

CASE_NUMBER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_REASON = 500
OPEN, CLOSED = "open", "closed"

_SQLITE_AUDIT_GUARD = [
    'CREATE TRIGGER IF NOT EXISTS "chot_audit_no_update" BEFORE UPDATE ON "chot_audit" '
    "BEGIN SELECT RAISE(ABORT, 'chot_audit is append-only'); END",
    'CREATE TRIGGER IF NOT EXISTS "chot_audit_no_delete" BEFORE DELETE ON "chot_audit" '
    "BEGIN SELECT RAISE(ABORT, 'chot_audit is append-only'); END",
]
_PG_AUDIT_GUARD = [
    "CREATE OR REPLACE FUNCTION chot_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'chot_audit is append-only'; END $$",
    'CREATE OR REPLACE TRIGGER "chot_audit_no_change" BEFORE UPDATE OR DELETE ON "chot_audit" '
    "FOR EACH ROW EXECUTE FUNCTION chot_audit_append_only()",
    'CREATE OR REPLACE TRIGGER "chot_audit_no_truncate" BEFORE TRUNCATE ON "chot_audit" '
    "FOR EACH STATEMENT EXECUTE FUNCTION chot_audit_append_only()",
]


def check_number(number):
    """A case number as typed (HCM-2021-0815-07); QueryError saying what is allowed."""
    n = str(number or "").strip()
    if not CASE_NUMBER_RE.fullmatch(n):
        raise QueryError(f"case: found {str(number)[:80]!r}; a case number is 1-64 letters, digits, . _ - "
                         "(starting with a letter or digit)")
    return n


def _make_models(db, sqlite):
    TimeField = _SqliteTime if sqlite else _PgTime

    class Base(Model):
        class Meta:
            database = db

    class Case(Base):
        id = BigAutoField()
        number = CharField(max_length=64, unique=True)
        person_key = CharField(max_length=64)
        reason = TextField()
        status = CharField(max_length=8, default=OPEN)
        opened_by = CharField(max_length=200)
        opened_at = TimeField()
        closed_by = CharField(max_length=200, null=True)
        closed_at = TimeField(null=True)
        checkpoints = TextField(null=True)  # JSON: the opener's checkpoint scope; NULL = every checkpoint

        class Meta:
            table_name = "chot_case"
            indexes = ((("status", "opened_at"), False),)

    class Notified(Base):
        case_number = CharField(max_length=64)
        person_key = CharField(max_length=64)
        notified_by = CharField(max_length=200)
        notified_at = TimeField()

        class Meta:
            table_name = "chot_notified"
            primary_key = False
            indexes = ((("case_number", "person_key"), True),)

    return Case, Notified


def _case_dict(c):
    return {
        "id": c.id, "number": c.number, "person_key": c.person_key, "reason": c.reason, "status": c.status,
        "opened_by": c.opened_by, "opened_at": format_time(c.opened_at), "closed_by": c.closed_by,
        "closed_at": format_time(c.closed_at),
        "checkpoints": json.loads(c.checkpoints) if c.checkpoints is not None else None,
    }


class CaseBook:
    """The cases of a collector database; attaches itself to `storage` (storage.case_book)."""

    def __init__(self, storage, attach=True):
        self.storage = storage
        self.Case, self.Notified = _make_models(storage.db, storage.sqlite)
        with storage.connection():
            with storage.db.atomic():
                if not storage.sqlite:  # collectors sharing the database start one at a time here
                    storage.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('chot cases schema'))")
                storage.db.create_tables([self.Case, self.Notified], safe=True)
                for sql in _SQLITE_AUDIT_GUARD if storage.sqlite else _PG_AUDIT_GUARD:
                    storage.db.execute_sql(sql)
        if attach:
            storage.case_book = self

    # --- cases ----------------------------------------------------------------------------------

    def get(self, number):
        """The case as a dict, or None."""
        c = self.Case.get_or_none(self.Case.number == str(number or "").strip())
        return _case_dict(c) if c else None

    def require_open(self, number):
        """The open case `number` (a dict); QueryError when there is none or it is closed."""
        n = str(number or "").strip()
        c = self.Case.get_or_none(self.Case.number == n)
        if c is None:
            raise QueryError(f"case: there is no case {n[:80]!r}; open it first (Cases page, or ask a tracer)")
        if c.status != OPEN:
            raise QueryError(f"case: case {n!r} was closed on {format_time(c.closed_at)} by {c.closed_by}; "
                             "personal data is read only within an open case")
        return _case_dict(c)

    def open(self, number, person, reason, actor, checkpoints=None, person_key=None):
        """Open a case for the index `person` (what a tracer types, or `person_key`); returns it.

        The opening is written to the audit log (action case_open).
        """
        number = check_number(number)
        reason = str(reason or "").strip()
        if not reason:
            raise QueryError("reason: missing; say why this case is opened (e.g. a positive test on 2021-08-15)")
        if len(reason) > MAX_REASON:
            raise QueryError(f"reason: at most {MAX_REASON} characters")
        if person_key is None:
            person_key = person_key_for(self.storage, person)[1]
        try:
            with self.storage.db.atomic():
                c = self.Case.create(number=number, person_key=person_key, reason=reason, status=OPEN,
                                     opened_by=str(actor)[:200], opened_at=utcnow(),
                                     checkpoints=None if checkpoints is None else json.dumps(list(checkpoints)))
                self.storage.audit(actor, "case_open", number, person_key,
                                   {"shown": "case opened", "reason_chars": len(reason)}, 0)
        except IntegrityError:
            raise QueryError(f"case: {number!r} exists already; choose another number or open that case") from None
        return _case_dict(c)

    def close(self, number, actor):
        """Close an open case (no more personal reads in it); returns it."""
        self.require_open(number)
        C = self.Case
        with self.storage.db.atomic():
            C.update(status=CLOSED, closed_by=str(actor)[:200], closed_at=utcnow()).where(
                (C.number == number) & (C.status == OPEN)).execute()
            self.storage.audit(actor, "case_close", number, None, {"shown": "case closed"}, 0)
        return self.get(number)

    def list(self, status=None, offset=0, limit=50):
        """(cases newest first, total count); `status` open / closed / None for all."""
        C = self.Case
        q = C.select()
        if status in (OPEN, CLOSED):
            q = q.where(C.status == status)
        total = q.count()
        rows = q.order_by(C.opened_at.desc(), C.id.desc()).offset(int(offset)).limit(int(limit))
        return [_case_dict(c) for c in rows], total

    # --- notified contacts ----------------------------------------------------------------------

    def mark_notified(self, number, person_key, actor):
        """Record that the contact `person_key` of the open case was notified (once; audited). True when new."""
        self.require_open(number)
        if not re.fullmatch(r"[0-9a-f]{64}", str(person_key or "")):
            raise QueryError("person_key: 64 lower-case hex digits (a contact's key from the contacts page)")
        N = self.Notified
        with self.storage.db.atomic():
            new = N.insert(case_number=number, person_key=person_key, notified_by=str(actor)[:200],
                           notified_at=utcnow()).on_conflict_ignore().execute()
            self.storage.audit(actor, "notified", number, person_key, {"shown": "contact marked notified"}, 0)
        return bool(new)

    def notified(self, number):
        """{person_key: {"by", "at"}} of the case's contacts marked notified."""
        N = self.Notified
        return {n.person_key: {"by": n.notified_by, "at": format_time(n.notified_at)}
                for n in N.select().where(N.case_number == number)}


def audit_page(storage, actor=None, case=None, start=None, end=None, offset=0, limit=50):
    """(audit rows newest first, total) filtered by actor, case, [start, end) (naive UTC datetimes)."""
    A = storage.Audit
    cond = A.id.is_null(False)
    if actor:
        cond &= A.actor == actor
    if case:
        cond &= A.case_id == case
    if start:
        cond &= A.time >= start
    if end:
        cond &= A.time < end
    q = A.select().where(cond)
    total = q.count()
    rows = q.order_by(A.time.desc(), A.id.desc()).offset(int(offset)).limit(int(limit))
    return [
        {"id": a.id, "time": format_time(a.time), "actor": a.actor, "action": a.action, "case": a.case_id,
         "person_key": a.person_key, "detail": json.loads(a.detail), "rows": a.rows}
        for a in rows
    ], total
