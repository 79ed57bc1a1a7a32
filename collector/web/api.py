"""The JSON API, on the same query code as the pages and the CLI (collector.queries).

    GET  /api/                                                   the list of endpoints (signed in)
    GET  /api/visits?person=..&case=..&from=..&to=..             personal:read (case required, audited)
    GET  /api/contacts?person=..&case=..&days=..&window=..&at=.. personal:read (case required, audited)
    GET  /api/traffic?checkpoint=..&from=..&to=..                traffic:read
    GET  /api/fleet                                              fleet:read
    GET  /api/stats                                              fleet:read (the subscriber's counters)
    GET  /api/export.csv?case=..&from=..&to=..&checkpoint=..     personal:read (case required, audited)
    POST /api/manual  {"checkpoint", "direction", "id_number" | ("name", "dob"), "phone"?, "time"?}  paper:write

Who asks: a session (the browser) or `Authorization: Bearer chot_...` (an API token, see
`chot collector token add`). Writes need `Content-Type: application/json` (415) and, from a
browser, this console's Origin (403). Errors are JSON {"error": "..."}: 400 bad arguments,
401 not signed in, 403 not allowed, 413 body too large, 415 not JSON.
A ward officer or staff user (or a token with a checkpoint scope) sees only their checkpoints.
"""

import io
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from collector import queries
from collector.queries import QueryError
from collector.web.accounts import Permission
from collector.web.app import Forbidden, require, web

router = APIRouter(prefix="/api")
MANUAL_FIELDS = {"checkpoint", "direction", "id_number", "time", "name", "phone", "dob", "decision"}


def _json(obj, status=200):
    return Response(queries.dumps(obj) + "\n", status_code=status, media_type="application/json")


def _scoped_events(principal, rows):
    return [r for r in rows if principal.sees_checkpoint(r.get("checkpoint", ""))]


def _need_checkpoint_scope(principal, checkpoint):
    if principal.checkpoints is not None and not (checkpoint and principal.sees_checkpoint(checkpoint)):
        raise Forbidden(f"{principal.actor} may see only the checkpoints {', '.join(principal.checkpoints) or '(none)'}"
                        "; give one of them as checkpoint=")


@router.get("/")
async def endpoints(request: Request, principal=Depends(require())):
    paths = [r.path for r in router.routes if "GET" in getattr(r, "methods", ()) and r.path != "/api/"]
    return {"endpoints": sorted(paths) + ["POST /api/manual"]}


@router.get("/visits")
async def visits(request: Request, person: str | None = None, case: str | None = None,
                 principal=Depends(require(Permission.PERSONAL_READ))):
    q = request.query_params
    w = web(request)
    res = await w.db(queries.visits, w.storage, person, case, principal.actor, q.get("from"), q.get("to"))
    if principal.checkpoints is not None:
        for k in ("verified", "unverified"):
            res[k] = _scoped_events(principal, res[k])
        res["count"] = len(res["verified"]) + len(res["unverified"])
    return _json(res)


@router.get("/contacts")
async def contacts(request: Request, person: str | None = None, case: str | None = None,
                   days: str | None = None, window: str | None = None, at: str | None = None,
                   principal=Depends(require(Permission.PERSONAL_READ))):
    w = web(request)
    res = await w.db(queries.contacts, w.storage, person, case, principal.actor, days, window, at)
    if principal.checkpoints is not None:
        for k in ("contacts", "unverified_contacts"):
            kept = []
            for c in res.get(k, []):
                c["details"] = _scoped_events(principal, c.get("details", []))
                if c["details"]:
                    kept.append(c)
            res[k] = kept
    return _json(res)


@router.get("/traffic")
async def traffic(request: Request, checkpoint: str | None = None,
                  principal=Depends(require(Permission.TRAFFIC_READ))):
    q = request.query_params
    w = web(request)
    if checkpoint and not principal.sees_checkpoint(checkpoint):
        _need_checkpoint_scope(principal, checkpoint)
    res = await w.db(queries.traffic, w.storage, checkpoint or None, q.get("from"), q.get("to"))
    if principal.checkpoints is not None:
        res["hours"] = _scoped_events(principal, res["hours"])
        res["totals"] = {k: sum(r[k] for r in res["hours"]) for k in res["totals"]}
    return _json(res)


@router.get("/fleet")
async def fleet(request: Request, principal=Depends(require(Permission.FLEET_READ))):
    w = web(request)
    return _json(await w.db(queries.fleet, w.storage))


@router.get("/stats")
async def stats(request: Request, principal=Depends(require(Permission.FLEET_READ))):
    col = web(request).collector
    return _json(col.stats() if col is not None else {})


@router.get("/export.csv")
async def export_csv(request: Request, case: str | None = None, checkpoint: str | None = None,
                     principal=Depends(require(Permission.PERSONAL_READ))):
    q = request.query_params
    w = web(request)
    if principal.checkpoints is not None:
        _need_checkpoint_scope(principal, checkpoint)
    buf = io.StringIO()
    await w.db(queries.export_csv, w.storage, buf, case, principal.actor, q.get("from"), q.get("to"),
               checkpoint or None)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="chot-export.csv"'})


@router.post("/manual")
async def manual(request: Request, principal=Depends(require(Permission.PAPER_WRITE))):
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, ValueError):
        raise QueryError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise QueryError("the body must be a JSON object")
    extra = set(body) - MANUAL_FIELDS
    if extra:
        raise QueryError(f"unknown fields: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(MANUAL_FIELDS))}")
    if not principal.sees_checkpoint(str(body.get("checkpoint") or "")):
        _need_checkpoint_scope(principal, None)
    w = web(request)
    ev = await w.db(
        queries.record_manual, w.storage, w.cfg.collector.id, body.get("checkpoint"), body.get("direction"),
        id_number=body.get("id_number"), time=body.get("time"), name=body.get("name"), phone=body.get("phone"),
        dob=body.get("dob"), decision=body.get("decision") or "PASS",
    )
    return JSONResponse(json.loads(queries.dumps(ev)), status_code=201)
