"""`chot issue`: keys, one declaration, a CSV batch; the PNG decodes back from its pixels."""

import csv
import os
import stat
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
import zxingcpp
from PIL import Image

from chot import personal
from chot.cli import main
from device.credentials import keys
from device.credentials.issue_cli import make_test_identities
from device.credentials.policy import Checker
from device.credentials.trust import TrustStore


def read_qr(path):
    """The texts zxing-cpp reads from the image's pixels (QR only)."""
    img = Image.open(path).convert("L")
    return [r.text for r in zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode)]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(params=["ed25519", "es256"])
def keydir(tmp_path, capsys, request):
    d = tmp_path / "keys"
    code, out, _ = run(capsys, "issue", "keygen", "--out", str(d), "--alg", request.param)
    assert code == 0
    return d


def test_keygen_files_and_modes(keydir, capsys):
    priv, pub = keydir / "issuer.key.pem", keydir / "issuer.pub.pem"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    k = keys.load_private_key(priv)
    assert keys.kid_of(keys.load_public_key(pub)) == keys.kid_of(k)
    code, _, err = run(capsys, "issue", "keygen", "--out", str(keydir))  # never overwrites
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "issue", "declaration", "--key", str(pub), "--out", str(keydir), "--fake")
    assert code == 1 and "private key" in err


def test_declaration_png_decodes_to_the_exact_text(keydir, tmp_path, capsys):
    out_dir = tmp_path / "cards"
    name, idn = "Trần Thị Hoa", "001185012345"
    code, out, err = run(
        capsys, "issue", "declaration", "--key", str(keydir / "issuer.key.pem"), "--out", str(out_dir),
        "--name", name, "--id", idn, "--dob", "1985-02-03",
        "--phone", "0987654321", "--purpose", "delivery", "--doses", "2", "--valid-hours", "12",
        "--issued-at", "2021-08-09T07:30:00+07:00",
    )
    assert code == 0, err
    files = out.split()
    assert len(files) == 2 and files[0].endswith(".png") and files[1].endswith(".svg")
    assert idn not in out + err and "Trần" not in out + err and idn not in files[0]
    texts = read_qr(files[0])
    assert len(texts) == 1 and texts[0].startswith("CHOT2:")
    assert "QR version 8 (error correction M)" in err  # issue 14: printed, and at most 8 for this one
    assert ET.parse(files[1]).getroot().tag.endswith("svg")

    checker = Checker(TrustStore.load([keydir / "issuer.pub.pem"]))
    at = datetime(2021, 8, 9, 3, 0, tzinfo=UTC)
    v, d = checker.check(texts[0], at)
    assert (d.decision, d.reason) == ("PASS", "ok")
    assert v.person_id == personal.person_id_for_id(idn)
    assert (v.person["name"], v.person["id_number"], v.person["phone"]) == (name, idn, "0987654321")
    assert v.person["purpose"] == "delivery" and "ward" not in v.person
    assert idn not in repr(v) and name not in repr(v)
    assert v.issued_at == datetime(2021, 8, 9, 0, 30, tzinfo=UTC)
    assert v.expires_at == datetime(2021, 8, 9, 12, 30, tzinfo=UTC)
    assert checker.check(texts[0], datetime(2021, 8, 9, 13, 0, tzinfo=UTC))[1].reason == "expired"


def test_symptomatic_card_from_the_command_line(keydir, tmp_path, capsys):
    code, out, err = run(
        capsys, "issue", "declaration", "--key", str(keydir / "issuer.key.pem"), "--out", str(tmp_path / "c"),
        "--fake", "--seed", "9", "--symptoms",
    )
    assert code == 0, err
    (text,) = read_qr(out.split()[0])
    _, d = Checker(TrustStore.load([keydir / "issuer.pub.pem"])).check(text)
    assert d.reason == "symptoms_declared"


def test_declaration_input_errors(keydir, tmp_path, capsys):
    key = str(keydir / "issuer.key.pem")
    code, _, err = run(capsys, "issue", "declaration", "--key", key, "--out", str(tmp_path), "--name", "A B")
    assert code == 1 and "--id" in err and "--dob" in err
    code, _, err = run(capsys, "issue", "declaration", "--key", key, "--out", str(tmp_path),
                       "--name", "A B", "--id", "12", "--dob", "1990-13-01")
    assert code == 1 and "id_number" in err and "dob" in err and "1990-13-01" in err
    code, _, err = run(capsys, "issue", "declaration", "--key", str(tmp_path / "none.pem"), "--out", str(tmp_path),
                       "--fake")
    assert code == 1 and "chot issue keygen" in err


def test_batch_reports_the_bad_row_and_issues_the_rest(keydir, tmp_path, capsys):
    people = make_test_identities(4, seed=3)
    path = tmp_path / "people.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_number", "name", "dob", "purpose", "symptoms", "doses", "valid_hours"])
        for i, p in enumerate(people):
            dob = "1990-02-30" if i == 2 else p["dob"]  # line 4 holds an impossible date
            w.writerow([p["id_number"], p["name"], dob, p["purpose"], "yes" if i == 1 else "no",
                        p["doses"], "48"])
    out_dir = tmp_path / "batch"
    code, out, err = run(capsys, "issue", "batch", "--key", str(keydir / "issuer.key.pem"), "--csv", str(path),
                         "--out", str(out_dir))
    assert code == 1
    assert "line 4" in err and "dob" in err and "1990-02-30" in err
    assert "issued 3, failed 1; QR versions" in err
    for p in people:
        assert p["id_number"] not in err + out and p["name"] not in err + out
    with open(out_dir / "index.csv", encoding="utf-8") as f:
        index = list(csv.DictReader(f))
    assert [r["line"] for r in index] == ["2", "3", "5"]
    checker = Checker(TrustStore.load([keydir / "issuer.pub.pem"]))
    reasons = []
    for r in index:
        (text,) = read_qr(out_dir / r["png"])
        v, d = checker.check(text)
        assert v.credential_id == r["declaration_id"] and r["png"] == f"decl-{v.credential_id}.png"
        assert v.expires_at - v.issued_at == __import__("datetime").timedelta(hours=48)
        reasons.append(d.reason)
    assert reasons == ["ok", "symptoms_declared", "ok"]


def test_batch_bad_header_and_fake(keydir, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("id_number,name,birthday\n001090012345,A B,1990-01-01\n", encoding="utf-8")
    key = str(keydir / "issuer.key.pem")
    code, _, err = run(capsys, "issue", "batch", "--key", key, "--csv", str(path), "--out", str(tmp_path / "o"))
    assert code == 1 and "line 1" in err and "birthday" in err and "dob" in err
    code, _, err = run(capsys, "issue", "batch", "--key", key, "--fake", "3", "--out", str(tmp_path / "f"))
    assert code == 0 and "issued 3, failed 0" in err
    assert len(list((tmp_path / "f").glob("*.png"))) == 3 and len(list((tmp_path / "f").glob("*.svg"))) == 3


def test_test_identities():
    a, b = make_test_identities(50, seed=4), make_test_identities(50, seed=4)
    assert a == b and a != make_test_identities(50, seed=5)
    ids = [p["id_number"] for p in a]
    assert len(set(ids)) == 50
    for p in a:
        assert len(p["id_number"]) == 12 and p["id_number"].isdigit() and p["id_number"].startswith("001")
        assert p["id_number"][4:6] == p["dob"][2:4]  # CCCD layout: birth year in digits 5-6
        assert "ward" not in p and len(p["name"].split()) == 3
