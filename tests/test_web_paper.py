"""The paper declaration form (collector/web/pages/paper.py) and POST /api/manual against a real server:
staff record only at their checkpoints of the registry, who entered it is stored, a double submit stores
once, a future time or a bad ID number is refused, and nothing is stored when refused."""

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from web_helpers import csrf_of, login

from collector import queries

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
REGISTRY = {"gate-m-in": ("market", "in"), "gate-m-out": ("market", "out"), "gate-s": ("ward7-school", "in"),
            "gate-t": ("station", "in")}
PERSON = {"id_number": "079190012345", "name": "Nguyễn Văn Giấy", "dob": "1990-01-02", "phone": "0912 345 678"}


def _bind(console):
    with console.storage.connection():
        console.storage.replace_bindings(REGISTRY, "test")


def _form(client):
    html = client.get("/paper").text
    return {
        "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', html).group(1),
        "form_token": re.search(r'name="form_token" value="([^"]+)"', html).group(1),
        "options": re.findall(r'<option value="([^"]+)"', html.split('id="checkpoint"')[1].split("</select>")[0]),
    }


def _local_now(delta=timedelta()):
    return (datetime.now(UTC).astimezone(ZONE) + delta).strftime("%Y-%m-%dT%H:%M")


def _post(console, client, form, **fields):
    data = {"csrf_token": form["csrf_token"], "form_token": form["form_token"], "checkpoint": "market",
            "direction": "in", "decision": "PASS", "time": _local_now(), **PERSON, **fields}
    return client.post("/paper", data=data, headers={"Origin": console.url})


def _paper_rows(console):
    E = console.storage.Event
    with console.storage.connection():
        return list(E.select().where(E.source == "paper").order_by(E.seq))


def test_staff_record_a_paper_declaration_at_their_checkpoint_once(console):
    _bind(console)
    staff = login(console, "checkpoint_staff")  # scope: market, ward7-*
    form = _form(staff)
    assert form["options"] == ["market", "ward7-school"]  # the registry's, within their scope
    r = _post(console, staff, form, time=_local_now(timedelta(minutes=-30)))
    assert r.status_code == 200, r.text
    assert 'id="recorded"' in r.text and "market" in r.text
    rows = _paper_rows(console)
    assert len(rows) == 1 and rows[0].checkpoint == "market" and rows[0].device_id == "collector-test"
    assert rows[0].verified is False and PERSON["name"] not in (rows[0].personal or "")
    # the same form again (a double click, a reload): stored once
    r = _post(console, staff, form)
    assert r.status_code == 409 and 'id="recorded-already"' in r.text
    assert len(_paper_rows(console)) == 1
    # who entered it, in clear, in the paper log
    with console.storage.connection():
        log = queries.paper_log(console.storage)
        assert [(x["recorded_by"], x["seq"], x["checkpoint"]) for x in log] == [("checkpoint_staff", 1, "market")]
        # a tracer finds the person, with what the form held, as an unverified claim (within an open case)
        console.storage.case_book.open("C-1", PERSON["id_number"], "paper declaration check", "tracer")
        v = queries.visits(console.storage, PERSON["id_number"], "C-1", "tracer")
    assert [x["source"] for x in v["unverified"]] == ["paper"] and v["verified"] == []
    person = v["unverified"][0]["person"]
    assert person["name"] == PERSON["name"] and person["dob"] == PERSON["dob"] and person["paper"] is True
    # a new form, a new token: a second person is stored
    r = _post(console, staff, _form(staff), checkpoint="ward7-school", direction="in")
    assert r.status_code == 200 and len(_paper_rows(console)) == 2


def test_paper_form_refuses_bad_fields_other_checkpoints_and_forged_tokens(console):
    _bind(console)
    staff = login(console, "checkpoint_staff")
    bad = {
        "station": ({"checkpoint": "station"}, "Chốt kiểm soát:"),  # in the registry, not theirs
        "unknown": ({"checkpoint": "ward7-nowhere"}, "Chốt kiểm soát:"),  # theirs by pattern, not in the registry
        "future": ({"time": _local_now(timedelta(hours=1))}, "Thời gian:"),
        "11 digits": ({"id_number": "07919001234"}, "Số giấy tờ:"),
        "letters": ({"id_number": "abc"}, "Số giấy tờ:"),
        "no name": ({"name": ""}, "Họ tên:"),
        "no dob": ({"dob": ""}, "Ngày sinh:"),
        "future dob": ({"dob": "2999-01-01"}, "Ngày sinh:"),
        "phone": ({"phone": "call me"}, "Điện thoại:"),
        "direction": ({"direction": "sideways"}, "Hướng:"),
        "old": ({"time": "2001-01-01T08:00"}, "Thời gian:"),
    }
    for what, (fields, message) in bad.items():
        r = _post(console, staff, _form(staff), **fields)
        assert r.status_code == 400, what
        alert = re.search(r'<div class="errors" role="alert">(.*?)</div>', r.text, re.S)
        assert alert and message in alert.group(1), (what, r.text[-1500:])
    # a form token made for another session, or none, is refused
    other = _form(login(console, "admin"))
    form = _form(staff)
    assert _post(console, staff, {**form, "form_token": other["form_token"]}).status_code == 400
    assert _post(console, staff, {**form, "form_token": ""}).status_code == 400
    # no CSRF token, or a foreign Origin: refused by the gate
    r = staff.post("/paper", data={**PERSON, "form_token": form["form_token"], "checkpoint": "market",
                                   "direction": "in"}, headers={"Origin": console.url})
    assert r.status_code == 403
    r = staff.post("/paper", data={**PERSON, **form, "checkpoint": "market", "direction": "in"},
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert _paper_rows(console) == []
    # a viewer may not open the form
    assert login(console, "viewer").get("/paper").status_code == 403


def test_paper_form_without_a_registry_offers_the_exact_checkpoints_of_the_scope(console_sqlite):
    console = console_sqlite
    staff = login(console, "checkpoint_staff")
    assert _form(staff)["options"] == ["market"]  # 'ward7-*' is a pattern, not a checkpoint to pick
    assert _post(console, staff, _form(staff)).status_code == 200
    admin = login(console, "admin")
    html = admin.get("/paper").text
    assert '<input id="checkpoint" name="checkpoint"' in html  # no scope, no registry: typed
    assert _post(console, admin, _form(admin), checkpoint="anywhere-1").status_code == 200
    assert [r.checkpoint for r in _paper_rows(console)] == ["market", "anywhere-1"]


def test_api_manual_keeps_working_records_who_and_refuses_the_same(console):
    _bind(console)
    staff = login(console, "checkpoint_staff")
    csrf_of(staff)

    def post(obj, ctype="application/json", origin=console.url):
        return staff.post("/api/manual", content=json.dumps(obj).encode(),
                          headers={"Content-Type": ctype, "Origin": origin})

    ok = {"checkpoint": "market", "direction": "out", "id_number": "001090000099"}
    r = post(ok)
    assert r.status_code == 201 and r.json()["recorded_by"] == "checkpoint_staff"
    future = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "future" in post({**ok, "time": future}).json()["error"]
    assert "id_number" in post({**ok, "id_number": "12345678"}).json()["error"]
    assert "registry" in post({**ok, "checkpoint": "ward7-nowhere"}).json()["error"]
    assert post({**ok, "checkpoint": "station"}).status_code == 403
    assert post(ok, ctype="text/plain").status_code == 415
    assert post(ok, origin="https://evil.example").status_code == 403
    token = console.token("kiosk", "paper:write", checkpoints=["market"])
    r = console.bearer(token).post("/api/manual", content=json.dumps(ok).encode(),
                                   headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and r.json()["recorded_by"] == "token:kiosk"
    assert len(_paper_rows(console)) == 2
    with console.storage.connection():
        assert [x["recorded_by"] for x in queries.paper_log(console.storage)] == ["token:kiosk", "checkpoint_staff"]
