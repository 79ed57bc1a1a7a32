"""Fleet: every terminal (online, binding, outbox, clock, signed lists, gaps) and the collector's own health.

Terminals only: the collectors' own paper series (queries.is_paper_series) are listed apart, and
bound terminals the collector never heard from are listed as such. The numbers come from
collector.queries.fleet (as GET /api/fleet) and Collector.stats() (as GET /api/stats).
Bounds: `size` terminals a page (at most MAX_PAGE), `page` within the pages, `show` all|problems.
"""

from fastapi import APIRouter, Depends, Request

from collector import queries
from collector.queries import QueryError
from collector.web.accounts import Permission
from collector.web.app import N_, nav_item, render, require, web
from collector.web.pages.common import age, bounded_int, page_of

router = APIRouter()
nav_item("/fleet", N_("Fleet"), Permission.FLEET_READ, order=45)

MAX_PAGE = 500
DEFAULT_PAGE = 100
LISTS = ("trust", "denylist", "config")
LIST_NAMES = (N_("trust"), N_("denylist"), N_("config"))  # shown translated: _(name)


def problems(d):
    """What is wrong with one terminal (N_ strings), empty when nothing."""
    out = []
    if not d["online"]:
        out.append(N_("offline"))
    if d["stale"]:
        out.append(N_("stale lists"))
    if d["clock_behind"]:
        out.append(N_("clock behind"))
    if d["clock_synced"] is False:
        out.append(N_("clock not synchronised"))
    if d["open_gaps"]:
        out.append(N_("open gaps"))
    return out


@router.get("/fleet")
async def fleet_page(request: Request, page: str = "", size: str = "", show: str = "all",
                     principal=Depends(require(Permission.FLEET_READ))):
    w = web(request)
    lang = w.lang(request)
    if show not in ("all", "problems"):
        raise QueryError(f"show: found {show[:40]!r}; allowed: all, problems")
    page_n = bounded_int(page, "page", 1, 1, 100000)
    size_n = bounded_int(size, "size", DEFAULT_PAGE, 1, MAX_PAGE)
    f = await w.db(queries.fleet, w.storage)
    if principal.checkpoints is not None:  # a ward officer: the terminals of their checkpoints
        f = queries.fleet_within(f, principal.sees_checkpoint)
    rows = []
    for d in f["devices"]:
        lists = []
        for name in LISTS:
            st = d["lists"].get(name) if isinstance(d["lists"], dict) else None
            if st or name in d["stale"]:
                st = st if isinstance(st, dict) else {}
                lists.append({"name": name, "version": st.get("version"), "issued": st.get("issued"),
                              "age": age(lang, st.get("age_s")), "stale": name in d["stale"]})
        rows.append({**d, "list_rows": lists, "problems": problems(d), "seen_age": age(lang, d["last_seen_age_s"])})
    if show == "problems":
        rows = [r for r in rows if r["problems"]]
    shown, pages = page_of(rows, page_n, size_n)
    col = w.collector
    stats = col.stats() if col is not None else None
    return render(request, "fleet.html", {
        "f": f, "rows": shown, "page": page_n, "pages": pages, "size": size_n, "show": show, "stats": stats,
        "offline": sum(1 for d in f["devices"] if not d["online"]),
    })
