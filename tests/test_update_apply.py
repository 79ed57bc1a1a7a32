"""Updates from the collector change the terminal's decisions: trusted issuers, policy, deny list."""

from datetime import UTC, datetime, timedelta

import pytest

from chot.config import validate
from chot.errors import ChotError
from collector.signing import denylist_body, trust_body
from device.config import SCHEMA
from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities
from device.credentials.policy import Checker
from device.update_apply import apply_update


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
    from device.credentials.subject import subject_key_for_id

    body = denylist_body([subject_key_for_id(person["id_number"])], version=4)
    checker = apply_update(cfg, checker, "denylist", body, 4)
    assert checker.check(text)[1].reason == "denylisted"


@pytest.mark.parametrize(
    "kind,body",
    [
        ("trust", {"format": "chot-trust-v1", "files": [{"name": "x"}]}),
        ("trust", {"items": ["-----BEGIN PUBLIC KEY-----"]}),
        ("config", {"policy": {"max_age_h": -3}}),
        ("config", {"policy": {"no_such_key": 1}}),
        ("denylist", {"salt": "zz"}),
        ("nonsense", {}),
    ],
)
def test_bad_update_bodies_raise_a_clear_error_and_change_nothing(setup, kind, body):
    cfg, pub, person, text = setup
    checker = Checker.from_config(cfg.policy, extra_trust=[pub])
    with pytest.raises(ChotError):
        apply_update(cfg, checker, kind, body, 7)
    assert checker.check(text)[1].reason == "ok"
