"""The traffic page (collector/web/pages/traffic.py) against a real server: the numbers match the stored
events (and /api/traffic), the hours are local, ward officers see only their checkpoints, staff get 403,
viewers see no personal data, and the bounds answer 400 naming the limit."""

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from web_helpers import login

from chotdemo.testing import make_event
from collector import queries
from collector.storage import format_time, parse_time

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
NAME = "Đặng Thị Riêng"  # a paper declaration's name: never on a viewer's page


def _yesterday():
    return datetime.now(UTC).astimezone(ZONE).date() - timedelta(days=1)


def _local(day, hh, mm):
    return datetime.combine(day, time(hh, mm), tzinfo=ZONE).astimezone(UTC).replace(tzinfo=None)


def _store(console, day):
    """Events yesterday (local) at three checkpoints, some refused, one just before and after the day."""
    evs = []
    plan = [("market", 7, "in", "PASS", 5), ("market", 7, "out", "PASS", 2), ("market", 8, "in", "FAIL", 3),
            ("market", 23, "out", "FAIL", 1), ("ward7-school", 12, "in", "PASS", 4), ("station", 9, "in", "PASS", 6),
            ("station", 9, "out", "FAIL", 2)]
    seq = 0
    for cp, hh, direction, decision, n in plan:
        for i in range(n):
            seq += 1
            evs.append(make_event("gate-a", seq, time=_local(day, hh, 5 + i), checkpoint=cp, direction=direction,
                                  decision=decision, reason="ok" if decision == "PASS" else "unsigned"))
    # outside the local day: 23:59 the day before and 00:00 the day after
    evs.append(make_event("gate-a", seq + 1, time=_local(day - timedelta(days=1), 23, 59), checkpoint="market"))
    evs.append(make_event("gate-a", seq + 2, time=_local(day + timedelta(days=1), 0, 0), checkpoint="market"))
    with console.storage.connection():
        console.storage.store_batch(evs)
        queries.record_manual(console.storage, "test", "market", "in", id_number="001090000777", name=NAME,
                              dob="1990-01-01", time=_local(day, 10, 0), recorded_by="staff")


def _expected(console, day, checkpoints=None):
    """{(checkpoint, local HH:MM): [in, out, refused_in, refused_out]} counted from the stored rows themselves."""
    start, end = _local(day, 0, 0), _local(day + timedelta(days=1), 0, 0)
    E = console.storage.Event
    out = {}
    with console.storage.connection():
        for cp, t, direction, decision in E.select(E.checkpoint, E.time_corrected, E.direction, E.decision).tuples():
            t = parse_time(t)
            if not start <= t < end or (checkpoints and cp not in checkpoints):
                continue
            label = t.replace(tzinfo=UTC).astimezone(ZONE).strftime("%H:00")
            k = ("" if decision == "PASS" else "refused_") + direction
            row = out.setdefault((cp, label), {"in": 0, "out": 0, "refused_in": 0, "refused_out": 0})
            row[k] += 1
    return out


def _page_numbers(html):
    """{(checkpoint, HH:MM): {...}} read back from the page's tables."""
    out = {}
    for sec in re.findall(r'<section class="checkpoint".*?</section>', html, re.S):
        cp = re.search(r'data-checkpoint="([^"]+)"', sec).group(1)
        for label, a, b, c, d in re.findall(r'<tr data-hour="[^"]+"><td>([^<]+)</td><td class="num">(\d+)</td>'
                                            r'<td class="num">(\d+)</td><td class="num">(\d+)</td>'
                                            r'<td class="num">(\d+)</td></tr>', sec):
            out[(cp, label)] = {"in": int(a), "out": int(b), "refused_in": int(c), "refused_out": int(d)}
    return out


def test_traffic_numbers_match_the_stored_events_in_local_hours(console):
    day = _yesterday()
    _store(console, day)
    viewer = login(console, "viewer")
    r = viewer.get(f"/traffic?day={day.isoformat()}")
    assert r.status_code == 200, r.text
    html = r.text
    want = _expected(console, day)
    assert _page_numbers(html) == want
    assert want[("market", "07:00")] == {"in": 5, "out": 2, "refused_in": 0, "refused_out": 0}
    assert want[("market", "10:00")]["in"] == 1  # the paper declaration counts as an entry
    assert ("market", "00:00") not in want  # the event at 00:00 of the next day is not on this day
    assert html.count('<svg class="chart"') == 1 + 3  # all checkpoints, then one per checkpoint
    assert 'id="total-in">16<' in html and 'id="total-refused">6<' in html
    # the same numbers from the JSON API, for the same local day
    api = viewer.get(f"/api/traffic?day={day.isoformat()}").json()
    start = _local(day, 0, 0)
    assert api["from"] == format_time(start)
    from_api = {(h["checkpoint"], parse_time(h["hour"]).replace(tzinfo=UTC).astimezone(ZONE).strftime("%H:00")):
                {k: h[k] for k in ("in", "out", "refused_in", "refused_out")} for h in api["hours"]}
    assert from_api == want
    # no personal data on a viewer's page
    assert NAME not in html and "001090000777" not in html
    assert viewer.get("/api/visits?person=001090000777&case=C1").status_code == 403  # and no way to ask
    # one checkpoint
    r = viewer.get(f"/traffic?day={day.isoformat()}&checkpoint=station")
    assert _page_numbers(r.text) == _expected(console, day, {"station"})


def test_ward_officer_sees_only_their_checkpoints_and_staff_none(console):
    day = _yesterday()
    _store(console, day)
    officer = login(console, "ward_officer")  # scope: market, ward7-*
    html = officer.get(f"/traffic?day={day.isoformat()}").text
    assert _page_numbers(html) == _expected(console, day, {"market", "ward7-school"})
    assert "station" not in html
    r = officer.get(f"/traffic?day={day.isoformat()}&checkpoint=station")
    assert r.status_code == 403
    staff = login(console, "checkpoint_staff")
    for path in ("/traffic", "/fleet", "/api/traffic", "/api/fleet", "/api/stats",
                 "/api/visits?person=001090000777&case=C1", "/api/export.csv?case=C1"):
        assert staff.get(path).status_code == 403, path
    assert "/traffic" not in staff.get("/").text  # not in staff's navigation either


def test_traffic_bounds_answer_400_naming_the_limit(console_sqlite):
    console = console_sqlite
    viewer = login(console, "viewer")
    today = datetime.now(UTC).astimezone(ZONE).date()
    cases = {
        "/traffic?day=2001-01-01": "retention_days = 3650",
        f"/traffic?day={(today + timedelta(days=1)).isoformat()}": f"to {today.isoformat()}",
        "/traffic?day=yesterday": "YYYY-MM-DD",
        "/traffic?day=2026-02-30": "YYYY-MM-DD",
        "/traffic?size=51": "from 1 to 50",
        "/traffic?size=0": "from 1 to 50",
        "/traffic?page=7": "allowed: 1 to 1",
        "/traffic?checkpoint=%3Cscript%3E": "checkpoint",
        "/fleet?size=501": "from 1 to 500",
        "/fleet?show=everything": "all, problems",
    }
    for path, limit in cases.items():
        r = viewer.get(path)
        assert r.status_code == 400, path
        assert limit in r.text.replace("&#39;", "'"), (path, r.text[-500:])
    for path, limit in {"/api/traffic?from=2021-01-01T00:00:00Z&to=2021-03-01T00:00:00Z": "31 days",
                        "/api/traffic?day=2001-01-01": "retention_days",
                        "/api/traffic?day=2021-01-01&from=2021-01-01T00:00:00Z": "not both"}.items():
        r = viewer.get(path)
        assert r.status_code == 400 and limit in r.json()["error"], (path, r.text)
    assert viewer.get(f"/traffic?day={today.isoformat()}").status_code == 200


def test_chart_gridlines_are_labelled_with_the_value_at_their_height():
    """A day whose busiest hour had 4 people: the gridline labelled 3 is where a bar of 3 ends (it was at 3.75)."""
    from types import SimpleNamespace

    from collector.web.pages.traffic import chart

    lang = SimpleNamespace(gettext=lambda s: s)
    for most, values in ((4, [0, 1, 2, 3, 4, 5]), (9, [0, 2, 4, 6, 8, 10]), (17, [0, 5, 10, 15, 20]),
                         (33, [0, 10, 20, 30, 40, 50]), (99, [0, 20, 40, 60, 80, 100])):
        hours = [{"label": f"{h:02d}:00", "in": most if h == 7 else 0, "out": 0, "refused": 0} for h in range(24)]
        c = chart(hours, lang)
        assert [g["value"] for g in c["grid"]] == values
        bar = next(b for b in c["bars"] if b["cls"] == "in" and b["title"].startswith("07:00"))
        bottom, unit = bar["y"] + bar["h"], bar["h"] / most
        for g in c["grid"]:  # a bar of a gridline's value would end on that gridline
            assert abs((bottom - g["y"]) - unit * g["value"]) < 0.3, (most, g)
