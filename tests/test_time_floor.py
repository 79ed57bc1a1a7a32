"""Issue 11, time: a clock set back, expired and replayed signed updates, stale lists.

The terminal's time floor (device/timefloor.py) is kept in the outbox; the clocks are injected
(`Terminal._now`, event times) rather than changing the machine's clock.
"""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_daemon import make_cfg, qr_frame, write_frames
from uplink_helpers import Watcher, event_fields, publish, terminal_cfg, wait_until

from chot import wire
from chot.personal import make_denylist_body
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker
from device.daemon import Terminal, feedback_kind
from device.io.patterns import status_cycles
from device.scanner.frames import Frame
from device.uplink.link import Link
from device.uplink.outbox import Outbox
from device.uplink.updates import UpdateStore, load_public_key, store_path_for

DENY = wire.broadcast_topic("denylist")
HERE = {"checkpoint": "cp-1", "direction": "in"}


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def frame(text):
    return Frame(qr_frame(text), time.monotonic(), None)


@pytest.fixture
def issuer(tmp_path):
    key = keys.generate("ed25519")
    priv, pub = keys.save_keypair(key, tmp_path / "issuer")
    return key, pub


@pytest.fixture
def collector(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "collector.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def deny_body(version):
    return make_denylist_body(version, credential_ids=[f"cred-{version:04d}"], salt=bytes(16))


# --- the clock set back ----------------------------------------------------------------------


def test_clock_set_back_fails_an_old_declaration_with_clock_behind_until_the_clock_is_right(tmp_path, issuer,
                                                                                            mock_pins):
    key, pub = issuer
    true_now = datetime.now(UTC)
    clock_at = [true_now]
    a, b = make_test_identities(2, seed=21)
    fresh = issue_declaration(key, a, issued_at=true_now - timedelta(minutes=5))
    three_days_old = issue_declaration(key, b, issued_at=true_now - timedelta(days=3))
    write_frames(tmp_path / "frames", [None])
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub, scanner={"cooldown_s": 0.0},
                   feedback={"heartbeat_s": 0.1})
    with Terminal.from_config(cfg) as term:
        term._now = lambda: clock_at[0]
        [ev] = term.process_frame(frame(fresh))  # the terminal at the right time: its floor is now
        assert (ev["reason"], ev["clock"]["behind"]) == ("ok", False)
        clock_at[0] = true_now - timedelta(days=2.5)  # the clock is set back 2.5 days
        [ev] = term.process_frame(frame(three_days_old))
        # before the time floor it passed: 0.5 days old by the clock set back
        assert (ev["decision"], ev["reason"], ev["clock"]["behind"]) == ("FAIL", "clock_behind", True)
        assert ev["time"].startswith(iso(clock_at[0])[:16])  # the event keeps the clock's reading, flagged
        assert feedback_kind(term.decisions[-1][1]) == "fault"  # the terminal's fault, not the person's
        [ev] = term.process_frame(frame(fresh))  # no time check can be trusted: a fresh one fails too
        assert ev["reason"] == "clock_behind"
        assert term.feedback.status == "clock_behind"
        led = term.feedback.status_led.pin
        assert wait_until(lambda: len(led.states) >= 4)  # the status LED plays its own pattern
        assert status_cycles("clock_behind", term.feedback.cfg) != status_cycles("fault", term.feedback.cfg)
        assert term.status()["clock_behind"] is True
    # a restart does not forget the floor: it is kept in the outbox database
    with Terminal.from_config(cfg) as term:
        term._now = lambda: clock_at[0]
        [ev] = term.process_frame(frame(three_days_old))
        assert (ev["reason"], ev["clock"]["behind"]) == ("clock_behind", True)
        assert term.outbox.event_floor >= true_now - timedelta(seconds=1)
        clock_at[0] = true_now + timedelta(minutes=1)  # the clock is right again
        [ev] = term.process_frame(frame(three_days_old))
        assert (ev["decision"], ev["reason"], ev["clock"]["behind"]) == ("FAIL", "expired", False)
        [ev] = term.process_frame(frame(fresh))
        assert (ev["decision"], ev["reason"]) == ("PASS", "ok")
        assert term.feedback.status == "ok" and term.status()["clock_behind"] is False
        events = term.outbox.pending(0, 10)
    assert [e["clock"]["behind"] for e in events] == [False, True, True, True, False, False]
    assert all(wire.validate_event(e) == [] for e in events)


def test_the_guard_button_and_checks_without_time_are_unchanged_when_the_clock_is_behind(issuer, tmp_path):
    key, pub = issuer
    text = issue_declaration(key, make_test_identities(1, seed=5)[0])
    checker = Checker.from_config({"trusted_issuers": [str(pub)], "accept_plain": True})
    at = datetime.now(UTC)
    assert checker.check(text, at)[1].reason == "ok"
    assert checker.check(text, at, clock_behind=True)[1].reason == "clock_behind"
    assert checker.check(text[:-6] + "AAAAAA", at, clock_behind=True)[1].reason in ("bad_signature", "unreadable")
    assert Checker.from_config({}).check(text, at, clock_behind=True)[1].reason == "unknown_issuer"
    assert checker.check("001090012345", at, clock_behind=True)[1].reason == "ok"  # accepted plain: no time


def test_the_event_floor_survives_a_clock_set_back_a_purge_and_a_restart(tmp_path):
    path = tmp_path / "outbox.db"
    t = datetime(2021, 8, 9, 7, 0, tzinfo=UTC)
    with Outbox(path, device_id="t1", retention_days=1, defaults=HERE) as ob:
        assert ob.event_floor is None
        ob.append(dict(event_fields(), time="2021-08-09T07:00:00.000000Z"))
        ob.append(dict(event_fields(), time="2021-08-06T19:00:00.000000Z"))  # the clock set back
        assert ob.event_floor == t
    with Outbox(path, device_id="t1", retention_days=1, defaults=HERE) as ob:
        assert ob.event_floor == t  # not the last event's time: the floor row written with it
        ob.mark_delivered(2)
        assert ob.purge(now=datetime.now(UTC) + timedelta(days=30)) == 2 and ob.stats()["rows"] == 0
    with Outbox(path, device_id="t1", retention_days=1, defaults=HERE) as ob:
        assert ob.event_floor == t  # every event is gone, the floor is not
        ob.append(dict(event_fields(), time="2021-08-10T07:00:00.000000Z"))
        assert ob.event_floor == t + timedelta(days=1)
        # a signed ack says the collector's time is far before the floor: the clock ran ahead
        assert ob.time_floor.note_collector_time("2021-08-09T08:00:00Z")
        assert ob.event_floor == t + timedelta(hours=1)
    with Outbox(path, device_id="t1", retention_days=1, defaults=HERE) as ob:
        assert ob.event_floor == t + timedelta(hours=1)


# --- signed updates: expiry and replay --------------------------------------------------------


def test_an_expired_update_is_refused_counted_and_logged_once(tmp_path, collector, caplog):
    key, pub = collector
    now = datetime.now(UTC)
    with Outbox(tmp_path / "outbox.db", device_id="t1", defaults=HERE) as ob:
        store = UpdateStore(store_path_for(ob.path), load_public_key(pub), "t1", floor=ob.time_floor)
        expired = wire.sign_envelope(key, "denylist", 3, deny_body(3), issued=iso(now - timedelta(days=8)))
        assert json.loads(expired)["expires"] == iso(now - timedelta(days=1))  # 7 days by default
        with caplog.at_level("WARNING"):
            assert store.offer(DENY, expired) is None
            assert store.offer(DENY, expired) is None
        assert store.refused == {"expired": 2}
        assert caplog.text.count("REFUSED (expired)") == 1
        # the true time is 3 days after the machine's clock (events recorded then): a list that has
        # not expired by the clock set back has expired by the floor
        ob.append(dict(event_fields(), time=iso(now + timedelta(days=3)).replace("Z", ".000000Z")))
        assert ob.time_floor.behind(now)
        revived = wire.sign_envelope(key, "denylist", 4, deny_body(4), issued=iso(now - timedelta(days=1)),
                                     expires=iso(now + timedelta(days=1)))
        assert store.offer(DENY, revived) is None and store.refused == {"expired": 3}
        fresh = wire.sign_envelope(key, "denylist", 5, deny_body(5), issued=iso(now + timedelta(days=3)))
        assert store.offer(DENY, fresh)[2] == 5
        store.commit("denylist")
    # an envelope without an expiry (a collector from before it) is refused as malformed
    env = json.loads(fresh)
    del env["expires"]
    with pytest.raises(wire.WireError, match="expires") as err:
        wire.verify_envelope(load_public_key(pub), json.dumps(env).encode(), "denylist")
    assert err.value.code == "bad_envelope"


def test_a_replayed_older_update_is_refused_even_after_the_kept_file_is_wiped(tmp_path, broker, collector):
    key, pub = collector
    cfg = terminal_cfg(tmp_path, broker.port, collector_public_key=str(pub))
    env1 = wire.sign_envelope(key, "denylist", 1, deny_body(1))
    time.sleep(1.1)  # a later issue time (the envelope's times have whole seconds)
    env2 = wire.sign_envelope(key, "denylist", 2, deny_body(2))
    applied = []
    with Outbox.from_config(cfg) as outbox:
        with Link(cfg, outbox, on_update=lambda *a: applied.append(a[2])) as link:
            assert link.wait_connected(10)
            publish(broker.port, DENY, env1)
            assert wait_until(lambda: applied == [1])
            publish(broker.port, DENY, env2)
            assert wait_until(lambda: applied == [1, 2])
        # someone with the SD card wipes the kept updates; the old list is retained again (replayed by
        # whoever can publish there, or a broker restored from an old backup)
        store_path_for(cfg.outbox.path).unlink()
        publish(broker.port, DENY, env1)
        again = []
        with Link(cfg, outbox, on_update=lambda *a: again.append(a[2])) as link:
            assert wait_until(lambda: link.updates.refused.get("older", 0) >= 1), link.updates.refused
            assert again == [] and link.updates.version("denylist") is None
            assert outbox.time_floor.stale() == ["denylist"]  # the list it had is lost: reported stale
            # the collector's current list, the same message again, is taken back
            publish(broker.port, DENY, env2)
            assert wait_until(lambda: again == [2] and outbox.time_floor.stale() == [])
        # an older kept file put back is not trusted either
        old_file = tmp_path / "old.json"
        old_file.write_text(json.dumps({"denylist": {"version": 1, "payload": env1.decode()}}))
        old_file.replace(store_path_for(cfg.outbox.path))
        third = []
        Link(cfg, outbox, on_update=lambda *a: third.append(a[2])).close()
        assert third == []


# --- stale lists --------------------------------------------------------------------------------


def test_stale_lists_are_in_the_retained_status_and_on_the_status_led(tmp_path, broker, issuer, collector,
                                                                      mock_pins):
    key, pub = collector
    _, issuer_pub = issuer
    write_frames(tmp_path / "frames", [None])
    cfg = make_cfg(tmp_path, tmp_path / "frames", issuer_pub, feedback={"heartbeat_s": 0.1},
                   mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "status_interval_s": 1.0,
                         "reconnect_min_s": 0.1, "reconnect_max_s": 1.0, "collector_public_key": str(pub)},
                   policy={"max_list_age_h": 72.0})
    now = datetime.now(UTC)
    status_topic = wire.status_topic(cfg.device.id)

    def status():
        raw = w.last.get(status_topic)
        return wire.decode_status(raw) if raw else None

    with Watcher(broker.port, [status_topic]) as w, Terminal.from_config(cfg) as term:
        term.set_health("ok")  # as run() does
        term.link.start()
        assert wait_until(lambda: status() is not None and status().online)
        assert status().stale == [] and status().lists == {} and status().clock_behind is False
        assert term.feedback.status == "ok"
        # a deny list issued 4 days ago, valid for 7: applied, but older than policy.max_list_age_h
        old = wire.sign_envelope(key, "denylist", 1, deny_body(1), issued=iso(now - timedelta(days=4)))
        publish(broker.port, DENY, old)
        assert wait_until(lambda: status().stale == ["denylist"], timeout=15)
        assert status().lists["denylist"] == wire.ListState(version=1, issued=iso(now - timedelta(days=4)),
                                                             expires=iso(now + timedelta(days=3)))
        assert term.feedback.status == "stale"
        led = term.feedback.status_led.pin
        led.clear_states()
        assert wait_until(lambda: len(led.states) >= 6)  # the triple flash, repeated
        assert len(status_cycles("stale", term.feedback.cfg)) == 3
        # the collector publishes it again: fresh
        publish(broker.port, DENY, wire.sign_envelope(key, "denylist", 2, deny_body(2)))
        assert wait_until(lambda: status().stale == [] and status().lists["denylist"].version == 2, timeout=15)
        assert term.feedback.status == "ok"
        # the clock set back 2.5 days: below the fresh list's issue time, so the status says clock_behind
        term._now = lambda: datetime.now(UTC) - timedelta(days=2.5)
        assert wait_until(lambda: status().clock_behind is True, timeout=15)
        assert term.feedback.status == "clock_behind"
        term._now = lambda: datetime.now(UTC)
        assert wait_until(lambda: status().clock_behind is False, timeout=15)
        assert term.feedback.status == "ok"
    # a kept list that expires while the terminal is off is still used at start, and reported stale
    short = wire.sign_envelope(key, "denylist", 3, deny_body(3), issued=iso(now - timedelta(hours=2)),
                               expires=iso(now - timedelta(hours=1)))
    kept = store_path_for(cfg.outbox.path)
    data = json.loads(kept.read_text())
    data["denylist"] = {"version": 3, "payload": short.decode()}
    kept.write_text(json.dumps(data))
    with Terminal.from_config(cfg) as term:
        assert term.link.updates.version("denylist") == 3
        assert term.status()["stale"] == ["denylist"] and term.feedback.status == "stale"


# --- the collector sets the expiry ----------------------------------------------------------


def test_the_collector_signs_an_expiry_per_kind_and_the_cli_can_set_it(tmp_path):
    import subprocess
    import sys

    from collector.signing import keygen

    keygen(tmp_path / "keys")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[collector]\ndatabase = "sqlite:///{tmp_path}/c.db"\n'
                    f'signing_key = "{tmp_path}/keys/collector.key"\ndenylist_ttl_h = 24.0\n')
    (tmp_path / "deny.txt").write_text("revoked:decl-1\n")
    (tmp_path / "gate.toml").write_text("[policy]\nmax_age_h = 12.0\n")

    def dry(*args):
        r = subprocess.run([sys.executable, "-m", "chot.cli", "collector", *args, "--config", str(conf),
                            "--dry-run"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        env = json.loads(r.stdout)
        return (datetime.fromisoformat(env["expires"]) - datetime.fromisoformat(env["issued"])) / timedelta(hours=1)

    assert dry("publish-denylist", str(tmp_path / "deny.txt"), "--argon2-t", "1", "--argon2-m-kib", "8192") == 24
    assert dry("publish-denylist", str(tmp_path / "deny.txt"), "--argon2-t", "1", "--argon2-m-kib", "8192",
               "--ttl-h", "6") == 6
    assert dry("publish-trust", str(tmp_path / "keys" / "collector.pub")) == 168
    assert dry("set-config", "gate-1", str(tmp_path / "gate.toml")) == 720
