"""Keyed look-ups by declaration id and phone (chot_lookup, written at ingest): found, keyed, purged with age."""

from datetime import timedelta

import pytest

from chot.personal import Sealer, normalise_phone
from chotdemo.testing import make_event, make_keys
from collector.storage import Storage, utcnow

PHONE = "0912345601"


@pytest.fixture(params=["sqlite", "postgresql"])
def st(request, tmp_path):
    url = f"sqlite:///{tmp_path}/l.db" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    keys = make_keys(tmp_path / "keys")
    sealer = Sealer.from_file(keys.key_dir / "seal.pub")
    t = utcnow() - timedelta(hours=2)
    people = [("079190012345", PHONE, "decl-1"), ("079190012346", "+84 912 345 601", "decl-2"),
              ("079190012347", "0900000000", "decl-3")]
    events = [make_event("cp-t1", i + 1, time=t, person={"id_number": idn, "name": "N", "phone": phone},
                         person_id=f"id:{idn}", credential_id=cred, sealer=sealer)
              for i, (idn, phone, cred) in enumerate(people)]
    with Storage(url, keys=keys, retention_days=28) as s:
        s.store_events([keys.open(ev) for ev in events])
        s.store_events([keys.open(events[0])])  # a resend: no second row
        yield s


def test_phone_and_declaration_id_find_the_person_and_nothing_is_in_clear(st):
    k = st.keys
    assert normalise_phone("+84 912-345.601") == normalise_phone("84912345601") == PHONE
    both = sorted([k.person_key("id:079190012345"), k.person_key("id:079190012346")])
    for written in (PHONE, "+84912345601", "091 234 5601"):
        assert st.find_lookup(k.lookup_key("phone", written)) == both
    assert st.find_lookup(k.lookup_key("cred", "decl-3")) == [k.person_key("id:079190012347")]
    assert st.find_lookup(k.lookup_key("cred", "decl-9")) == []
    assert st.find_lookup(k.lookup_key("phone", PHONE), limit=1) == both[:1]
    rows = list(st.Lookup.select().tuples())
    assert len(rows) == 6  # 3 people x (declaration id, phone)
    text = " ".join(str(v) for r in rows for v in r)
    assert "0912345601" not in text and "decl-" not in text and "079190" not in text


def test_purge_drops_old_lookups(st):
    assert st.Lookup.select().count() == 6
    st.purge(1, now=utcnow() + timedelta(days=3))
    assert st.Lookup.select().count() == 0


def test_rekey_rebuilds_lookups_and_moves_cases_to_the_new_index_key(st, tmp_path):
    from collector.cases import CaseBook
    from collector.keys import CollectorKeys, make_key_dir
    from collector.rekey import load_new_keys, rekey

    book = CaseBook(st)
    book.open("HCM-1", "079190012345", "positive test", "tracer")
    book.mark_notified("HCM-1", st.keys.person_key("id:079190012346"), "tracer")
    new_dir = tmp_path / "new-keys"
    make_key_dir(new_dir, seal=False)
    index, cipher = load_new_keys(new_dir)
    assert rekey(st, index, cipher) == 3
    new = CollectorKeys(st.keys.opener, index, cipher)
    st.keys = new
    both = sorted([new.person_key("id:079190012345"), new.person_key("id:079190012346")])
    assert st.find_lookup(new.lookup_key("phone", PHONE)) == both
    assert st.find_lookup(new.lookup_key("cred", "decl-3")) == [new.person_key("id:079190012347")]
    assert st.Lookup.select().count() == 6  # the old keys are gone
    assert book.get("HCM-1")["person_key"] == new.person_key("id:079190012345")
    assert set(book.notified("HCM-1")) == {new.person_key("id:079190012346")}
    # run again (as after an interruption): the same
    from collector.rekey import rekey_lookups

    rekey_lookups(st, index, index, cipher)
    assert book.get("HCM-1")["person_key"] == new.person_key("id:079190012345")
    assert st.find_lookup(new.lookup_key("phone", PHONE)) == both
