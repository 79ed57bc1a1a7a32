"""Updates from the collector change the terminal's decisions: trusted issuers, policy, deny list, sealing key."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from chot.config import validate
from chot.errors import ChotError
from chot.personal import generate_seal_keys, make_denylist_body, person_id_for_id
from collector.signing import trust_body
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker
from device.update_apply import apply_update, config_seal_key

FAST_ARGON2 = {"t": 1, "m_kib": 8192, "p": 1}


@pytest.fixture
def setup(tmp_path):
    key = keys.generate("ed25519")
    _, pub = keys.save_keypair(key, tmp_path / "new-issuer")
    cfg = validate({"device": {"id": "t", "checkpoint": "c", "direction": "in"}}, SCHEMA)
    person = make_test_identities(1, seed=9)[0]
    person["travel"] = True
    text = issue_declaration(key, person, issued_at=datetime.now(UTC) - timedelta(minutes=2))
    return cfg, pub, person, text


def test_trust_then_policy_then_denylist(setup):
    cfg, pub, person, text = setup
    checker = Checker.from_config(cfg.policy)
    assert checker.check(text)[1].reason == "unknown_issuer"
    checker = apply_update(cfg, checker, "trust", trust_body([pub]), 1)
    assert checker.check(text)[1].reason == "ok"
    checker = apply_update(cfg, checker, "config", {"policy": {"fail_on_travel": True}}, 2)
    assert checker.check(text)[1].reason == "travel_declared"
    checker = apply_update(cfg, checker, "config", {"policy": {"fail_on_travel": False}}, 3)
    body = make_denylist_body(4, person_ids=[person_id_for_id(person["id_number"])], params=FAST_ARGON2)
    checker = apply_update(cfg, checker, "denylist", body, 4)
    assert checker.check(text)[1].reason == "denylisted"
    # the list holds no ID number, not even hashed without its salt and Argon2id
    assert person["id_number"] not in json.dumps(body)
    assert hashlib.sha256(person["id_number"].encode()).hexdigest() not in json.dumps(body)


def test_a_config_update_carries_a_new_sealing_key(setup, tmp_path):
    cfg, pub, person, text = setup
    kid = generate_seal_keys(tmp_path / "keys")
    seal_text = (tmp_path / "keys" / "seal.pub").read_text()
    body = {"privacy": {"seal_public_key": seal_text}}
    assert config_seal_key(body, 5)[0] == kid
    assert config_seal_key({"policy": {}}, 5) is None
    checker = Checker.from_config(cfg.policy, extra_trust=[pub])
    assert apply_update(cfg, checker, "config", body, 5).check(text)[1].reason == "ok"


@pytest.mark.parametrize(
    "kind,body",
    [
        ("trust", {"format": "chot-trust-v1", "files": [{"name": "x"}]}),
        ("trust", {"items": ["-----BEGIN PUBLIC KEY-----"]}),
        ("config", {"policy": {"max_age_h": -3}}),
        ("config", {"policy": {"no_such_key": 1}}),
        ("denylist", {"salt": "zz"}),
        ("denylist", {"format": "chot-denylist-v1", "version": 2, "salt": "00" * 16, "entries": []}),
        ("config", {"privacy": {"seal_public_key": "chot-seal-public-v1 0011223344556677 AAAA"}}),
        ("config", {"privacy": {"seal_public_key": 3}}),
        ("config", {"privacy": {"seal_rotate_s": 1}}),
        ("config", {"privacy": "x"}),
        ("config", {"policy": {"fail_on_travel": True}, "pins": {"relay": "GPIO2"}}),
        ("nonsense", {}),
    ],
)
def test_bad_update_bodies_raise_a_clear_error_and_change_nothing(setup, kind, body):
    cfg, pub, person, text = setup
    checker = Checker.from_config(cfg.policy, extra_trust=[pub])
    with pytest.raises(ChotError):
        apply_update(cfg, checker, kind, body, 7)
    assert checker.check(text)[1].reason == "ok"
