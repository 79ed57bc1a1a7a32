"""Exports of a case's contacts: CSV and XLSX, streamed, with no cell a spreadsheet could run.

A cell whose text could be read as a formula (collector.queries.formula_like: starting with
= + - @ TAB or CR, also after leading spaces) is
- in CSV: prefixed with an apostrophe (queries.csv_cell), the OWASP advice;
- in XLSX: written as a string cell (never a formula: openpyxl would otherwise store `=...` as
  one) with the quotePrefix style, so that Excel and LibreOffice show it as typed text even
  when a user edits the cell.
The XLSX is written by openpyxl's write-only workbook (rows are not kept in memory) into a
spooled temporary file, then streamed in chunks.
"""

import csv
import io
import tempfile
from zoneinfo import ZoneInfo

from collector.queries import csv_cell, formula_like
from collector.storage import parse_time

COLUMNS = ("no", "name", "phone", "id_number", "verified", "encounters", "closest_min", "first", "last",
           "places", "notified")
CHUNK = 64 * 1024


def contact_rows(result, notified, zone):
    """The export's rows (lists of text/numbers) of a contacts result, header first."""
    z = ZoneInfo(zone) if isinstance(zone, str) else zone

    def local(t):
        return parse_time(t).replace(tzinfo=ZoneInfo("UTC")).astimezone(z).strftime("%Y-%m-%d %H:%M:%S %z")

    yield list(COLUMNS)
    entries = result["contacts"] + result["unverified_contacts"]
    for i, c in enumerate(entries, start=result.get("offset", 0) + 1):
        key = c.get("person_key") or c.get("claim_key")
        p = c.get("person") or {}
        n = notified.get(key)
        yield [
            i, p.get("name", ""), p.get("phone", ""), p.get("id_number", ""), "yes" if c["verified"] else "no",
            c["encounters"], round(c["closest_s"] / 60.0, 1), local(c["first"]), local(c["last"]),
            " ".join(sorted({d["checkpoint"] for d in c["details"]})),
            f"{n['at']} {n['by']}" if n else "",
        ]


def csv_stream(rows):
    """Yield the CSV (UTF-8 with a BOM for spreadsheets, CRLF) row by row; formula-like cells neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    yield "\ufeff".encode()
    for row in rows:
        w.writerow([csv_cell(v) for v in row])
        yield buf.getvalue().encode("utf-8")
        buf.seek(0)
        buf.truncate()


def xlsx_file(rows, title="contacts"):
    """The XLSX of `rows` in a spooled temporary file (rewound); formula-like text is an inert string."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title)
    bold = Font(bold=True)
    for n, row in enumerate(rows):
        cells = []
        for v in row:
            cell = WriteOnlyCell(ws, value=v)
            if isinstance(v, str):
                cell.data_type = "s"  # openpyxl makes any text starting with = a formula: never here
                if formula_like(v):
                    cell.quotePrefix = True
            if n == 0:
                cell.font = bold
            cells.append(cell)
        ws.append(cells)
    out = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    wb.save(out)
    out.seek(0)
    return out


def file_chunks(f):
    """Yield a file's bytes in chunks, closing it at the end."""
    try:
        while chunk := f.read(CHUNK):
            yield chunk
    finally:
        f.close()
