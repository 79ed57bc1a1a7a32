"""Paper declarations: the form checkpoint staff (and admins, tracers, ward officers) enter a person
checked on paper with.

Checked as a native declaration (queries.check_paper_person with every required field: ID
number 12 digits CCCD / 9 digits CMND / a passport number, name, birth date; phone optional),
the checkpoint one of the registry's that the user may act at, the direction, the time (local,
in http.timezone; default now) not in the future nor older than the retention. Stored by
queries.record_manual with the user as `recorded_by`. Each rendering of the form carries a
one-time form token (random, bound to the session's CSRF token by an HMAC): the first submit
stores, a second one of the same form (a double click, a reload) finds it used and stores nothing.
"""

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request

from collector import queries
from collector.queries import AlreadyRecorded, QueryError
from collector.web.accounts import Permission
from collector.web.app import N_, nav_item, render, require, web

router = APIRouter()
nav_item("/paper", N_("Paper declaration"), Permission.PAPER_WRITE, order=60)

FIELDS = ("checkpoint", "direction", "id_number", "name", "dob", "phone", "time", "decision")
# what the form says for each field that failed (the query's message is in English)
FIELD_ERRORS = {
    "checkpoint": N_("Checkpoint: choose one of your checkpoints."),
    "direction": N_("Direction: in or out."),
    "id_number": N_("ID number: 12 digits (CCCD), 9 digits (CMND) or a passport number."),
    "name": N_("Name: required, at most 100 characters."),
    "dob": N_("Birth date: a date in the past (YYYY-MM-DD), or the year alone."),
    "phone": N_("Phone: digits, spaces, +, -, ( ), 6 to 20 characters."),
    "time": N_("Time: not in the future, and within the retention period."),
    "decision": N_("Decision: let in or turned away."),
    "form_token": N_("This form is no longer valid: reload the page and enter the declaration again."),
}


def _sign(csrf, nonce):
    return hmac.new(csrf.encode(), f"paper-form:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def new_form_token(csrf):
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_sign(csrf, nonce)}"


def form_token_ok(csrf, token):
    nonce, _, sig = str(token or "").partition(".")
    return bool(csrf and nonce and sig) and len(token) < 200 and hmac.compare_digest(sig, _sign(csrf, nonce))


def checkpoints_for(principal, bindings):
    """(the checkpoints this user may record at, free: True when any well-formed id will do).

    With a device registry: its checkpoints within the user's scope. Without one (never
    imported): the exact ids of the user's scope, or free text for users without a scope.
    """
    registry = sorted({cp for cp, _dr in bindings.values()})
    if registry:
        return [c for c in registry if principal.sees_checkpoint(c)], False
    if principal.checkpoints is None:
        return [], True
    return sorted(c for c in principal.checkpoints if not c.endswith("*")), False


def local_now(zone):
    return datetime.now(UTC).astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)


def _to_utc(text, zone):
    """A datetime-local value (YYYY-MM-DDTHH:MM in the console's zone) as naive UTC; ValueError."""
    t = datetime.fromisoformat(str(text).strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=zone)
    return t.astimezone(UTC).replace(tzinfo=None)


async def _form(request, principal, values=None, errors=(), done=None, again=False, status=200):
    w = web(request)
    lang = w.lang(request)
    options, free = checkpoints_for(principal, await w.db(w.storage.bindings))
    now = local_now(lang.zone)
    values = dict(values or {})
    values.setdefault("time", now.strftime("%Y-%m-%dT%H:%M"))
    values.setdefault("direction", "in")
    values.setdefault("decision", "PASS")
    if len(options) == 1:
        values.setdefault("checkpoint", options[0])
    oldest = now - timedelta(days=w.cfg.collector.retention_days)
    return render(request, "paper.html", {
        "values": values, "errors": [lang.gettext(FIELD_ERRORS.get(e, e)) for e in errors], "bad": set(errors),
        "options": options, "free": free, "done": done, "again": again,
        "form_token": new_form_token(getattr(request.state, "csrf", "") or ""),
        "max_time": now.strftime("%Y-%m-%dT%H:%M"), "min_time": oldest.strftime("%Y-%m-%dT%H:%M"),
    }, status=status)


@router.get("/paper")
async def paper_form(request: Request, principal=Depends(require(Permission.PAPER_WRITE))):
    return await _form(request, principal)


@router.post("/paper")
async def paper_submit(request: Request, principal=Depends(require(Permission.PAPER_WRITE))):
    w = web(request)
    lang = w.lang(request)
    form = await request.form()
    values = {k: str(form.get(k) or "").strip()[:300] for k in FIELDS}
    errors = []
    if not form_token_ok(getattr(request.state, "csrf", "") or "", form.get("form_token")):
        return await _form(request, principal, values, ["form_token"], status=400)
    options, free = checkpoints_for(principal, await w.db(w.storage.bindings))
    cp = values["checkpoint"]
    if not cp or not principal.sees_checkpoint(cp) or (not free and cp not in options):
        errors.append("checkpoint")
    if values["direction"] not in ("in", "out"):
        errors.append("direction")
    if values["decision"] not in ("PASS", "FAIL"):
        errors.append("decision")
    try:
        queries.check_paper_person(values["id_number"], values["name"], values["dob"], values["phone"],
                                   require_all=True)
    except QueryError as exc:
        errors += [f for f in ("id_number", "name", "dob", "phone") if f"{f}:" in str(exc)]
    t = None
    try:
        t = _to_utc(values["time"], lang.zone) if values["time"] else queries.utcnow()
        now = queries.utcnow()
        keep = timedelta(days=w.cfg.collector.retention_days)
        if (t - now).total_seconds() > queries.PAPER_FUTURE_S or now - t > keep:
            errors.append("time")
    except ValueError:
        errors.append("time")
    if errors:
        return await _form(request, principal, values, errors, status=400)
    try:
        ev = await w.db(queries.record_manual, w.storage, w.cfg.collector.id, cp, values["direction"],
                        id_number=values["id_number"], time=t, name=values["name"], phone=values["phone"] or None,
                        dob=values["dob"], decision=values["decision"], recorded_by=principal.actor,
                        form_token=form.get("form_token"), require_all=True)
    except AlreadyRecorded as exc:
        return await _form(request, principal, done=exc.event, again=True, status=409)
    except QueryError as exc:
        msg = str(exc)
        bad = [f for f in FIELDS if msg.startswith(f"{f}:") or f"; {f}:" in msg] or [msg]
        return await _form(request, principal, values, bad, status=400)
    return await _form(request, principal, done=ev)
