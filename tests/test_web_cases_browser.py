"""A tracer in a real browser (Playwright, Debian's chromium, a 375 px phone screen, Vietnamese): sign in,
open a case, find a person, list the contacts, export them, mark one notified; the admin reads the audit
log. Screenshots under tests/output/<test>/ and, for docs/console.md, docs/console/."""

import csv
import io
import shutil
from pathlib import Path

import openpyxl
from browser import shot
from case_helpers import EVIL_NAME, INDEX, MARKET, plant
from web_helpers import PASSWORD

DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
CASE = "HCM-2021-0815-07"


def doc_shot(page, name):
    """A screenshot in the test's output folder, copied to docs/console/<name>.png."""
    path = shot(page, name)
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, DOCS / f"{name}.png")
    return path


def fits_phone(page):
    return page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def sign_in(page, url, name):
    page.goto(url + "/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(url + "/")


def test_tracer_opens_a_case_finds_contacts_exports_and_notifies(console_sqlite, page, tmp_path):
    con = console_sqlite
    plant(con)
    url = con.url
    sign_in(page, url, "tracer")
    assert page.locator("nav a", has_text="Ca bệnh").is_visible()

    # open a case for the index person, by ID number
    page.click("nav a:has-text('Ca bệnh')")
    page.wait_for_url(url + "/cases")
    page.fill("#number", CASE)
    page.fill("#person", INDEX["id_number"])
    page.fill("#reason", "Xét nghiệm dương tính ngày 15/08")
    assert fits_phone(page)
    doc_shot(page, "cases")
    page.click("form[action='/cases'] button[type=submit]")
    page.wait_for_url(f"{url}/cases/{CASE}")
    assert CASE in page.locator("h1").inner_text() and "đang mở" in page.content()
    assert fits_phone(page)
    doc_shot(page, "case")

    # the index person's timeline, then a person found by phone
    page.click("text=Các lượt qua chốt của ca nguồn")
    page.wait_for_load_state()
    assert INDEX["name"] in page.locator("section.person h2").inner_text()
    assert page.locator("section.person table tbody tr").count() == 2
    page.select_option("#case", CASE)
    page.fill("#q", "+84 912 345 612")
    page.click("form[action='/person'] button[type=submit]")
    page.wait_for_load_state()
    assert MARKET[1][0]["name"] in page.locator("section.person h2").inner_text()
    assert fits_phone(page)
    doc_shot(page, "person")

    # the contacts of the case, paged, with names and phones
    page.goto(f"{url}/cases/{CASE}")
    page.fill("#days", "14")
    page.fill("#window", "15")
    page.click("form.row-form button[type=submit]")
    page.wait_for_url(f"{url}/cases/{CASE}/contacts?*")
    rows = page.locator("table.contacts tbody tr")
    assert rows.count() == 9
    first = rows.nth(0).inner_text()
    assert MARKET[0][0]["name"] in first and MARKET[0][0]["phone"] in first
    assert EVIL_NAME in page.content().replace("&#34;", '"').replace("&amp;", "&")  # shown as text
    assert fits_phone(page)
    doc_shot(page, "contacts")

    # exports: the browser downloads them; no cell is a formula
    with page.expect_download() as dl:
        page.click("text=Xuất CSV")
    csv_path = tmp_path / "contacts.csv"
    dl.value.save_as(csv_path)
    rows_csv = list(csv.reader(io.StringIO(csv_path.read_text("utf-8-sig"), newline="")))
    assert len(rows_csv) == 10 and "'" + EVIL_NAME in [c for r in rows_csv for c in r]
    with page.expect_download() as dl:
        page.click("text=Xuất XLSX")
    xlsx_path = tmp_path / "contacts.xlsx"
    dl.value.save_as(xlsx_path)
    ws = openpyxl.load_workbook(xlsx_path).active
    assert not [c for r in ws.iter_rows() for c in r if c.data_type == "f"]

    # mark the closest contact notified
    page.locator("table.contacts tbody tr").nth(0).locator("button", has_text="Đánh dấu đã báo").click()
    page.wait_for_load_state()
    first = page.locator("table.contacts tbody tr").nth(0)
    assert "đã báo" in first.inner_text() and "tracer" in first.inner_text()
    assert first.locator("button").count() == 0
    doc_shot(page, "contacts-notified")
    page.set_viewport_size({"width": 1280, "height": 900})
    doc_shot(page, "contacts-wide")

    # the admin reads the audit log: every read above, by the tracer, in the case
    page.click("button:has-text('Đăng xuất')")
    page.wait_for_url(url + "/login")
    sign_in(page, url, "admin")
    page.goto(f"{url}/audit?case={CASE}")
    table = page.locator("table.audit").inner_text()
    assert "tracer" in table and "contacts page 1" in table and "export (xlsx)" in table and "notified" in table
    doc_shot(page, "audit")
