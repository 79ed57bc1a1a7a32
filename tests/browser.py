"""Browser tests with Playwright for Python on Debian's chromium (no browser download).

Fixtures (imported into tests/conftest.py, so any test can take them):

- `browser`: one chromium for the test session, launched from CHROMIUM (/usr/bin/chromium; set
  CHOT_CHROMIUM to use another). Missing chromium or playwright: skipped outside CI, FAILED under
  CI=true (conftest.need).
- `page`: a new browser context and page for one test (375 px wide, like a phone, unless the test
  resizes it), closed after it. Console messages of level error fail nothing but are printed.
- `shot(page, name)`: a full-page screenshot saved as <the test's output folder>/<name>.png
  and returned (the folder: tests/output/<test name>/, kept after the run for docs and review).
"""

import os
import re
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHOT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parent / "output"
PHONE = {"width": 375, "height": 740}


@pytest.fixture(scope="session")
def browser():
    from conftest import need

    need(Path(CHROMIUM).exists(), f"chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright Python package (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def output_dir(request):
    """tests/output/<test name>/ (emptied at the start of the test)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    d = OUTPUT / name
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.png"):
        old.unlink()
    return d


@pytest.fixture
def page(browser, output_dir):
    context = browser.new_context(viewport=PHONE, locale="vi-VN", timezone_id="Asia/Ho_Chi_Minh")
    context.set_default_timeout(30000)
    p = context.new_page()
    p.output_dir = output_dir
    p.on("console", lambda m: m.type == "error" and print(f"browser console: {m.text}"))
    yield p
    context.close()


def shot(page, name):
    """Save a full-page screenshot under the test's output folder; returns its path."""
    path = page.output_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
