"""The pass/fail policy and the deny list: rules from the config, reasons from the documented list."""

import json
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest

from chot import personal
from chot.config import rules
from chot.errors import CredentialError
from chot.wire import DecisionCode, Reason
from device.config import load_terminal_config
from device.credentials import keys
from device.credentials.denylist import DenyList
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker, Policy, policy_namespace
from device.credentials.reasons import REASONS
from device.credentials.result import Verification
from device.credentials.settings import PolicySettings
from device.credentials.trust import TrustStore

AT = datetime(2021, 8, 9, 8, 0, tzinfo=UTC)
SMALL_ARGON2 = {"t": 1, "m_kib": 8192, "p": 1}  # fast, for tests


@pytest.fixture(scope="module")
def key():
    return keys.generate("ed25519")


@pytest.fixture(scope="module")
def trust(key):
    t = TrustStore()
    t.add_native_key(key.public_key())
    return t


@pytest.fixture(scope="module")
def person():
    return make_test_identities(1, seed=42)[0]


def decl(key, person, at=AT - timedelta(hours=1), hours=24, **answers):
    return issue_declaration(key, {**person, **answers}, at, timedelta(hours=hours))


def decide(trust, text, cfg=None, deny=None, at=AT):
    return Checker(trust, Policy(cfg or {}, deny)).check(text, at)[1]


def test_defaults_come_from_the_schema():
    ns = policy_namespace(None)
    for k, f in rules(PolicySettings).items():
        assert getattr(ns, k) == f.default
    assert policy_namespace({"max_age_h": 3.0}).max_age_h == 3.0


def test_health_answer_rules_follow_config(key, trust, person):
    assert decide(trust, decl(key, person)).reason == "ok"
    assert decide(trust, decl(key, person, symptoms=True)).reason == "symptoms_declared"
    assert decide(trust, decl(key, person, symptoms=True), {"fail_on_symptoms": False}).reason == "ok"
    assert decide(trust, decl(key, person, contact=True)).reason == "contact_declared"
    assert decide(trust, decl(key, person, contact=True), {"fail_on_contact": False}).reason == "ok"
    # Travel passes by default (fail_on_travel = false) and fails when configured.
    assert decide(trust, decl(key, person, travel=True)).reason == "ok"
    d = decide(trust, decl(key, person, travel=True), {"fail_on_travel": True})
    assert (d.decision, d.reason) == ("FAIL", "travel_declared")


def test_max_age(key, trust, person):
    text = decl(key, person, at=AT - timedelta(hours=30), hours=72)  # still valid by its own expiry
    assert decide(trust, text).reason == "expired"  # but older than max_age_h = 24
    assert decide(trust, text, {"max_age_h": 48.0}).reason == "ok"
    assert decide(trust, text, {"max_age_h": 0.0}).reason == "ok"  # 0: no limit


def test_format_not_accepted(key, trust, person):
    d = decide(trust, decl(key, person), {"accept_formats": ["dcc", "shc"]})
    assert (d.decision, d.reason) == ("FAIL", "format_not_accepted")


def test_plain_texts(trust, person):
    idn = person["id_number"]
    assert decide(trust, idn).reason == "unsigned"
    assert decide(trust, "https://tokhaiyte.vn/abc").reason == "unsigned"
    assert decide(trust, idn, {"accept_plain": True}).reason == "ok"
    assert decide(trust, idn, {"accept_formats": ["native", "plain"]}).reason == "ok"
    # An unsigned ID names nobody for sure: the deny list's persons are not consulted.
    deny = DenyList.build(1, [personal.person_id_for_id(idn)], params=SMALL_ARGON2)
    assert decide(trust, idn, {"accept_plain": True}, deny).reason == "ok"
    assert decide(trust, idn, {}, deny).reason == "unsigned"


def test_denylist_after_verification(key, trust, person):
    deny = DenyList.build(1, [personal.person_id_for_id(person["id_number"])], params=SMALL_ARGON2)
    assert decide(trust, decl(key, person), deny=deny).reason == "denylisted"
    # Verification failures come first: a forged card is bad_signature, whoever it names.
    stranger = keys.generate("es256")
    assert decide(trust, decl(stranger, person), deny=deny).reason == "unknown_issuer"
    # the deny list comes before the health answers
    assert decide(trust, decl(key, person, symptoms=True), deny=deny).reason == "denylisted"


def test_decisions_use_the_wire_enums(key, trust, person):
    d = decide(trust, decl(key, person))
    assert d.decision is DecisionCode.PASS and d.reason is Reason.OK
    assert Policy.manual().reason is Reason.MANUAL
    assert decide(trust, person["id_number"]).reason is Reason.UNSIGNED


def test_verification_failure_reasons_pass_through(trust):
    for reason in ("bad_signature", "unknown_issuer", "expired", "not_yet_valid", "unreadable", "unknown_format"):
        v = Verification(text="x", format="native", steps={"decode": True})
        v.fail("signature", reason)
        assert Policy().decide(v, AT).reason == reason
    v = Verification(text=None, format="unknown", steps={"decode": False})
    assert Policy().decide(v, AT).decision == "FAIL"


def test_other_formats_use_their_rules_hook(monkeypatch):
    from device.credentials import formats

    calls = []

    def rules(v, cfg, at):
        calls.append((v.format, cfg.dcc_test_hours, at))
        return "vaccination_incomplete" if v.claims.get("doses", 0) < 2 else None

    # the registry's DCC entry is the hook (no module looked up by name any more)
    monkeypatch.setattr(formats.by_name("dcc"), "rules", rules)
    p = Policy({"dcc_test_hours": 48})
    ok = Verification(text="HC1:x", format="dcc", steps={"decode": True, "signature": True}, claims={"doses": 2})
    bad = Verification(text="HC1:x", format="dcc", steps={"decode": True, "signature": True}, claims={"doses": 1})
    assert p.decide(ok, AT).reason == "ok"
    assert p.decide(bad, AT).reason == "vaccination_incomplete"
    assert calls[0] == ("dcc", 48, AT)
    assert Policy({"accept_formats": ["native"]}).decide(ok, AT).reason == "format_not_accepted"


def test_manual_pass():
    d = Policy.manual()
    assert d.passed and d.reason == "manual" and "manual" in REASONS


def test_every_policy_reason_is_documented(key, trust, person):
    texts = [decl(key, person, **a) for a in ({}, {"symptoms": True}, {"contact": True}, {"travel": True})]
    texts += [person["id_number"], "CHOT1:XYZ", "\x00", decl(keys.generate("ed25519"), person)]
    for t in texts:
        for cfg in ({}, {"fail_on_travel": True}, {"accept_plain": True}):
            d = decide(trust, t, cfg)
            assert d.reason in REASONS


# ---------------------------------------------------------------- the deny list


def test_denylist_stores_only_hashes(tmp_path):
    ids = [personal.person_id_for_id(f"00109001234{i}") for i in range(5)]
    deny = DenyList.build(3, ids, ["cafe0001", "cafe0002"], params=SMALL_ARGON2)
    path = tmp_path / "deny.json"
    deny.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert "00109001234" not in raw and "cafe0001" not in raw
    loaded = DenyList.load(path)
    assert loaded.version == 3 and len(loaded) == 7 and (loaded.person_count, loaded.revoked_count) == (5, 2)
    assert loaded.to_dict() == deny.to_dict() == json.loads(raw)
    assert all(loaded.is_denied_person(i) for i in ids)
    assert not loaded.is_denied_person(personal.person_id_for_id("001090099999"))
    assert not loaded.is_denied_person(None) and not loaded.is_denied_person("")
    assert loaded.is_revoked("cafe0002") and not loaded.is_revoked("cafe0003") and not loaded.is_revoked(None)
    # Two lists of the same persons with different salts share no entry.
    other = DenyList.build(3, ids, params=SMALL_ARGON2)
    assert not set(other.to_dict()["persons"]) & set(deny.to_dict()["persons"])
    assert "persons=5" in repr(deny) and "0010" not in repr(deny)


def test_denylist_replace_is_versioned():
    a, b = personal.person_id_for_id("001090000001"), personal.person_id_for_id("001090000002")
    deny = DenyList.build(1, [a], params=SMALL_ARGON2)
    assert deny.replace(DenyList.build(2, [b], params=SMALL_ARGON2))
    assert deny.is_denied_person(b) and not deny.is_denied_person(a) and deny.version == 2
    assert not deny.replace(DenyList.build(1, [a], params=SMALL_ARGON2))  # stale broadcast refused
    assert deny.is_denied_person(b) and not deny.is_denied_person(a) and deny.version == 2


def test_denylist_replace_under_concurrent_reads():
    creds = [f"cred-{i}" for i in range(200)]
    deny = DenyList.build(1, credential_ids=creds, params=SMALL_ARGON2)
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                # Every list below holds all of creds, so a torn read (new salt, old entries) would miss.
                if not deny.is_revoked(creds[7]):
                    errors.append("miss")
            except Exception as exc:  # pragma: no cover - the failure being tested for
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for v in range(2, 202):
        deny.replace(DenyList.build(v, credential_ids=creds, params=SMALL_ARGON2))
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and deny.version == 201


def _body(**changes):
    body = personal.make_denylist_body(1, [], ["c1"], SMALL_ARGON2)
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    "obj, match",
    [({"salt": "zz"}, "salt"), ({"salt": "00"}, "salt"), ({"version": -1}, "version"), ({"version": True}, "version"),
     ({"format": "chot-denylist-v1"}, "format"), ({"revoked": ["ABC"]}, "revoked"), ({"persons": "x"}, "persons"),
     ({"argon2": {"t": 1, "m_kib": 10**7, "p": 1}}, "m_kib"), ({"argon2": _DROP}, "missing"),
     ({"entries": []}, "unknown")],
)
def test_denylist_rejects_bad_files(tmp_path, obj, match):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_body(**obj)))
    with pytest.raises(CredentialError, match=match):
        DenyList.load(path)
    for bad in ([], "x", {"format": "chot-denylist-v1", "salt": "00", "entries": []}):
        with pytest.raises(CredentialError):
            DenyList.from_dict(bad)


# ---------------------------------------------------------------- wired from a terminal config


def test_checker_from_terminal_config(tmp_path, key, person):
    (tmp_path / "issuer.pub.pem").write_bytes(keys.public_pem(key))
    DenyList.build(1, [personal.person_id_for_id("001090000007")], params=SMALL_ARGON2).save(tmp_path / "deny.json")
    conf = tmp_path / "terminal.toml"
    conf.write_text(
        '[device]\nid = "t1"\ncheckpoint = "phuc-tan-1"\ndirection = "in"\n'
        f'[policy]\ntrusted_issuers = ["{tmp_path / "issuer.pub.pem"}"]\n'
        f'denylist = "{tmp_path / "deny.json"}"\nfail_on_travel = true\n'
    )
    cfg = load_terminal_config(conf)
    checker = Checker.from_config(cfg.policy)
    assert checker.check(decl(key, person), AT)[1].reason == "ok"
    assert checker.check(decl(key, person, travel=True), AT)[1].reason == "travel_declared"
    assert checker.check(decl(key, {**person, "id_number": "001090000007"}), AT)[1].reason == "denylisted"
    with pytest.raises(CredentialError, match="does not exist"):
        Checker.from_config({"trusted_issuers": [str(tmp_path / "nope.pem")]})


def test_reasons_are_the_wire_reasons():
    assert set(REASONS) == {r.value for r in Reason}


def test_docs_list_every_reason_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "reasons.md").read_text(encoding="utf-8")
    missing = [code for code in REASONS if f"`{code}`" not in doc]
    assert missing == []
