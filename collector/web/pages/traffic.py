"""Traffic: people in, out and refused per checkpoint and hour for one local day, as a chart and a table.

The chart is SVG drawn on the server (no JavaScript); the numbers come from collector.queries.traffic,
the same query as GET /api/traffic. A ward officer sees only their checkpoints; staff may not open it.
Bounds: `day` a date within the retention (queries.day_range), `size` checkpoints a page (at most
MAX_PAGE), `page` within the pages: a 400 naming the limit otherwise.
"""

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request

from chot import wire
from collector import queries
from collector.queries import QueryError
from collector.storage import format_time
from collector.web.accounts import Permission
from collector.web.app import N_, Forbidden, nav_item, render, require, web
from collector.web.pages.common import bounded_int, page_of

router = APIRouter()
nav_item("/traffic", N_("Traffic"), Permission.TRAFFIC_READ, order=40)

MAX_PAGE = 50  # checkpoints on one page at most
DEFAULT_PAGE = 10
SERIES = (("in", N_("in")), ("out", N_("out")), ("refused", N_("refused")))

# the chart's geometry (SVG user units; the SVG scales to the page's width)
W, H, LEFT, RIGHT, TOP, BOTTOM = 480, 200, 34, 6, 10, 24


def _nice_max(v):
    """The chart's top: 1, 2, 5 x 10^n at or above v (at least 4)."""
    v = max(4, v)
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= v:
                return m * step
        step *= 10


def chart(hours, lang):
    """Geometry of one bar chart: per hour three bars (in, out, refused), y grid, x labels every 3 hours."""
    top = _nice_max(max([max(h["in"], h["out"], h["refused"]) for h in hours] + [0]))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    gw = plot_w / max(1, len(hours))
    bw = gw * 0.28
    bars, labels = [], []
    for i, h in enumerate(hours):
        x0 = LEFT + i * gw + gw * 0.08
        for j, (key, label) in enumerate(SERIES):
            n = h[key]
            bh = plot_h * n / top
            bars.append({"x": round(x0 + j * bw, 1), "y": round(TOP + plot_h - bh, 1), "w": round(bw * 0.92, 1),
                         "h": round(bh, 1), "cls": key,
                         "title": f"{h['label']} · {lang.gettext(label)}: {n}"})
        if i % 3 == 0:
            labels.append({"x": round(LEFT + i * gw + gw / 2, 1), "text": h["label"]})
    # gridlines at whole values (top is 1, 2 or 5 x 10^n, at least 5): fifths of 5 and 10, quarters of 20
    parts = 4 if str(top)[0] == "2" else 5
    grid = [{"y": round(TOP + plot_h - plot_h * k / parts, 1), "value": top * k // parts} for k in range(parts + 1)]
    return {"w": W, "h": H, "left": LEFT, "right": W - RIGHT, "bars": bars, "labels": labels, "grid": grid,
            "label_y": H - 6}


def _hours(start, end, lang):
    """The UTC hour starts of [start, end) with their local label (HH:MM in the console's zone)."""
    out = []
    t = start.replace(minute=0, second=0, microsecond=0)
    while t < end:
        local = t.replace(tzinfo=UTC).astimezone(lang.zone)
        out.append((format_time(t), local.strftime("%H:%M")))
        t += timedelta(hours=1)
    return out


def build(res, start, end, lang):
    """Per checkpoint: its hours (every hour of the day, zeros included), totals and its chart."""
    hours = _hours(start, end, lang)
    by_cp = {}
    for r in res["hours"]:
        by_cp.setdefault(r["checkpoint"], {})[r["hour"]] = r
    out = []
    for cp in sorted(by_cp):
        rows = []
        for key, label in hours:
            r = by_cp[cp].get(key, {})
            rows.append({"hour": key, "label": label, "in": r.get("in", 0), "out": r.get("out", 0),
                         "refused_in": r.get("refused_in", 0), "refused_out": r.get("refused_out", 0),
                         "refused": r.get("refused_in", 0) + r.get("refused_out", 0)})
        totals = {k: sum(x[k] for x in rows) for k in ("in", "out", "refused_in", "refused_out", "refused")}
        out.append({"checkpoint": cp, "hours": rows, "totals": totals, "chart": chart(rows, lang)})
    return hours, out


@router.get("/traffic")
async def traffic_page(request: Request, day: str = "", checkpoint: str = "", page: str = "", size: str = "",
                       principal=Depends(require(Permission.TRAFFIC_READ))):
    w = web(request)
    lang = w.lang(request)
    d, start, end = queries.day_range(day, w.cfg.http.timezone, w.cfg.collector.retention_days)
    page_n = bounded_int(page, "page", 1, 1, 100000)
    size_n = bounded_int(size, "size", DEFAULT_PAGE, 1, MAX_PAGE)
    checkpoint = checkpoint.strip()
    if checkpoint:
        if not wire.CHECKPOINT_RE.fullmatch(checkpoint):
            raise QueryError(f"checkpoint: found {checkpoint[:140]!r}; allowed: {wire.CHECKPOINT_PATTERN}")
        if not principal.sees_checkpoint(checkpoint):
            raise Forbidden(f"{principal.actor} may see only the checkpoints "
                            f"{', '.join(principal.checkpoints or ()) or '(none)'}")
    res = await w.db(queries.traffic, w.storage, checkpoint or None, start, end)
    res["hours"] = [r for r in res["hours"] if principal.sees_checkpoint(r["checkpoint"])]
    registry = await w.db(w.storage.bindings)
    known = sorted({cp for cp, _dr in registry.values()} | {r["checkpoint"] for r in res["hours"]}
                   | ({checkpoint} if checkpoint else set()))
    known = [c for c in known if principal.sees_checkpoint(c)]
    hours, cps = build(res, start, end, lang)
    shown, pages = page_of(cps, page_n, size_n)
    totals = {k: sum(c["totals"][k] for c in cps) for k in ("in", "out", "refused_in", "refused_out", "refused")}
    overall = None
    if len(cps) > 1:
        rows = [{"label": label, **{k: sum(c["hours"][i][k] for c in cps) for k in ("in", "out", "refused")}}
                for i, (_key, label) in enumerate(hours)]
        overall = chart(rows, lang)
    today = datetime.now(UTC).astimezone(lang.zone).date()
    oldest = today - timedelta(days=int(w.cfg.collector.retention_days))
    return render(request, "traffic.html", {
        "day": d.isoformat(), "checkpoint": checkpoint, "checkpoints": known, "cps": shown, "page": page_n,
        "pages": pages, "size": size_n, "totals": totals, "overall": overall, "start": start, "end": end,
        "prev_day": (d - timedelta(days=1)).isoformat(), "next_day": (d + timedelta(days=1)).isoformat(),
        "has_next_day": d < today, "has_prev_day": d > oldest, "today": today.isoformat(),
        "oldest": oldest.isoformat(), "series": SERIES, "count": len(cps),
    })
