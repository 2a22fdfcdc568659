"""Market profiles: one YAML data file per market (`data/<market>.yaml`), validated once on load.

A profile says how to speak to one market: its language, script, currency and text
direction, the fonts that draw its script, its seasons (by month) and holidays (by date),
the scene phrases the model is told, the copy written in its language, and the terms and
motifs that must never reach the model. `pipeline.markets.calendar` picks the season and
holiday of a run date; `pipeline.campaign` turns a profile into prompts and copy.
"""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import BadInputError

DATA_DIR = Path(__file__).resolve().parent / "data"
THEMES = ("new-arrivals", "sale", "gifts")
_YEARLY = re.compile(r"^(\d\d)-(\d\d)\.\.(\d\d)-(\d\d)$")
_WINDOW = re.compile(r"^(\d{4}-\d\d-\d\d)\.\.(\d{4}-\d\d-\d\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Season(_Strict):
    """A season by calendar months; `name` and `scenes` are prompt text, `greeting` is copy."""

    name: str
    months: tuple[int, ...]
    greeting: str
    scenes: tuple[str, ...] = Field(min_length=1)

    @field_validator("months")
    @classmethod
    def _months(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(m < 1 or m > 12 for m in value):
            raise ValueError("months must be numbers 1-12")
        return value


class Holiday(_Strict):
    """A campaign window: fixed each year (`yearly: MM-DD..MM-DD`, may wrap the new year),
    relative to Western Easter (`easter: [from, to]` days), or listed per year (`windows`)
    for lunar and Hijri holidays."""

    name: str
    greeting: str
    motifs: tuple[str, ...] = ()
    yearly: str | None = None
    easter: tuple[int, int] | None = None
    windows: tuple[str, ...] = ()

    @field_validator("yearly")
    @classmethod
    def _yearly(cls, value: str | None) -> str | None:
        if value is not None:
            match = _YEARLY.match(value)
            if not match:
                raise ValueError(f"{value!r} is not MM-DD..MM-DD")
            for month, day in (match.group(1, 2), match.group(3, 4)):
                date(2024, int(month), int(day))  # a leap year: 02-29 is a valid day
        return value

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for window in value:
            match = _WINDOW.match(window)
            if not match or date.fromisoformat(match.group(1)) > date.fromisoformat(match.group(2)):
                raise ValueError(f"{window!r} is not YYYY-MM-DD..YYYY-MM-DD (start before end)")
        return value

    @field_validator("easter")
    @classmethod
    def _easter(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"{list(value)} starts after it ends: [days from, days to] around Easter")
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> "Holiday":
        rules = [self.yearly is not None, self.easter is not None, bool(self.windows)]
        if sum(rules) != 1:
            raise ValueError(f"holiday {self.name!r} needs exactly one of yearly, easter, windows")
        return self


class MarketProfile(_Strict):
    """Everything a campaign needs to know about one market (see the module docstring)."""

    market: str
    language: str
    script: str
    currency: str
    hemisphere: Literal["northern", "southern"]
    direction: Literal["ltr", "rtl"]
    line_break: Literal["spaces", "chars"] = "spaces"
    fonts: tuple[str, ...] = Field(min_length=1)
    scene_motifs: tuple[str, ...] = ()
    banned_terms: tuple[str, ...] = ()
    banned_motifs: tuple[str, ...] = ()
    seasons: tuple[Season, ...] = Field(min_length=1)
    holidays: tuple[Holiday, ...] = ()
    copy_templates: dict[str, str] = Field(alias="copy")
    products: dict[str, str]
    product_fallback: str

    @field_validator("copy_templates")
    @classmethod
    def _copy(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [t for t in THEMES if t not in value]
        if missing or set(value) - set(THEMES):
            raise ValueError(f"copy must have exactly the themes {', '.join(THEMES)}")
        for theme, template in value.items():
            try:
                fields = [(n, spec, conversion) for _, n, spec, conversion in string.Formatter().parse(template)
                          if n is not None]
            except ValueError as exc:  # a lone brace
                raise ValueError(f"copy.{theme}: {exc}") from None
            # a format spec or conversion ({product:d}, {product!r}) would fail or garble the drawn copy
            if not fields or any(field != ("product", "", None) for field in fields):
                raise ValueError(f"copy.{theme}: the template must use {{product}} and nothing else "
                                 "(no format spec or conversion)")
        return value

    @field_validator("fonts")
    @classmethod
    def _fonts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.campaign.fonts import FONT_PACKAGES

        if unknown := [family for family in value if family not in FONT_PACKAGES]:
            raise ValueError(f"font families {unknown} are not ones the project installs; "
                             f"known: {', '.join(FONT_PACKAGES)}")
        return value

    def _drawn(self) -> dict[str, tuple[str, int]]:
        """Where each drawn text is in the profile: (text, font weight: greetings bold, offers regular)."""
        return {**{f"copy.{k}": (v.replace("{product}", ""), 400) for k, v in self.copy_templates.items()},
                **{f"products.{k}": (v, 400) for k, v in self.products.items()},
                "product_fallback": (self.product_fallback, 400),
                **{f"seasons.{s.name}.greeting": (s.greeting, 700) for s in self.seasons},
                **{f"holidays.{h.name}.greeting": (h.greeting, 700) for h in self.holidays}}

    @model_validator(mode="after")
    def _drawn_on_one_line(self) -> "MarketProfile":
        """Copy is drawn one role to a line (greeting, offer, price), wrapped by the overlay: a line
        break or other control character in it would break the text layout of every creative."""
        for where, (text, _) in self._drawn().items():
            if any(unicodedata.category(c) == "Cc" for c in text):
                raise ValueError(f"{where}: {text!r} holds a line break or control character")
        return self

    @model_validator(mode="after")
    def _drawable(self) -> "MarketProfile":
        """Copy no installed font draws (Hebrew, with the packaged fonts) would be refused row by row
        after generation: the profile is refused instead, naming the text and its characters."""
        from pipeline.campaign.fonts import FontError, MissingGlyphs, pick_face

        for where, (text, weight) in self._drawn().items():
            try:
                pick_face(self.fonts, text, weight)
            except MissingGlyphs as exc:
                raise ValueError(f"{where}: {exc}") from None
            except FontError:  # a font package not installed: the overlay names it, row by row
                break
        return self

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        from babel.numbers import list_currencies

        if value not in list_currencies():
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value

    @model_validator(mode="after")
    def _every_month_once(self) -> "MarketProfile":
        months = sorted(m for s in self.seasons for m in s.months)
        if months != list(range(1, 13)):
            raise ValueError("seasons must cover each month 1-12 exactly once")
        return self

    @property
    def babel_locale(self) -> str:
        """The CLDR locale for number and currency formats (`ar-AE` -> `ar_AE`)."""
        return self.market.replace("-", "_")


def _read(path: Path) -> MarketProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        profile = MarketProfile.model_validate(data)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:  # not UTF-8, nested too deeply
        raise BadInputError(f"{path}: cannot read market profile ({exc or type(exc).__name__})"
                            .replace("\n", " ")) from None
    except ValidationError as exc:
        details = "; ".join(f"key '{'.'.join(map(str, e['loc']))}': {e['msg']}" if e["loc"]
                            else e["msg"].removeprefix("Value error, ") for e in exc.errors())  # the whole profile
        raise BadInputError(f"{path}: bad market profile: {details}") from None
    if profile.market != path.stem:
        raise BadInputError(f"{path}: names market {profile.market!r}; the file must be {profile.market}.yaml")
    return profile


@lru_cache(maxsize=None)
def _profiles(folder: str) -> dict[str, MarketProfile]:
    if not Path(folder).is_dir():  # a typo in campaign.markets_dir must not fall back to the packaged ones
        raise BadInputError(f"{folder}: campaign.markets_dir is not a folder")
    return {_market_of(p): _read(p) for p in sorted(Path(folder).glob("*.yaml"))}


def _market_of(path: Path) -> str:
    """The canonical market a profile file is for: `tl-PH.yaml`, named before deprecated language
    aliases became CLDR's, is `fil-PH`'s."""
    from pipeline.locales import normalize_market

    try:
        return normalize_market(path.stem)
    except ValueError as exc:
        raise BadInputError(f"{path}: the file name is not a market ({exc})") from None


def known_markets(extra_dir: str | Path | None = None) -> list[str]:
    """Markets with a profile: the packaged ones plus those in `extra_dir` (which win)."""
    names = set(_profiles(str(DATA_DIR)))
    if extra_dir is not None:
        names |= set(_profiles(str(Path(extra_dir).resolve())))
    return sorted(names)


def load_profile(market: str, extra_dir: str | Path | None = None) -> MarketProfile:
    """The profile of `market` (canonical tag, `en-US`); KeyError names the known markets."""
    if extra_dir is not None:
        own = _profiles(str(Path(extra_dir).resolve()))
        if market in own:
            return own[market]
    packaged = _profiles(str(DATA_DIR))
    if market not in packaged:
        raise KeyError(f"market {market!r} has no market profile (known: {', '.join(known_markets(extra_dir))})")
    return packaged[market]
