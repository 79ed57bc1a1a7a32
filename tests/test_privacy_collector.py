"""A copied collector database reveals nobody (SQLite and PostgreSQL); with the key files the tracer finds them.

Known synthetic people (12-digit ID numbers with a shared prefix, Vietnamese names, phones,
birth dates) pass terminals with verified credentials and with unverified claims; their
events are sealed with chot.personal.Sealer (to an old and a new collector key), opened and
stored as the subscriber does. Then every byte of the database is read: no ID number, name
(with diacritics or folded), phone or birth date appears, and no stored value equals an
unkeyed hash of any candidate ID of the shared prefix.
"""

import hashlib
import re
import shutil
import subprocess
from datetime import datetime, timedelta

import pytest

from chot.personal import DataCipher, PersonIndex, Sealer, SealError, fold_name, generate_seal_keys, new_secret_file
from chot.personal import load_public_key as load_seal_pub
from chotdemo.testing import make_event
from collector import queries
from collector.keys import CollectorKeys
from collector.storage import Storage

PREFIX = "0791900"  # province 079, century/sex 1, birth year 90, then 0: 100,000 candidates
PEOPLE = [
    ("0791900" + s, name, phone, dob)
    for s, name, phone, dob in [
        ("12345", "Nguyễn Văn Ân", "0912345601", "1990-01-02"),
        ("20417", "Trần Thị Bích Ngọc", "0912345602", "1990-03-14"),
        ("31008", "Lê Hoàng Đức", "0912345603", "1990-05-30"),
        ("40391", "Phạm Minh Châu", "0912345604", "1990-07-21"),
        ("51177", "Hoàng Thị Hương", "0912345605", "1990-09-09"),
        ("62840", "Vũ Quốc Khánh", "0912345606", "1990-11-11"),
        ("73306", "Đặng Thu Thảo", "0912345607", "1990-02-28"),
        ("84452", "Bùi Văn Long", "0912345608", "1990-04-17"),
        ("95013", "Đỗ Thị Mai", "0912345609", "1990-06-06"),
        ("06629", "Hồ Xuân Phúc", "0912345610", "1990-08-19"),
    ]
]
CASE = "HCM-2021-0815-07"
AT = datetime.now().replace(microsecond=0) - timedelta(hours=1)  # recent: inside every retention


def person_fields(i):
    idn, name, phone, dob = PEOPLE[i]
    return {"id_number": idn, "name": name, "phone": phone, "dob": dob, "ward": "Phường Bến Nghé",
            "kind": "declaration"}


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    """The database after ingest, the key folder, and what was planted."""
    url = f"sqlite:///{tmp_path}/collector.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    kd = tmp_path / "collector-keys"
    kd.mkdir(mode=0o700)
    old_kid = generate_seal_keys(kd)
    old_sealer = Sealer.from_file(kd / "seal.pub")
    new_kid = generate_seal_keys(kd)  # rotation: seal.pub is now the new key, seal-<old>.key kept
    new_sealer = Sealer.from_file(kd / "seal.pub")
    assert load_seal_pub(kd / "seal.pub")[0] == new_kid != old_kid
    new_secret_file(kd / "index.key")
    new_secret_file(kd / "data.key")
    keys = CollectorKeys.from_dir(kd)
    events, seqs = [], {}

    def add(i, cp, minutes, verified=True, person=None, sealer=None, dev=None):
        dev = dev or f"{cp}-t1"
        seqs[dev] = seqs.get(dev, 0) + 1
        p = person if person is not None else person_fields(i)
        ev = make_event(dev, seqs[dev], time=AT - timedelta(days=1) + timedelta(minutes=minutes), checkpoint=cp,
                        verified=verified, fmt="native" if verified else "plain",
                        reason="ok" if verified else "unsigned", decision="PASS" if verified else "FAIL",
                        person=p, person_id="id:" + p["id_number"], credential_id=f"decl-{i}-{seqs[dev]}",
                        sealer=sealer or (old_sealer if i % 2 else new_sealer))
        events.append(ev)
        return ev

    # person 0 is the case: verified at the market (sealed to the new key) and the clinic (old key)
    add(0, "market", 0, sealer=new_sealer)
    add(0, "clinic", 300, sealer=old_sealer)
    for i in (1, 2, 3):
        add(i, "market", 5 * i)  # verified contacts at the market
    add(4, "clinic", 310)  # verified contact at the clinic
    add(5, "market", 7, verified=False)  # an unverified claim (plain ID text) near the case
    # a forged, unsigned credential naming the case's ID with another name and phone
    forged = dict(person_fields(0), name="Kẻ Mạo Danh", phone="0999999999")
    add(0, "market", 12, verified=False, person=forged, dev="market-t2")
    for i in (6, 7, 8, 9):
        add(i, "stadium", 600 + i)  # elsewhere: nobody's contact
    items = [keys.open(ev) for ev in events]
    assert all(it.seal_error is None for it in items)  # old and new keys both open
    with Storage(url, keys=keys) as st:
        st.store_batch(items)
        paper = queries.record_manual(st, "hq", "market", "in", id_number=PEOPLE[9][0], name=PEOPLE[9][1],
                                      phone=PEOPLE[9][2], time=AT - timedelta(days=1) + timedelta(minutes=3))
        yield {"url": url, "kd": kd, "keys": keys, "st": st, "backend": request.param, "tmp": tmp_path,
               "paper": paper, "kids": (old_kid, new_kid), "events": events}


def _sqlite_bytes(url):
    path = url[len("sqlite:///"):]
    out = b""
    for suffix in ("", "-wal", "-shm"):
        try:
            with open(path + suffix, "rb") as f:
                out += f.read()
        except FileNotFoundError:
            pass
    return out


def _pg_bytes(url):
    import psycopg2

    con = psycopg2.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name LIKE 'chot%' ORDER BY 1, 2")
        cols = cur.fetchall()
        assert {t for t, _ in cols} >= {"chot_event", "chot_event_default", "chot_audit", "chot_device"}
        parts = []
        for table, column in cols:
            cur.execute(f'SELECT "{column}"::text FROM "{table}"')
            parts.extend(v for (v,) in cur.fetchall() if v is not None)
    finally:
        con.close()
    out = "\n".join(parts).encode("utf-8")
    if shutil.which("pg_dump"):
        dump = subprocess.run(["pg_dump", "--data-only", url], capture_output=True, timeout=120)
        assert dump.returncode == 0, dump.stderr.decode()[-500:]
        out += b"\n" + dump.stdout
    return out


def _forbidden():
    out = []
    for idn, name, phone, dob in PEOPLE + [(PEOPLE[0][0], "Kẻ Mạo Danh", "0999999999", PEOPLE[0][3])]:
        out += [idn, idn[-9:], name, fold_name(name), name.split()[-1] + " ", phone, phone[1:], dob,
                dob.replace("-", "")]
    out += ["Phường Bến Nghé", fold_name("Phường Bến Nghé"), "Bến Nghé"]
    return out


def test_a_copied_database_reveals_nobody_and_the_tracer_finds_everyone(world):
    st = world["st"]
    # --- the tracer, with the key files -------------------------------------------------------
    res = queries.contacts(st, PEOPLE[0][0], CASE, "tracer-a", days=14, window_min=15, at=AT)
    assert res["person"]["name"] == PEOPLE[0][1] and res["person"]["phone"] == PEOPLE[0][2]
    verified = res["visits"]["verified"]
    assert sorted(v["checkpoint"] for v in verified) == ["clinic", "market"]
    assert all(v["person"]["name"] == PEOPLE[0][1] for v in verified)  # the forger never joins the record
    (claim,) = res["visits"]["unverified"]
    assert claim["person"]["name"] == "Kẻ Mạo Danh" and claim["verified"] is False
    assert {c["person"]["name"] for c in res["contacts"]} == {PEOPLE[i][1] for i in (1, 2, 3, 4)}
    assert all(c["verified"] and c["person"]["phone"] for c in res["contacts"])
    assert {c["person"]["name"] for c in res["unverified_contacts"]} == {PEOPLE[5][1], PEOPLE[9][1]}
    assert all(not c["verified"] and "claim_key" in c for c in res["unverified_contacts"])
    assert all("synced" in d["clock"] and "boot_id" in d["clock"] for c in res["contacts"] for d in c["details"])
    v9 = queries.visits(st, PEOPLE[9][0], CASE, "tracer-a")
    assert len(v9["verified"]) == 1 and v9["verified"][0]["checkpoint"] == "stadium"
    assert [r["source"] for r in v9["unverified"]] == ["paper"]  # the paper form is a claim, apart
    v5 = queries.visits(st, PEOPLE[5][0], CASE, "tracer-b")
    assert v5["verified"] == [] and len(v5["unverified"]) == 1
    by_name = queries.visits(st, f"nd:{PEOPLE[3][1]}|{PEOPLE[3][3]}", CASE, "tracer-b")  # no such index: none
    assert by_name["count"] == 0
    log = st.audit_log(case_id=CASE)
    assert [a["action"] for a in log] == ["visits"] * 3 + ["contacts"]
    assert {a["actor"] for a in log} == {"tracer-a", "tracer-b"}
    assert log[-1]["person_key"] == res["person_key"]
    # key rotation: the case's two visits were sealed to the old and the new key; both opened
    E = st.Event
    assert E.select().where(E.seal_error.is_null(False)).count() == 0
    assert {e.sealed.kid for e in world["events"]} == set(world["kids"])

    # --- the copied database, without the key files ---------------------------------------------
    st.close()
    data = _sqlite_bytes(world["url"]) if world["backend"] == "sqlite" else _pg_bytes(world["url"])
    assert len(data) > 2000
    low = data.lower()
    for s in _forbidden():
        b = s.encode("utf-8")
        assert b not in data and b.lower() not in low, f"{s!r} found in the database"
    # nothing stored equals an unkeyed hash of any candidate ID of the shared prefix
    tokens = set()  # every window of a hex digest's length in every run of hex digits
    for run in re.findall(rb"[0-9a-f]{32,}", low):
        for n in (32, 40, 64, 128):
            tokens.update(run[i : i + n] for i in range(len(run) - n + 1))
    assert len(tokens) > 10  # the keyed hashes are there
    candidates = [f"{PREFIX}{n:05d}" for n in range(100_000)] + [p[0] for p in PEOPLE]
    hits = []
    for c in candidates:
        for text in (c, "id:" + c, "chot-subject-v1|" + c):
            raw = text.encode()
            for h in (hashlib.sha256(raw), hashlib.sha1(raw), hashlib.md5(raw), hashlib.blake2b(raw)):
                if h.hexdigest().encode() in tokens:
                    hits.append(text)
    assert hits == []
    # the keyed hash of the true IDs is there, but only with the index secret
    idx = PersonIndex.from_file(world["kd"] / "index.key")
    assert idx.key("id:" + PEOPLE[0][0]).encode() in tokens
    assert PersonIndex(b"\x01" * 32).key("id:" + PEOPLE[0][0]).encode() not in tokens
    # the personal column does not decrypt without the data key
    with Storage(world["url"], migrate=False) as copy:
        E = copy.Event
        rows = list(E.select(E.device_id, E.seq, E.personal).where(E.personal.is_null(False)).tuples())
        assert len(rows) == len(world["events"]) + 1
        fresh = DataCipher(b"\x02" * 32)
        for dev, seq, text in rows:
            with pytest.raises(SealError):
                fresh.decrypt(text, dev, seq)
        real = DataCipher.from_file(world["kd"] / "data.key")
        assert {real.decrypt(t, d, s)["person"]["name"] for d, s, t in rows} >= {p[1] for p in PEOPLE}
        with pytest.raises(Exception, match="keys"):  # and the queries refuse to run without them
            queries.visits(copy, PEOPLE[0][0], CASE, "thief")
