"""Collector storage on SQLite and PostgreSQL: batches, duplicates, contiguous seq, migrations."""

import random

import pytest

from collector.storage import SCHEMA_VERSION, Storage, format_time, parse_time
from collector.testing import make_event


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
    assert row.uuid == ev["uuid"] and format_time(row.time) == ev["time"] and row.clock_synced is True


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
        assert st.SchemaVersion.select().count() == SCHEMA_VERSION
        assert st.event_count() == 1


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
            expected_new = len({(e["device_id"], e["seq"]) for e in batch} - {(d, s) for d in devices
                                                                               for s in stored[d]})
            for e in batch:
                stored[e["device_id"]].add(e["seq"])
            assert new == expected_new
            registry = {r["device_id"]: r for r in a.devices()}
            for d in {e["device_id"] for e in batch}:
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
    bad = make_event("d1", 2)
    bad["time"] = "2021-02-30T10:00:00Z"  # the wire pattern, but no such day
    with pytest.raises(ValueError, match="ISO 8601"):
        storage.store_batch([make_event("d1", 1), bad])
    assert storage.event_count() == 0 and storage.devices() == []
    stored = make_event("d1", 1, time="2021-08-09T10:00:00.1234567Z")
    assert storage.store_batch([stored]) == {"d1": 1}
    E = storage.Event
    assert format_time(E.get(E.seq == 1).time) == "2021-08-09T10:00:00.123456Z"


def test_event_check_names_each_wrong_field():
    from chot import wire

    good = make_event("gate-1", 5)
    assert wire.validate_event(good) == []
    wrong = {"v": 2, "device_id": "-x", "seq": True, "uuid": "ABC", "checkpoint": "", "direction": "up",
             "time": "2021-08-09 10:00:00", "clock": {"synced": 1, "boot_id": "b", "mono_ns": 1},
             "source": "x", "format": "x", "decision": "ok", "reason": "", "subject": {"k": "x" * 5000}}
    for name, value in wrong.items():
        ev = dict(good, **{name: value})
        assert wire.validate_event(ev) == [f"{name}: wrong value or type; allowed: {wire.EVENT_FIELDS[name][1]}"]
        del ev[name]
        assert wire.validate_event(ev) == [f"{name}: missing; allowed: {wire.EVENT_FIELDS[name][1]}"]
    assert wire.validate_event(dict(good, extra=1)) == ["unknown fields: extra"]
    assert wire.validate_event(dict(good, seq=2**63)) != [] and wire.validate_event(dict(good, seq=2**63 - 1)) == []
    assert wire.validate_event([good]) == ["an event must be a JSON object, found list"]


def test_batch_of_many_devices(storage):
    # more devices than one registry statement takes (chunks of 300)
    devices = [f"gate-{i:04d}" for i in range(650)]
    acks, new = storage.store_batch_counted([make_event(d, s) for d in devices for s in (1, 2)])
    assert new == 1300 and acks == dict.fromkeys(devices, 2)
    acks = storage.store_batch([make_event(d, 4) for d in devices])
    assert acks == dict.fromkeys(devices, 2)
    assert {d["device_id"]: (d["max_seq"], len(d["gaps"])) for d in storage.devices()} == dict.fromkeys(devices, (4, 1))
