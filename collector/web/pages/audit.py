"""The audit log (admin: audit:read): who read which person's data, in which case, what was shown.

    GET /audit?actor=&case=&from=&to=&page=     newest first, AUDIT_PAGE rows a page

The log itself is append-only (collector/cases.py): this page only reads it.
"""

import math
from datetime import datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request

from collector.cases import audit_page
from collector.queries import QueryError
from collector.storage import to_naive_utc
from collector.web.accounts import Permission
from collector.web.app import N_, nav_item, render, require, web
from collector.web.pages.cases import _page_number

router = APIRouter()
nav_item("/audit", N_("Audit log"), Permission.AUDIT_READ, order=91)

AUDIT_PAGE = 100


def _day(value, name, zone, end=False):
    """A YYYY-MM-DD day in the console's zone -> naive UTC (its start; with `end`, the next day's start)."""
    if not value:
        return None
    try:
        d = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise QueryError(f"{name}: found {value[:40]!r}; allowed: a day as YYYY-MM-DD") from None
    start = datetime.combine(d + timedelta(days=1) if end else d, time(0), tzinfo=ZoneInfo(zone))
    return to_naive_utc(start)


@router.get("/audit")
async def audit(request: Request, actor: str = "", case: str = "", page: str = "1",
                principal=Depends(require(Permission.AUDIT_READ))):
    w = web(request)
    q = request.query_params
    zone = w.cfg.http.timezone
    start, end = _day(q.get("from"), "from", zone), _day(q.get("to"), "to", zone, end=True)
    n = _page_number(page)
    rows, total = await w.db(audit_page, w.storage, actor.strip() or None, case.strip() or None, start, end,
                             (n - 1) * AUDIT_PAGE, AUDIT_PAGE)
    filters = {"actor": actor, "case": case, "from": q.get("from", ""), "to": q.get("to", "")}
    return render(request, "audit.html", {"rows": rows, "total": total, "page": n,
                                          "pages": max(1, math.ceil(total / AUDIT_PAGE)), "filters": filters,
                                          "query": urlencode({k: v for k, v in filters.items() if v})})
