"""Tracing queries on a hand-built scenario (SQLite and PostgreSQL), CSV round trip, HTTP API, manual records."""

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime

import pytest

from chot.wire import subject_key_for_id
from collector import queries
from collector.api import ApiServer
from collector.storage import Storage, format_time
from collector.testing import collector_config, make_event

AT = datetime(2021, 8, 20, 12, 0, 0)
CASE_ID = "001 090 000 001"  # the confirmed case, as a tracer types it
KEYS = {name: subject_key_for_id(f"0010900000{i:02d}") for i, name in enumerate("ABCDEFGHIK", start=1)}


def t(text):
    return datetime.fromisoformat(text)


# (who, checkpoint, direction, time, decision): A is the case; the comment says why each is or is not a contact
PLAN = [
    ("A", "market", "in", t("2021-08-15 09:00:00"), "PASS"),  # visit 1
    ("A", "market", "out", t("2021-08-15 09:40:00"), "PASS"),  # visit 2
    ("A", "office", "in", t("2021-08-18 14:00:00"), "PASS"),  # visit 3
    ("A", "market", "in", t("2021-08-01 09:00:00"), "PASS"),  # more than 14 days before AT: not looked at
    ("B", "market", "in", t("2021-08-15 09:10:00"), "PASS"),  # +10 min of visit 1
    ("B", "office", "in", t("2021-08-18 14:05:00"), "PASS"),  # +5 min of visit 3
    ("C", "market", "in", t("2021-08-15 09:15:00"), "PASS"),  # +15 min exactly: inside
    ("D", "market", "out", t("2021-08-15 09:15:01"), "PASS"),  # 15:01 after visit 1, 24:59 before visit 2: out
    ("E", "office", "in", t("2021-08-15 09:05:00"), "PASS"),  # same time, other checkpoint: out
    ("F", "office", "in", t("2021-08-18 13:50:00"), "PASS"),  # -10 min of visit 3
    ("G", "market", "in", t("2021-08-15 09:30:00"), "PASS"),  # -10 min of visit 2
    ("H", "market", "in", t("2021-08-01 09:05:00"), "PASS"),  # near the visit outside the 14 days: out
    ("I", "market", "out", t("2021-08-15 09:25:00"), "PASS"),  # -15 min exactly of visit 2: inside
    ("K", "market", "in", t("2021-08-15 09:10:30"), "FAIL"),  # turned away, but was there: inside
    (None, "market", "in", t("2021-08-15 09:05:00"), "FAIL"),  # unreadable code, no subject: not traceable
]
EXPECTED = {  # who -> sorted deltas (seconds, other's time - the case's visit time)
    "B": [300.0, 600.0],
    "C": [900.0],
    "F": [-600.0],
    "G": [-600.0],
    "I": [-900.0],
    "K": [630.0],
}


def build_events():
    seqs = Counter()
    events = []
    for who, cp, direction, when, decision in sorted(PLAN, key=lambda p: p[3]):
        dev = f"{cp}-{direction}"
        seqs[dev] += 1
        events.append(
            make_event(
                dev, seqs[dev], time=when, subject_key=KEYS[who] if who else None, checkpoint=cp,
                direction=direction, decision=decision, reason="ok" if decision == "PASS" else "denied",
                fmt="native" if who else "unknown", initials=f"{who}." if who else None,
            )
        )
    return events


@pytest.fixture(params=["sqlite", "postgresql"])
def loaded(request, tmp_path):
    url = f"sqlite:///{tmp_path}/q.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    events = build_events()
    with Storage(url) as st:
        st.store_batch(events)
        yield st, events


def test_contacts_are_exactly_the_planted_ones(loaded):
    st, _ = loaded
    res = queries.contacts(st, CASE_ID, days=14, window_min=15, at=format_time(AT))
    assert res["subject_key"] == KEYS["A"]
    assert len(res["visits"]) == 3
    names = {v: k for k, v in KEYS.items()}
    got = {names[c["subject_key"]]: sorted(d["delta_s"] for d in c["details"]) for c in res["contacts"]}
    assert got == EXPECTED
    b = next(c for c in res["contacts"] if c["subject_key"] == KEYS["B"])
    assert b["encounters"] == 2 and b["closest_s"] == 300.0
    assert {d["checkpoint"] for d in b["details"]} == {"market", "office"}
    # ordered by closeness
    assert [c["closest_s"] for c in res["contacts"]] == sorted(c["closest_s"] for c in res["contacts"])
    # the same by subject key, and a narrower window drops the far ones
    res5 = queries.contacts(st, KEYS["A"], days=14, window_min=5, at=AT)
    assert {names[c["subject_key"]] for c in res5["contacts"]} == {"B"}
    # looking back 30 days reaches the 1 August visit and H
    res30 = queries.contacts(st, CASE_ID, days=30, window_min=15, at=AT)
    assert "H" in {names[c["subject_key"]] for c in res30["contacts"]}
    # someone never recorded has no visits and no contacts
    empty = queries.contacts(st, "999999999999", at=AT)
    assert empty["visits"] == [] and empty["contacts"] == []


def test_visits_in_a_range(loaded):
    st, _ = loaded
    res = queries.visits(st, "id:" + CASE_ID, "2021-08-10T00:00:00Z", "2021-08-18T14:00:00Z")
    assert [(v["checkpoint"], v["time"]) for v in res["visits"]] == [
        ("market", "2021-08-15T09:00:00Z"),
        ("market", "2021-08-15T09:40:00Z"),
    ]  # the end is excluded
    assert queries.visits(st, CASE_ID)["count"] == 4


def test_traffic_per_checkpoint_per_hour(loaded):
    st, events = loaded
    expected = Counter()
    for e in events:
        hour = e["time"][:13] + ":00:00Z"
        col = e["direction"] if e["decision"] == "PASS" else "refused_" + e["direction"]
        expected[(e["checkpoint"], hour, col)] += 1
    res = queries.traffic(st, start="2021-07-01T00:00:00Z", end="2021-09-01T00:00:00Z")
    got = Counter()
    for r in res["hours"]:
        for col in ("in", "out", "refused_in", "refused_out"):
            if r[col]:
                got[(r["checkpoint"], r["hour"], col)] = r[col]
    assert got == expected
    market = queries.traffic(st, "market", "2021-08-15T09:00:00Z", "2021-08-15T10:00:00Z")
    assert [r["hour"] for r in market["hours"]] == ["2021-08-15T09:00:00Z"]
    assert market["totals"] == {"in": 4, "out": 3, "refused_in": 2, "refused_out": 0}


def test_csv_export_round_trips(loaded, tmp_path):
    st, events = loaded
    buf = io.StringIO()
    n = queries.export_csv(st, buf, "2021-07-01T00:00:00Z", "2021-09-01T00:00:00Z")
    assert n == len(events)
    text = buf.getvalue()
    assert text.splitlines()[0] == ",".join(queries.EXPORT_COLUMNS)
    back = list(queries.read_csv(io.StringIO(text, newline="")))
    key = lambda e: (e["device_id"], e["seq"])  # noqa: E731
    assert sorted(back, key=key) == sorted(events, key=key)
    # into another database and out again: the same rows (received_at aside)
    with Storage(f"sqlite:///{tmp_path}/copy.db") as other:
        assert queries.import_csv(other, io.StringIO(text, newline="")) == (n, n)
        assert queries.import_csv(other, io.StringIO(text, newline="")) == (n, 0)  # duplicates ignored
        buf2 = io.StringIO()
        queries.export_csv(other, buf2)
    strip = lambda s: [line.rsplit(",", 1)[0] for line in s.splitlines()]  # noqa: E731
    assert strip(buf2.getvalue()) == strip(text)
    with pytest.raises(queries.QueryError):
        list(queries.read_csv(io.StringIO("a,b\n1,2\n")))


def test_http_api_same_answers_and_clear_errors(loaded):
    st, _ = loaded
    cfg = collector_config("sqlite:///unused.db", http={"port": 0})
    with ApiServer(cfg, st) as api:

        def get(path):
            try:
                with urllib.request.urlopen(api.url + path, timeout=10) as r:
                    return r.status, r.headers.get("Content-Type"), r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Content-Type"), exc.read().decode()

        status, ctype, body = get(f"/api/contacts?subject={KEYS['A']}&days=14&window=15&at=2021-08-20T12:00:00Z")
        assert status == 200 and ctype.startswith("application/json")
        assert json.loads(body) == json.loads(queries.dumps(queries.contacts(st, KEYS["A"], 14, 15, AT)))
        status, _, body = get("/api/fleet")
        assert status == 200 and {d["device_id"] for d in json.loads(body)["devices"]} == {
            "market-in", "market-out", "office-in",
        }
        status, ctype, body = get("/api/export.csv?from=2021-08-15T00:00:00Z&to=2021-08-16T00:00:00Z")
        on_15th = sum(1 for p in PLAN if p[3].day == 15)
        assert status == 200 and ctype.startswith("text/csv") and len(body.splitlines()) == 1 + on_15th
        status, _, body = get("/api/traffic?checkpoint=market&from=2021-08-15T09:00:00Z&to=2021-08-15T10:00:00Z")
        assert json.loads(body)["totals"]["in"] == 4
        for bad in ("/api/contacts?subject=x&days=lots", "/api/visits", "/api/visits?subject=1&from=tuesday"):
            status, ctype, body = get(bad)
            assert status == 400 and ctype.startswith("application/json") and json.loads(body)["error"]
        assert get("/api/nothing")[0] == 404
        status, ctype, body = get("/")
        assert status == 200 and "/api/fleet" in body and "/api/traffic" in body

        def post(obj):
            req = urllib.request.Request(api.url + "/api/manual", data=json.dumps(obj).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, ev = post({"checkpoint": "market", "direction": "in", "id_number": "0010900000 99",
                           "time": "2021-08-15T09:01:00Z", "name": "Paper Person"})
        assert status == 201 and ev["seq"] == 1 and ev["device_id"] == "collector-test"
        status, ev2 = post({"checkpoint": "market", "direction": "out", "id_number": "001090000099"})
        assert status == 201 and ev2["seq"] == 2
        status, err = post({"checkpoint": "market", "direction": "sideways", "id_number": "1"})
        assert status == 400 and "direction" in err["error"]
    # the paper declaration is a contact of the case like any other
    res = queries.contacts(st, CASE_ID, at=AT)
    paper = subject_key_for_id("001090000099")
    assert paper in {c["subject_key"] for c in res["contacts"]}
    v = queries.visits(st, paper)["visits"]
    assert v[0]["source"] == "manual" and v[0]["reason"] == "manual"


def test_cli_queries_and_record_manual(tmp_path):
    db = tmp_path / "cli.db"
    with Storage(f"sqlite:///{db}") as st:
        st.store_batch(build_events())
    conf = tmp_path / "c.toml"
    conf.write_text(f'[collector]\nid = "hq"\ndatabase = "sqlite:///{db}"\n[http]\nenabled = false\n')

    def chot(*args):
        r = subprocess.run([sys.executable, "-m", "chot.cli", "collector", *args, "--config", str(conf)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    rec = json.loads(chot("record-manual", "--checkpoint", "office", "--direction", "in", "--id-number",
                          "0010900000 77", "--time", "2021-08-18T14:10:00Z", "--name", "On Paper"))
    assert rec["device_id"] == "collector-hq" and rec["seq"] == 1
    res = json.loads(chot("contacts", CASE_ID, "--days", "14", "--window", "15", "--at", "2021-08-20T12:00:00Z"))
    names = {v: k for k, v in KEYS.items()}
    got = {names.get(c["subject_key"], "paper") for c in res["contacts"]}
    assert got == set(EXPECTED) | {"paper"}
    out = chot("export", "--from", "2021-08-18T00:00:00Z", "--to", "2021-08-19T00:00:00Z")
    assert len(out.splitlines()) == 1 + sum(1 for p in PLAN if p[3].day == 18) + 1  # and the paper one
    fleet = json.loads(chot("fleet"))
    assert fleet["total"] == 4  # three terminals and the collector's paper series
