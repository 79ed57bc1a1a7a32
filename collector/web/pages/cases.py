"""Cases, the person page, the contacts of a case, their exports and "notified" marks (issue 12).

    GET  /cases                          the case list (personal:read); the form to open one (case:write)
    POST /cases                          open a case: number, the index person (ID number, declaration id
                                         or phone), a reason (case:write)
    GET  /cases/{number}                 one case
    POST /cases/{number}/close           close it (case:write): no more personal reads in it
    GET  /person?case=&q=&kind=          find a person (ID number, declaration id, phone) and their visits
    GET  /cases/{number}/contacts        the contacts of the case's index person: ?days=&window=&page=&size=
    GET  /cases/{number}/contacts.csv    the same, every contact, CSV (streamed; formula cells neutralised)
    GET  /cases/{number}/contacts.xlsx   the same, XLSX
    POST /cases/{number}/notified        mark a contact notified (case:write)

Every personal read goes through collector.queries (visits, contacts, find_person) within an open
case (collector/cases.py) and writes an audit row saying what was shown. A ward officer sees
only the rows of their checkpoints (queries' `scope`).
"""

import math
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.exceptions import HTTPException

from collector import queries
from collector.cases import CLOSED, OPEN, check_number
from collector.queries import MAX_DAYS, MAX_MATCHES, MAX_PAGE, MAX_WINDOW_MIN, QueryError
from collector.web import exports
from collector.web.accounts import Permission
from collector.web.app import N_, nav_item, render, require, web

router = APIRouter()
nav_item("/cases", N_("Cases"), Permission.PERSONAL_READ, order=10)
nav_item("/person", N_("Person"), Permission.PERSONAL_READ, order=11)

CASES_PER_PAGE = 50
DEFAULT_PAGE_SIZE = 50
MAX_PERSONS_SHOWN = 5  # timelines shown for one phone (a family's shared number)


def _book(request):
    return web(request).storage.case_book


def _scope(principal):
    return None if principal.checkpoints is None else principal.sees_checkpoint


async def _form(request):
    form = await request.form()
    return {k: str(v) for k, v in form.items() if k != "csrf_token"}


def _page_number(value):
    try:
        n = int(value or 1)
    except ValueError:
        raise QueryError(f"page: found {value!r}; allowed: a page number from 1") from None
    if n < 1:
        raise QueryError(f"page: found {value!r}; allowed: a page number from 1")
    return n


# --- cases ------------------------------------------------------------------------------------


@router.get("/cases")
async def case_list(request: Request, status: str = OPEN, page: str = "1",
                    principal=Depends(require(Permission.PERSONAL_READ))):
    w = web(request)
    if status not in (OPEN, CLOSED, "all"):
        raise QueryError(f"status: found {status!r}; allowed: open, closed, all")
    n = _page_number(page)
    cases, total = await w.db(_book(request).list, status, (n - 1) * CASES_PER_PAGE, CASES_PER_PAGE)
    return render(request, "cases.html", {
        "cases": cases, "total": total, "status": status, "page": n,
        "pages": max(1, math.ceil(total / CASES_PER_PAGE)), "form": {}, "error": None,
        "may_write": principal.may(Permission.CASE_WRITE)})


def _open_case(storage, book, form, actor, checkpoints):
    person = form.get("person", "").strip()
    kind = form.get("kind") or "auto"
    check_number(form.get("number"))
    if kind not in queries.FIND_KINDS:
        raise QueryError(f"kind: found {kind!r}; allowed: {', '.join(queries.FIND_KINDS)}")
    if not person:
        raise QueryError("person: missing; give the index person's ID number, declaration id or phone")
    if kind == "auto":
        kind = queries.guess_kind(person)
    key = None
    if kind != "id":
        lk = storage.keys.lookup_key("cred" if kind == "declaration" else "phone", person)
        found = storage.find_lookup(lk, MAX_MATCHES) if lk else []
        if len(found) != 1:
            raise QueryError(f"person: {len(found)} persons recorded under this {kind}; give the ID number")
        key = found[0]
    return book.open(form.get("number"), person, form.get("reason"), actor, checkpoints, person_key=key)


@router.post("/cases")
async def case_open(request: Request, principal=Depends(require(Permission.CASE_WRITE))):
    w = web(request)
    form = await _form(request)
    try:
        case = await w.db(_open_case, w.storage, _book(request), form, principal.actor, principal.checkpoints)
    except QueryError as exc:
        cases, total = await w.db(_book(request).list, OPEN, 0, CASES_PER_PAGE)
        return render(request, "cases.html", {
            "cases": cases, "total": total, "status": OPEN, "page": 1,
            "pages": max(1, math.ceil(total / CASES_PER_PAGE)), "form": form, "error": str(exc),
            "may_write": True}, status=400)
    return RedirectResponse(f"/cases/{case['number']}", status_code=303)


async def _case_or_404(request, number):
    w = web(request)
    case = await w.db(_book(request).get, number)
    if case is None:
        raise HTTPException(404, f"there is no case {number[:80]!r}; see the list of cases")
    return case


@router.get("/cases/{number}")
async def case_page(request: Request, number: str, principal=Depends(require(Permission.PERSONAL_READ))):
    w = web(request)
    case = await _case_or_404(request, number)
    notified = await w.db(_book(request).notified, case["number"])
    return render(request, "case.html", {"case": case, "notified": len(notified),
                                         "may_write": principal.may(Permission.CASE_WRITE),
                                         "max_days": MAX_DAYS, "max_window": MAX_WINDOW_MIN})


@router.post("/cases/{number}/close")
async def case_close(request: Request, number: str, principal=Depends(require(Permission.CASE_WRITE))):
    w = web(request)
    await w.db(_book(request).close, number, principal.actor)
    return RedirectResponse(f"/cases/{number}", status_code=303)


# --- person -----------------------------------------------------------------------------------


def _find_and_show(storage, q, kind, key, case, actor, scope):
    if key:
        found = {"kind": "key", "keys": [key]}
    else:
        found = queries.find_person(storage, q, kind, case, actor)
    persons = []
    for k in found["keys"][:MAX_PERSONS_SHOWN]:
        persons.append(queries.visits(storage, f"key:{k}", case, actor, scope=scope,
                                      shown="person page: timeline with name, phone, ID number"))
    return found, persons


@router.get("/person")
async def person(request: Request, case: str = "", q: str = "", kind: str = "auto", key: str = "",
                 principal=Depends(require(Permission.PERSONAL_READ))):
    w = web(request)
    cases, _total = await w.db(_book(request).list, OPEN, 0, 200)
    found = persons = error = None
    if q or key:
        try:
            found, persons = await w.db(_find_and_show, w.storage, q, kind, key, case, principal.actor,
                                        _scope(principal))
        except QueryError as exc:
            error = str(exc)
    return render(request, "person.html", {"cases": cases, "case": case, "q": q, "kind": kind, "key": key,
                                           "found": found, "persons": persons, "kinds": queries.FIND_KINDS,
                                           "max_shown": MAX_PERSONS_SHOWN, "error": error},
                  status=400 if error else 200)


# --- contacts ---------------------------------------------------------------------------------


def _contact_args(days, window, size):
    """The query's arguments as given (checked by the query, which names the limits)."""
    return days or "14", window or "15", size or str(DEFAULT_PAGE_SIZE)


@router.get("/cases/{number}/contacts")
async def contacts(request: Request, number: str, days: str = "", window: str = "", page: str = "1",
                   size: str = "", principal=Depends(require(Permission.PERSONAL_READ))):
    w = web(request)
    case = await _case_or_404(request, number)
    days, window, size = _contact_args(days, window, size)
    n = _page_number(page)
    try:
        per_page = int(size)
    except ValueError:
        raise QueryError(f"size: found {size!r}; allowed: a number from 1 to {MAX_PAGE}") from None
    if not 1 <= per_page <= MAX_PAGE:
        raise QueryError(f"size: found {size!r}; the limit is {MAX_PAGE} rows per page")
    res = await w.db(queries.contacts, w.storage, f"key:{case['person_key']}", number, principal.actor, days,
                     window, None, offset=(n - 1) * per_page, limit=per_page, scope=_scope(principal),
                     shown=f"contacts page {n}: names, phones, ID numbers")
    notified = await w.db(_book(request).notified, number)
    total = sum(res["total"].values())
    base = {"days": days, "window": window, "size": per_page}
    return render(request, "contacts.html", {
        "case": case, "res": res, "entries": res["contacts"] + res["unverified_contacts"], "notified": notified,
        "page": n, "pages": max(1, math.ceil(total / per_page)), "total": total, "days": days, "window": window,
        "size": per_page, "query": urlencode(base), "max_days": MAX_DAYS, "max_window": MAX_WINDOW_MIN,
        "max_page": MAX_PAGE, "may_write": principal.may(Permission.CASE_WRITE)})


async def _export(request, number, days, window, principal, fmt):
    w = web(request)
    case = await _case_or_404(request, number)
    days, window, _size = _contact_args(days, window, None)
    res = await w.db(queries.contacts, w.storage, f"key:{case['person_key']}", number, principal.actor, days,
                     window, None, scope=_scope(principal),
                     shown=f"contacts export ({fmt}): names, phones, ID numbers")
    notified = await w.db(_book(request).notified, number)
    rows = exports.contact_rows(res, notified, w.cfg.http.timezone)
    name = f"chot-{case['number']}-contacts.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if fmt == "csv":
        return StreamingResponse(exports.csv_stream(rows), media_type="text/csv; charset=utf-8", headers=headers)
    f = await w.db(exports.xlsx_file, rows)
    return StreamingResponse(exports.file_chunks(f), headers=headers,
                             media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


@router.get("/cases/{number}/contacts.csv")
async def contacts_csv(request: Request, number: str, days: str = "", window: str = "",
                       principal=Depends(require(Permission.PERSONAL_READ))):
    return await _export(request, number, days, window, principal, "csv")


@router.get("/cases/{number}/contacts.xlsx")
async def contacts_xlsx(request: Request, number: str, days: str = "", window: str = "",
                        principal=Depends(require(Permission.PERSONAL_READ))):
    return await _export(request, number, days, window, principal, "xlsx")


@router.post("/cases/{number}/notified")
async def mark_notified(request: Request, number: str, principal=Depends(require(Permission.CASE_WRITE))):
    w = web(request)
    form = await _form(request)
    await w.db(_book(request).mark_notified, number, form.get("person_key", ""), principal.actor)
    back = {k: form[k] for k in ("days", "window", "page", "size") if form.get(k)}
    return RedirectResponse(f"/cases/{number}/contacts?{urlencode(back)}#c-{form.get('person_key', '')[:12]}",
                            status_code=303)
