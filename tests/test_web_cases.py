"""Cases, the person page, contacts, exports, notified marks and the audit log (collector/web/pages/cases.py,
audit.py, collector/cases.py): a real uvicorn console on SQLite and PostgreSQL, real sealed events stored
through the collector (tests/case_helpers.py), httpx as the browser."""

import csv
import io
import json
import re
import zipfile

import openpyxl
import pytest
from case_helpers import (
    CLAIM,
    ELSEWHERE,
    EVIL_NAME,
    EVIL_PHONE,
    INDEX,
    INDEX_DECLARATION,
    MARKET,
    SHARED_PHONE,
    STATION,
    plant,
)
from web_helpers import csrf_of
from web_helpers import login as _login

from collector.queries import MAX_DAYS, MAX_PAGE, MAX_WINDOW_MIN

CASE = "HCM-2021-0815-07"


@pytest.fixture
def world(console):
    plant(console)
    return console


def login(console, role):
    """Signed in as `role`, pages in English (the test_web_i18n tests check the Vietnamese)."""
    c = _login(console, role)
    c.headers["Accept-Language"] = "en"
    return c


def open_case(console, client, number=CASE, person=INDEX["id_number"], kind="auto", reason="positive test"):
    return client.post("/cases", data={"number": number, "person": person, "kind": kind, "reason": reason,
                                       "csrf_token": csrf_of(client, "/cases")},
                       headers={"Origin": console.url})


def audit(console):
    with console.storage.connection():
        return console.storage.audit_log(limit=1000)


def key_of(console, id_number):
    return console.storage.keys.person_key("id:" + id_number)


def test_open_case_and_find_a_person_by_id_declaration_or_phone(world):
    con = world
    tracer = login(con, "tracer")
    # the index person found by their declaration id when the case is opened
    r = open_case(con, tracer, person=INDEX_DECLARATION, kind="declaration")
    assert r.status_code == 303 and r.headers["location"] == f"/cases/{CASE}"
    page = tracer.get(f"/cases/{CASE}")
    assert page.status_code == 200 and CASE in page.text and "positive test" in page.text
    assert con.storage.case_book.get(CASE)["person_key"] == key_of(con, INDEX["id_number"])
    assert open_case(con, tracer).status_code == 400  # the number exists already
    assert CASE in tracer.get("/cases").text
    index_key = key_of(con, INDEX["id_number"])
    for q, kind in ((INDEX["id_number"], "auto"), ("079 190 012 345", "id"), (INDEX_DECLARATION, "declaration"),
                    ("+84 912 345 601", "auto"), ("0912-345-601", "phone")):
        r = tracer.get("/person", params={"case": CASE, "q": q, "kind": kind})
        assert r.status_code == 200, (q, r.text)
        assert "1 person found" in r.text, q
        assert INDEX["name"] in r.text and INDEX["phone"] in r.text, q
        # the timeline: both visits, checkpoint, local time (UTC+7), verified, clock quality
        assert r.text.count("<td>market</td>") == 1 and r.text.count("<td>station</td>") == 1
        assert "not synchronised" in r.text  # the station's clock
    # two people share a phone: both are found, each with their own timeline
    r = tracer.get("/person", params={"case": CASE, "q": SHARED_PHONE})
    assert "2 persons found" in r.text
    assert MARKET[5][0]["name"] in r.text and MARKET[6][0]["name"] in r.text
    # an unverified claim is shown apart, never as a verified visit
    r = tracer.get("/person", params={"case": CASE, "q": CLAIM["id_number"]})
    verified, claims = r.text.split("Unverified claims naming this person")
    assert "<td>market</td>" in claims and "<td>market</td>" not in verified.split("Verified visits")[1]
    # every personal read left an audit row naming the user, the case and the person
    rows = [a for a in audit(con) if a["action"] in ("find", "visits")]
    assert rows and all(a["actor"] == "tracer" and a["case"] == CASE for a in rows)
    visits = [a for a in rows if a["action"] == "visits"]
    assert {a["person_key"] for a in visits} >= {index_key, key_of(con, MARKET[5][0]["id_number"])}
    assert all("timeline" in a["detail"]["shown"] for a in visits)
    finds = [a for a in rows if a["action"] == "find"]
    assert {a["detail"]["kind"] for a in finds} == {"id", "declaration", "phone"}
    opened = [a for a in audit(con) if a["action"] == "case_open"]
    assert len(opened) == 1 and opened[0]["person_key"] == index_key and opened[0]["actor"] == "tracer"


def _contacts(client, **params):
    return client.get(f"/cases/{CASE}/contacts", params=params)


def test_contacts_with_names_and_phones_paged_and_audited(world):
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    r = _contacts(tracer, days=14, window=15, size=3)
    assert r.status_code == 200
    rows = re.findall(r'<tr id="c-([0-9a-f]{12})">', r.text)
    assert len(rows) == 3
    # 7 verified + 1 claim at the market; the station contact too (the tracer sees every checkpoint)
    assert "9 contacts" in r.text
    closest = MARKET[0][0]  # 2 minutes after the index person: first
    assert closest["name"] in r.text and closest["phone"] in r.text and closest["id_number"] in r.text
    page3 = _contacts(tracer, days=14, window=15, size=3, page=3)
    assert len(re.findall(r'<tr id="c-', page3.text)) == 3
    assert CLAIM["name"] in page3.text  # unverified claims come after the verified, flagged
    assert ELSEWHERE["name"] not in r.text + page3.text
    assert STATION["name"] in r.text + _contacts(tracer, size=3, page=2).text + page3.text
    # each page's audit row says which page and what was shown, and names only its contacts
    rows = [a for a in audit(con) if a["action"] == "contacts"]
    assert all(a["actor"] == "tracer" and a["case"] == CASE for a in rows)
    assert all(a["person_key"] == key_of(con, INDEX["id_number"]) for a in rows)
    p3 = next(a for a in rows if a["detail"]["offset"] == 6)
    assert "contacts page 3" in p3["detail"]["shown"] and "phones" in p3["detail"]["shown"]
    assert len(p3["detail"]["revealed"]) == 3 and key_of(con, CLAIM["id_number"]) in p3["detail"]["revealed"]


def test_over_limit_queries_get_400_naming_the_limit(world):
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    for params, limit in (({"days": MAX_DAYS + 1}, f"{MAX_DAYS} days"), ({"days": 3650}, f"{MAX_DAYS} days"),
                          ({"window": MAX_WINDOW_MIN + 1}, f"{MAX_WINDOW_MIN} minutes"),
                          ({"size": MAX_PAGE + 1}, f"{MAX_PAGE} rows")):
        r = _contacts(tracer, **params)
        assert r.status_code == 400 and limit in r.text, params
        for fmt in ("csv", "xlsx"):
            if "size" not in params:
                r = tracer.get(f"/cases/{CASE}/contacts.{fmt}", params=params)
                assert r.status_code == 400 and limit in r.text, (fmt, params)
    # the JSON API has the same bounds (the same query)
    r = tracer.get("/api/contacts", params={"person": INDEX["id_number"], "case": CASE, "days": 3650})
    assert r.status_code == 400 and f"{MAX_DAYS} days" in r.json()["error"]
    assert _contacts(tracer, page=0).status_code == 400


def test_exports_neutralise_formula_cells(world):
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    r = tracer.get(f"/cases/{CASE}/contacts.csv", params={"days": 14, "window": 15})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    assert rows[0][:3] == ["no", "name", "phone"] and len(rows) == 1 + 9
    cells = [c for row in rows for c in row]
    assert "'" + EVIL_NAME in cells and "'" + EVIL_PHONE in cells
    assert not [c for c in cells if c.lstrip(" \n").startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert INDEX["name"] not in cells  # the index person is not their own contact

    r = tracer.get(f"/cases/{CASE}/contacts.xlsx", params={"days": 14, "window": 15})
    assert r.status_code == 200 and "spreadsheetml" in r.headers["content-type"]
    raw = io.BytesIO(r.content)
    sheet_xml = b"".join(zipfile.ZipFile(raw).read(n) for n in zipfile.ZipFile(raw).namelist()
                         if n.startswith("xl/worksheets/"))
    assert b"<f>" not in sheet_xml and b"<f " not in sheet_xml  # no formula anywhere
    ws = openpyxl.load_workbook(raw).active
    cells = [c for row in ws.iter_rows() for c in row]
    assert len(list(ws.iter_rows())) == 1 + 9
    assert not [c for c in cells if c.data_type == "f"]
    evil = next(c for c in cells if c.value == EVIL_NAME)
    assert evil.data_type == "s" and evil.quotePrefix  # text shown as typed; =HYPERLINK( is inert
    assert next(c for c in cells if c.value == EVIL_PHONE).quotePrefix
    names = {row[1] for row in ws.iter_rows(min_row=2, values_only=True)}
    assert {MARKET[0][0]["name"], CLAIM["name"], STATION["name"]} <= names
    exports = [a for a in audit(con) if a["action"] == "contacts" and "export" in a["detail"]["shown"]]
    assert {a["detail"]["shown"].split("(")[1][:4] for a in exports} == {"csv)", "xlsx"}
    assert all(len(a["detail"]["revealed"]) == 9 and a["actor"] == "tracer" for a in exports)


def test_mark_notified(world):
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    contact = key_of(con, MARKET[1][0]["id_number"])
    form = {"person_key": contact, "days": "14", "window": "15", "page": "1", "size": "50"}
    # without the form's token, or from another site: refused
    assert tracer.post(f"/cases/{CASE}/notified", data=form, headers={"Origin": con.url}).status_code == 403
    r = tracer.post(f"/cases/{CASE}/notified", data={**form, "csrf_token": csrf_of(tracer, "/cases")},
                    headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = tracer.post(f"/cases/{CASE}/notified", data={**form, "csrf_token": csrf_of(tracer, "/cases")},
                    headers={"Origin": con.url})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/cases/{CASE}/contacts?")
    page = _contacts(tracer).text
    row = page.split(f'<tr id="c-{contact[:12]}">')[1].split("</tr>")[0]
    assert "tracer" in row and 'name="person_key"' not in row  # marked, by whom; no button any more
    other = key_of(con, MARKET[0][0]["id_number"])
    assert 'value="' + other + '"' in page  # the others still have their button
    with con.storage.connection():
        assert set(con.storage.case_book.notified(CASE)) == {contact}
    (row,) = [a for a in audit(con) if a["action"] == "notified"]
    assert row["actor"] == "tracer" and row["case"] == CASE and row["person_key"] == contact
    assert "1" in tracer.get(f"/cases/{CASE}").text
    r = tracer.post(f"/cases/{CASE}/notified", data={**form, "person_key": "nope",
                                                     "csrf_token": csrf_of(tracer, "/cases")},
                    headers={"Origin": con.url})
    assert r.status_code == 400 and "64" in r.text


def test_unknown_and_closed_cases_are_refused(world):
    con = world
    tracer = login(con, "tracer")
    q = {"q": INDEX["id_number"]}
    r = tracer.get("/person", params={**q, "case": "NO-SUCH-CASE"})
    assert r.status_code == 400 and "no case" in r.text and INDEX["name"] not in r.text
    r = tracer.get("/person", params=q)
    assert r.status_code == 400 and "case" in r.text and INDEX["name"] not in r.text
    r = tracer.get("/api/visits", params={"person": INDEX["id_number"], "case": "NO-SUCH-CASE"})
    assert r.status_code == 400 and "no case" in r.json()["error"]
    assert tracer.get("/cases/NO-SUCH-CASE/contacts").status_code == 404
    assert open_case(con, tracer).status_code == 303
    assert tracer.get("/person", params={**q, "case": CASE}).status_code == 200
    r = tracer.post(f"/cases/{CASE}/close", data={"csrf_token": csrf_of(tracer, "/cases")},
                    headers={"Origin": con.url})
    assert r.status_code == 303
    for path, params in (("/person", {**q, "case": CASE}), (f"/cases/{CASE}/contacts", {}),
                         (f"/cases/{CASE}/contacts.csv", {}), (f"/cases/{CASE}/contacts.xlsx", {}),
                         ("/api/contacts", {"person": INDEX["id_number"], "case": CASE}),
                         ("/api/export.csv", {"case": CASE})):
        r = tracer.get(path, params=params)
        assert r.status_code == 400 and "closed" in r.text and INDEX["name"] not in r.text, path
    assert "closed" in tracer.get(f"/cases/{CASE}").text
    reads = [a for a in audit(con) if a["action"] in ("visits", "contacts", "export", "find")]
    assert len(reads) == 2  # the find and the timeline inside the open case; nothing after


PERSONAL_GETS = ["/cases", f"/cases/{CASE}", "/person", f"/person?case={CASE}&q=079190012345",
                 f"/cases/{CASE}/contacts", f"/cases/{CASE}/contacts.csv", f"/cases/{CASE}/contacts.xlsx"]
PERSONAL_POSTS = ["/cases", f"/cases/{CASE}/close", f"/cases/{CASE}/notified"]


def test_viewer_and_staff_get_403_on_every_personal_route(world):
    con = world
    open_case(con, login(con, "tracer"))
    before = len(audit(con))
    for role in ("viewer", "checkpoint_staff"):
        c = login(con, role)
        token = csrf_of(c)
        for path in PERSONAL_GETS + ["/audit"]:
            r = c.get(path)
            assert r.status_code == 403, (role, path)
            assert INDEX["name"] not in r.text
        for path in PERSONAL_POSTS:
            r = c.post(path, data={"csrf_token": token, "number": "X-1", "person": INDEX["id_number"],
                                   "reason": "x", "person_key": "0" * 64}, headers={"Origin": con.url})
            assert r.status_code == 403, (role, path)
        nav = c.get("/").text
        assert 'href="/cases"' not in nav and 'href="/person"' not in nav and 'href="/audit"' not in nav
    assert len(audit(con)) == before  # nothing was read
    # the audit log is the admin's only
    tracer = login(con, "tracer")
    assert tracer.get("/audit").status_code == 403
    assert login(con, "admin").get("/audit").status_code == 200


def test_ward_officer_sees_only_their_checkpoints(world):
    con = world
    ward = login(con, "ward_officer")
    assert open_case(con, ward).status_code == 303
    with con.storage.connection():
        assert con.storage.case_book.get(CASE)["checkpoints"] == ["market", "ward7-*"]
    r = _contacts(ward, size=50)
    assert r.status_code == 200 and MARKET[0][0]["name"] in r.text
    assert STATION["name"] not in r.text and "8 contacts" in r.text
    r = ward.get("/person", params={"case": CASE, "q": INDEX["id_number"]})
    assert "<td>market</td>" in r.text and "<td>station</td>" not in r.text


def test_audit_log_is_append_only_and_listed_for_the_admin(world):
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    assert open_case(con, tracer, number="HN-2021-0001", person=MARKET[0][0]["id_number"]).status_code == 303
    for _ in range(3):
        tracer.get("/person", params={"case": CASE, "q": INDEX["id_number"]})
    tracer.get("/person", params={"case": "HN-2021-0001", "q": MARKET[0][0]["id_number"]})
    st = con.storage
    with st.connection():
        n = st.Audit.select().count()
        # no code path changes it, and the database refuses to
        for sql in ('UPDATE "chot_audit" SET "actor" = \'nobody\'', 'DELETE FROM "chot_audit"'):
            with pytest.raises(Exception, match="append-only"):
                with st.db.atomic():
                    st.db.execute_sql(sql)
        if not st.sqlite:
            with pytest.raises(Exception, match="append-only"):
                with st.db.atomic():
                    st.db.execute_sql('TRUNCATE "chot_audit"')
        assert st.Audit.select().count() == n
        assert not any(hasattr(st, name) for name in ("audit_delete", "audit_update"))
    admin = login(con, "admin")
    r = admin.get("/audit")
    assert r.status_code == 200 and "tracer" in r.text and CASE in r.text and "timeline" in r.text
    r = admin.get("/audit", params={"case": "HN-2021-0001"})
    assert r.text.count("<td>find</td>") == 1 and r.text.count("<td>visits</td>") == 1 and CASE + "<" not in r.text
    assert admin.get("/audit", params={"actor": "nobody"}).text.count("<td>visits</td>") == 0
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    today = datetime.now(ZoneInfo(con.cfg.http.timezone)).date()  # the days are the console's
    r = admin.get("/audit", params={"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()})
    assert r.text.count("<td>visits</td>") == 4
    r = admin.get("/audit", params={"from": "2020-01-01", "to": "2020-01-02"})
    assert "<td>visits</td>" not in r.text
    assert admin.get("/audit", params={"from": "yesterday"}).status_code == 400


def test_paper_declaration_phone_is_findable(world):
    """A paper declaration's phone is indexed at entry, like a terminal's."""
    con = world
    tracer = login(con, "tracer")
    assert open_case(con, tracer).status_code == 303
    r = tracer.post("/api/manual", content=json.dumps({
        "checkpoint": "market", "direction": "in", "id_number": "079190099999", "name": "Đỗ Giấy",
        "phone": "0900000001"}), headers={"Content-Type": "application/json", "Origin": con.url})
    assert r.status_code == 201
    r = tracer.get("/person", params={"case": CASE, "q": "+84900000001"})
    assert "Đỗ Giấy" in r.text
