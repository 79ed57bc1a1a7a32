"""Forwarding to the national system (collector/forward.py) against a real, flaky HTTP receiver.

The receiver (tests/forward_receiver.py) runs as its own process: it fails at random (500, 429,
stalls, connection resets before and after recording), is killed and started again, and records
the first acceptance of every idempotency key on disk. Every event must arrive exactly once by
its key, whatever restarts on either side. No timing is asserted: waits are bounded, not measured.
"""

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from chot import personal
from chotdemo.testing import BASE_TIME, collector_config, make_item, make_keys
from collector import forward
from collector.queries import record_manual
from collector.storage import Storage
from collector.subscriber import Collector
from provisioning.localbroker import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
RECEIVER = Path(__file__).with_name("forward_receiver.py")
TOKEN = "s3cr3t-national-token-7f9a"
MAPPING = {"so_cccd": "id_number", "ho_ten": "name", "sdt": "phone", "diem_chot": "checkpoint", "chieu": "direction",
           "thoi_gian": "time", "ket_qua": "decision", "xac_thuc": "verified", "nguon": "source"}


class Receiver:
    """The flaky national system in its own process, on a fixed port across restarts."""

    def __init__(self, state_dir, fail_rate=0.3, seed=1):
        self.state = Path(state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.fail_rate, self.seed = fail_rate, seed
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}/declarations"

    def start(self):
        self.seed += 1
        self.proc = subprocess.Popen([sys.executable, str(RECEIVER), str(self.port), str(self.state), TOKEN,
                                      str(self.fail_rate), str(self.seed)])
        assert wait_port(self.port, 20.0), "the receiver did not start"
        return self

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def accepted(self):
        """[(key, body)] in the order of their first acceptance."""
        p = self.state / "accepted.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # torn by a kill (never answered): not an acceptance
                continue
            out.append((r["key"], r["body"]))
        return out

    def count(self, name):
        p = self.state / name
        return int(p.read_text()) if p.exists() else 0

    def refuse(self, field, values, status=400):
        (self.state / "refuse.json").write_text(json.dumps({"field": field, "values": values, "status": status}))

    def accept_all(self):
        (self.state / "refuse.json").unlink(missing_ok=True)


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path / "national")
    yield r
    r.kill()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collector.db'}"
    return request.getfixturevalue("pg_dsn")


def _token_file(tmp_path, text=TOKEN):
    p = tmp_path / "national.token"
    p.write_text(text + "\n")
    p.chmod(0o600)
    return p


def _forward(url, token_file, **kw):
    out = {"enabled": True, "url": url, "auth": "bearer", "token_file": str(token_file), "mapping": MAPPING,
           "timeout_s": 0.5, "backoff_min_s": 0.01, "backoff_max_s": 0.1, "rate_per_s": 1000.0, "batch_size": 7,
           "idle_s": 0.05, "timezone": "Asia/Ho_Chi_Minh", "lease_s": 2.0}
    out.update(kw)
    return out


def _items(dev, seqs, **kw):
    out = []
    for s in seqs:
        idn = f"0010900{s:05d}"
        person = {"id_number": idn, "name": f"Nguyễn Văn {s}", "phone": f"09{s:08d}"}
        out.append(make_item(dev, s, person=person, person_id=personal.person_id_for_id(idn), **kw))
    return out


def _stored_keys(st):
    E = st.Event
    return {f"{d}:{s}" for d, s in E.select(E.device_id, E.seq).tuples()}


def _wait(cond, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


def _write_config(tmp_path, db, key_dir, fwd):
    lines = ["[collector]", 'id = "test"', f"database = {json.dumps(db)}", f"key_dir = {json.dumps(str(key_dir))}",
             "retention_days = 3650.0", "", "[http]", "enabled = false", "", "[forward]"]
    for k, v in fwd.items():
        if isinstance(v, dict):
            v = "{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }"
        else:
            v = json.dumps(v)
        lines.append(f"{k} = {v}")
    p = tmp_path / "collector.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_every_event_arrives_once_by_key_across_restarts_of_both_sides(tmp_path, db_url, receiver, broker, caplog):
    """N events, a flaky receiver killed twice, the forwarder SIGKILLed midway (a `forward run` process) and then
    run as a thread of the collector; events stored late with old times meanwhile: each key arrives once."""
    caplog.set_level(logging.DEBUG)
    keys = make_keys(tmp_path / "keys")
    st = Storage(db_url, keys=keys, retention_days=3650)
    fwd = _forward(receiver.url, _token_file(tmp_path))
    # events stored before forwarding is set up are backfilled
    st.store_batch(_items("term-a", range(1, 31)) + _items("term-b", range(1, 21)))
    receiver.start()
    cfg_path = _write_config(tmp_path, db_url, tmp_path / "keys", fwd)
    log_path = tmp_path / "forward-run.log"
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "chot.cli", "-vv", "collector", "forward", "run", "-c",
                                 str(cfg_path)], cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: forward.installed(st), "the forwarder set up its queue")
            # stored while the forwarder runs
            st.store_batch(_items("term-a", range(31, 41)))
            _wait(lambda: len(receiver.accepted()) >= 20 or proc.poll() is not None, "a third forwarded")
            assert proc.poll() is None, log_path.read_text()
        finally:
            proc.kill()  # SIGKILL midway: no clean shutdown
            proc.wait(10)
    receiver.kill()
    # a terminal offline for days uploads old events, and another's gap is filled late
    st.store_batch(_items("term-c", range(1, 16), time=BASE_TIME - timedelta(days=5)))
    st.store_batch(_items("term-b", range(21, 26), time=BASE_TIME - timedelta(days=1)))
    cfg = collector_config(db_url, port=broker.port, key_dir=tmp_path / "keys", forward=fwd)
    col = Collector(cfg, storage=st).start()
    try:
        _wait(lambda: col.stats()["forward"]["failed_attempts"] > 0, "the forwarder meets a receiver that is down")
        receiver.start()
        _wait(lambda: len(receiver.accepted()) >= 55, "more forwarded")
        receiver.kill()  # and killed again midway
        st.store_batch(_items("term-d", range(1, 6), time=BASE_TIME - timedelta(days=10)))
        receiver.start()
        stored = _stored_keys(st)
        _wait(lambda: col.stats()["forward"]["backlog"] == 0, "the backlog emptied")
        stats = col.stats()["forward"]
    finally:
        col.stop()
    got = receiver.accepted()
    assert len(stored) == 85
    assert {k for k, _b in got} == stored  # every stored event arrived ...
    assert len(got) == len(stored)  # ... and was accepted once by its key
    assert stats["dead"] == 0 and stats["backlog"] == 0 and stats["installed"]
    assert stats["last_success"] is not None
    assert receiver.count("requests") > len(stored)  # the failures were real: retries happened
    # each body carries the event's own fields as mapped
    bodies = dict(got)
    b = bodies["term-c:3"]
    assert b["so_cccd"] == "001090000003" and b["ho_ten"] == "Nguyễn Văn 3" and b["diem_chot"] == "cp-1"
    assert b["thoi_gian"].endswith("+07:00")
    # one audit row per batch, by the forwarder, under the standing case
    audit = st.audit_log(case_id="national-forwarding", limit=1000)
    assert audit and {a["actor"] for a in audit} == {"forwarder"}
    assert sum(a["rows"] for a in audit) >= len(stored)
    # the credentials never reach a log: neither this process's nor the forward run process's
    assert TOKEN not in caplog.text
    assert TOKEN not in log_path.read_text()
    assert "forwarding" in log_path.read_text()
    st.close()


def test_refused_event_is_parked_then_retried_and_mapping_and_filters(tmp_path, receiver, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    st = Storage(db, keys=keys, retention_days=3650)
    receiver.fail_rate = 0.0
    receiver.start()
    cfg = collector_config(db, key_dir=tmp_path / "keys",
                           forward=_forward(receiver.url, _token_file(tmp_path), sources=["camera", "paper"]))
    f = forward.Forwarder(st, cfg.forward)
    forward.install(st)
    st.store_batch(_items("term-a", range(1, 4)) + _items("term-a", [4], checkpoint="cp-bad")
                   + _items("term-a", [5], source="manual"))
    paper = record_manual(st, "test", "cp-1", "in", id_number="001090099999", name="Trần Thị B", phone="0912345678",
                          time="2021-08-09T03:00:00Z")
    receiver.refuse("diem_chot", ["cp-bad"])
    while f.step():
        pass
    s = forward.state(st)
    assert s["backlog"] == 0 and s["dead"] == 1 and s["filtered"] == 1 and s["forwarded"] == 4
    dead = forward.dead_letters(st)
    assert dead[0]["key"] == "term-a:4" and dead[0]["status"] == 400 and dead[0]["reason"] == "Bad Request"
    got = dict(receiver.accepted())
    assert set(got) == {"term-a:1", "term-a:2", "term-a:3", f"{paper['device_id']}:{paper['seq']}"}
    # the mapping, exactly: national names, our values, local time, the key
    assert got[f"{paper['device_id']}:{paper['seq']}"] == {
        "so_cccd": "001090099999", "ho_ten": "Trần Thị B", "sdt": "0912345678", "diem_chot": "cp-1", "chieu": "in",
        "thoi_gian": "2021-08-09T10:00:00+07:00", "ket_qua": "PASS", "xac_thuc": False, "nguon": "paper",
        "idempotency_key": f"{paper['device_id']}:{paper['seq']}"}
    # the CLI shows it, and `retry` queues it again
    cfg_path = _write_config(tmp_path, db, tmp_path / "keys", _forward(receiver.url, _token_file(tmp_path)))
    from chot.cli import main

    assert main(["collector", "forward", "status", "-c", str(cfg_path)]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["dead"] == 1 and out["dead_letter"][0]["key"] == "term-a:4" and out["enabled"] is True
    assert out["endpoint"] == f"http://127.0.0.1:{receiver.port}" and TOKEN not in json.dumps(out)
    receiver.accept_all()
    assert main(["collector", "forward", "retry", "-c", str(cfg_path), "term-a:4"]) in (0, None)
    assert json.loads(capsys.readouterr().out) == {"queued_again": 1}
    while f.step():
        pass
    assert "term-a:4" in dict(receiver.accepted())
    assert forward.state(st)["dead"] == 0 and forward.state(st)["backlog"] == 0
    assert len(receiver.accepted()) == 5
    assert TOKEN not in caplog.text
    f.close()
    st.close()


def test_wrong_credentials_park_nothing_and_are_never_logged(tmp_path, receiver, caplog):
    """A 401 says the credentials are wrong, not the event: it stays queued, last_error says what to check."""
    caplog.set_level(logging.DEBUG)
    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    st = Storage(db, keys=keys, retention_days=3650)
    receiver.fail_rate = 0.0
    receiver.start()
    wrong = "wrong-token-0a1b2c3d"
    cfg = collector_config(db, key_dir=tmp_path / "keys", forward=_forward(receiver.url, _token_file(tmp_path, wrong)))
    forward.install(st)
    st.store_batch(_items("term-a", range(1, 4)))
    f = forward.Forwarder(st, cfg.forward)
    t = threading.Thread(target=f.run)
    t.start()
    try:
        _wait(lambda: f.stats()["failed_attempts"] >= 3, "three refused attempts")
    finally:
        f.stop.set()
        t.join(10)
    s = forward.state(st)
    assert s["backlog"] == 3 and s["dead"] == 0 and "HTTP 401" in s["last_error"] and "token_file" in s["last_error"]
    assert receiver.accepted() == []
    assert wrong not in caplog.text and TOKEN not in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("collector"))
    assert f"127.0.0.1:{receiver.port}" in ours and "/declarations" not in ours  # scheme, host, port only
    st.close()


def test_one_sender_per_database(tmp_path, db_url, receiver):
    """Two collectors on one database: the lease lets one send; the other waits (no double sending)."""
    keys = make_keys(tmp_path / "keys")
    st = Storage(db_url, keys=keys, retention_days=3650)
    receiver.fail_rate = 0.0
    receiver.start()
    cfg = collector_config(db_url, key_dir=tmp_path / "keys", forward=_forward(receiver.url, _token_file(tmp_path)))
    forward.install(st)
    st.store_batch(_items("term-a", range(1, 10)))
    f1, f2 = forward.Forwarder(st, cfg.forward), forward.Forwarder(st, cfg.forward)
    assert f1.step() > 0
    assert f2.step() == 0  # f1 holds the lease
    f1._release()
    while f2.step():
        pass
    assert len(receiver.accepted()) == 9 and forward.state(st)["backlog"] == 0
    st.close()


def test_purged_before_sent_is_parked_not_skipped(tmp_path):
    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    st = Storage(db, keys=keys, retention_days=3650)
    cfg = collector_config(db, key_dir=tmp_path / "keys",
                           forward=_forward("http://127.0.0.1:9/x", _token_file(tmp_path)))
    forward.install(st)
    st.store_batch(_items("term-a", [1], time=BASE_TIME - timedelta(days=400)))
    st.purge(300)
    f = forward.Forwarder(st, cfg.forward)
    assert f.step() == 1
    s = forward.state(st)
    assert s["purged"] == 1 and s["dead"] == 1 and forward.dead_letters(st)[0]["status"] == 0
    st.close()


@pytest.mark.parametrize("section, problem", [
    ({"enabled": True, "token_file": "/x"}, "forward.url: missing"),
    ({"url": "http://10.0.0.1/x"}, "allowed: an https:// URL"),
    ({"url": "https://user:pw@example.vn/x"}, "without user:password@"),
    ({"enabled": True, "url": "https://example.vn/x"}, "forward.token_file: missing"),
    ({"mapping": {"so cccd": "id_number"}}, "forward.mapping"),
    ({"backoff_min_s": 10.0, "backoff_max_s": 1.0}, "forward.backoff_min_s"),
    ({"timezone": "Mars/Base"}, "forward.timezone"),
])
def test_config_problems(tmp_path, section, problem):
    from chot.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        collector_config(f"sqlite:///{tmp_path / 'c.db'}", forward=section)
    assert problem in str(e.value)


def test_token_file_readable_by_others_is_refused(tmp_path):
    from chot.errors import ConfigError
    from collector.config import config_from_dict

    tok = _token_file(tmp_path)
    os.chmod(tok, 0o644)
    keys_dir = tmp_path / "keys"
    make_keys(keys_dir)
    data = {"collector": {"database": f"sqlite:///{tmp_path / 'c.db'}", "key_dir": str(keys_dir)},
            "http": {"enabled": False}, "forward": {"enabled": True, "url": "https://example.vn/x",
                                                    "token_file": str(tok)}}
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, world=True)
    assert "forward.token_file" in str(e.value) and "chmod 600" in str(e.value)


def test_token_bucket_bounds_the_rate():
    """A fake clock: no timing in the test."""
    now = [100.0]
    b = forward.TokenBucket(5.0, clock=lambda: now[0])
    stop = threading.Event()
    for _ in range(5):
        assert b.delay() == 0.0 and b.take(stop)
    assert b.delay() == pytest.approx(0.2)  # the sixth waits for a token
    now[0] += 0.2
    assert b.take(stop)
    assert b.delay() > 0
    now[0] += 100.0  # idle a long time: the burst is still at most the capacity
    for _ in range(5):
        assert b.take(stop)
    assert b.delay() > 0


def test_backoff_is_exponential_jittered_bounded_and_honours_retry_after():
    class Rng:
        def __init__(self, x):
            self.x = x

        def random(self):
            return self.x

    assert forward.backoff_delay(1, 1.0, 60.0, rng=Rng(1.0)) == 1.0
    assert forward.backoff_delay(4, 1.0, 60.0, rng=Rng(1.0)) == 8.0
    assert forward.backoff_delay(30, 1.0, 60.0, rng=Rng(1.0)) == 60.0
    assert forward.backoff_delay(30, 1.0, 60.0, rng=Rng(0.0)) == 1.0  # full jitter: down to the minimum
    assert forward.backoff_delay(1, 1.0, 60.0, retry_after=30.0, rng=Rng(0.0)) == 30.0
    assert forward.backoff_delay(1, 1.0, 60.0, retry_after=3600.0, rng=Rng(0.0)) == 60.0  # capped


def test_a_huge_answer_is_read_bounded(tmp_path):
    """The receiver answers 200 with an endless body: the forwarder reads max_response_kib and moves on."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    written = []

    class Huge(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(1 << 14):
                    self.wfile.write(chunk)
                    written.append(len(chunk))
            except OSError:
                pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        keys = make_keys(tmp_path / "keys")
        db = f"sqlite:///{tmp_path / 'c.db'}"
        st = Storage(db, keys=keys, retention_days=3650)
        cfg = collector_config(db, key_dir=tmp_path / "keys", forward=_forward(
            f"http://127.0.0.1:{srv.server_address[1]}/", _token_file(tmp_path), max_response_kib=16))
        forward.install(st)
        st.store_batch(_items("term-a", [1, 2]))
        f = forward.Forwarder(st, cfg.forward)
        assert f.step() == 2
        assert forward.state(st)["forwarded"] == 2
        f.close()
        st.close()
    finally:
        srv.shutdown()
    assert sum(written) < (1 << 30)  # the rest was never read


def test_uninstall_stops_queueing(tmp_path):
    keys = make_keys(tmp_path / "keys")
    st = Storage(f"sqlite:///{tmp_path / 'c.db'}", keys=keys, retention_days=3650)
    st.store_batch(_items("term-a", [1]))
    assert forward.install(st, backfill=False) == 0
    st.store_batch(_items("term-a", [2]))
    assert forward.state(st)["backlog"] == 1
    assert forward.uninstall(st) == 1
    st.store_batch(_items("term-a", [3]))
    assert forward.state(st) == {"installed": False, "backlog": None, "dead": None}
    assert forward.install(st) == 3  # set up again: what is stored is queued (backfill)
    st.close()


def test_api_stats_shows_the_forwarder(tmp_path, receiver):
    """The fleet page's JSON (`GET /api/stats`, fleet:read) carries the forwarder's state: backlog, dead, last error."""
    import httpx

    from collector.web import WebServer
    from collector.web.accounts import Accounts

    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    st = Storage(db, keys=keys, retention_days=3650)
    st.store_batch(_items("term-a", [1, 2, 3]))
    cfg = collector_config(db, key_dir=tmp_path / "keys", http={"enabled": True, "port": 0},
                           forward=_forward(receiver.url, _token_file(tmp_path)))
    col = Collector(cfg, storage=st)  # not started: no broker needed for its stats
    with st.connection():
        secret = Accounts(st).add_token("fleet-page", ["fleet:read"], "test")
    server = WebServer(cfg, st, collector=col).start()
    try:
        r = httpx.get(f"{server.url}/api/stats", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        assert r.status_code == 200, r.text
        fw = r.json()["forward"]
        assert fw["installed"] and fw["backlog"] == 3 and fw["dead"] == 0 and fw["last_error"] is None
        assert fw["oldest_queued"]["key"] == "term-a:1"
        assert TOKEN not in r.text
        # and the fleet page shows it to a viewer: the backlog, and that no error happened yet
        from web_helpers import PASSWORD, Console, login

        from collector.web.accounts import Role

        with st.connection():
            Accounts(st).add_user("viewer", PASSWORD, Role.VIEWER)
        viewer = login(Console(server.url, cfg, st, server.app.state.web.accounts, server), "viewer")
        page = viewer.get("/fleet?lang=en").text
        assert re.search(r'id="forward-backlog">3\b', page) and 'id="forward-error">none' in page
        assert TOKEN not in page
    finally:
        server.stop()
        st.close()


def test_an_event_the_receiver_always_fails_on_is_parked_after_park_after(tmp_path, receiver):
    """One event answered 500 forever would stop the queue: with forward.park_after it is parked, the rest goes."""
    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    st = Storage(db, keys=keys, retention_days=3650)
    receiver.fail_rate = 0.0
    receiver.start()
    receiver.refuse("diem_chot", ["cp-poison"], status=500)
    cfg = collector_config(db, key_dir=tmp_path / "keys",
                           forward=_forward(receiver.url, _token_file(tmp_path), park_after=3, concurrency=1))
    forward.install(st)
    st.store_batch(_items("term-a", [1]) + _items("term-a", [2], checkpoint="cp-poison") + _items("term-a", [3]))
    f = forward.Forwarder(st, cfg.forward)
    while f.step():
        pass
    assert {k for k, _b in receiver.accepted()} == {"term-a:1", "term-a:3"}
    dead = forward.dead_letters(st)
    assert [(d["key"], d["status"], d["attempts"]) for d in dead] == [("term-a:2", 500, 3)]
    f.close()
    st.close()


def test_postgres_partition_made_later_queues_too_and_moved_rows_are_not_queued_twice(tmp_path, pg_dsn):
    """A day partition made after forwarding was set up (rows moved out of the default partition, then attached)
    gets the queueing trigger; the moved rows are not queued again."""
    keys = make_keys(tmp_path / "keys")
    st = Storage(pg_dsn, keys=keys, retention_days=1)  # the 2021 test events fall in the default partition
    forward.install(st)
    st.store_batch(_items("term-a", [1]))
    st.close()
    st = Storage(pg_dsn, keys=keys, retention_days=3650)
    assert st.ensure_partition(BASE_TIME)  # moves term-a:1 out of the default partition and attaches
    st.store_batch(_items("term-a", [2]))
    Q = forward.tables(st).Queue
    assert sorted(Q.select(Q.seq).tuples()) == [(1,), (2,)]
    st.close()
