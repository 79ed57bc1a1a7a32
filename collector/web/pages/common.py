"""Helpers shared by the traffic, fleet and paper pages: bounded paging arguments and ages."""

from datetime import timedelta

from babel.dates import format_timedelta

from collector.queries import QueryError


def bounded_int(value, name, default, lo, hi):
    """An integer query argument within [lo, hi]; QueryError (400) naming the limit."""
    if value is None or str(value).strip() == "":
        return default
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        raise QueryError(f"{name}: found {text[:40]!r}; allowed: a whole number from {lo} to {hi}") from None
    if not lo <= n <= hi:
        raise QueryError(f"{name}: found {n}; allowed: a whole number from {lo} to {hi}")
    return n


def page_of(items, page, size):
    """(the items of page `page` (1-based) of `size`, number of pages); QueryError past the last page."""
    pages = max(1, -(-len(items) // size))
    if page > pages:
        raise QueryError(f"page: found {page}; allowed: 1 to {pages} ({len(items)} items, {size} a page)")
    return items[(page - 1) * size : page * size], pages


def age(lang, seconds):
    """'5 minutes' / '5 phút': a duration in the page's language ('' for None)."""
    if seconds is None:
        return ""
    return format_timedelta(timedelta(seconds=max(0.0, float(seconds))), threshold=1.5, locale=lang.code)
