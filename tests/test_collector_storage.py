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
