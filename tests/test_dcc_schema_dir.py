"""policy.dcc_schema_dir: a Checker made from the terminal config validates EU DCCs against the
ehn-dcc-schema releases in that folder (a copy in tmp_path here), and refuses a folder without any."""

import base64
import json
import shutil

import pytest
from conftest import need
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chot.errors import CredentialError
from device.credentials import dcc
from device.credentials.policy import Checker

CASE = "AT/2DCode/raw/1.json"  # a valid vaccination certificate: EXPECTEDSCHEMAVALIDATION true


@pytest.fixture(autouse=True)
def restore_schema_dir():
    """The schema folder is process-wide: put back whatever was chosen before this test."""
    before = dcc.schema_dir()
    yield
    dcc.set_schema_dir(before)


@pytest.fixture
def case(testdata, tmp_path):
    """(QR text, validation clock, config [policy] trusting the case's signing certificate)."""
    path = testdata / "dcc" / "dgc-testdata" / CASE
    need(path.is_file(), f"DCC test vector {path}")
    c = json.loads(path.read_text("utf-8"))
    assert c["EXPECTEDRESULTS"]["EXPECTEDSCHEMAVALIDATION"] is True
    cert = x509.load_der_x509_certificate(base64.b64decode(c["TESTCTX"]["CERTIFICATE"]))
    pem = tmp_path / "dsc.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return c["PREFIX"], dcc.parse_time(c["TESTCTX"]["VALIDATIONCLOCK"]), {"trusted_issuers": [str(pem)]}


def test_checker_validates_against_the_configured_releases(case, testdata, tmp_path):
    text, at, policy = case
    src = testdata / "dcc" / "ehn-dcc-schema"
    need(src.is_dir(), f"ehn-dcc-schema releases at {src}")
    copy = tmp_path / "dcc-schema"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("LICENSE", "*.txt"))
    checker = Checker.from_config({**policy, "dcc_schema_dir": str(copy)})
    assert dcc.schema_dir() == str(copy)
    v, _ = checker.check(text, at)
    assert v.steps["signature"] is True and v.steps["schema"] is True, v.detail
    assert len(dcc._schemas()) == len(dcc.schema_releases(copy)) >= 9

    # the folder really is the one used: a release that refuses everything makes the step fail
    strict = tmp_path / "strict"
    (strict / "1.3.3").mkdir(parents=True)
    (strict / "1.3.3" / "DCC.combined-schema.json").write_text(json.dumps({"required": ["not-in-any-dcc"]}))
    v, _ = Checker.from_config({**policy, "dcc_schema_dir": str(strict)}).check(text, at)
    assert v.steps["signature"] is True and v.steps["schema"] is False
    assert not v.verified


def test_a_folder_without_releases_is_refused(case, tmp_path):
    _, _, policy = case
    before = dcc.schema_dir()
    with pytest.raises(CredentialError, match="no such folder"):
        Checker.from_config({**policy, "dcc_schema_dir": str(tmp_path / "missing")})
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    (tmp_path / "empty" / "docs" / "x.json").write_text("{}")
    with pytest.raises(CredentialError, match="no schema release"):
        Checker.from_config({**policy, "dcc_schema_dir": str(tmp_path / "empty")})
    assert dcc.schema_dir() == before  # nothing changed by a refused folder
