"""`chot issue`: make issuer keys and signed declarations (PNG and SVG, QR version printed).

The tool for tests, the demo and technicians' test cards:

    chot issue keygen --out DIR [--alg ed25519|es256]
    chot issue declaration --key PRIV --out DIR --name .. --id .. --dob .. [...]
    chot issue batch --key PRIV --csv FILE --out DIR     (or --fake N --seed S)

Python API: `issue_declaration(private_key, fields, issued_at, valid_for) -> str` (the QR
text), `render(text, out_dir, stem) -> (png, svg)`, `make_test_identities(n, seed)`.
Output files are named after the declaration id, never after the person; nothing printed
holds an ID number or a name.
"""

import csv
import random
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from chot.errors import CredentialError
from device.credentials import keys as keymod
from device.credentials import native

CSV_COLUMNS = (
    "id_number", "name", "dob", "phone", "purpose", "symptoms", "contact", "travel",
    "doses", "valid_hours", "issued_at", "declaration_id",
)
CSV_REQUIRED = ("id_number", "name", "dob")
QR_ERROR = "m"
QR_SCALE = 8
QR_BORDER = 4  # modules of quiet zone, as ISO/IEC 18004 asks


def issue_declaration(private_key, fields: dict, issued_at=None, valid_for=timedelta(hours=24)) -> str:
    """Sign a declaration; return its QR text "CHOT2:...". `fields`: see native.normalise_fields."""
    return native.issue(private_key, fields, issued_at, valid_for)


def qr_code(text):
    import segno

    return segno.make(text, error=QR_ERROR, boost_error=False, micro=False)


def render(text, out_dir, stem, scale=QR_SCALE, border=QR_BORDER):
    """Write `<stem>.png` and `<stem>.svg` of the QR code into `out_dir`; return both paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CredentialError(f"cannot create directory {out}: {exc.strerror}; choose a writable --out") from exc
    qr = qr_code(text)
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    qr.save(str(png), kind="png", scale=scale, border=border)
    qr.save(str(svg), kind="svg", scale=scale, border=border)
    return png, svg


# ---------------------------------------------------------------- fake people for tests and the demo

_SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ",
             "Ngô", "Dương", "Lý"]
_MIDDLE_M = ["Văn", "Hữu", "Đức", "Công", "Quang", "Minh", "Thành", "Xuân"]
_MIDDLE_F = ["Thị", "Ngọc", "Thu", "Thanh", "Minh", "Phương", "Kim", "Hồng"]
_GIVEN_M = ["An", "Bình", "Cường", "Dũng", "Hải", "Hùng", "Khoa", "Long", "Nam", "Phong", "Quân", "Sơn", "Tuấn",
            "Việt"]
_GIVEN_F = ["Anh", "Chi", "Dung", "Hà", "Hạnh", "Hoa", "Hương", "Lan", "Linh", "Mai", "Ngân", "Nhung", "Thảo",
            "Trang", "Yến"]
_PURPOSES = ["resident"] * 6 + ["visitor"] * 2 + ["delivery", "shopping"]


def make_test_identities(n, seed=1):
    """`n` fake people of Hanoi (deterministic for a seed): dicts of fields for `issue_declaration`.

    ID numbers follow the CCCD layout: province 001 (Hanoi), a sex/century digit, the
    two-digit birth year, six random digits; all unique within one call.
    """
    rng = random.Random(seed)
    people, seen = [], set()
    while len(people) < n:
        female = rng.random() < 0.5
        year = rng.randint(1945, 2005)
        dob = date(year, 1, 1) + timedelta(days=rng.randrange(365))
        century = 0 if year < 2000 else 2
        idn = f"001{century + int(female)}{year % 100:02d}{rng.randrange(10**6):06d}"
        if idn in seen:
            continue
        seen.add(idn)
        middle, given = (_MIDDLE_F, _GIVEN_F) if female else (_MIDDLE_M, _GIVEN_M)
        doses = rng.choice([0, 1, 2, 2, 2, 3])
        people.append({
            "id_number": idn,
            "name": f"{rng.choice(_SURNAMES)} {rng.choice(middle)} {rng.choice(given)}",
            "dob": dob.isoformat(),
            "phone": "09" + f"{rng.randrange(10**8):08d}",
            "purpose": rng.choice(_PURPOSES),
            "symptoms": False,
            "contact": False,
            "travel": False,
            "doses": doses,
        })
    return people


# Wider pools for the size measure of `realistic_people`: the common family names (about 90 % of
# the population), middle names, and given names with their diacritics, of one and two syllables.
_FAMILY_ALL = _SURNAMES + ["Trịnh", "Đinh", "Lâm", "Mai", "Tô", "Trương", "Hà", "Cao", "Lương", "Đoàn", "Quách",
                           "Tạ", "Thái", "Châu", "Kiều", "Vương", "Triệu", "Lưu", "Nghiêm", "Khổng"]
_MIDDLE_ALL = _MIDDLE_M + _MIDDLE_F + ["Thị Ngọc", "Thị Thanh", "Văn Hữu", "Đình", "Bảo", "Khánh", "Hoàng", "Diệu",
                                       "Mỹ", "Thùy", "Tường", "Nguyễn Thị", "Trọng", "Tuấn", "Thế", "Quốc"]
_GIVEN_ALL = _GIVEN_M + _GIVEN_F + ["Nguyệt", "Hưởng", "Thưởng", "Khuyến", "Phượng", "Nghĩa", "Trường", "Thuận",
                                    "Huyền", "Quyết", "Chiến", "Thắng", "Luyến", "Ngọc Ánh", "Thanh Hương",
                                    "Minh Tuấn", "Quỳnh", "Duyên", "Khương", "Xuyến", "Hoàng Yến", "Tường Vy"]
_MOBILE = ["032", "033", "034", "035", "036", "037", "038", "039", "056", "058", "070", "076", "077", "078", "079",
           "081", "082", "083", "084", "085", "086", "088", "089", "090", "091", "093", "094", "096", "097", "098"]


def realistic_people(n, seed=1):
    """`n` made-up declarations of the whole country, for measuring the QR size (tests, docs): a
    Vietnamese name of 3 or 4 syllables with its diacritics (sometimes 5), a 12-digit CCCD of any
    province, a 10-digit mobile number of any carrier, any health answers, 0 to 4 doses."""
    rng = random.Random(seed)
    people = []
    for _ in range(n):
        female = rng.random() < 0.5
        year = rng.randint(1930, 2010)
        dob = date(year, 1, 1) + timedelta(days=rng.randrange(365))
        century = 0 if year < 2000 else 2
        idn = f"{rng.randint(1, 96):03d}{century + int(female)}{year % 100:02d}{rng.randrange(10**6):06d}"
        name = " ".join([rng.choice(_FAMILY_ALL), rng.choice(_MIDDLE_ALL), rng.choice(_GIVEN_ALL)])
        doses = rng.choice([0, 1, 2, 2, 3, 3, 4])
        people.append({
            "id_number": idn, "name": name, "dob": dob.isoformat() if rng.random() < 0.97 else str(year),
            "phone": rng.choice(_MOBILE) + f"{rng.randrange(10**7):07d}", "purpose": rng.choice(_PURPOSES),
            "symptoms": rng.random() < 0.1, "contact": rng.random() < 0.1, "travel": rng.random() < 0.1,
            "doses": doses,
        })
    return people


# ---------------------------------------------------------------- command line


def register(sub):
    p = sub.add_parser(
        "issue",
        help="make issuer keys and signed declaration QR codes",
        description="Make issuer key pairs and signed native declarations (CHOT2:), written as PNG and SVG. "
        "See docs/native-declaration.md.",
    )
    p.set_defaults(group_parser=p)
    isub = p.add_subparsers(dest="issue_command", metavar="ACTION")

    k = isub.add_parser("keygen", help="make an issuer key pair (private key 0600, public key 0644)")
    k.add_argument("--out", required=True, help="directory for issuer.key.pem and issuer.pub.pem")
    k.add_argument("--alg", choices=keymod.ALGS, default="ed25519", help="signature algorithm (default ed25519)")
    k.add_argument("--name", default="issuer", help="file stem (default 'issuer')")
    k.set_defaults(func=_keygen)

    d = isub.add_parser("declaration", help="sign one declaration and write it as PNG and SVG")
    _common(d)
    d.add_argument("--name", help="full name, e.g. 'Nguyễn Văn An'")
    d.add_argument("--id", dest="id_number", help="ID number (CCCD 12 digits, CMND 9 digits, or passport)")
    d.add_argument("--phone", default="")
    d.add_argument("--dob", help="date of birth YYYY-MM-DD (or YYYY)")
    d.add_argument("--purpose", default="resident", choices=sorted(native.PURPOSE_CODES))
    d.add_argument("--symptoms", action="store_true", help="declares symptoms")
    d.add_argument("--contact", action="store_true", help="declares contact with a case")
    d.add_argument("--travel", action="store_true", help="declares travel from an outbreak area")
    d.add_argument("--doses", type=int, default=0, help="vaccine doses received")
    d.add_argument("--valid-hours", type=float, default=24.0, help="validity from issue (default 24)")
    d.add_argument("--issued-at", default=None, help="issue instant, ISO 8601 (default now)")
    d.add_argument("--fake", action="store_true", help="a made-up person of Hanoi (test cards)")
    d.add_argument("--seed", type=int, default=1, help="seed of --fake")
    d.set_defaults(func=_declaration)

    b = isub.add_parser(
        "batch",
        help="sign one declaration per CSV row",
        description="One declaration per CSV row (UTF-8, header row). Columns: "
        + ", ".join(CSV_COLUMNS) + f"; required: {', '.join(CSV_REQUIRED)}. Booleans: yes/no, true/false, 1/0. "
        "Writes decl-<id>.png/.svg and index.csv (line, declaration id, files, QR version; no personal data). "
        "Rows with errors are reported with their line number and skipped; the exit status is then 1.",
    )
    _common(b)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV file of people")
    src.add_argument("--fake", type=int, metavar="N", help="N made-up people of Hanoi instead of a CSV")
    b.add_argument("--seed", type=int, default=1, help="seed of --fake")
    b.add_argument("--valid-hours", type=float, default=24.0, help="validity when the row has no valid_hours")
    b.add_argument("--issued-at", default=None, help="issue instant when the row has none (default now)")
    b.set_defaults(func=_batch)


def _common(p):
    p.add_argument("--key", required=True, help="issuer private key (PEM) made by `chot issue keygen`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--issuer-name", default="", help="issuer's short name put in the declaration (iss)")


def _parse_time(text, what="--issued-at"):
    if text in (None, ""):
        return None
    try:
        t = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise CredentialError(f"{what}: found {text!r}; allowed: ISO 8601, e.g. 2021-08-09T07:30:00+07:00") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _hours(value, what="--valid-hours"):
    try:
        h = float(value)
        if not 0 < h <= 24 * 366:
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise CredentialError(f"{what}: found {value!r}; allowed: a number of hours from 0 to 8784") from exc
    return timedelta(hours=h)


def _keygen(args):
    key = keymod.generate(args.alg)
    priv, pub = keymod.save_keypair(key, args.out, args.name)
    print(f"private key: {priv} (keep it secret; mode 0600)")
    print(f"public key:  {pub} (give it to terminals: policy.trusted_issuers or --trust)")
    print(f"key id:      {keymod.kid_of(key).hex()} ({args.alg}; declarations carry its first "
          f"{native.KID_LEN} bytes, {native.kid_of(key).hex()})")
    return 0


def qr_version(text):
    """The QR version (1-40) of `text` at error correction M, as `render` draws it."""
    return qr_code(text).version


def _issue_one(key, fields, issued_at, valid_for, out_dir):
    text = issue_declaration(key, fields, issued_at, valid_for)
    did = native.decode(text).fields["declaration_id"]
    png, svg = render(text, out_dir, f"decl-{did}")
    return did, png, svg, qr_version(text)


def _declaration(args):
    key = keymod.load_private_key(args.key)
    if args.fake:
        fields = make_test_identities(1, args.seed)[0]
        fields.update(symptoms=args.symptoms, contact=args.contact, travel=args.travel)
    else:
        missing = [o for o, v in (("--name", args.name), ("--id", args.id_number), ("--dob", args.dob)) if not v]
        if missing:
            raise CredentialError(f"missing {', '.join(missing)}: give them, or --fake for a made-up person")
        fields = {
            "id_number": args.id_number, "name": args.name, "dob": args.dob, "phone": args.phone,
            "purpose": args.purpose, "symptoms": args.symptoms, "contact": args.contact, "travel": args.travel,
            "doses": args.doses,
        }
    fields["issuer_name"] = args.issuer_name
    did, png, svg, version = _issue_one(key, fields, _parse_time(args.issued_at), _hours(args.valid_hours), args.out)
    print(png)
    print(svg)
    print(f"chot issue: declaration {did}: QR version {version} (error correction M)", file=sys.stderr)
    return 0


def _rows(args):
    """(line number, row dict) pairs; CredentialError for a file-level problem."""
    if args.fake is not None:
        yield from enumerate(make_test_identities(args.fake, args.seed), start=2)
        return
    path = Path(args.csv)
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CredentialError(f"cannot read CSV {path}: {exc.strerror}") from exc
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise CredentialError(f"{path}: empty; the first line must name the columns: {', '.join(CSV_COLUMNS)}")
        unknown = [h for h in header if h not in CSV_COLUMNS]
        missing = [c for c in CSV_REQUIRED if c not in header]
        if unknown or missing:
            raise CredentialError(
                f"{path} line 1: "
                + (f"unknown column(s) {', '.join(unknown)}; " if unknown else "")
                + (f"missing column(s) {', '.join(missing)}; " if missing else "")
                + f"allowed: {', '.join(CSV_COLUMNS)}"
            )
        reader.fieldnames = header
        try:
            for row in reader:
                if None in row:
                    yield reader.line_num, CredentialError("more values than columns")
                    continue
                if not any((v or "").strip() for v in row.values()):
                    continue  # blank line
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CredentialError(f"{path} line {reader.line_num}: not a readable CSV ({exc})") from exc


def _batch(args):
    key = keymod.load_private_key(args.key)
    default_valid = _hours(args.valid_hours)
    default_at = _parse_time(args.issued_at)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = args.csv or f"--fake {args.fake}"
    ok = failed = 0
    index, versions = [], []
    for line, row in _rows(args):
        try:
            if isinstance(row, Exception):
                raise row
            row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
            hours = row.pop("valid_hours", None)
            valid = _hours(hours, "valid_hours") if hours else default_valid
            at = _parse_time(row.pop("issued_at", ""), "issued_at") or default_at
            row = {k: v for k, v in row.items() if v not in ("", None)}
            row["issuer_name"] = args.issuer_name
            did, png, svg, version = _issue_one(key, row, at, valid, out)
        except CredentialError as exc:
            failed += 1
            print(f"chot issue batch: {src} line {line}: {exc}", file=sys.stderr)
            continue
        ok += 1
        versions.append(version)
        index.append((line, did, png.name, svg.name, version))
        if ok % 50 == 0:
            print(f"chot issue batch: {ok} issued", file=sys.stderr)
    with open(out / "index.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["line", "declaration_id", "png", "svg", "qr_version"])
        w.writerows(index)
    sizes = f"; QR versions {min(versions)} to {max(versions)} (error correction M)" if versions else ""
    print(f"chot issue batch: issued {ok}, failed {failed}{sizes}; files in {out} (index.csv)", file=sys.stderr)
    return 1 if failed else 0
