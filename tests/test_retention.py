"""Retention on SQLite and PostgreSQL: old events purged (whole day partitions dropped), recent ones kept."""

import time
from datetime import timedelta

import pytest

from chotdemo.testing import collector_config, make_event, make_item, make_keys
from collector.storage import PG_DEFAULT_PARTITION, Storage, partition_name, utcnow
from collector.subscriber import Collector


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    return request.getfixturevalue("pg_dsn")


def _rows_in(st, table):
    return st.db.execute_sql(f'SELECT count(*) FROM "{table}"').fetchone()[0]


AGES = {1: 40, 2: 30, 3: 28.01, 4: 27.9, 5: 1, 6: 0}  # seq -> age in days


def test_old_events_purged_recent_kept(db_url, tmp_path):
    now = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)  # 28 and 28.01 days ago: the same day
    with Storage(db_url, keys=make_keys(tmp_path / "keys")) as st:
        if not st.sqlite:  # partitions made while those days were recent (a collector running all along)
            for age in (40, 30):
                assert st.ensure_partition(now - timedelta(days=age)) is True
        st.store_batch([make_item("d1", s, person={"name": "X"}, person_id=f"id:{s}", time=now - timedelta(days=a))
                        for s, a in AGES.items()])
        if not st.sqlite:
            # one partition per day with events within retention (+ 1 day), and the default
            names = {n for n, _d in st.partitions()}
            assert PG_DEFAULT_PARTITION in names and partition_name(now - timedelta(days=40)) in names
            before = len(names)
            # a stray event dated before any partition goes to the default partition
            st.store_batch([make_event("d2", 1, time=now - timedelta(days=200))])
            assert _rows_in(st, PG_DEFAULT_PARTITION) == 1
        res = st.purge(28, now=now)
        E = st.Event
        kept = sorted(s for (s,) in E.select(E.seq).where(E.device_id == "d1").tuples())
        assert kept == [4, 5, 6]
        assert E.select().where(E.device_id == "d2").count() == 0
        assert res["rows"] == 3 + (0 if st.sqlite else 1)
        if not st.sqlite:
            names = {n for n, _d in st.partitions()}
            assert res["partitions"] == 2 and len(names) == before - 2
            assert partition_name(now - timedelta(days=40)) not in names
            assert partition_name(now - timedelta(days=30)) not in names
            assert partition_name(now - timedelta(days=1)) in names and PG_DEFAULT_PARTITION in names
            count = st.db.execute_sql(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'chot_event'::regclass").fetchone()[0]
            assert count == len(names)
        else:
            assert res["partitions"] == 0
        assert st.purge(28, now=now)["rows"] == 0  # again: nothing left to do
        # the device registry keeps its marks: a purged event is not a gap
        assert st.contiguous("d1") == 6


def test_sqlite_purges_in_batches(tmp_path):
    now = utcnow()
    with Storage(f"sqlite:///{tmp_path}/c.db") as st:
        st.store_batch([make_event("d1", s, time=now - timedelta(days=30, seconds=s)) for s in range(1, 1201)])
        st.store_batch([make_event("d1", 1201, time=now)])
        assert st.purge(28, now=now, batch=500) == {"rows": 1200, "partitions": 0,
                                                     "cutoff": st.purge(28, now=now)["cutoff"]}
        assert st.event_count() == 1


def test_partition_for_a_day_with_rows_in_the_default_partition(pg_dsn):
    now = utcnow()
    with Storage(pg_dsn) as st:
        # beyond the partition window: the default partition takes it; at noon, so that every event
        # of the test (up to an hour later) is of the same day whatever the time the test runs
        later = (now + timedelta(days=5)).replace(hour=12, minute=0, second=0, microsecond=0)
        st.store_batch([make_event("d1", s, time=later + timedelta(minutes=s)) for s in range(1, 4)])
        st.store_batch([make_event("d1", 4, time=now)])
        assert _rows_in(st, PG_DEFAULT_PARTITION) == 3
        name = partition_name(later)
        assert name not in {n for n, _d in st.partitions()}
        assert st.ensure_partition(later) is True  # the rows move into the new partition
        assert st.ensure_partition(later) is False
        assert _rows_in(st, PG_DEFAULT_PARTITION) == 0 and _rows_in(st, name) == 3
        # the attached partition enforces the unique key and takes new events of its day
        assert st.store_batch_counted([make_event("d1", 2, time=later + timedelta(minutes=2))])[1] == 0
        assert st.store_batch_counted([make_event("d1", 5, time=later + timedelta(hours=1))])[1] == 1
        assert _rows_in(st, name) == 4 and st.event_count() == 5
        # another collector (its own cache) finds it there
        with Storage(pg_dsn, migrate=False) as other:
            assert other.ensure_partition(later) is False


def test_the_running_collector_purges_by_itself(db_url, tmp_path, broker):
    now = utcnow()
    keys = make_keys(tmp_path / "keys")
    with Storage(db_url, keys=keys) as st:
        st.store_batch([make_event("d1", s, time=now - timedelta(days=60 - s)) for s in range(1, 61)])
        assert st.event_count() == 60
    cfg = collector_config(db_url, port=broker.port, key_dir=tmp_path / "keys",
                           collector={"retention_days": 28.0, "purge_interval_s": 0.2})
    with Collector(cfg) as col:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and col.storage.event_count() > 28:
            time.sleep(0.1)
        assert col.storage.event_count() == 28
        # the rows go before the purge is counted: wait for the count, then for two more purges
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and col.stats().get("purges", 0) < 1:
            time.sleep(0.1)
        first = col.stats().get("purges", 0)
        assert first >= 1
        while time.monotonic() < deadline and col.stats().get("purges", 0) < first + 2:
            time.sleep(0.1)
        assert col.stats()["purges"] >= first + 2  # and again, every purge_interval_s
        assert col.stats()["purged_rows"] == 32
