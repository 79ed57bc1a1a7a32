"""`chot scan`: images and texts through the decoder, verification and policy, as JSON lines."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from device.credentials import keys
from device.credentials.issue_cli import issue_declaration, make_test_identities, render
from device.scan_cli import SCAN_KEYS


def chot(*args):
    return subprocess.run([sys.executable, "-m", "chot.cli", *args], capture_output=True, text=True, timeout=60)


def lines(res):
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


@pytest.fixture
def card(tmp_path):
    key = keys.generate("es256")
    _, pub = keys.save_keypair(key, tmp_path / "issuer")
    person = make_test_identities(1, seed=42)[0]
    issued = datetime(2021, 8, 20, 8, 0, tzinfo=UTC)
    text = issue_declaration(key, person, issued_at=issued, valid_for=timedelta(hours=24))
    png, svg = render(text, tmp_path / "cards", "card")
    return {"text": text, "png": png, "pub": pub, "person": person, "issued": issued}


def test_image_passes_at_its_time_and_keys_are_stable(card):
    res = chot("scan", str(card["png"]), "--trust", str(card["pub"]), "--at", "2021-08-20T17:00:00+07:00")
    assert res.returncode == 0, res.stderr
    (out,) = lines(res)
    assert tuple(out) == SCAN_KEYS
    assert out["source"] == str(card["png"]) and out["text"] == card["text"]
    assert (out["format"], out["decision"], out["reason"]) == ("native", "PASS", "ok")
    assert out["steps"] == {"decode": True, "signature": True, "issuer": True, "time": True}
    assert (out["kind"], out["person"]) == ("declaration", {"present": True, "verified": True})
    # nothing about the person beyond present/verified: no ID number, name, phone, birth date or initials
    for value in (card["person"]["id_number"], card["person"]["name"], card["person"]["phone"],
                  card["person"]["dob"], card["person"]["dob"][:4]):
        assert value not in res.stdout.replace(card["text"], "")


def test_expired_untrusted_and_no_code(card, tmp_path):
    blank = tmp_path / "blank.jpg"
    Image.fromarray(np.full((240, 320), 128, np.uint8)).save(blank)
    res = chot("scan", str(card["png"]), str(blank), "--trust", str(card["pub"]), "--at", "2021-08-23T10:00:00Z")
    assert res.returncode == 0, res.stderr
    expired, none = lines(res)
    assert (expired["decision"], expired["reason"], expired["steps"]["time"]) == ("FAIL", "expired", False)
    assert none == {"source": str(blank), "text": None, "format": "unknown", "steps": {"decode": False},
                    "decision": "FAIL", "reason": "no_code", "kind": None,
                    "person": {"present": False, "verified": False}, "detail": None}
    untrusted = lines(chot("scan", str(card["png"]), "--at", "2021-08-20T10:00:00Z"))[0]
    assert (untrusted["decision"], untrusted["reason"]) == ("FAIL", "unknown_issuer")
    assert untrusted["steps"]["issuer"] is False
    assert untrusted["person"] == {"present": True, "verified": False}  # a claim nobody verified
    assert expired["person"] == {"present": True, "verified": True}  # authentic, though expired


def test_a_large_photo_whose_code_is_small_is_read_at_its_own_size(card, tmp_path):
    """A technician's phone photo (3200 x 2400) with the card small in it: scaled down to the camera's
    640 x 480 the code's modules are under 2 pixels and nothing reads; `chot scan` then decodes the
    photo itself (up to 2560 pixels a side) and finds it."""
    from device.scanner.decode import ZxingDecoder
    from device.scanner.frames import fit_within, load_gray

    code = load_gray(card["png"])
    small = np.asarray(Image.fromarray(code).resize((code.shape[1] * 2 // 5, code.shape[0] * 2 // 5),
                                                    Image.NEAREST))
    photo = np.full((2400, 3200), 235, np.uint8)
    photo[1000:1000 + small.shape[0], 1400:1400 + small.shape[1]] = small
    path = tmp_path / "phone.png"
    Image.fromarray(photo).save(path)
    assert card["text"] not in ZxingDecoder(still=True).decode(fit_within(photo, 640, 480))  # the camera's size
    res = chot("scan", str(path), "--trust", str(card["pub"]), "--at", "2021-08-20T17:00:00+07:00")
    assert res.returncode == 0, res.stderr
    (out,) = lines(res)
    assert (out["text"], out["decision"], out["reason"]) == (card["text"], "PASS", "ok")


def test_texts_plain_and_garbled():
    res = chot("scan", "--text", "001090012345", "--text", "CHOT1:NOT-BASE45!!", "--text", "https://tokhaiyte.vn/x")
    assert res.returncode == 0, res.stderr
    plain, garbled, link = lines(res)
    assert (plain["source"], plain["format"], plain["reason"]) == ("-", "plain", "unsigned")
    assert (plain["kind"], plain["person"]) == ("id_text", {"present": True, "verified": False})
    assert "001090012345" not in json.dumps({k: v for k, v in plain.items() if k != "text"})
    assert tuple(plain) == SCAN_KEYS and tuple(garbled) == SCAN_KEYS
    assert link["person"] == {"present": False, "verified": False}
    assert (garbled["format"], garbled["decision"], garbled["reason"]) == ("native", "FAIL", "unreadable")
    assert garbled["steps"]["decode"] is False and garbled["steps"]["signature"] is None
    assert (link["format"], link["reason"]) == ("plain", "unsigned")


def test_usage_errors(tmp_path):
    res = chot("scan")
    assert res.returncode == 2 and "give image FILES" in res.stderr
    res = chot("scan", "--text", "x", "--at", "yesterday")
    assert res.returncode == 2 and "not an ISO 8601 time" in res.stderr
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    res = chot("scan", str(bad))
    assert res.returncode == 2 and "not an image" in res.stderr
    res = chot("scan", "--text", "x", "--trust", str(tmp_path / "missing.pem"))
    assert res.returncode != 0 and "does not exist" in res.stderr
