"""Deny list v2: revoked credentials by id, denied persons by Argon2id, consulted only after a signature verified.

Every check goes through the `Checker` the terminal uses. The Argon2 hash is counted by
wrapping chot.personal.deny_person_hash, which the deny list calls for each person lookup.
"""

import json
from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from chot import personal
from chot.errors import CredentialError
from device.credentials import keys, native
from device.credentials.denylist import CACHE_SIZE, MAX_ENTRIES, DenyList
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker, Policy
from device.credentials.trust import TrustStore

AT = datetime(2021, 8, 9, 8, 0, tzinfo=UTC)
SMALL = {"t": 1, "m_kib": 8192, "p": 1}  # fast, for tests


@pytest.fixture(scope="module")
def issuer():
    return keys.generate("ed25519")


@pytest.fixture(scope="module")
def trust(issuer):
    t = TrustStore()
    t.add_native_key(issuer.public_key())
    return t


@pytest.fixture(scope="module")
def people():
    return make_test_identities(3, seed=21)


@pytest.fixture
def argon2_calls(monkeypatch):
    """The person ids hashed with Argon2id, in order."""
    calls = []
    real = personal.deny_person_hash

    def counting(person_id, salt, params=None):
        calls.append(person_id)
        return real(person_id, salt, params)

    monkeypatch.setattr(personal, "deny_person_hash", counting)
    return calls


def declare(key, person, **changes):
    return issue_declaration(key, {**person, **changes}, AT - timedelta(hours=1), timedelta(hours=24))


def pid(person):
    return personal.person_id_for_id(person["id_number"])


def check(trust, deny, text, **cfg):
    return Checker(trust, Policy(cfg, deny)).check(text, AT)


def test_denied_person_revoked_declaration_and_others_pass(issuer, trust, people, argon2_calls):
    denied, revoked_holder, free = people
    revoked_text = declare(issuer, revoked_holder)
    revoked_id = native.decode(revoked_text).fields["declaration_id"]
    deny = DenyList.build(5, [pid(denied)], [revoked_id], SMALL)
    argon2_calls.clear()  # building the list hashed its persons

    v, d = check(trust, deny, declare(issuer, denied))
    assert v.verified and (d.decision, d.reason) == ("FAIL", "denylisted")
    # any declaration of the denied person, whatever its id or answers
    assert check(trust, deny, declare(issuer, denied, purpose="visitor"))[1].reason == "denylisted"

    v, d = check(trust, deny, revoked_text)
    assert v.credential_id == revoked_id and (d.decision, d.reason) == ("FAIL", "revoked")
    # the revocation is of that declaration only: a new one of the same person passes (issued at another
    # time; the same declaration signed again, byte for byte, has the same derived id: revoked)
    assert check(trust, deny, declare(issuer, revoked_holder))[1].reason == "revoked"
    again = issue_declaration(issuer, revoked_holder, AT - timedelta(hours=2), timedelta(hours=24))
    assert check(trust, deny, again)[1].passed

    v, d = check(trust, deny, declare(issuer, free))
    assert (d.decision, d.reason) == ("PASS", "ok")
    assert set(argon2_calls) == {pid(denied), pid(revoked_holder), pid(free)}


def test_unverified_claims_never_consult_the_person_list(issuer, trust, people, argon2_calls):
    person = people[0]
    deny = DenyList.build(1, [pid(person)], params=SMALL)
    assert deny.person_count == 1
    argon2_calls.clear()  # building the list hashed its persons

    # a plain ID text, even accepted, names nobody for sure
    v, d = check(trust, deny, person["id_number"], accept_plain=True)
    assert v.person_id == pid(person) and (d.decision, d.reason) == ("PASS", "ok")
    v, d = check(trust, deny, person["id_number"])
    assert d.reason == "unsigned"

    # a forged declaration copying the trusted issuer's key id: bad_signature
    good = declare(issuer, person)
    raw = native.b45decode(good[len(native.PREFIX):])
    protected, _p, unprot, payload, _sig = native.parse_sign1(raw)
    forged_sig = native.cose_sign(keys.generate("ed25519"), native.sig_structure(protected, payload))
    forged = native.PREFIX + native.b45encode(cbor2.dumps([protected, dict(unprot), payload, forged_sig]))
    v, d = check(trust, deny, forged)
    assert v.person_id == pid(person) and (d.decision, d.reason) == ("FAIL", "bad_signature")

    # signed by an issuer nobody trusts
    v, d = check(trust, deny, declare(keys.generate("es256"), person))
    assert d.reason == "unknown_issuer"
    # verified but expired: the failure comes first
    old = issue_declaration(issuer, person, AT - timedelta(days=3), timedelta(hours=24))
    assert check(trust, deny, old)[1].reason == "expired"
    assert argon2_calls == []

    # the same person with a verified declaration: one hash, then the cache
    assert check(trust, deny, good)[1].reason == "denylisted"
    assert check(trust, deny, declare(issuer, person))[1].reason == "denylisted"
    assert argon2_calls == [pid(person)]


def test_no_hash_when_the_list_has_no_persons(issuer, trust, people, argon2_calls):
    deny = DenyList.build(1, credential_ids=["00ff"], params=SMALL)
    assert check(trust, deny, declare(issuer, people[0]))[1].passed
    assert check(trust, DenyList(), declare(issuer, people[0]))[1].passed
    assert argon2_calls == []


def test_the_list_holds_only_hashes(tmp_path, people):
    ids = [pid(p) for p in people]
    deny = DenyList.build(2, ids, ["decl-0001"], SMALL)
    deny.save(tmp_path / "deny.json")
    text = (tmp_path / "deny.json").read_text()
    for p in people:
        assert p["id_number"] not in text and p["id_number"][-6:] not in text and p["name"] not in text
    assert "decl-0001" not in text
    body = json.loads(text)
    assert body["format"] == "chot-denylist-v2" and body["argon2"] == SMALL and len(body["persons"]) == 3
    assert DenyList.load(tmp_path / "deny.json").is_denied_person(ids[1])


def _body(**changes):
    body = personal.make_denylist_body(1, ["id:001090000001"], ["c-1"], SMALL)
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"argon2": {"t": 1, "m_kib": 10**7, "p": 1}}, "m_kib"),  # ~10 GB per lookup on a Pi
        ({"argon2": {"t": 10**6, "m_kib": 8192, "p": 1}}, "argon2.t"),
        ({"argon2": {"t": 1, "m_kib": 8192, "p": 64}}, "argon2.p"),
        ({"argon2": {"t": "1", "m_kib": 8192, "p": 1}}, "argon2.t"),
        ({"argon2": None}, "argon2"),
        ({"persons": ["not hex"]}, r"persons\[0\]"),
        ({"persons": ["A" * 64]}, r"persons\[0\]"),  # upper case
        ({"revoked": ["ab" * 31]}, r"revoked\[0\]"),  # too short
        ({"revoked": [None]}, r"revoked\[0\]"),
        ({"revoked": {"a": 1}}, "revoked"),
        ({"salt": "00" * 4}, "salt"),
        ({"salt": "xyz"}, "salt"),
        ({"version": "7"}, "version"),
        ({"format": "chot-denylist-v1"}, "format"),
        ({"entries": []}, "unknown"),
    ],
)
def test_bad_lists_are_refused(changes, match, tmp_path):
    with pytest.raises(CredentialError, match=match):
        DenyList.from_dict(_body(**changes))
    path = tmp_path / "deny.json"
    path.write_text(json.dumps(_body(**changes)))
    with pytest.raises(CredentialError, match=match):
        DenyList.load(path)


def test_too_many_entries_are_refused():
    body = _body(revoked=["ab" * 32] * (MAX_ENTRIES + 1))
    with pytest.raises(CredentialError, match="at most"):
        DenyList.from_dict(body)


def test_unreadable_files(tmp_path):
    with pytest.raises(CredentialError, match="does not exist"):
        DenyList.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CredentialError, match="not JSON"):
        DenyList.load(tmp_path / "junk.json")


def test_replace_refuses_an_older_version(issuer, trust, people):
    a, b = people[0], people[1]
    deny = DenyList.build(3, [pid(a)], params=SMALL)
    assert not deny.replace(DenyList.build(2, [pid(b)], params=SMALL))
    assert deny.version == 3 and deny.is_denied_person(pid(a)) and not deny.is_denied_person(pid(b))
    assert deny.replace(DenyList.build(3, [pid(a), pid(b)], params=SMALL))  # the same version again: taken
    assert deny.replace(DenyList.build(4, [pid(b)], params=SMALL)) and deny.version == 4
    assert check(trust, deny, declare(issuer, b))[1].reason == "denylisted"


def test_cache_does_not_outlive_the_list(issuer, trust, people, argon2_calls):
    a, b = people[0], people[1]
    deny = DenyList.build(1, [pid(a)], params=SMALL)
    policy = Policy({}, deny)
    checker = Checker(trust, policy)
    text_a, text_b = declare(issuer, a), declare(issuer, b)
    argon2_calls.clear()  # building the list hashed its persons
    assert checker.check(text_a, AT)[1].reason == "denylisted"
    assert checker.check(text_b, AT)[1].passed
    assert checker.check(text_a, AT)[1].reason == "denylisted"  # cached
    assert argon2_calls == [pid(a), pid(b)]
    # the collector lifts a and denies b: the cached answers are not reused
    assert deny.replace(DenyList.build(2, [pid(b)], params=SMALL))
    del argon2_calls[2:]
    assert checker.check(text_a, AT)[1].passed
    assert checker.check(text_b, AT)[1].reason == "denylisted"
    assert argon2_calls == [pid(a), pid(b), pid(a), pid(b)]
    # and a list with the same persons but a new salt answers the same
    assert deny.replace(DenyList.build(3, [pid(b)], params=SMALL))
    assert checker.check(text_b, AT)[1].reason == "denylisted" and checker.check(text_a, AT)[1].passed


def test_cache_is_bounded(monkeypatch):
    deny = DenyList.build(1, ["id:001090000001"], params=SMALL)
    monkeypatch.setattr(personal, "deny_person_hash", lambda person_id, salt, params=None: "00" * 32)
    for i in range(CACHE_SIZE + 50):
        assert not deny.is_denied_person(f"id:{i:012d}")
    assert len(deny._state.cache) == CACHE_SIZE


def test_checker_from_config_reads_the_file(tmp_path, issuer, people):
    (tmp_path / "issuer.pub.pem").write_bytes(keys.public_pem(issuer))
    DenyList.build(9, [pid(people[2])], params=SMALL).save(tmp_path / "deny.json")
    checker = Checker.from_config({"trusted_issuers": [str(tmp_path / "issuer.pub.pem")],
                                   "denylist": str(tmp_path / "deny.json")})
    assert checker.policy.denylist.version == 9
    assert checker.check(declare(issuer, people[2]), AT)[1].reason == "denylisted"
    assert checker.check(declare(issuer, people[0]), AT)[1].passed
