"""Rotating the index secret and the data key (`chot collector rekey`), on SQLite and PostgreSQL.

After a rekey the tracer finds the same people with the new keys, the old index key finds
nobody, the old data key opens nothing, verified and unverified stay apart, and a run that
stops half-way finishes when run again.
"""

import shutil
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from chot.errors import CollectorError
from chot.personal import DataCipher, SealError
from chotdemo.testing import make_item
from collector import queries
from collector.keys import CollectorKeys, make_key_dir
from collector.rekey import load_new_keys, rekey
from collector.storage import Storage

AT = datetime.now().replace(microsecond=0) - timedelta(hours=2)
PEOPLE = [("079190012345", "Nguyễn Văn Ân"), ("079190020417", "Trần Thị Bích Ngọc"), ("079190031008", "Lê Hoàng Đức")]


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    url = f"sqlite:///{tmp_path}/collector.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    old_dir, new_dir = tmp_path / "keys", tmp_path / "new-keys"
    make_key_dir(old_dir)
    make_key_dir(new_dir, seal=False)
    st = Storage(url, keys=CollectorKeys.from_dir(old_dir))
    items = []
    for i, (idn, name) in enumerate(PEOPLE):
        for j in range(3):
            verified = j != 2  # the third event of each person is an unverified claim
            items.append(make_item("gate-1", len(items) + 1, time=AT + timedelta(minutes=i * 3 + j),
                                   checkpoint="gate-1", verified=verified, fmt="native" if verified else "plain",
                                   reason="ok" if verified else "unsigned", decision="PASS" if verified else "FAIL",
                                   person={"id_number": idn, "name": name}, person_id="id:" + idn))
    st.store_batch(items)
    yield st, old_dir, new_dir, url
    st.close()


def _names(res, which):
    return sorted(v["person"]["name"] for v in res[which] if v.get("person"))


def test_rekey_keeps_every_person_findable_under_the_new_keys(world):
    st, old_dir, new_dir, url = world
    before = queries.visits(st, PEOPLE[0][0], case="C-1", actor="t")
    assert len(before["verified"]) == 2 and len(before["unverified"]) == 1
    old_rows = {(r.device_id, r.seq): (r.person_key, r.claim_key, r.personal) for r in st.Event.select()}

    old_data_hex = (old_dir / "data.key").read_text().strip()
    index, cipher = load_new_keys(new_dir)
    assert rekey(st, index, cipher, batch=4) == len(old_rows)

    for name in ("index.key", "data.key"):
        shutil.copy(new_dir / name, old_dir / name)
    with Storage(url, keys=CollectorKeys.from_dir(old_dir)) as st2:
        after = queries.visits(st2, PEOPLE[0][0], case="C-1", actor="t")
        assert _names(after, "verified") == [PEOPLE[0][1]] * 2
        assert _names(after, "unverified") == [PEOPLE[0][1]]
        for r in st2.Event.select():
            pk, ck, text = old_rows[(r.device_id, r.seq)]
            assert r.personal != text and r.personal.startswith(cipher.kid + ":")
            assert (r.person_key is None) == (pk is None) and (r.claim_key is None) == (ck is None)
            assert {r.person_key, r.claim_key} - {None} != {pk, ck} - {None}  # a new index
        old_cipher = DataCipher(bytes.fromhex(old_data_hex))
        with pytest.raises(SealError):  # the old data key opens nothing any more
            old_cipher.decrypt(r.personal, r.device_id, r.seq)
        assert any(a["action"] == "rekey" for a in st2.audit_log())


def test_a_half_done_rekey_finishes_when_run_again(world, monkeypatch):
    st, old_dir, new_dir, url = world
    index, cipher = load_new_keys(new_dir)
    calls = {"n": 0}
    real = st.keys.decrypt

    def flaky(text, dev, seq):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # the run stops half-way (power cut, Ctrl-C)
        return real(text, dev, seq)

    monkeypatch.setattr(st.keys, "decrypt", flaky)
    with pytest.raises(KeyboardInterrupt):
        rekey(st, index, cipher, batch=4)
    monkeypatch.setattr(st.keys, "decrypt", real)
    done_first = st.Event.select().where(st.Event.personal.startswith(cipher.kid + ":")).count()
    assert done_first == 4  # the first batch committed, the second rolled back
    assert rekey(st, index, cipher, batch=4) == len(PEOPLE) * 3 - 4
    assert st.Event.select().where(~st.Event.personal.startswith(cipher.kid + ":")).count() == 0


def test_rekey_refuses_the_current_key_and_says_what_to_do(world):
    st, old_dir, _new, _url = world
    index, cipher = load_new_keys(old_dir)
    with pytest.raises(CollectorError, match="keygen --index --data"):
        rekey(st, index, cipher)


def test_rekey_command_line(world, tmp_path):
    st, old_dir, new_dir, url = world
    conf = tmp_path / "collector.toml"
    conf.write_text(f'[collector]\ndatabase = "{url if url.startswith("postgres") else url}"\n'
                    f'key_dir = "{old_dir}"\nretention_days = 3650\n')
    res = subprocess.run([sys.executable, "-m", "chot.cli", "collector", "rekey", "--config", str(conf),
                          "--new-key-dir", str(new_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "9 events rewritten" in res.stdout and "copy" in res.stdout
