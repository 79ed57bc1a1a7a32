"""The collector's side of personal data, part by part: opening a sealed part, the person index, the
data cipher. Their outputs are stored, so they are pinned: a faster implementation must give the
same index keys and read what an older one wrote."""

import base64
import hashlib
import hmac
import json

import pytest
from nacl.public import Box, PrivateKey

from chot.personal import DataCipher, Opener, PersonIndex, Sealer, SealError

PERSON = {"name": "Nguyễn Thị Ánh", "phone": "0912345678", "dob": "1990-01-02", "doses": 2}


def _keys():
    sk = PrivateKey.generate()
    return sk, "k1"


def _sealed(sk, kid, plain: bytes):
    eph = PrivateKey.generate()
    ct = bytes(Box(eph, sk.public_key).encrypt(plain))
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return {"kid": kid, "epk": b64(bytes(eph.public_key)), "ct": b64(ct)}


def test_a_sealed_part_opens_to_what_was_sealed_and_only_for_its_event():
    sk, kid = _keys()
    sealer = Sealer(bytes(sk.public_key))
    opener = Opener({sealer.kid: sk})
    part = sealer.seal("u-1", PERSON, "id:001090012345", "cred-1")
    got = opener.open(part, "u-1")
    assert (got.person, got.person_id, got.credential_id) == (PERSON, "id:001090012345", "cred-1")
    with pytest.raises(SealError) as e:
        opener.open(part, "u-2")
    assert e.value.code == "misbound"


@pytest.mark.parametrize("plain", [b"not json", b"\xff\xfe{", b"[1, 2]", b'{"u": "u-1", "p": [], "i": null}',
                                   b'{"u": "u-1", "p": {}, "i": 5}', b'{"u": "u-1", "p": {}, "c": {"x": 1}}'])
def test_a_sealed_part_that_decrypts_to_something_else_is_damaged(plain):
    sk, kid = _keys()
    with pytest.raises(SealError) as e:
        Opener({kid: sk}).open(_sealed(sk, kid, plain), "u-1")
    assert e.value.code == "damaged"


def test_the_person_index_is_hmac_sha256_hex_as_stored_before():
    secret = bytes(range(32))
    index = PersonIndex(secret)
    for pid in ("id:001090012345", "nd:NGUYEN THI ANH|1990-01-02", "phone:84912345678"):
        assert index.key(pid) == hmac.new(secret, pid.encode(), hashlib.sha256).hexdigest()
    # pinned: every stored person_key and lookup key depends on it
    assert index.key("id:001090012345") == "5183d54cdce06213a9d409aa1d854b7cdf5f0bf84cc6b5b0fb38243161bbe8fc"
    assert index.key(None) is None and index.key("") is None


def test_the_data_cipher_reads_fields_written_by_the_standard_json_encoder_and_its_own():
    cipher = DataCipher(bytes(range(32)))
    text = cipher.encrypt(PERSON, "dev-1", 7)
    assert cipher.decrypt(text, "dev-1", 7) == PERSON
    # what an earlier collector stored: json.dumps, compact, UTF-8
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = b"\x01" * 12
    plain = json.dumps(PERSON, separators=(",", ":"), ensure_ascii=False).encode()
    raw = nonce + ChaCha20Poly1305(bytes(range(32))).encrypt(nonce, plain, b"dev-1|7")
    old = f"{cipher.kid}:{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"
    assert cipher.decrypt(old, "dev-1", 7) == PERSON
    with pytest.raises(SealError):
        cipher.decrypt(text, "dev-1", 8)  # moved to another event
