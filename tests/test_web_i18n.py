"""The console's catalogues: every message has its Vietnamese translation, the catalogues match the
sources (nothing extracted is missing from the .po files), and times are shown in the configured zone."""

from datetime import datetime

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from collector.web.i18n import LANGUAGES, LOCALE_DIR, Lang, load_catalogues, pick_language


def _catalog(lang):
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=lang)


def test_every_message_is_in_both_catalogues_and_translated_to_vietnamese():
    src = LOCALE_DIR.parent
    method_map = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    extracted = {m[2] if isinstance(m[2], str) else m[2][0]
                 for m in extract_from_dir(str(src), method_map, options_map=options, keywords={"_": None, "N_": None})}
    vi, en = _catalog("vi"), _catalog("en")
    missing = sorted(m for m in extracted if m not in vi or m not in en)
    assert not missing, ("run pybabel extract/update (collector/web/README.md, Translations) for: "
                         f"{missing}")
    untranslated = sorted(m.id for m in vi if m.id and not m.string)
    assert not untranslated, f"write the Vietnamese of these in locale/vi/LC_MESSAGES/messages.po: {untranslated}"
    assert set(load_catalogues()) == set(LANGUAGES)


def test_language_choice():
    assert pick_language() == "vi"
    assert pick_language(accept="en-US,en;q=0.9") == "en"
    assert pick_language(accept="fr-FR,fr;q=0.9,en;q=0.5,vi;q=0.8") == "vi"
    assert pick_language(cookie="en", accept="vi") == "en"
    assert pick_language(query="vi", cookie="en") == "vi"
    assert pick_language(query="xx", cookie="yy", accept="de", default="en") == "en"


def test_times_in_the_configured_zone():
    t = load_catalogues()
    vi = Lang("vi", t["vi"], "Asia/Ho_Chi_Minh")
    assert "17:00:00" in vi.time(datetime(2021, 8, 15, 10, 0, 0))  # naive = UTC, shown at UTC+7
    assert "17:00:00" in vi.time("2021-08-15T10:00:00Z")
    en = Lang("en", t["en"], "UTC")
    assert "10:00:00" in en.time("2021-08-15T10:00:00Z") and "Aug" in en.time("2021-08-15T10:00:00Z")
    assert vi.time(None) == ""
    assert vi.gettext("Sign out") == "Đăng xuất" and en.gettext("Sign out") == "Sign out"
