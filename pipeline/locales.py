"""Market codes: BCP 47 locale tags such as `en-US`, checked against CLDR through Babel."""

from __future__ import annotations

import re

_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?[-_]([A-Za-z]{2}|[0-9]{3})$")


def normalize_market(code: str) -> str:
    """Return the canonical market tag (`en-US`), or raise ValueError naming the bad code.

    A market is a language plus a region (campaigns are localized per country), known to CLDR.
    """
    from babel import Locale, UnknownLocaleError

    text = str(code).strip()
    match = _TAG.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a locale code like 'en-US' (language-REGION)")
    language, script, region = match.group(1).lower(), match.group(2), match.group(3).upper()
    parts = [language] + ([script.title()] if script else []) + [region]
    try:
        locale = Locale.parse("_".join(parts))
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"{text!r} is not a locale known to CLDR") from None
    if locale.territory != region:  # CLDR filled in another region (en-ZZ -> en_US): not a market
        raise ValueError(f"{text!r} is not a locale known to CLDR (region {region!r})")
    # CLDR's language for a deprecated alias (iw -> he, in -> id, tl -> fil): one market, one tag, one
    # partition. The script and region stay as written (`az-AZ`, not CLDR's likely `az-Latn-AZ`).
    return "-".join([locale.language, *parts[1:]])


def market_to_locale(market: str) -> str:
    """The CLDR/POSIX locale identifier of a canonical market tag (`en-US` -> `en_US`)."""
    return market.replace("-", "_")
