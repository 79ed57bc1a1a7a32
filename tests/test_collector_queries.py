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

from chotdemo.testing import collector_config, make_item, make_keys
from collector import queries
from collector.storage import Storage, format_time

AT = datetime(2021, 8, 20, 12, 0, 0)
CASE_ID = "001 090 000 001"  # the confirmed case's ID number, as a tracer types it
CASE = "HN-2021-0815"  # the case file this look-up is for
IDS = {name: f"0010900000{i:02d}" for i, name in enumerate("ABCDEFGHIKXY", start=1)}
NAMES = {n: f"Nguyễn Văn {n}" for n in IDS}


def t(text):
    return datetime.fromisoformat(text)


# (who, checkpoint, direction, time, decision[, verified]): A is the case; the comment says why
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
    (None, "market", "in", t("2021-08-15 09:05:00"), "FAIL"),  # unreadable code, no person: untraceable
    ("X", "market", "in", t("2021-08-15 09:12:00"), "FAIL", False),  # an unsigned claim: listed apart
    ("A", "park", "in", t("2021-08-16 10:00:00"), "FAIL", False),  # someone claiming to be A, unsigned
    ("Y", "park", "in", t("2021-08-16 10:03:00"), "PASS"),  # near the claim only: flagged by visit_verified
]
EXPECTED = {  # who -> sorted deltas (seconds, other's time - the case's visit time), verified contacts
    "B": [300.0, 600.0],
    "C": [900.0],
    "F": [-600.0],
    "G": [-600.0],
    "I": [-900.0],
    "K": [630.0],
    "Y": [180.0],
}


def build_items():
    seqs = Counter()
    items = []
    for who, cp, direction, when, decision, *rest in sorted(PLAN, key=lambda p: p[3]):
        verified = rest[0] if rest else who is not None
        dev = f"{cp}-{direction}"
        seqs[dev] += 1
        reason = "ok" if decision == "PASS" else "denylisted" if verified else "unsigned" if who else "unreadable"
        person = {"id_number": IDS[who], "name": NAMES[who], "phone": f"09{ord(who):08d}"} if who else None
        items.append(
            make_item(
                dev, seqs[dev], time=when, checkpoint=cp, direction=direction, decision=decision,
                reason=reason,
                fmt="native" if verified else ("plain" if who else "unknown"), verified=verified,
                person=person, person_id=f"id:{IDS[who]}" if who else None,
                clock_synced=cp != "office", boot_id=f"boot-{dev}",
            )
        )
    return items


@pytest.fixture(params=["sqlite", "postgresql"])
def loaded(request, tmp_path):
    url = f"sqlite:///{tmp_path}/q.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    items = build_items()
    with Storage(url, keys=make_keys(tmp_path / "keys")) as st:
        st.store_batch(items)
        yield st, [i.event for i in items]


def _who(entry):
    return entry["person"]["name"].rsplit(" ", 1)[1]


def test_contacts_are_exactly_the_planted_ones(loaded):
    st, _ = loaded
    res = queries.contacts(st, CASE_ID, CASE, "tracer-1", days=14, window_min=15, at=format_time(AT))
    assert res["person_key"] == st.keys.person_key("id:" + IDS["A"])
    assert res["person"]["name"] == NAMES["A"] and res["case"] == CASE
    assert len(res["visits"]["verified"]) == 3 and len(res["visits"]["unverified"]) == 1
    got = {_who(c): sorted(d["delta_s"] for d in c["details"]) for c in res["contacts"]}
    assert got == EXPECTED
    # the decrypted fields a tracer calls with, and each row's clock quality and verification
    b = next(c for c in res["contacts"] if _who(c) == "B")
    assert b["person"] == {"id_number": IDS["B"], "name": NAMES["B"], "phone": f"09{ord('B'):08d}"}
    assert b["verified"] is True and b["encounters"] == 2 and b["closest_s"] == 300.0
    assert {d["checkpoint"] for d in b["details"]} == {"market", "office"}
    assert {d["checkpoint"]: d["clock"]["synced"] for d in b["details"]} == {"market": True, "office": False}
    assert all(d["clock"]["boot_id"].startswith("boot-") and d["verified"] for d in b["details"])
    y = next(c for c in res["contacts"] if _who(c) == "Y")
    assert [d["visit_verified"] for d in y["details"]] == [False]  # met only the unsigned claim naming A
    # the unsigned claim of X is listed apart, flagged, under its claim key
    (x,) = res["unverified_contacts"]
    assert x["verified"] is False and x["claim_key"] == st.keys.person_key("id:" + IDS["X"]) and _who(x) == "X"
    assert "person_key" not in x and x["details"][0]["verified"] is False
    assert res["untraceable"] == 1
    # ordered by closeness
    assert [c["closest_s"] for c in res["contacts"]] == sorted(c["closest_s"] for c in res["contacts"])
    res5 = queries.contacts(st, "id:" + IDS["A"], CASE, "tracer-1", days=14, window_min=5, at=AT)
    assert {_who(c) for c in res5["contacts"]} == {"B", "Y"}
    # looking back 28 days (the limit) reaches the 1 August visit and H
    res30 = queries.contacts(st, CASE_ID, CASE, "tracer-1", days=28, window_min=15, at=AT)
    assert "H" in {_who(c) for c in res30["contacts"]}
    # someone never recorded has no visits and no contacts
    empty = queries.contacts(st, "999999999999", CASE, "tracer-1", at=AT)
    assert empty["visits"] == {"verified": [], "unverified": []} and empty["contacts"] == []
    # every look-up is in the audit log, with the case, the actor and whom it revealed
    log = st.audit_log()
    assert len(log) == 4 and {a["action"] for a in log} == {"contacts"} and {a["case"] for a in log} == {CASE}
    first = log[-1]
    assert first["actor"] == "tracer-1" and first["person_key"] == res["person_key"]
    assert set(first["detail"]["revealed"]) == {c["person_key"] for c in res["contacts"]} | {x["claim_key"]}
    assert first["rows"] == 4 + len(first["detail"]["revealed"])


def test_a_case_is_required_for_personal_reads(loaded):
    st, _ = loaded
    for fn, args in ((queries.visits, (CASE_ID,)), (queries.contacts, (CASE_ID,))):
        for case in (None, "", "  "):
            with pytest.raises(queries.QueryError, match="case"):
                fn(st, *args, case, "tracer-1")
    with pytest.raises(queries.QueryError, match="case"):
        queries.export_csv(st, io.StringIO(), None, "tracer-1")
    with pytest.raises(queries.QueryError, match="person"):
        queries.visits(st, "nd:|1990", CASE, "tracer-1")
    assert st.audit_log() == []


def test_visits_in_a_range(loaded):
    st, _ = loaded
    res = queries.visits(st, "id:" + CASE_ID, CASE, "t", "2021-08-10T00:00:00Z", "2021-08-18T14:00:00Z")
    assert [(v["checkpoint"], v["time"]) for v in res["verified"]] == [
        ("market", "2021-08-15T09:00:00Z"),
        ("market", "2021-08-15T09:40:00Z"),
    ]  # the end is excluded
    # the unsigned claim naming A is shown apart, never in A's record
    assert [(v["checkpoint"], v["verified"], v["reason"]) for v in res["unverified"]] == [("park", False, "unsigned")]
    assert res["unverified"][0]["person"]["name"] == NAMES["A"]
    assert all(v["verified"] and v["person"]["name"] == NAMES["A"] and "synced" in v["clock"] for v in res["verified"])
    all_ = queries.visits(st, CASE_ID, CASE, "t")
    assert (len(all_["verified"]), len(all_["unverified"]), all_["count"]) == (4, 1, 5)
    assert [a["action"] for a in st.audit_log()] == ["visits", "visits"]


def test_traffic_per_checkpoint_per_hour(loaded):
    st, events = loaded
    expected = Counter()
    for e in events:
        hour = e.time[:13] + ":00:00Z"
        col = e.direction if e.decision == "PASS" else "refused_" + e.direction
        expected[(e.checkpoint, hour, col)] += 1
    assert all(e.time.startswith("2021-08") for e in events)
    res = queries.traffic(st, start="2021-08-01T00:00:00Z", end="2021-09-01T00:00:00Z")  # 31 days: the limit
    with pytest.raises(queries.QueryError, match="limit of 31 days"):
        queries.traffic(st, start="2021-07-01T00:00:00Z", end="2021-09-01T00:00:00Z")
    got = Counter()
    for r in res["hours"]:
        for col in ("in", "out", "refused_in", "refused_out"):
            if r[col]:
                got[(r["checkpoint"], r["hour"], col)] = r[col]
    assert got == expected
    market = queries.traffic(st, "market", "2021-08-15T09:00:00Z", "2021-08-15T10:00:00Z")
    assert [r["hour"] for r in market["hours"]] == ["2021-08-15T09:00:00Z"]
    assert market["totals"] == {"in": 4, "out": 3, "refused_in": 3, "refused_out": 0}
    assert st.audit_log() == []  # no personal data, no case, no audit


def test_csv_export_clear_columns_only_and_round_trips(loaded, tmp_path):
    st, events = loaded
    buf = io.StringIO()
    n = queries.export_csv(st, buf, CASE, "tracer-1", "2021-07-01T00:00:00Z", "2021-09-01T00:00:00Z")
    assert n == len(events)
    text = buf.getvalue()
    assert text.splitlines()[0] == ",".join(queries.EXPORT_COLUMNS)
    assert "verified" in queries.EXPORT_COLUMNS and not {"person_key", "claim_key", "personal", "sealed"} & set(
        queries.EXPORT_COLUMNS)
    for who in IDS:
        assert IDS[who] not in text and NAMES[who] not in text and st.keys.person_key("id:" + IDS[who]) not in text
    back = list(queries.read_csv(io.StringIO(text, newline="")))
    key = lambda e: (e.device_id, e.seq)  # noqa: E731
    assert sorted(back, key=key) == sorted(events, key=key)
    # into another database and out again: the same rows (received_at aside)
    with Storage(f"sqlite:///{tmp_path}/copy.db") as other:
        assert queries.import_csv(other, io.StringIO(text, newline="")) == (n, n)
        assert queries.import_csv(other, io.StringIO(text, newline="")) == (n, 0)  # duplicates ignored
        buf2 = io.StringIO()
        queries.export_csv(other, buf2, CASE, "tracer-1")
    strip = lambda s: [line.rsplit(",", 1)[0] for line in s.splitlines()]  # noqa: E731
    assert strip(buf2.getvalue()) == strip(text)
    assert st.audit_log()[0]["action"] == "export" and st.audit_log()[0]["rows"] == n
    with pytest.raises(queries.QueryError):
        list(queries.read_csv(io.StringIO("a,b\n1,2\n")))


def test_csv_cells_never_start_a_formula(tmp_path):
    from chotdemo.testing import make_event

    assert [queries.csv_cell(v) for v in ("=1+1", "+1", "-2", "@x", "ok", 5)] == ["'=1+1", "'+1", "'-2", "'@x", "ok",
                                                                                  "5"]
    with Storage(f"sqlite:///{tmp_path}/f.db") as st:
        ev = make_event("d1", 1, boot_id="-cmd")  # a boot id may start with a dash
        st.store_batch([ev])
        buf = io.StringIO()
        queries.export_csv(st, buf, CASE, "t")
        assert ",'-cmd," in buf.getvalue()
        assert list(queries.read_csv(io.StringIO(buf.getvalue(), newline=""))) == [ev]


def test_http_api_same_answers_case_required_and_audited(loaded):
    st, _ = loaded
    from collector.web import WebServer
    from collector.web.accounts import Accounts, Permission

    cfg = collector_config("sqlite:///unused.db", http={"port": 0})
    with st.connection():
        token = Accounts(st).add_token("tracing-app", list(Permission), "test")
    auth = {"Authorization": f"Bearer {token}"}
    with WebServer(cfg, st) as api:
        with st.connection():  # the console refuses personal reads outside an open case (collector/cases.py)
            st.case_book.open(CASE, IDS["A"], "positive test", "tracer-1")

        def get(path):
            try:
                with urllib.request.urlopen(urllib.request.Request(api.url + path, headers=auth), timeout=10) as r:
                    return r.status, r.headers.get("Content-Type"), r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Content-Type"), exc.read().decode()

        person = IDS["A"]
        at = "2021-08-20T12:00:00Z"
        status, ctype, body = get(f"/api/contacts?person={person}&case={CASE}&days=14&window=15&at={at}")
        assert status == 200 and ctype.startswith("application/json")
        assert json.loads(body) == json.loads(queries.dumps(queries.contacts(st, person, CASE, "x", 14, 15, AT)))
        assert st.audit_log()[1]["actor"] == "token:tracing-app"  # who asked, not from where
        status, _, body = get(f"/api/visits?person={person}&case={CASE}")
        assert status == 200 and len(json.loads(body)["verified"]) == 4
        for no_case in (f"/api/visits?person={person}", f"/api/contacts?person={person}&case=", "/api/export.csv"):
            status, _, body = get(no_case)
            assert status == 400 and "case" in json.loads(body)["error"]
        status, _, body = get("/api/fleet")
        assert status == 200 and {d["device_id"] for d in json.loads(body)["devices"]} == {
            "market-in", "market-out", "office-in", "park-in",
        }
        status, ctype, body = get(f"/api/export.csv?case={CASE}&from=2021-08-15T00:00:00Z&to=2021-08-16T00:00:00Z")
        on_15th = sum(1 for p in PLAN if p[3].day == 15)
        assert status == 200 and ctype.startswith("text/csv") and len(body.splitlines()) == 1 + on_15th
        status, _, body = get("/api/traffic?checkpoint=market&from=2021-08-15T09:00:00Z&to=2021-08-15T10:00:00Z")
        assert json.loads(body)["totals"]["in"] == 4
        for bad in (f"/api/contacts?person=1&case={CASE}&days=lots", f"/api/visits?case={CASE}",
                    f"/api/visits?person=1&case={CASE}&from=tuesday"):
            status, ctype, body = get(bad)
            assert status == 400 and ctype.startswith("application/json") and json.loads(body)["error"]
        assert get("/api/nothing")[0] == 404
        status, ctype, body = get("/api/")
        assert status == 200 and "/api/fleet" in body and "/api/traffic" in body

        def post(obj):
            req = urllib.request.Request(api.url + "/api/manual", data=json.dumps(obj).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **auth})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, ev = post({"checkpoint": "market", "direction": "in", "id_number": "0010900000 99",
                           "time": "2021-08-15T09:01:00Z", "name": "Phạm Giấy", "phone": "0987654321"})
        assert status == 201 and ev["seq"] == 1 and ev["device_id"] == "collector-test"
        assert ev["source"] == "paper" and ev["verified"] is False and "Giấy" not in json.dumps(ev)
        status, ev2 = post({"checkpoint": "market", "direction": "out", "id_number": "001090000099"})
        assert status == 201 and ev2["seq"] == 2
        status, err = post({"checkpoint": "market", "direction": "sideways", "id_number": "1"})
        assert status == 400 and "direction" in err["error"]
        status, err = post({"checkpoint": "market", "direction": "in", "subject_key": "ab"})
        assert status == 400 and "subject_key" in err["error"]
    # the paper declaration is an unverified contact of the case, with the fields from the form
    res = queries.contacts(st, CASE_ID, CASE, "t", at=AT)
    paper = next(c for c in res["unverified_contacts"] if c["claim_key"] == ev["claim_key"])
    assert paper["person"]["name"] == "Phạm Giấy" and paper["person"]["phone"] == "0987654321"
    assert paper["person"]["paper"] is True
    v = queries.visits(st, "001090000099", CASE, "t")
    assert v["verified"] == [] and [r["source"] for r in v["unverified"]] == ["paper", "paper"]
    E = st.Event
    row = E.get((E.device_id == "collector-test") & (E.seq == 1))
    assert row.person_key is None and row.claim_key == ev["claim_key"] and "Giấy" not in row.personal


def test_cli_queries_and_record_manual(tmp_path):
    db = tmp_path / "cli.db"
    with Storage(f"sqlite:///{db}", keys=make_keys(tmp_path / "keys")) as st:
        st.store_batch(build_items())
    conf = tmp_path / "c.toml"
    conf.write_text(f'[collector]\nid = "hq"\ndatabase = "sqlite:///{db}"\nkey_dir = "{tmp_path / "keys"}"\n'
                    "[http]\nenabled = false\n")

    def chot(*args, ok=True):
        r = subprocess.run([sys.executable, "-m", "chot.cli", "collector", *args, "--config", str(conf)],
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode == 0) == ok, r.stderr
        return r.stdout if ok else r.stderr

    rec = json.loads(chot("record-manual", "--checkpoint", "office", "--direction", "in", "--id-number",
                          "0010900000 77", "--time", "2021-08-18T14:10:00Z", "--name", "Trên Giấy",
                          "--phone", "0900000077"))
    assert rec["device_id"] == "collector-hq" and rec["seq"] == 1 and rec["source"] == "paper"
    assert "no case" in chot("contacts", CASE_ID, "--case", CASE, ok=False)  # not opened yet
    assert json.loads(chot("case", "open", CASE, "--person", CASE_ID, "--reason", "positive test"))["status"] == "open"
    assert [c["number"] for c in json.loads(chot("case", "list"))] == [CASE]
    res = json.loads(chot("contacts", CASE_ID, "--case", CASE, "--days", "14", "--window", "15",
                          "--at", "2021-08-20T12:00:00Z"))
    assert {_who(c) for c in res["contacts"]} == set(EXPECTED)
    assert {_who(c) for c in res["unverified_contacts"]} == {"X", "Giấy"}
    assert "--case" in chot("contacts", CASE_ID, ok=False)  # a case is required
    out = chot("export", "--case", CASE, "--from", "2021-08-18T00:00:00Z", "--to", "2021-08-19T00:00:00Z")
    assert len(out.splitlines()) == 1 + sum(1 for p in PLAN if p[3].day == 18) + 1  # and the paper one
    fleet = json.loads(chot("fleet"))
    assert fleet["total"] == 4  # four terminals; the collector's paper series is not one of them
    assert [p["device_id"] for p in fleet["paper_series"]] == ["collector-hq"]
    assert "collector-hq" not in {d["device_id"] for d in fleet["devices"]}
    import getpass

    audit = json.loads(chot("audit", "--case", CASE))
    assert [a["action"] for a in audit] == ["export", "contacts", "case_open"]
    assert {a["actor"] for a in audit} == {getpass.getuser()}
    chot("case", "close", CASE)
    assert "closed" in chot("export", "--case", CASE, ok=False)
    assert json.loads(chot("purge", "--days", "1"))["rows"] == len(PLAN) + 1  # everything is from 2021
