"""Campaign prompt and copy: product x campaign theme x the market's scene and occasion on a date.

The prompt (English, for the model) = the product (title, colour, material, category; the
job's prompt template) in a scene of the market's season, the holiday's motif when one is on,
the theme and the market's look. Terms a market or brand bans are cut out of the prompt and sent as the negative
prompt. The copy (the market's language, for people) = the occasion's greeting, the theme's
line with the product word, and the price formatted by CLDR rules for the market's locale.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from pipeline.markets import MarketProfile, occasion_on

THEME_PROMPTS = {"new-arrivals": "new collection", "sale": "seasonal sale", "gifts": "gift idea"}


@dataclass(frozen=True)
class CampaignText:
    """What one SKU's campaign in one market says to the model and to people."""

    prompt: str
    negative_prompt: str
    season: str
    holiday: str | None
    headline: str              # greeting and offer lines, joined by "\n"
    price_text: str | None


def _pick(options: tuple[str, ...], key: str) -> str:
    """A stable choice among `options` (the same SKU and market always get the same scene)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(options)]


def _attribute(attributes: dict, *names: str) -> str:
    for name in names:
        value = attributes.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def strip_terms(text: str, terms) -> str:
    """`text` without any of `terms` (whole words, any case), and without the commas they leave."""
    for term in terms:  # not inside a longer word; a term may begin or end with a sign (18+, c++)
        text = re.sub(rf"(?i)(?<!\w){re.escape(term)}(?!\w)", "", text)
    parts = [re.sub(r"\s+", " ", p).strip() for p in text.split(",")]
    return ", ".join(p for p in parts if p)


def advertised_price(price: float, currency: str) -> Decimal | None:
    """`price` with the decimals its currency has, or None when that would change it: 12.5 yen is not
    a price (drawn, it would read ¥12). Float noise is not a change: 12.99 read from a float32
    column is 12.989999771..., and 0.1 + 0.2 is 0.30000000000000004; both are within a millionth."""
    from babel.numbers import get_currency_precision

    exact = Decimal(repr(price))
    rounded = round(exact, get_currency_precision(currency))
    return rounded if abs(rounded - exact) <= Decimal("1e-6") * max(1, abs(exact)) else None


def format_price(price: float | None, currency: str | None, profile: MarketProfile) -> str | None:
    """The price as the market writes it: `format_currency(price, currency, locale=<market>)`;
    the row's currency, else the market's. Never rounded (ingest refuses a price with more decimals
    than its currency: `advertised_price`; one that reaches here is drawn with every digit). A
    currency symbol that ends or starts in a letter (`USD`, `CHF`) is kept apart from the number by
    a no-break space, as CLDR's currency spacing asks."""
    if price is None:
        return None
    from babel.numbers import format_currency

    currency = currency or profile.currency
    value = advertised_price(price, currency) or Decimal(repr(price))
    text = format_currency(value, currency, locale=profile.babel_locale, decimal_quantization=False)
    return re.sub(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])", "\u00a0", text)


def product_phrase(product: dict) -> str:
    """The product as the model reads it: title, colour, material, category."""
    attributes = json.loads(product.get("attributes") or "{}")
    described = " ".join(p for p in (_attribute(attributes, "color", "colour"), _attribute(attributes, "material"),
                                     product["category"]) if p)
    return f"{product['title']}, {described}"


def campaign_text(product: dict, profile: MarketProfile, day: date, theme: str, *, base_prompt: str | None = None,
                  base_negative: str = "", brand_banned: tuple[str, ...] = ()) -> CampaignText:
    """The prompt, negative prompt and copy of `product` (a PRODUCT_SCHEMA row) in `profile`'s market.

    `base_prompt` is the product part (the job's `generation.prompt_template`, as the plan fills
    it in); without one, `product_phrase`. The market's scene, season, holiday motif, the theme
    and the market's look follow it.
    """
    occasion = occasion_on(profile, day)
    scene = _pick(occasion.season.scenes, f"{product['sku']}|{profile.market}")
    parts = [base_prompt or product_phrase(product), scene, occasion.season.name]
    if occasion.holiday and occasion.holiday.motifs:
        parts.append(occasion.holiday.motifs[0])
    parts += [THEME_PROMPTS[theme], *profile.scene_motifs[:1]]
    banned = tuple(dict.fromkeys((*profile.banned_terms, *profile.banned_motifs, *brand_banned)))
    prompt = strip_terms(", ".join(parts), banned)
    negative = ", ".join(dict.fromkeys(p for p in (*(base_negative.split(", ") if base_negative else ()), *banned) if p))
    word = profile.products.get(product["category"], profile.product_fallback)
    headline = f"{occasion.greeting}\n{profile.copy_templates[theme].format(product=word)}"
    return CampaignText(prompt, negative, occasion.season.name,
                        occasion.holiday.name if occasion.holiday else None, headline,
                        format_price(product.get("price"), product.get("currency"), profile))
