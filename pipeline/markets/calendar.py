"""The occasion of a run date in a market: its season and, when one is on, its holiday."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pipeline.markets.profiles import Holiday, MarketProfile, Season


@dataclass(frozen=True)
class Occasion:
    """What a campaign on one date in one market speaks to."""

    season: Season
    holiday: Holiday | None

    @property
    def greeting(self) -> str:
        """The copy's first line: the holiday's greeting, else the season's."""
        return (self.holiday or self.season).greeting


def easter_sunday(year: int) -> date:
    """Western (Gregorian) Easter Sunday: the anonymous Gregorian algorithm (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    leap = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * leap) // 451
    month, day = divmod(h + leap - 7 * m + 114, 31)
    return date(year, month, day + 1)


def holiday_active(holiday: Holiday, day: date) -> bool:
    """True when `day` falls inside the holiday's campaign window (both ends included)."""
    if holiday.yearly is not None:
        start, end = holiday.yearly.split("..")
        key = day.strftime("%m-%d")
        # a window like 12-29..01-07 wraps the new year
        return start <= key <= end if start <= end else key >= start or key <= end
    if holiday.easter is not None:
        sunday = easter_sunday(day.year)
        return sunday + timedelta(days=holiday.easter[0]) <= day <= sunday + timedelta(days=holiday.easter[1])
    for window in holiday.windows:
        start, end = (date.fromisoformat(part) for part in window.split(".."))
        if start <= day <= end:
            return True
    return False


def occasion_on(profile: MarketProfile, day: date) -> Occasion:
    """The season of `day`'s month and the first listed holiday whose window holds `day`."""
    season = next(s for s in profile.seasons if day.month in s.months)
    holiday = next((h for h in profile.holidays if holiday_active(h, day)), None)
    return Occasion(season, holiday)
