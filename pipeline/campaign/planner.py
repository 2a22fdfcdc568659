"""Plan campaign items: the columns a campaign row carries from the plan to the published row.

`campaign_problems` runs in ingest, row by row: a market without a profile, a price that cannot be
drawn as given (no currency where the row's markets use several, more decimals than its currency
has) and an unusable product photo make the row bad (with file, line, field and reason), like any
other bad value.
`CampaignPlanner.fields` fills one item's campaign columns (schema.CAMPAIGN_PLAN_FIELDS):
prompt and copy (pipeline.campaign.prompt), brand adapter and its sha256, the product photo
and its sha256, and the layout of the item's format on the canvas (pipeline.campaign.layout).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.campaign.brand import brand_for
from pipeline.config import JobConfig

_URL = ("https://", "http://")


def campaign_problems(product: dict, fields: dict[str, str], config: JobConfig) -> list[tuple[str | None, str]]:
    """Why a validated catalog row cannot make campaign creative: (source column, reason) pairs."""
    if "campaign" not in config.kinds:
        return []
    from pipeline.campaign.photo import PhotoError, check_cutout
    from pipeline.markets import known_markets, load_profile

    problems: list[tuple[str | None, str]] = []
    currencies: dict[str, None] = {}
    for market in product["markets"] or config.markets:
        try:
            currencies[load_profile(market, config.campaign.markets_dir).currency] = None
        except KeyError:
            known = ", ".join(known_markets(config.campaign.markets_dir))
            problems.append((fields.get("markets"), f"market {market!r} has no market profile, so no campaign "
                             f"can be made for it (profiles: {known}; add one under campaign.markets_dir)"))
    if product.get("price") is not None and not problems:
        problems += _price_problems(product["price"], product.get("currency"), list(currencies), fields)
    image = product.get("image")
    if image and image.startswith(_URL):
        problems.append((fields.get("image"), "background replacement reads local product photos only; "
                         "image URLs are not fetched for campaign creative"))
    elif image:
        try:
            check_cutout(image)
        except PhotoError as exc:
            problems.append((fields.get("image"), str(exc)))
    return problems


def _price_problems(price: float, currency: str | None, market_currencies: list[str],
                    fields: dict[str, str]) -> list[tuple[str | None, str]]:
    """A price is drawn as the catalog gives it, never converted or rounded: without a currency it is
    taken to be its markets' one (refused where they have several), and it has no more decimals
    than its currency (`advertised_price`)."""
    from babel.numbers import get_currency_precision

    from pipeline.campaign.prompt import advertised_price

    if currency is None and len(market_currencies) > 1:
        return [(fields.get("currency") or fields.get("price"),
                 f"price {price:g} has no currency and its markets use {', '.join(market_currencies)}: give the "
                 "row's currency (ISO 4217, e.g. USD); a price is never converted")]
    currency = currency or market_currencies[0]
    if advertised_price(price, currency) is None:
        return [(fields.get("price"), f"price {price!r} has more decimals than {currency}'s "
                 f"{get_currency_precision(currency)}: give the price as it is advertised; it is never rounded")]
    return []


class CampaignPlanner:
    """Campaign columns of planned items for one run (`config`, `run_date`, models in `models_dir`)."""

    def __init__(self, config: JobConfig, run_date: str, models_dir: Path | None) -> None:
        from pipeline.models.presets import DEFAULT_MODELS_DIR

        self.config, self.day = config, date.fromisoformat(run_date)
        self.models_dir = models_dir or DEFAULT_MODELS_DIR
        self._texts: dict[tuple[str, str], dict] = {}
        self._adapters: dict[str, str] = {}

    def _adapter(self, product: dict) -> dict:
        brand = brand_for(self.config.campaign.brands, product["brand"])
        name = brand.adapters.get(self.config.model) if brand else None
        if not name:
            return {}
        if name not in self._adapters:
            from pipeline.campaign.brand import adapter_sha256

            self._adapters[name] = adapter_sha256(self.models_dir / self.config.model / "lora", name)
        return {"brand_adapter": name, "brand_adapter_sha256": self._adapters[name],
                "brand_adapter_scale": brand.adapter_scale}

    def _per_market(self, product: dict, market: str, base_prompt: str) -> dict:
        key = (product["sku"], market)
        if key not in self._texts:
            from pipeline.campaign.photo import check_cutout
            from pipeline.campaign.prompt import campaign_text
            from pipeline.markets import load_profile

            campaign = self.config.campaign
            profile = load_profile(market, campaign.markets_dir)
            brand = brand_for(campaign.brands, product["brand"])
            text = campaign_text(product, profile, self.day, campaign.theme, base_prompt=base_prompt,
                                 base_negative=self.config.generation.negative_prompt,
                                 brand_banned=brand.banned_terms if brand else ())
            values = {"prompt": text.prompt, "negative_prompt": text.negative_prompt, "theme": campaign.theme,
                      "season": text.season, "holiday": text.holiday, "headline": text.headline,
                      "price_text": text.price_text, **self._adapter(product)}
            if product.get("price") is not None:  # the currency drawn: the row's, else its market's
                values["currency"] = product.get("currency") or profile.currency
            photo = product.get("image")
            if photo and not photo.startswith(_URL):
                values["product_image"] = photo
                values["product_image_sha256"], values["_photo_size"] = check_cutout(photo)
            values["_direction"], values["_zones"] = profile.direction, brand.logo_free_zones if brand else ()
            self._texts[key] = values
        return self._texts[key]

    def fields(self, product: dict, market: str, fmt: str, width: int, height: int, base_prompt: str) -> dict:
        """The campaign columns of one item (`width` x `height`: the model's size for `fmt`;
        `base_prompt`: the product part of the prompt, from the job's prompt template)."""
        from pipeline.campaign.layout import canvas_size, place_product, plan_layout

        values = self._per_market(product, market, base_prompt)
        canvas = canvas_size(width, height, self.config.campaign.canvas)
        layout = plan_layout(*canvas, fmt, values["_direction"], values["_zones"])
        row = {k: v for k, v in values.items() if not k.startswith("_")}
        row["text_box"] = list(layout.text)
        if "_photo_size" in values:
            row["product_box"] = list(place_product(layout, *values["_photo_size"])[0])
        return row
