"""The synthetic crowd's people: which QR texts they carry, for the demo and the tests.

`crowd_texts(issuer_key, seed)` yields QR texts the way a checkpoint sees them: mostly
valid signed declarations, and some expired, symptomatic, forged (signed by a key nobody
trusts), garbled (the text altered), damaged (the printed code torn or smudged beyond reading),
unsigned (a bare ID number, a tokhaiyte.vn link) and foreign codes.
The scanner renders them onto camera-like frames (device.scanner.synthetic); it never
knows what they mean. Every person is fictional.

`install(issuer_key)` plugs the crowd in as `scanner.source = "synthetic"` (the daemon's frame
source factory knows no simulation of its own); `crowd_source(scanner_cfg, issuer_key)` is the
frame source itself.
"""

import random
from datetime import UTC, datetime, timedelta

# (kind, weight): what people walking up to the terminal carry.
MIX = (
    ("valid", 70),
    ("symptoms", 5),
    ("expired", 5),
    ("forged", 5),
    ("plain_id", 5),
    ("link", 3),
    ("garbled", 4),
    ("damaged", 3),
    ("foreign", 3),
)


def person_texts(issuer_key, seed=1, now=None, forger_key=None):
    """Yield (kind, text) forever, deterministic for `seed` (given `now` and the keys)."""
    from device.credentials.issue_cli import issue_declaration, make_test_identities
    from device.credentials.keys import generate

    rng = random.Random(seed)
    forger_key = forger_key or generate("ed25519")
    kinds, weights = zip(*MIX, strict=True)
    batch = 0
    while True:
        people = make_test_identities(50, seed=seed * 1000 + batch)
        batch += 1
        for person in people:
            kind = rng.choices(kinds, weights)[0]
            at = now or datetime.now(UTC)
            fields = dict(person)
            issued = at - timedelta(minutes=rng.randint(1, 600))
            valid = timedelta(hours=24)
            key = issuer_key
            if kind == "symptoms":
                fields["symptoms"] = True
            elif kind == "expired":
                issued = at - timedelta(days=3)
            elif kind == "forged":
                key = forger_key
            if kind in ("valid", "symptoms", "expired", "forged", "garbled", "damaged"):
                text = issue_declaration(key, fields, issued_at=issued, valid_for=valid)
                if kind == "garbled":
                    text = _garble(text, rng)
            elif kind == "plain_id":
                text = fields["id_number"]
            elif kind == "link":
                text = f"https://tokhaiyte.vn/?code={rng.getrandbits(48):012x}"
            else:
                text = rng.choice(["WIFI:T:WPA;S:cafe-wifi;P:12345678;;", "https://shopee.vn/item/123",
                                   "BEGIN:VCARD\nFN:Shop\nEND:VCARD"])
            yield kind, text


def _garble(text, rng):
    """Change a few characters inside the base45 body: the QR decodes, the credential doesn't."""
    head, _, body = text.partition(":")
    chars = list(body)
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    for _ in range(3):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice(alphabet)
    return head + ":" + "".join(chars)


def crowd_texts(issuer_key=None, seed=1, now=None):
    """What the synthetic crowd shows: QR texts signed by `issuer_key` (a private key, or None: a new
    one nobody trusts), and a `device.scanner.synthetic.Person` with `garble=True` for a damaged code."""
    from device.credentials.keys import generate
    from device.scanner.synthetic import Person

    if issuer_key is None:
        issuer_key = generate("ed25519")
    return (
        Person(text, garble=True) if kind == "damaged" else text
        for kind, text in person_texts(issuer_key, seed=seed, now=now)
    )


def crowd_source(scanner_cfg, issuer_key=None, now=None):
    """The synthetic crowd as a frame source for the [scanner] section (its size and `synthetic_seed`)."""
    from device.scanner.frames import cfg_get
    from device.scanner.synthetic import SyntheticCrowd

    seed = cfg_get(scanner_cfg, "synthetic_seed")
    return SyntheticCrowd(crowd_texts(issuer_key, seed=seed, now=now), seed=seed,
                          width=cfg_get(scanner_cfg, "width"), height=cfg_get(scanner_cfg, "height"))


def install(issuer_key=None, now=None):
    """Plug the synthetic crowd in as `scanner.source = "synthetic"`, signing with `issuer_key`
    (a private key or a key file path)."""
    from device.credentials.keys import load_private_key
    from device.scanner.frames import register_source

    if isinstance(issuer_key, str) or hasattr(issuer_key, "__fspath__"):
        issuer_key = load_private_key(issuer_key)  # a CredentialError saying what is wrong with the file
    register_source("synthetic", lambda scanner_cfg: crowd_source(scanner_cfg, issuer_key, now=now))
