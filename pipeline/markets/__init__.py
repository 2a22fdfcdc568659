"""Market profiles (data files) and the calendar that picks a run date's season and holiday."""

from pipeline.markets.calendar import Occasion, occasion_on
from pipeline.markets.profiles import THEMES, MarketProfile, known_markets, load_profile

__all__ = ["THEMES", "MarketProfile", "Occasion", "known_markets", "load_profile", "occasion_on"]
