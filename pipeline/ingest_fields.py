"""The manifest's fields, one value at a time: text, price, currency, markets, attributes.

Each parser takes a value as the file gave it (text from CSV, decoded JSON from JSONL, Arrow
values from Parquet) and returns it clean, or raises ValueError with what is wrong; the caller
(`pipeline.ingest`) adds the file, row and field.
"""

from __future__ import annotations

import json
import math
import unicodedata

from pipeline.csvsafe import storable
from pipeline.locales import normalize_market

MAX_TEXT_CHARS = 10_000


def text_value(value: object) -> str | None:
    """A scalar as trimmed text (None when empty); lists, objects and bad text raise ValueError."""
    if value is None:
        return None
    if isinstance(value, (dict, list, bytes)):
        raise ValueError(f"expected text, got {json_type(value)}")
    text = (json.dumps(value) if isinstance(value, bool) else str(value)).strip()
    if "\x00" in text or storable(text) != text:  # a surrogate: an emoji cut in half by an exporter?
        raise ValueError("contains a NUL character" if "\x00" in text else "has half a character (a lone \\ud8xx)")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}")
    return text or None


def nfc_text(value: object) -> str | None:
    """`text_value` in one Unicode spelling: `CAFÉ-0` typed on one machine (NFC) and exported on
    another (NFD, as macOS writes it) is one SKU, one label, one split. Not for paths: a file's
    name is the bytes its filesystem holds."""
    text = text_value(value)
    return unicodedata.normalize("NFC", text) if text else None


def parse_price(text: str) -> float:
    try:
        price = float(text) if "_" not in text else math.nan  # float() accepts "1_0"; people don't
    except ValueError:
        price = math.nan
    if not math.isfinite(price):
        raise ValueError(f"{text!r} is not a number (write e.g. 12.50)")
    if price < 0:
        raise ValueError(f"{text!r} is negative; a price must be 0 or more")
    return price or 0.0  # turns -0.0 into 0.0


def parse_currency(text: str) -> str:
    from babel.numbers import list_currencies

    code = text.upper()
    if len(code) != 3 or code not in list_currencies():
        raise ValueError(f"{text!r} is not an ISO 4217 currency code like 'USD' or 'EUR'")
    return code


def parse_markets(value: object, separator: str) -> list[str]:
    """A separated string (CSV) or a list (JSONL/Parquet) of locale codes, normalised, deduplicated."""
    if value is None:
        return []
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise ValueError("a list of markets must hold only text, e.g. [\"en-US\", \"de-DE\"]")
    codes = value if isinstance(value, list) else (text_value(value) or "").split(separator)
    markets, errors = [], []
    for code in filter(None, (c.strip() for c in codes)):
        try:
            markets.append(normalize_market(code))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError("; ".join(errors))
    return list(dict.fromkeys(markets))  # dedupe, keeping the order given


def parse_attributes(value: object) -> dict:
    """A JSON object, given as text (CSV) or already decoded (JSONL, a Parquet struct or map)."""
    if isinstance(value, str) or value is None:
        text = text_value(value)
        if text is None:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not valid JSON ({json_failure(exc)})") from None
    if isinstance(value, list) and all(isinstance(pair, tuple) and len(pair) == 2 for pair in value):
        value = dict(value)  # a Parquet map<string, ...> reads as (key, value) pairs, an empty one as []
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object like {{\"color\": \"red\"}}, got {json_type(value)}")
    attributes = {}
    for key, item in value.items():
        if not (name := text_value(str(key))):
            raise ValueError("has an empty attribute name")
        try:
            item = attribute_value(item)
        except ValueError as exc:
            raise ValueError(f"attribute {name!r} {exc}") from None
        if item is not None:
            attributes[name] = item
    return attributes


def attribute_value(value: object) -> str | int | float | bool | None:
    """A scalar attribute value; text is trimmed, empty text and nulls mean "not given"."""
    if isinstance(value, str):
        return text_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"is {value}, not a finite number")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise ValueError(f"is {json_type(value)}; values must be text, numbers or true/false, not nested")


def json_failure(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]


def json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null",
             bytes: "binary data"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
