"""Issue 11, files: what a terminal writes is 0600 whatever the umask, and purged events leave no trace.

Attacks: another local account (or a group member) reading the outbox, its -wal/-shm files or the
kept updates, because they were created with the process umask (0644 under the usual 0022); and a
copied SD card giving back events the outbox had already purged, from the database's free pages.
"""

import os
import sqlite3
import stat
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_daemon import collector_keys, issuer, make_cfg, write_frames  # noqa: F401 (fixtures)
from test_outbox import fields

from chot import wire
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.daemon import Terminal
from device.uplink.outbox import Outbox
from device.uplink.updates import UpdateStore, load_public_key, store_path_for


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def side_files(path):
    return [Path(str(path) + s) for s in ("", "-wal", "-shm")]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o000])
def test_outbox_files_are_0600_whatever_the_umask(tmp_path, mask):
    path = tmp_path / "state" / "outbox.db"
    with umask(mask):
        with Outbox(path, device_id="t-01") as ob:
            ob.append(fields())
            for p in side_files(path):
                assert p.exists() and mode(p) == 0o600, (p.name, oct(mode(p)))
        # a clean close removes the WAL and its index; whoever opens the database next (the terminal
        # again, or the self-test's plain sqlite3 connection) makes them anew: with the database's mode
        assert not Path(str(path) + "-wal").exists()
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("INSERT INTO event (seq, time, body, created) VALUES (99, 't', '{}', 0)")
            for p in side_files(path):
                assert p.exists() and mode(p) == 0o600, (p.name, oct(mode(p)))
        finally:
            conn.close()
        with Outbox(path, device_id="t-01") as ob:
            ob.append(fields())
            for p in side_files(path):
                assert mode(p) == 0o600, p.name
    assert mode(path.parent) == 0o700


def test_kept_updates_are_0600_whatever_the_umask(tmp_path):
    signer = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "collector.pub"
    pub.write_bytes(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    kept = store_path_for(tmp_path / "state" / "outbox.db")
    kept.parent.mkdir()
    with umask(0o000):
        store = UpdateStore(kept, load_public_key(pub), "t-01")
        offered = store.offer(wire.broadcast_topic("denylist"),
                              wire.sign_envelope(signer, "denylist", 1, {"entries": []}))
        assert offered is not None
        store.commit("denylist")
    assert kept.name == "outbox.db.updates.json" and mode(kept) == 0o600
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # no temporary file left


def test_everything_a_running_terminal_writes_is_private(tmp_path, issuer, collector_keys, mock_pins):  # noqa: F811
    """A terminal run under the usual umask 0022: every file in its state folder is 0600, the folder 0700."""
    key, pub, _ = issuer
    _key_dir, seal_pub, _kid = collector_keys
    person = make_test_identities(1, seed=5)[0]
    text = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=5))
    write_frames(tmp_path / "frames", [text] * 2 + [None])
    state = tmp_path / "var-lib-chot"
    cfg = make_cfg(tmp_path, tmp_path / "frames", pub, seal_pub=seal_pub,
                   outbox={"path": str(state / "outbox.db")})
    with umask(0o022):
        with Terminal.from_config(cfg) as term:
            term.run()
            assert term.outbox.last_seq >= 1
            files = sorted(p for p in state.rglob("*"))
            assert {"outbox.db", "outbox.db-wal", "outbox.db-shm"} <= {p.name for p in files}
            for p in files:
                want = 0o700 if p.is_dir() else 0o600
                assert mode(p) == want, (str(p.relative_to(state)), oct(mode(p)))
    assert mode(state) == 0o700


def test_secure_delete_leaves_no_purged_event_in_the_file(tmp_path):
    """A purged event's bytes are overwritten: neither the database nor its WAL still holds them."""
    path = tmp_path / "outbox.db"
    marker = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"  # the uuid of the event that is purged
    with Outbox(path, device_id="t-01", retention_days=1.0) as ob:
        assert ob._pragma("secure_delete") == 1
        ob.append(fields(uuid=marker))
        for _ in range(20):
            ob.append(fields())
        ob.checkpoint()
        assert marker.encode() in path.read_bytes()  # it is there while kept
        ob.mark_delivered(1)
        future = datetime.now(UTC) + timedelta(days=2)
        assert ob.purge(now=future) == 1
        ob.checkpoint()
        on_disk = b"".join(p.read_bytes() for p in side_files(path) if p.exists())
        assert marker.encode() not in on_disk
        assert ob.stats()["rows"] == 20


def test_the_terminal_unit_keeps_its_files_private():
    """Belt and braces under systemd: whatever a library creates without a mode is private too."""
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "chot-terminal.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["UMask"] == "0077"
    assert settings["StateDirectoryMode"] == "0700"
