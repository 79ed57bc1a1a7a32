"""Languages of the console: gettext catalogues (.po in collector/web/locale) read with Babel at start.

Vietnamese is the first language (the default), English the second. A request's language is,
in order: `?lang=` on the URL, the `lang` cookie (set by /lang), the browser's Accept-Language,
then `http.language`. No build step: the .po files are compiled in memory when the app starts.

Times are shown in `http.timezone` (default Asia/Ho_Chi_Minh) with `Lang.time(value)`.
"""

import io
import logging
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("vi", "en")  # the first is the default
LANGUAGE_NAMES = {"vi": "Tiếng Việt", "en": "English"}


def load_catalogues(locale_dir=LOCALE_DIR):
    """{language: babel Translations} from locale/<lang>/LC_MESSAGES/messages.po (compiled in memory)."""
    out = {}
    for lang in LANGUAGES:
        po = locale_dir / lang / "LC_MESSAGES" / "messages.po"
        with po.open("rb") as f:
            catalog = read_po(f, locale=lang)
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        out[lang] = Translations(buf)
    return out


def pick_language(query=None, cookie=None, accept=None, default="vi"):
    """The language of a request (see the module's docstring)."""
    for v in (query, cookie):
        if v in LANGUAGES:
            return v
    if accept:
        weighted = []
        for i, part in enumerate(accept.split(",")[:20]):
            tag, _, params = part.strip().partition(";")
            q = 1.0
            if params.strip().startswith("q="):
                try:
                    q = float(params.strip()[2:])
                except ValueError:
                    q = 0.0
            weighted.append((-q, i, tag.strip().lower().split("-")[0]))
        for negq, _i, tag in sorted(weighted):
            if negq < 0 and tag in LANGUAGES:
                return tag
    return default if default in LANGUAGES else LANGUAGES[0]


class Lang:
    """One request's language: gettext functions and time formatting for templates and handlers."""

    def __init__(self, code, translations, zone):
        self.code = code
        self.t = translations
        self.zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)

    def gettext(self, message, **kw):
        s = self.t.gettext(message)
        return s % kw if kw else s

    def ngettext(self, singular, plural, n, **kw):
        s = self.t.ngettext(singular, plural, n)
        kw.setdefault("num", n)
        return s % kw

    def time(self, value, fmt="medium"):
        """A time (datetime, naive = UTC, or ISO 8601 text) in the console's zone and language; '' for None."""
        if value in (None, ""):
            return ""
        if isinstance(value, str):
            from collector.storage import parse_time

            value = parse_time(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return format_datetime(value.astimezone(self.zone), format=fmt, locale=self.code)

    def now(self):
        return self.time(datetime.now(UTC))
