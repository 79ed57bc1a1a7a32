"""The EU DCC value sets: the codes a certificate's coded fields may hold.

The reference verifiers check each coded field of an EU DCC against the value sets the EU
publishes (github.com/ehn-dcc-development/eu-dcc-valuesets, and the gateway's rapid test
device list); a code outside them fails the `schema` step with reason `unknown_value`.

Fields checked, per entry kind (the value set named by its `valueSetId`):

    v  tg disease-agent-targeted   vp sct-vaccines-covid-19   mp vaccines-covid-19-names
       ma vaccines-covid-19-auth-holders                      co country-2-codes
    t  tg disease-agent-targeted   tt covid-19-lab-test-type  tr covid-19-lab-result
       ma covid-19-lab-test-manufacturer-and-name (rapid antigen tests only: tt LP217198-3;
          an empty ma counts as absent)                       co country-2-codes
    r  tg disease-agent-targeted   co country-2-codes

A value set folder holds the published JSON files (`{"valueSetId", "valueSetDate",
"valueSetValues": {code: {...}}}`), in any sub-folders: files of the same `valueSetId` are
merged (e.g. the 2021 rapid test device list and a newer one), other JSON files are ignored.
Codes no longer `active` still count: a certificate issued while they were is still genuine.
A value that names an entry of the set in other letters (its code or its `display` text, compared
without case, spaces or punctuation: "SinovacBiotech" for Sinovac-Biotech, "Sinovac Biotech") is
display text for a known entry, not an unknown code, and passes as free text does (`is_code`).
Each of the eight value sets must be there (`REQUIRED`), else the folder is broken.

Where they come from, as for the JSON schemas: `policy.dcc_valueset_dir` (`use_dir`, set at
start-up; `chot provision device --dcc-valuesets DIR` installs them in /etc/chot/dcc-valuesets),
else $CHOT_DCC_VALUESET_DIR, /etc/chot/dcc-valuesets, /usr/share/chot/dcc-valuesets or, in a
development checkout, ../shared/testdata/dcc/eu-dcc-valuesets. With none found the value check
is skipped (a warning, once). The collector's trust broadcast may carry newer value sets
(`from_documents`): they replace the installed sets of the same id (see device/update_apply.py).
"""

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from chot.errors import CredentialError

log = logging.getLogger(__name__)

DISEASE = "disease-agent-targeted"
PROPHYLAXIS = "sct-vaccines-covid-19"
VACCINE = "vaccines-covid-19-names"
VACCINE_MAH = "vaccines-covid-19-auth-holders"
TEST_TYPE = "covid-19-lab-test-type"
TEST_DEVICE = "covid-19-lab-test-manufacturer-and-name"
TEST_RESULT = "covid-19-lab-result"
COUNTRY = "country-2-codes"
REQUIRED = (DISEASE, PROPHYLAXIS, VACCINE, VACCINE_MAH, TEST_TYPE, TEST_DEVICE, TEST_RESULT, COUNTRY)

RAPID_ANTIGEN = "LP217198-3"  # the test type whose device (ma) comes from the device list

FIELDS = {
    "v": (("tg", DISEASE), ("vp", PROPHYLAXIS), ("mp", VACCINE), ("ma", VACCINE_MAH), ("co", COUNTRY)),
    "t": (("tg", DISEASE), ("tt", TEST_TYPE), ("ma", TEST_DEVICE), ("tr", TEST_RESULT), ("co", COUNTRY)),
    "r": (("tg", DISEASE), ("co", COUNTRY)),
}

MAX_FILE = 4 * 1024 * 1024  # bytes of one value set file (the device list is ~100 KB)
MAX_FILES = 200
MAX_CODE = 100
_SHOWN = re.compile(r"[A-Za-z0-9/._ -]{1,40}")


def plain(text):
    """`text` without case, spaces or punctuation: how a value is matched to an entry's names."""
    return re.sub(r"[\W_]+", "", text.casefold())


@dataclass(frozen=True)
class ValueSets:
    """{valueSetId: codes} and {valueSetId: the entries' codes and display texts, `plain`};
    `source` says where they were read (for messages)."""

    codes: dict = field(default_factory=dict)
    source: str = ""
    names: dict = field(default_factory=dict)

    def merged(self, newer):
        """These value sets with the ones of `newer` (a ValueSets or None) replacing those of the same id."""
        if not newer or not newer.codes:
            return self
        return ValueSets({**self.codes, **newer.codes}, f"{self.source} + {newer.source}".strip(" +"),
                         {**self.names, **newer.names})

    def missing(self):
        return [s for s in REQUIRED if s not in self.codes]

    def __bool__(self):
        return bool(self.codes)


def _document_codes(doc):
    """(valueSetId, codes, plain names) of one published value set document, or None when it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("valueSetId"), str):
        return None
    values = doc.get("valueSetValues")
    if not isinstance(values, dict):
        return None
    codes = frozenset(k for k in values if isinstance(k, str) and 0 < len(k) <= MAX_CODE)
    names = {plain(k) for k in codes}
    for k in codes:
        display = values[k].get("display") if isinstance(values[k], dict) else None
        if isinstance(display, str) and len(display) <= 4 * MAX_CODE:
            names.add(plain(display))
    names.discard("")
    return doc["valueSetId"], codes, frozenset(names)


def from_documents(docs, source):
    """ValueSets from parsed value set documents (a list); CredentialError when one is not a value set."""
    if not isinstance(docs, list):
        raise CredentialError(f"{source}: DCC value sets must be a list of value set documents")
    codes, names = {}, {}
    for i, doc in enumerate(docs):
        got = _document_codes(doc.get("json") if isinstance(doc, dict) and "json" in doc else doc)
        if got is None:
            raise CredentialError(f"{source}: DCC value set {i} is not a value set (needs valueSetId and "
                                  "valueSetValues, as eu-dcc-valuesets publishes them)")
        codes[got[0]] = codes.get(got[0], frozenset()) | got[1]
        names[got[0]] = names.get(got[0], frozenset()) | got[2]
    return ValueSets(codes, source, names)


def files(base):
    """The value set files under `base`: [(name relative to base, path)], sorted; [] when none.

    Raises CredentialError for a folder that cannot be read, too many or too large files, or a
    JSON file that does not parse (a broken copy).
    """
    base = Path(base)
    out = []
    try:
        found = sorted(p for p in base.rglob("*.json") if p.is_file())
    except OSError as exc:
        raise CredentialError(f"DCC value sets {base}: not readable ({exc.strerror or exc})") from None
    for p in found:
        if len(out) >= MAX_FILES:
            raise CredentialError(f"DCC value sets {base}: more than {MAX_FILES} JSON files; give only the "
                                  "eu-dcc-valuesets files")
        try:
            size = p.stat().st_size
            if size > MAX_FILE:
                raise CredentialError(f"DCC value sets {base}: {p.name} is larger than {MAX_FILE} bytes")
            doc = json.loads(p.read_text("utf-8"))
        except OSError as exc:
            raise CredentialError(f"DCC value sets {base}: {p.name} not readable ({exc.strerror})") from None
        except ValueError as exc:
            raise CredentialError(f"DCC value sets {base}: {p.relative_to(base)} is not valid JSON ({exc}); "
                                  "copy the eu-dcc-valuesets files again") from None
        if _document_codes(doc) is not None:
            out.append((p.relative_to(base).as_posix(), p))
    return out


def load_dir(base):
    """The ValueSets of folder `base`; CredentialError (what is wrong, what to do) when missing or broken."""
    base = Path(base)
    try:
        is_dir = base.is_dir()
    except OSError as exc:
        raise CredentialError(f"DCC value sets {base}: not readable ({exc.strerror})") from None
    if not is_dir:
        raise CredentialError(f"DCC value sets {base}: no such folder; install the eu-dcc-valuesets files there "
                              "(chot provision device --dcc-valuesets DIR)")
    docs = [json.loads(p.read_text("utf-8")) for _name, p in files(base)]
    sets = from_documents(docs, str(base))
    missing = sets.missing()
    if missing:
        raise CredentialError(f"DCC value sets {base}: missing {', '.join(missing)}; the folder must hold the "
                              "eu-dcc-valuesets files (country-2-codes.json, disease-agent-targeted.json, ...) "
                              "and a rapid test device list (test-manf.json)")
    return sets


def folder_problem(base):
    """A problem text when `base` is not a usable value set folder, else None (for check-config)."""
    try:
        load_dir(base)
    except CredentialError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- the process's value sets

_dir_override = None


def installed_dirs(env_var, folder, testdata):
    """Where installed DCC data may be, in order: $`env_var`, /etc/chot/`folder`, /usr/share/chot/`folder`,
    and in a development checkout ../shared/testdata/dcc/`testdata` (the schemas and the value sets)."""
    env = os.environ.get(env_var)
    if env:
        yield Path(env)
    yield Path("/etc/chot") / folder
    yield Path("/usr/share/chot") / folder
    yield Path(__file__).resolve().parents[3] / "shared" / "testdata" / "dcc" / testdata


def _candidates():
    if _dir_override is not None:
        yield Path(_dir_override)
        return
    yield from installed_dirs("CHOT_DCC_VALUESET_DIR", "dcc-valuesets", "eu-dcc-valuesets")


def use_dir(path):
    """Check the folder `path` (CredentialError when missing or broken), then use it for this process."""
    global _dir_override
    load_dir(path)
    if _dir_override != str(path):
        _dir_override = str(path)
        current.cache_clear()
        current()  # loaded now, at start-up: what was just checked
        log.info("DCC value sets from %s", path)


def set_dir(path):
    """Use the value sets under `path` (None: the search list), unchecked; for tests and tools."""
    global _dir_override
    _dir_override = None if path is None else str(path)
    current.cache_clear()


def valueset_dir():
    """The folder chosen with `use_dir`/`set_dir` (a string), or None when the search list is used."""
    return _dir_override


@functools.cache
def current():
    """The installed value sets (loaded once), or an empty ValueSets when none is found."""
    for base in _candidates():
        try:
            if not base.is_dir():
                continue
            sets = load_dir(base)
        except CredentialError as exc:
            log.warning("%s", exc)
            continue
        log.info("DCC value sets loaded from %s", base)
        return sets
    log.warning("no DCC value sets found: codes are not checked; set policy.dcc_valueset_dir (or "
                "CHOT_DCC_VALUESET_DIR) to the eu-dcc-valuesets files, or provision the terminal with "
                "--dcc-valuesets")
    return ValueSets()


# ---------------------------------------------------------------- the check


def _shown(value):
    return repr(value) if _SHOWN.fullmatch(value) else "(not a code)"


def is_code(value):
    """True for a value shaped like a code of a value set: no space, not empty ("EU/1/20/1528",
    "ORG-100030215", "1232", "LP217198-3", "NL"). Some 2021 issuers wrote display text in coded
    fields ("COVID-19 Vaccine Moderna", "a test") or left them empty; the official test vectors
    of those issuers expect such certificates to pass the schema step, so free text is left to the
    release's JSON schema, and only code-shaped values are checked against the value sets."""
    return bool(value) and not any(c.isspace() for c in value)


def check(dgc, sets):
    """None when every coded field of `dgc` (JSON form) is in `sets`, else a short problem text.

    A field that is absent or not a text is left to the schema; a value set not in `sets` is not checked.
    """
    if not sets or not isinstance(dgc, dict):
        return None
    for kind, fields in FIELDS.items():
        entries = dgc.get(kind)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            for name, set_id in fields:
                value = entry.get(name)
                if not isinstance(value, str) or not is_code(value):
                    continue  # not a code (absent, empty, free text): the release's JSON schema judges it
                if kind == "t" and name == "ma" and (entry.get("tt") != RAPID_ANTIGEN or value == ""):
                    continue  # the device list names rapid antigen tests only
                codes = sets.codes.get(set_id)
                if codes is not None and value not in codes:
                    if plain(value) in sets.names.get(set_id, ()):
                        continue  # display text naming a known entry ("SinovacBiotech"), as free text passes
                    return f"{kind}/{i}/{name}: {_shown(value)} is not in the EU value set {set_id}"
    return None
