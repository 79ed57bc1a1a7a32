"""The traffic, fleet and paper pages in a real browser (Playwright, Debian's chromium, 375 px wide),
on a real collector fed by a real Mosquitto, a real terminal uplink and a raw MQTT terminal:
checkpoint staff enter a paper declaration; a viewer looks at yesterday's traffic and at the fleet.
Screenshots go to tests/output/<test>/; with CHOT_DOCS_SCREENSHOTS=1 they are also copied into
docs/console/ for docs/console.md."""

import os
import random
import shutil
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from browser import fits_phone, shot, sign_in
from test_collector_subscriber import Device
from uplink_helpers import fill, terminal_cfg, wait_until
from web_helpers import PASSWORD, Console

from chot import wire
from chotdemo.testing import collector_config, make_event, make_keys
from collector.subscriber import Collector
from collector.web import WebServer
from collector.web.accounts import Accounts, Role
from device.uplink.link import Link
from device.uplink.outbox import Outbox

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
CP = "cho-ben-thanh"


def _yesterday_crowd(device_id, direction, seed):
    """A day of events at the market gate, yesterday (local): busy mornings and evenings, a few refused."""
    rng = random.Random(seed)
    day = datetime.now(UTC).astimezone(ZONE).date() - timedelta(days=1)
    evs, seq = [], 0
    for hour in range(6, 22):
        n = {7: 14, 8: 11, 17: 16, 18: 12}.get(hour, rng.randint(2, 7))
        for _ in range(n if direction == "in" else max(1, n - rng.randint(0, 3))):
            seq += 1
            t = datetime.combine(day, time(hour, rng.randint(0, 59), rng.randint(0, 59)), tzinfo=ZONE)
            failed = rng.random() < 0.08
            evs.append(make_event(device_id, seq, time=t, checkpoint=CP, direction=direction,
                                  decision="FAIL" if failed else "PASS", reason="expired" if failed else "ok"))
    evs.sort(key=lambda e: e.time)
    return day, [make_event(device_id, i + 1, time=e.time, checkpoint=CP, direction=direction,
                            decision=str(e.decision), reason=str(e.reason)) for i, e in enumerate(evs)]


def test_staff_enter_a_paper_declaration_and_a_viewer_sees_traffic_and_fleet(tmp_path, broker, page):
    make_keys(tmp_path / "keys")
    cfg = collector_config(f"sqlite:///{tmp_path}/collector.db", port=broker.port, key_dir=tmp_path / "keys",
                           http={"enabled": True, "port": 0})
    tcfg = terminal_cfg(tmp_path, broker.port, device_id="gate-1-in", sections={"device": {"checkpoint": CP}})
    status = {"version": "2.1.0", "clock_synced": True, "stale": [], "clock_behind": False,
              "lists": {"trust": {"version": 12, "issued": "2026-12-01T00:00:00Z"},
                        "denylist": {"version": 40, "issued": "2026-12-05T00:00:00Z"}}}
    with Collector(cfg) as col, Outbox.from_config(tcfg) as outbox:
        col.wait_subscribed(10)
        with col.storage.connection():
            col.storage.replace_bindings({"gate-1-in": (CP, "in"), "gate-1-out": (CP, "out"),
                                          "gate-2-in": ("cho-hang-da", "in")}, "test")
            acc = Accounts(col.storage)
            acc.add_user("nhanvien", PASSWORD, Role.CHECKPOINT_STAFF, [CP])
            acc.add_user("viewer", PASSWORD, Role.VIEWER)
        col.bindings.refresh(force=True)
        with Link(tcfg, outbox, status_source=lambda: dict(status)) as link:
            fill(outbox, 5)
            link.wake()
            assert link.wait_acked(5, 20)
            # the exit gate (raw MQTT): yesterday's crowd, one seq lost, a stale deny list, a clock behind
            day, evs = _yesterday_crowd("gate-1-out", "out", 2)
            dev = Device(broker, "gate-1-out")
            dev.publish(wire.encode_events([e for e in evs if e.seq != 3])).wait_for_publish(10)
            dev.publish(wire.encode_status(device_id="gate-1-out", online=True, version="2.0.9", outbox_depth=7,
                                           oldest_undelivered_age_s=1800.0, clock_synced=False, stale=["denylist"],
                                           clock_behind=True,
                                           lists={"trust": {"version": 12, "issued": "2026-12-01T00:00:00Z"},
                                                  "denylist": {"version": 31, "issued": "2026-10-02T00:00:00Z"}}),
                        topic=wire.status_topic("gate-1-out"), retain=True).wait_for_publish(10)
            assert wait_until(lambda: col.storage.contiguous("gate-1-out") == 2 and any(
                d["device_id"] == "gate-1-out" and d["outbox_depth"] == 7 for d in col.storage.devices()), 20)
            with col.storage.connection():  # the entry gate's yesterday, stored as the collector stores it
                col.storage.store_batch(_yesterday_crowd("gate-1-in", "in", 1)[1][5:])
            server = WebServer(cfg, col.storage, collector=col).start()
            try:
                console = Console(server.url, cfg, col.storage, server.app.state.web.accounts, server)
                _staff_enters_a_declaration(page, console)
                _viewer_looks_around(page, console, day)
            finally:
                server.stop()
                dev.close()
    E = col.storage.Event
    with col.storage.connection():
        paper = list(E.select().where(E.source == "paper"))
    assert [(p.checkpoint, p.direction, p.device_id) for p in paper] == [(CP, "in", "collector-test")]
    if os.environ.get("CHOT_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        for png in page.output_dir.glob("*.png"):
            shutil.copy(png, DOCS / png.name)


def _staff_enters_a_declaration(page, console):
    sign_in(page, console, "nhanvien")
    page.click("nav >> text=Khai báo giấy")
    page.wait_for_url(console.url + "/paper")
    assert page.locator("#checkpoint").input_value() == CP  # their only checkpoint, chosen already
    page.fill("#id_number", "079190012345")
    page.fill("#name", "Nguyễn Thị Hoa")
    page.fill("#dob", "1990-05-30")
    page.fill("#phone", "0912 345 678")
    assert fits_phone(page)
    shot(page, "paper-form")
    page.click("button:has-text('Ghi khai báo')")
    page.wait_for_selector("#recorded")
    assert CP in page.locator("#recorded").inner_text()
    assert page.locator("#id_number").input_value() == ""  # a fresh, empty form for the next person
    shot(page, "paper-recorded")
    # a bad ID number: refused, said in Vietnamese, nothing stored
    page.fill("#id_number", "12345")
    page.fill("#name", "Trần Văn Sai")
    page.fill("#dob", "1985")
    page.click("button:has-text('Ghi khai báo')")
    page.wait_for_selector(".errors")
    assert "Số giấy tờ: 12 chữ số" in page.locator(".errors").inner_text()
    shot(page, "paper-refused")
    # staff cannot query: the traffic and fleet pages answer 403
    for path in ("/traffic", "/fleet"):
        r = page.goto(console.url + path)
        assert r.status == 403
    page.goto(console.url + "/")
    page.click("button:has-text('Đăng xuất')")
    page.wait_for_url(console.url + "/login")


def _viewer_looks_around(page, console, day):
    sign_in(page, console, "viewer")
    page.click("nav >> text=Lưu lượng")
    page.wait_for_url(console.url + "/traffic")
    page.fill("#day", day.isoformat())
    page.click("button:has-text('Xem')")
    page.wait_for_url(f"{console.url}/traffic?day={day.isoformat()}*")
    section = page.locator(f'section.checkpoint[data-checkpoint="{CP}"]')
    assert section.locator("svg.chart rect.bar.in").count() > 10
    assert section.locator("svg.chart rect.bar.out").count() > 10
    assert int(page.locator("#total-in").inner_text()) > 50
    assert fits_phone(page)
    shot(page, "traffic")
    section.locator("summary").click()
    assert section.locator("table.numbers tbody tr").count() >= 16
    page.click("nav >> text=Thiết bị")
    page.wait_for_url(console.url + "/fleet")
    assert page.locator("#dev-gate-1-out.problem .tag.stale").inner_text().startswith("danh sách chặn v31")
    assert "gate-2-in" in page.locator("#never-seen").inner_text()
    assert page.locator("#dev-collector-test").count() == 0  # the paper series is not a terminal
    assert "Nguyễn Thị Hoa" not in page.content()
    assert fits_phone(page)
    shot(page, "fleet")
    page.set_viewport_size({"width": 1280, "height": 900})
    shot(page, "fleet-wide")
    page.goto(f"{console.url}/traffic?day={day.isoformat()}")
    shot(page, "traffic-wide")
