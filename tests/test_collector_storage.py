"""Collector storage on SQLite and PostgreSQL: batches, duplicates, contiguous seq, migrations, personal columns."""

import json
import random
import sqlite3

import msgspec
import pytest

from chot import wire
from chot.errors import CollectorError
from chot.personal import Sealer, load_public_key
from chotdemo.testing import make_event, make_item, make_keys
from collector.keys import Item
from collector.storage import SCHEMA_VERSION, Storage, format_time, parse_time


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def storage(db_url):
    with Storage(db_url) as st:
        yield st


def test_batch_stored_once_with_duplicates(storage):
    events = [make_event("gate-1", s) for s in range(1, 51)]
    acks, new = storage.store_batch_counted(events)
    assert acks == {"gate-1": 50} and new == 50
    # the same events again (a redelivery), plus duplicates inside one batch, plus new ones
    again = events[10:20] + events[10:20] + [make_event("gate-1", s) for s in range(51, 61)]
    acks, new = storage.store_batch_counted(again)
    assert acks == {"gate-1": 60} and new == 10
    assert storage.event_count() == 60
    E = storage.Event
    rows = list(E.select(E.seq).where(E.device_id == "gate-1").tuples())
    assert sorted(s for (s,) in rows) == list(range(1, 61))
    # a stored event keeps its fields
    ev = events[3]
    row = E.get((E.device_id == "gate-1") & (E.seq == 4))
    assert row.uuid == ev.uuid and format_time(row.time) == ev.time and row.clock_synced is True
    assert row.verified is False and row.person_key is None and row.personal is None


def test_contiguous_seq_out_of_order_and_gaps(storage):
    seqs = list(range(1, 301))
    rng = random.Random(7)
    rng.shuffle(seqs)
    held_back = {17, 150, 151, 152, 299}
    arriving = [s for s in seqs if s not in held_back]
    expected = 0
    for i in range(0, len(arriving), 37):
        chunk = arriving[i : i + 37]
        acks = storage.store_batch([make_event("d1", s) for s in chunk] + [make_event("d2", 1)])
        present = set(arriving[: i + 37])
        while expected + 1 in present:
            expected += 1
        assert acks["d1"] == expected
        assert acks["d2"] == 1
    assert expected == 16
    dev = {d["device_id"]: d for d in storage.devices()}["d1"]
    assert [(g["from"], g["to"]) for g in dev["gaps"]] == [(17, 17), (150, 152), (299, 299)]
    assert dev["max_seq"] == 300 and dev["contiguous_seq"] == 16
    assert len(storage.open_gaps(0)) == 3
    assert storage.open_gaps(3600) == []  # none has been open an hour
    # the missing ones arrive: the mark moves past each filled gap
    assert storage.store_batch([make_event("d1", 17)]) == {"d1": 149}
    assert storage.store_batch([make_event("d1", 151), make_event("d1", 152)]) == {"d1": 149}
    dev = {d["device_id"]: d for d in storage.devices()}["d1"]
    assert [(g["from"], g["to"]) for g in dev["gaps"]] == [(150, 150), (299, 299)]
    assert storage.store_batch([make_event("d1", 150), make_event("d1", 299)]) == {"d1": 300}
    dev = {d["device_id"]: d for d in storage.devices()}["d1"]
    assert dev["gaps"] == [] and storage.open_gaps(0) == []


def test_long_contiguous_run_advances_in_one_batch(storage):
    # 2,500 events arriving newest first in one batch: the walk crosses several pages
    acks = storage.store_batch([make_event("d9", s) for s in range(2500, 0, -1)])
    assert acks == {"d9": 2500}


def test_migrate_is_idempotent(db_url):
    with Storage(db_url) as st:
        st.store_batch([make_event("d1", 1)])
        assert st.schema_version() == SCHEMA_VERSION
        assert st.migrate() == SCHEMA_VERSION
    with Storage(db_url) as st:  # opening again migrates again: nothing changes, nothing is lost
        assert st.migrate() == SCHEMA_VERSION
        assert st.schema_version() == SCHEMA_VERSION
        assert st.SchemaVersion.select().count() == 1
        assert st.event_count() == 1


def test_a_pre_release_version_1_database_is_refused(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE chot_schema (id INTEGER PRIMARY KEY, version INTEGER, applied_at TEXT)")
    con.execute("INSERT INTO chot_schema (version, applied_at) VALUES (1, '2021-08-01 00:00:00.000000')")
    con.commit()
    con.close()
    with pytest.raises(CollectorError, match="pre-release schema version 1.*move it aside"):
        Storage(f"sqlite:///{db}")


def test_status_updates_registry(storage):
    storage.update_status("gate-2", {"device_id": "gate-2", "online": True, "version": "0.1.0", "outbox_depth": 12})
    d = storage.devices()[0]
    assert (d["device_id"], d["online"], d["version"], d["outbox_depth"]) == ("gate-2", True, "0.1.0", 12)
    storage.update_status("gate-2", {"device_id": "gate-2", "online": False})
    d = storage.devices()[0]
    assert d["online"] is False and d["version"] == "0.1.0"


def test_publish_versions_grow(storage):
    a = storage.next_publish_version("chot/v1/broadcast/denylist")
    b = storage.next_publish_version("chot/v1/broadcast/denylist")
    c = storage.next_publish_version("chot/v1/dev/x/config")
    assert b > a and c >= a


def test_time_parsing_round_trips():
    for text in ("2021-08-09T10:00:00Z", "2021-08-09T10:00:00.5Z", "2021-08-09T10:00:00.123456Z"):
        assert parse_time(format_time(parse_time(text))) == parse_time(text)
    assert format_time(parse_time("2021-08-09T17:00:00+07:00")) == "2021-08-09T10:00:00Z"
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _model_marks(stored):
    """(contiguous, max, gaps as [(from, to)]) of a set of stored seqs."""
    c = 0
    while c + 1 in stored:
        c += 1
    top = max(stored, default=0)
    gaps, prev = [], c
    for s in sorted(x for x in stored if x > c):
        if s > prev + 1:
            gaps.append((prev + 1, s - 1))
        prev = s
    return c, max(top, c), gaps


def test_two_storages_interleaved_match_a_model(db_url):
    # two collectors on one database take turns with random batches: late, early, repeated seqs
    rng = random.Random(11)
    devices = ["d1", "d2", "d3"]
    pending = {d: list(range(1, 161)) for d in devices}
    for d in devices:  # mostly in order, with some events moved late
        seqs = pending[d]
        for _ in range(25):
            i, j = rng.randrange(len(seqs)), rng.randrange(len(seqs))
            seqs[i], seqs[j] = seqs[j], seqs[i]
    stored = {d: set() for d in devices}
    with Storage(db_url) as a, Storage(db_url, migrate=False) as b:
        turn = 0
        while any(pending.values()):
            batch = []
            for d in devices:
                k = rng.randrange(0, 12)
                take, pending[d] = pending[d][:k], pending[d][k:]
                batch += [make_event(d, s) for s in take]
                if stored[d] and rng.random() < 0.3:  # a redelivery
                    batch.append(make_event(d, rng.choice(sorted(stored[d]))))
            rng.shuffle(batch)
            acks, new = (a if turn % 2 else b).store_batch_counted(batch)
            turn += 1
            expected_new = len({(e.device_id, e.seq) for e in batch} - {(d, s) for d in devices
                                                                         for s in stored[d]})
            for e in batch:
                stored[e.device_id].add(e.seq)
            assert new == expected_new
            registry = {r["device_id"]: r for r in a.devices()}
            for d in {e.device_id for e in batch}:
                c, top, gaps = _model_marks(stored[d])
                assert acks[d] == c
                r = registry[d]
                assert (r["contiguous_seq"], r["max_seq"]) == (c, top)
                assert [(g["from"], g["to"]) for g in r["gaps"]] == gaps
        assert {d: a.contiguous(d) for d in devices} == dict.fromkeys(devices, 160)
        assert a.event_count() == 3 * 160


def test_gap_keeps_when_it_was_first_seen(storage):
    storage.store_batch([make_event("d1", s) for s in (1, 2, 5)])
    since = storage.devices()[0]["gaps"][0]["since"]
    storage.store_batch([make_event("d1", 4), make_event("d1", 7)])
    gaps = storage.devices()[0]["gaps"]
    assert [(g["from"], g["to"]) for g in gaps] == [(3, 3), (6, 6)]
    assert gaps[0]["since"] == since


def test_impossible_time_refuses_the_batch(storage):
    # the wire check refuses it; a Struct built around the check must not reach the database either
    bad = msgspec.structs.replace(make_event("d1", 2), time="2021-02-30T10:00:00Z")
    with pytest.raises(ValueError, match="ISO 8601"):
        storage.store_batch([make_event("d1", 1), bad])
    assert storage.event_count() == 0 and storage.devices() == []
    stored = make_event("d1", 1, time="2021-08-09T10:00:00.1234567Z")
    assert storage.store_batch([stored]) == {"d1": 1}
    E = storage.Event
    assert format_time(E.get(E.seq == 1).time) == "2021-08-09T10:00:00.123456Z"


def test_event_check_names_each_wrong_field():
    good = wire.to_dict(make_event("gate-1", 5))
    assert wire.validate_event(good) == []
    wrong = {"v": 1, "device_id": "-x", "seq": True, "uuid": "ABC", "checkpoint": "", "direction": "up",
             "time": "2021-08-09 10:00:00", "clock": {"synced": 1, "boot_id": "b", "mono_ns": 1},
             "source": "x", "format": "x", "decision": "ok", "reason": "", "verified": "yes",
             "sealed": {"kid": "x"}}
    for name, value in wrong.items():
        problems = wire.validate_event(dict(good, **{name: value}))
        assert len(problems) == 1 and name in problems[0], (name, problems)
        if name != "sealed":
            ev = dict(good)
            del ev[name]
            problems = wire.validate_event(ev)
            assert len(problems) == 1 and name in problems[0], (name, problems)
    assert wire.validate_event(dict(good, subject={"key": "x"})) != []  # no subject in clear any more
    assert wire.validate_event(dict(good, seq=2**63)) != [] and wire.validate_event(dict(good, seq=2**63 - 1)) == []


def test_personal_columns_verified_claim_and_unopened(db_url, tmp_path):
    keys = make_keys(tmp_path / "keys")
    sealer = Sealer(load_public_key(tmp_path / "keys" / "seal.pub")[1])
    with Storage(db_url, keys=keys) as st:
        person = {"id_number": "001090012345", "name": "Trần Thị Bích", "phone": "0912345678"}
        pid = "id:001090012345"
        verified = make_item("g1", 1, person=person, person_id=pid, credential_id="decl-1")
        claim = make_item("g1", 2, person=person, person_id=pid, verified=False, fmt="plain", reason="unsigned")
        # sealed to a key this collector does not hold: kept sealed, with its code, not dropped
        other = make_keys(tmp_path / "other")
        foreign = Sealer(load_public_key(tmp_path / "other" / "seal.pub")[1])
        ev3 = make_event("g1", 3, person=person, person_id=pid, sealer=foreign)
        item3 = keys.open(ev3)
        assert item3 == Item(ev3, None, "unknown_key")
        ev4 = make_event("g1", 4, person=person, person_id=pid, sealer=sealer)
        item4 = keys.open(ev4)
        assert item4.seal_error is None and item4.opened.person == person
        assert st.store_batch([verified, claim, item3, item4, make_event("g1", 5)]) == {"g1": 5}
        E = st.Event
        rows = {r.seq: r for r in E.select()}
        key = keys.person_key(pid)
        assert (rows[1].person_key, rows[1].claim_key, rows[1].verified) == (key, None, True)
        assert (rows[2].person_key, rows[2].claim_key, rows[2].verified) == (None, key, False)
        assert rows[3].person_key is None and rows[3].personal is None and rows[3].seal_error == "unknown_key"
        assert json.loads(rows[3].sealed) == wire.to_dict(ev3.sealed)  # to open later, with the old key
        assert other.opener.open(json.loads(rows[3].sealed), ev3.uuid).person == person
        assert rows[4].person_key == key and rows[4].sealed is None and rows[4].seal_error is None
        assert rows[5].personal is None and rows[5].person_key is None and rows[5].claim_key is None
        for seq in (1, 2, 4):
            assert "Bích" not in rows[seq].personal and "0912345678" not in rows[seq].personal
            assert keys.decrypt(rows[seq].personal, "g1", seq)["person"] == person
        assert keys.decrypt(rows[1].personal, "g1", 1)["credential_id"] == "decl-1"
        with pytest.raises(Exception, match="moved|altered"):  # bound to its own (device_id, seq)
            keys.decrypt(rows[1].personal, "g1", 2)
    with Storage(db_url) as st, pytest.raises(CollectorError, match="keys"):
        st.store_batch([make_item("g1", 9, person=person, person_id=pid)])  # no keys: refused, not stored clear


def test_batch_of_many_devices(storage):
    # more devices than one registry statement takes (chunks of 300)
    devices = [f"gate-{i:04d}" for i in range(650)]
    acks, new = storage.store_batch_counted([make_event(d, s) for d in devices for s in (1, 2)])
    assert new == 1300 and acks == dict.fromkeys(devices, 2)
    acks = storage.store_batch([make_event(d, 4) for d in devices])
    assert acks == dict.fromkeys(devices, 2)
    assert {d["device_id"]: (d["max_seq"], len(d["gaps"])) for d in storage.devices()} == dict.fromkeys(devices, (4, 1))
