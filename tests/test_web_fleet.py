"""The fleet page (collector/web/pages/fleet.py) on a real collector fed by a real Mosquitto, a real
terminal uplink (device.uplink.Link) and a raw MQTT device: stale lists, a clock behind its floor, an
unsynchronised clock, open gaps, undelivered events, a bound terminal never seen, the collector's
health (broker, ingest rate, rejected messages by reason, quarantined), and the paper series apart,
never as a terminal. Viewers see it without personal data; staff get 403."""

import json
import re

import pytest
from test_collector_subscriber import Device
from uplink_helpers import fill, terminal_cfg, wait_until
from web_helpers import PASSWORD, Console, login

from chot import wire
from chotdemo.testing import collector_config, make_event, make_keys
from collector import queries
from collector.subscriber import Collector
from collector.web import WebServer
from collector.web.accounts import Accounts, Role
from device.uplink.link import Link
from device.uplink.outbox import Outbox

NAME = "Phan Văn Giấy"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    return request.getfixturevalue("pg_dsn")


def _row(html, device):
    m = re.search(rf'<tr id="dev-{re.escape(device)}".*?</tr>', html, re.S)
    return m.group(0) if m else None


def test_fleet_shows_stale_behind_gaps_never_seen_and_health_not_the_paper_series(tmp_path, broker, db_url):
    make_keys(tmp_path / "keys")
    cfg = collector_config(db_url, port=broker.port, key_dir=tmp_path / "keys", http={"enabled": True, "port": 0})
    tcfg = terminal_cfg(tmp_path, broker.port, device_id="term-1")  # at cp-gate-1, in
    status = {"version": "2.0.1", "stale": ["denylist"], "clock_behind": True, "clock_synced": False,
              "lists": {"trust": {"version": 3, "issued": "2026-12-01T00:00:00Z"},
                        "denylist": {"version": 7, "issued": "2026-11-01T00:00:00Z"}}}
    with Collector(cfg) as col, Outbox.from_config(tcfg) as outbox:
        col.wait_subscribed(10)
        with col.storage.connection():
            col.storage.replace_bindings({"term-1": ("cp-gate-1", "in"), "gate-g": ("cp-gate-2", "out"),
                                          "gate-never": ("cp-gate-3", "in")}, "test")
        col.bindings.refresh(force=True)
        with Link(tcfg, outbox, status_source=lambda: dict(status)) as link:
            fill(outbox, 6)
            link.wake()
            assert link.wait_acked(6, 20)
            # a second terminal (raw MQTT): seqs 1, 2, 5 (3 and 4 missing), one at a checkpoint not its own,
            # and a status with undelivered events
            dev = Device(broker, "gate-g")
            evs = [make_event("gate-g", s, checkpoint="cp-gate-2", direction="out") for s in (1, 2, 5)]
            dev.publish(wire.encode_events(evs)).wait_for_publish(10)
            dev.publish(wire.encode_events([make_event("gate-g", 6, checkpoint="cp-gate-1", direction="out")]))
            dev.publish(wire.encode_status(device_id="gate-g", online=True, version="2.0.0", outbox_depth=4,
                                           oldest_undelivered_age_s=5400.0, clock_synced=True),
                        topic=wire.status_topic("gate-g"), retain=True).wait_for_publish(10)
            # an unbound device: refused (unregistered_device)
            intruder = Device(broker, "intruder")
            intruder.publish(wire.encode_events([make_event("intruder", 1, checkpoint="cp-gate-1")]))
            assert wait_until(lambda: col.stats()["rejected"].get("unregistered_device", 0) >= 1
                              and col.stats()["rejected"].get("wrong_checkpoint", 0) >= 1, timeout=20)
            assert wait_until(lambda: {d["device_id"]: d for d in col.storage.devices()}.get("gate-g", {})
                              .get("outbox_depth") == 4 and any(d["device_id"] == "term-1" and d["version"] == "2.0.1"
                                                                for d in col.storage.devices()), timeout=20)
            # a paper declaration: the collector's own series, not a terminal
            with col.storage.connection():
                queries.record_manual(col.storage, "test", "cp-gate-1", "in", id_number="079190054321",
                                      name=NAME, dob="1990-01-02", recorded_by="staff")
                Accounts(col.storage).add_user("viewer", PASSWORD, Role.VIEWER)
                Accounts(col.storage).add_user("staff", PASSWORD, Role.CHECKPOINT_STAFF, ["cp-gate-1"])
                Accounts(col.storage).add_user("officer", PASSWORD, Role.WARD_OFFICER, ["cp-gate-1"])
            server = WebServer(cfg, col.storage, collector=col).start()
            try:
                console = Console(server.url, cfg, col.storage, server.app.state.web.accounts, server)
                viewer = login(console, "viewer")
                r = viewer.get("/fleet")
                assert r.status_code == 200, r.text
                html = r.text
                api = viewer.get("/api/fleet").json()
                stats = viewer.get("/api/stats").json()
                problems = viewer.get("/fleet?show=problems").text
                officer = login(console, "officer")
                officer_html = officer.get("/fleet").text
                officer_api = officer.get("/api/fleet").json()
                staff = login(console, "staff")
                assert staff.get("/fleet").status_code == 403 and staff.get("/api/fleet").status_code == 403
            finally:
                server.stop()
            dev.close()
            intruder.close()
    # the terminal with a stale deny list and a clock behind its floor: highlighted
    term = _row(html, "term-1")
    assert 'class="problem"' in term and 'class="tag stale" data-list="denylist"' in term and "QUÁ HẠN" in term
    assert 'data-list="trust"' in term and "v3" in term and "v7" in term
    assert "chậm hơn mốc thời gian" in term and "chưa đồng bộ" in term  # behind, not synchronised
    assert "cp-gate-1 (vào)" in term and "trực tuyến" in term
    # the raw terminal: its gap, its outbox and the time of its oldest undelivered event
    g = _row(html, "gate-g")
    assert "1 khoảng trống, thiếu 2 sự kiện" in g and 'class="num">4</td>' in g and "đã đồng bộ" in g
    gg = {d["device_id"]: d for d in api["devices"]}["gate-g"]
    assert gg["open_gaps"] == 1 and gg["missing_events"] == 2 and gg["oldest_undelivered"]
    # bound, never seen; the paper series listed apart, never as a terminal
    assert re.search(r'<ul id="never-seen">\s*<li>gate-never', html)
    assert _row(html, "collector-test") is None and '<ul id="paper-series">' in html and "collector-test" in html
    assert api["total"] == 2 and {d["device_id"] for d in api["devices"]} == {"term-1", "gate-g"}
    assert [p["device_id"] for p in api["paper_series"]] == ["collector-test"]
    assert [d["device_id"] for d in api["never_seen"]] == ["gate-never"]
    assert 'id="n-terminals">2<' in html and 'id="n-stale">1<' in html and 'id="n-behind">1<' in html
    assert 'id="n-never">1<' in html and 'id="n-gaps">1<' in html
    # the collector's health
    health = re.search(r'<dl class="health" id="health">.*?</dl>', html, re.S).group(0)
    assert "đã kết nối" in health and "unregistered_device: 1" in health and "wrong_checkpoint: 1" in health
    assert stats["connected"] is True and stats["ingest_per_s"] > 0 and stats["quarantined"] >= 1
    # only the terminals with a problem
    assert _row(problems, "term-1") and _row(problems, "gate-g")
    # a ward officer: only the terminals of their checkpoints
    assert _row(officer_html, "term-1") and _row(officer_html, "gate-g") is None and "gate-never" not in officer_html
    assert officer_api["total"] == 1 and officer_api["never_seen"] == [] and officer_api["paper_series"] == []
    # a viewer's page holds nobody's personal data
    for page in (html, json.dumps(api)):
        assert NAME not in page and "079190054321" not in page
