"""Rotating the index secret and the data key: every stored person re-indexed and re-encrypted.

`chot collector rekey --new-key-dir NEW` (the collector stopped): for every stored event with
personal fields, decrypt them with the current `data.key`, recompute its `person_key` (verified)
or `claim_key` (unverified) as HMAC(NEW/index.key, person id), encrypt the fields again with
NEW/data.key (bound to the same device_id|seq), in one transaction per batch. The ciphertext
names its data key, so a run that stops half-way is simply run again: rows already under the
new data key are skipped. Afterwards copy NEW/index.key and NEW/data.key over the ones in
`collector.key_dir` and start the collector. docs/security.md gives the whole procedure.
The keyed look-ups (chot_lookup) are rebuilt under the new index key, and the index keys held by
cases and notified marks (chot_case, chot_notified) are translated (rekey_lookups); audit rows
keep the keys of their time.
"""

import logging
from pathlib import Path

from chot.errors import CollectorError
from chot.personal import DataCipher, PersonIndex, SealError
from collector.keys import lookup_keys
from collector.storage import utcnow

log = logging.getLogger(__name__)

BATCH = 1000


def load_new_keys(new_dir):
    """(PersonIndex, DataCipher) from NEW/index.key and NEW/data.key."""
    new_dir = Path(new_dir)
    return PersonIndex.from_file(new_dir / "index.key"), DataCipher.from_file(new_dir / "data.key")


def rekey(storage, new_index, new_cipher, batch=BATCH, progress=None, actor="rekey"):
    """Re-index and re-encrypt every stored person; return the number of rows rewritten.

    `storage.keys` holds the current keys. CollectorError when a row does not decrypt with
    them (it names the row: altered data, or another data key) or when the new data key is
    the current one (nothing would change and a half-done run could not be told apart).
    """
    old = storage.keys
    if old is None:
        raise CollectorError("rekey needs the current keys: set collector.key_dir")
    if new_cipher.kid == old.cipher.kid:
        raise CollectorError("the new data.key is the current one: make new keys with "
                             "`chot collector keygen --index --data --key-dir NEW` and give --new-key-dir NEW")
    E = storage.Event
    done = 0
    todo = E.select().where(E.personal.is_null(False) & ~E.personal.startswith(new_cipher.kid + ":")).count()
    while True:
        rows = list(
            E.select(E.device_id, E.seq, E.time, E.verified, E.personal)
            .where(E.personal.is_null(False) & ~E.personal.startswith(new_cipher.kid + ":"))
            .limit(batch)
            .tuples()
        )
        if not rows:
            break
        with storage.db.atomic():
            for dev, seq, t, verified, text in rows:
                try:
                    fields = old.decrypt(text, dev, seq)
                except SealError as exc:
                    raise CollectorError(f"event {dev}#{seq}: its personal fields do not decrypt with the current "
                                         f"data.key ({exc}); nothing of this batch was changed") from None
                pid = fields.get("person_id") if isinstance(fields, dict) else None
                key = new_index.key(pid) if pid else None
                E.update(
                    personal=new_cipher.encrypt(fields, dev, seq),
                    person_key=key if verified else None,
                    claim_key=None if verified else key,
                ).where((E.device_id == dev) & (E.seq == seq) & (E.time == t)).execute()
        done += len(rows)
        if progress is not None:
            progress(done, todo)
    rekey_lookups(storage, old.index, new_index, new_cipher, batch)
    storage.audit(actor, "rekey", "rekey", detail={"data_key": new_cipher.kid}, rows=done)
    log.warning("rekey: %d events re-indexed and re-encrypted under data key %s", done, new_cipher.kid)
    return done


def rekey_lookups(storage, old_index, new_index, new_cipher, batch=BATCH):
    """After the events: rebuild chot_lookup under `new_index` from every event's personal fields
    (under `new_cipher`), and translate the person keys of chot_case / chot_notified old -> new.

    Run again after an interruption it gives the same result (keys already new are left alone).
    A case whose index person has no stored event keeps its key (nothing of them can be read anyway).
    """
    E = storage.Event
    db = storage.db
    cases = [t for t in ("chot_case", "chot_notified") if db.table_exists(t)]
    wanted = set()
    for t in cases:
        wanted.update(k for (k,) in db.execute_sql(f'SELECT DISTINCT "person_key" FROM "{t}"').fetchall())
    mapping, seen_new = {}, set()
    rows = set()
    last = None
    while True:  # keyset pages over (device_id, seq): every stored personal part once
        q = E.select(E.device_id, E.seq, E.personal).where(E.personal.is_null(False))
        if last is not None:
            q = q.where((E.device_id > last[0]) | ((E.device_id == last[0]) & (E.seq > last[1])))
        page = list(q.order_by(E.device_id, E.seq).limit(batch).tuples())
        if not page:
            break
        for dev, seq, text in page:
            fields = new_cipher.decrypt(text, dev, seq)
            pid = fields.get("person_id")
            rows.update(lookup_keys(new_index, pid, fields.get("person"), fields.get("credential_id")))
            if pid and wanted:
                seen_new.add(new_index.key(pid))
                old_key = old_index.key(pid)
                if old_key in wanted:
                    mapping[old_key] = new_index.key(pid)
        last = page[-1][:2]
    with db.atomic():
        storage.Lookup.delete().execute()
        cur = db.cursor()
        storage._insert_lookups(cur, sorted(rows), utcnow())
        for t in cases:
            for old_key, new_key in mapping.items():
                db.execute_sql(f'UPDATE "{t}" SET "person_key" = {db.param} WHERE "person_key" = {db.param}',
                               (new_key, old_key))
    left = len(wanted - set(mapping) - seen_new)
    if left:
        log.warning("rekey: %d case/notified person keys have no stored event and keep their old key", left)
    return len(rows)
