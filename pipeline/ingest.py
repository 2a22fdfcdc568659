"""Ingest: read a catalog manifest (CSV, JSONL or Parquet) and validate it row by row.

Every format is reduced to the same thing -- a list of records, each a line number and a
mapping of source column -> value -- and then checked by one validator, so a catalog gives
the same products whatever format it arrives in. File-level problems (unreadable, wrong
encoding, not a manifest, a required column missing, no rows) raise `BadInputError`; row-level
problems become rows of `rejects` and reading goes on (DESIGN.md, "Input: the catalog manifest").
A reject's `field` is the column as the file names it (e.g. `Handle`), since that is what the
operator edits; for a row that could not be split into fields at all it is null.
Only the standard library, pyarrow and babel are imported: `synthcat validate` must stay light.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.campaign.planner import campaign_problems
from pipeline.config import CANONICAL_FIELDS, REQUIRED_FIELDS, JobConfig
from pipeline.csvsafe import storable
from pipeline.errors import BadInputError
from pipeline.ingest_fields import (attribute_value, json_failure, json_type, parse_attributes, parse_currency,
                                     nfc_text, parse_markets, parse_price, text_value)
from pipeline.references import ImageReferences
from pipeline.schema import INPUT_REJECT_SCHEMA, PRODUCT_SCHEMA

ATTR_PREFIX = "attr_"
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Files people commonly hand over by mistake; naming them beats "invalid start byte".
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"PK\x03\x04": "a ZIP archive (an Excel workbook?)", b"\x1f\x8b": "a gzip archive",
          b"%PDF": "a PDF document", b"PAR1": "a Parquet file"}
_TEXT_FIELDS = ("sku", "title", "category", "description", "image", "brand", "price", "currency")


@dataclass(frozen=True)
class _Record:
    """One data row as read: where it starts and its values by source column."""
    line: int
    values: dict
    error: str | None = None  # the row could not be read as a row at all (e.g. not a JSON object)


@dataclass(frozen=True)
class IngestResult:
    """Products that passed validation, and one reject row per problem found."""

    source: str          # the manifest path as given
    products: pa.Table   # PRODUCT_SCHEMA, good rows only, in file order
    rejects: pa.Table    # INPUT_REJECT_SCHEMA, one row per problem (a row may have several)
    total_rows: int
    format: str = "csv"  # "csv" | "jsonl" | "parquet"; Parquet has rows, not lines

    @property
    def bad_rows(self) -> int:
        """Number of distinct bad rows (a row with three problems counts once)."""
        return len(set(self.rejects.column("line").to_pylist()))

    def problems(self, skus: set[str] | None = None) -> list[str]:
        """One line per problem ("catalog.csv: line 7, field 'markets': ..."); of `skus` if given."""
        return [f"{self.source}: {_describe(self.format, r)}" for r in self.rejects.to_pylist()
                if skus is None or r["sku"] in skus]


def _place(fmt: str, line: int) -> str:
    return f"{'row' if fmt == 'parquet' else 'line'} {line}"


def _describe(fmt: str, reject: dict) -> str:
    """A reject row as "line 7, field 'markets': reason" (no source)."""
    field = f", field '{reject['field']}'" if reject["field"] else ""
    return f"{_place(fmt, reject['line'])}{field}: {reject['reason']}"


def read_manifest(path: str | Path, config: JobConfig) -> IngestResult:
    """Read and validate a catalog manifest; raise `BadInputError` if the file itself is bad."""
    source, path = str(path), Path(path)
    # 1. Check the file: exists, a known type, readable.
    if not path.exists():
        raise BadInputError(f"{source}: manifest not found")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"{source}: unsupported manifest type {path.suffix or '(no extension)'!r}; "
                            f"use one of {', '.join(_FORMATS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{source}: cannot read manifest ({exc.strerror or exc})") from None
    # 2. Parse the format into records.
    if fmt == "parquet":
        columns, records = _read_parquet(data, source)
    else:
        text = _decode(data, source, fmt)
        columns, records = _read_csv(text, source) if fmt == "csv" else _read_jsonl(text, source)
    # 3. Map columns onto canonical fields; a missing required column stops the run.
    fields = _resolve_columns(columns, config, source)
    attr_columns = [c for c in columns if c.startswith(ATTR_PREFIX) and c[len(ATTR_PREFIX):].strip()
                    and c not in fields.values()]
    if not records:
        raise BadInputError(f"{source}: no data rows (only a header or nothing at all)")
    # 4. Validate row by row; a bad row never stops reading.
    products, rejects, first_line_of_sku = [], [], {}
    images = ImageReferences(config.images, path.parent)
    for record in records:
        raw = storable(json.dumps(record.values, ensure_ascii=False, default=str))
        if record.error:
            product, problems = None, [(None, record.error)]
        else:
            product, problems = _check_row(record.values, fields, attr_columns, config.list_separator)
            if product["image"]:  # untrusted: only under the image roots or an allowed https host
                try:
                    product["image"] = images.check(product["image"])
                except ValueError as exc:
                    problems.append((fields["image"], str(exc)))
            if not problems:  # campaign rows also need a market profile and a usable cut-out
                problems += campaign_problems(product, fields, config)
        sku = storable(product["sku"]) if product and product["sku"] else None
        if sku and sku in first_line_of_sku:
            first = _place(fmt, first_line_of_sku[sku])
            problems.append((fields["sku"], f"duplicate sku {sku!r} (first on {first})"))
        elif sku:
            # Bad rows register their SKU too: fixing them must not create a duplicate later.
            first_line_of_sku[sku] = record.line
        rejects += [{"source": source, "line": record.line, "sku": sku, "field": field,
                     "reason": storable(reason), "raw": raw} for field, reason in problems]
        if not problems:
            products.append({"line": record.line, **product})
    return IngestResult(source, pa.Table.from_pylist(products, schema=PRODUCT_SCHEMA),
                        pa.Table.from_pylist(rejects, schema=INPUT_REJECT_SCHEMA), len(records), fmt)


def check_bad_row_share(result: IngestResult, limit: float) -> None:
    """Raise `BadInputError` when the share of bad rows is over `limit` (the job's max_bad_row_share)."""
    if not result.total_rows or result.bad_rows / result.total_rows <= limit:
        return
    share = result.bad_rows / result.total_rows
    first = _describe(result.format, result.rejects.slice(0, 1).to_pylist()[0])
    raise BadInputError(f"{result.source}: {result.bad_rows} of {result.total_rows} rows are bad "
                        f"({share * 100:.3g}%), over the job's limit max_bad_row_share={limit:g}; "
                        f"first: {first}")


# --- readers: bytes -> (columns, records) ----------------------------------------------------


def _decode(data: bytes, source: str, fmt: str) -> str:
    for magic, what in _MAGIC.items():
        if data.startswith(magic):
            raise BadInputError(f"{source}: this is {what}, not a {fmt.upper()} manifest")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # Excel writes a BOM; accept it
    try:
        return data[bom:].decode("utf-8")  # not "utf-8-sig": its error offsets skip the BOM
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        raise BadInputError(f"{source}: not UTF-8 text (byte 0x{data[offset]:02x} at byte offset "
                            f"{offset}); save the file as UTF-8") from None


def _read_csv(text: str, source: str) -> tuple[list[str], list[_Record]]:
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="" keeps quoted newlines intact
    # csv's 128 KiB cell limit would refuse the whole file over one huge cell; the row check
    # (ingest_fields.MAX_TEXT_CHARS) rejects that row instead. The limit is process-wide: restore it after.
    field_limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    header: list[str] | None = None
    records: list[_Record] = []
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1  # a row starts on the line after the last one
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                named = [h for h in header if h]
                if len(set(named)) != len(named):
                    twice = sorted({h for h in named if named.count(h) > 1})
                    raise BadInputError(f"{source}: line {line}: column {twice[0]!r} "
                                        "appears twice in the header")
                continue
            values = {name: cell for name, cell in zip(header, cells) if name}
            extra = [cell for cell in cells[len(header):] if cell.strip()]
            error = None
            if extra:
                values["_extra"] = extra
                error = (f"has {len(cells)} values but the header has {len(header)} columns "
                         f"(a value containing a comma must be quoted)")
            records.append(_Record(line, values, error))
    except csv.Error as exc:
        raise BadInputError(f"{source}: line {start}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(field_limit)
    if header is None:
        raise BadInputError(f"{source}: empty file, no header row")
    return [h for h in header if h], records


def _read_jsonl(text: str, source: str) -> tuple[list[str], list[_Record]]:
    columns: dict[str, None] = {}  # insertion-ordered set of keys seen in any object
    records: list[_Record] = []
    # Split on "\n" only: str.splitlines() also splits on U+2028, which JSON strings may contain.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
            error = None if isinstance(value, dict) else f"is {json_type(value)}, not a JSON object"
        except json.JSONDecodeError as exc:
            value, error = None, f"is not valid JSON ({exc.msg} at column {exc.colno})"
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting 1,000 deep
            value, error = None, f"is not valid JSON ({json_failure(exc)})"
        if error and not records:
            # The first line decides whether this is JSONL at all.
            raise BadInputError(f"{source}: line {number} {error}; "
                                "a JSONL manifest has one JSON object per line")
        if error:
            records.append(_Record(number, {"_line": line}, f"line {error}"))
            continue
        columns.update(dict.fromkeys(value))
        records.append(_Record(number, value))
    return list(columns), records


def _read_parquet(data: bytes, source: str) -> tuple[list[str], list[_Record]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        with contextlib.suppress(pa.ArrowException, OSError):  # a file whose columns share a name
            names = pq.read_schema(pa.BufferReader(data)).names
            if twice := next((name for name in names if names.count(name) > 1), None):
                raise BadInputError(f"{source}: column {twice!r} appears twice") from None
        raise BadInputError(f"{source}: not a Parquet file ({exc})".replace("\n", " ")) from None
    try:
        rows = table.to_pylist()
    except (pa.ArrowException, ValueError, OverflowError) as exc:  # bytes not UTF-8, dates past 9999 ...
        for name, column in zip(table.column_names, table.columns):  # name the column
            try:
                column.to_pylist()
            except (pa.ArrowException, ValueError, OverflowError):
                raise BadInputError(f"{source}: column {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
        raise BadInputError(f"{source}: its rows cannot be read ({type(exc).__name__}: {exc})") from None
    return table.column_names, [_Record(i + 1, row) for i, row in enumerate(rows)]


def _resolve_columns(columns: list[str], config: JobConfig, source: str) -> dict[str, str]:
    """Canonical field -> source column, for the fields this file has."""
    present, fields, missing = set(columns), {}, []
    for field in CANONICAL_FIELDS:
        name = config.columns.get(field, field)
        if name in present:
            fields[field] = name
        elif field in REQUIRED_FIELDS:
            how = (f"mapped from column {name!r} by the job's columns setting" if field in config.columns
                   else "map another column onto it with the job's columns setting")
            missing.append(f"required column {field!r} is missing ({how})")
    if missing:  # name every missing column at once: the operator fixes the file in one go
        found = ", ".join(repr(c) for c in columns) or "none"
        hint = "; is it separated by ';' or tabs? synthcat reads comma-separated CSV" if (
            len(columns) == 1 and any(s in columns[0] for s in ";\t")) else ""
        raise BadInputError(f"{source}: {'; '.join(missing)}; columns found: {found}{hint}")
    return fields


# --- row validation -------------------------------------------------------------------------


def _check_row(values: dict, fields: dict[str, str], attr_columns: list[str],
               separator: str) -> tuple[dict, list[tuple[str | None, str]]]:
    """Return the row as a product dict and its problems as (source column, reason) pairs."""
    problems: list[tuple[str | None, str]] = []

    def attempt(column: str, parse, *args):
        try:
            return parse(*args)
        except ValueError as exc:  # every parser reports a bad value as ValueError
            problems.append((column, str(exc)))
            return None

    product = {field: attempt(fields[field], text_value if field == "image" else nfc_text,
                              values.get(fields[field])) if field in fields else None
               for field in _TEXT_FIELDS}
    for field in REQUIRED_FIELDS:
        if product[field] is None and not any(column == fields[field] for column, _ in problems):
            problems.append((fields[field], "missing required value"))
    if product["category"]:  # a class label: `lamp  shade` is `lamp shade`
        product["category"] = " ".join(product["category"].split())
    for field, parse in (("price", parse_price), ("currency", parse_currency)):
        if product[field] is not None:
            product[field] = attempt(fields[field], parse, product[field])
    column = fields.get("markets")
    product["markets"] = (attempt(column, parse_markets, values.get(column), separator) or []) if column else []
    column = fields.get("attributes")
    attributes = (attempt(column, parse_attributes, values.get(column)) or {}) if column else {}
    for column in attr_columns:
        value = attempt(column, attribute_value, values.get(column))
        if value is not None:
            attributes[column[len(ATTR_PREFIX):].strip()] = value  # attr_ columns win over the JSON
    product["attributes"] = json.dumps(attributes, sort_keys=True, ensure_ascii=False)
    return product, problems
