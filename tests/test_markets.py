"""Market profiles: data files, seasons and holidays by date, prompts and copy, bad rows."""

from __future__ import annotations

import json
import unicodedata
from datetime import date
from pathlib import Path

import pytest

from pipeline.campaign.prompt import campaign_text, format_price, strip_terms
from pipeline.config import parse_job_config
from pipeline.errors import BadInputError
from pipeline.ingest import read_manifest
from pipeline.markets import known_markets, load_profile, occasion_on
from pipeline.markets.calendar import easter_sunday

REQUIRED = ["en-US", "en-AU", "de-DE", "ja-JP", "vi-VN", "th-TH", "ar-AE", "pt-BR"]
MUG = {"sku": "MUG-1", "title": "Diner Mug", "category": "mug", "price": 12.5, "currency": None,
       "attributes": json.dumps({"color": "white", "material": "ceramic", "capacity_ml": 350})}


def _script_of(text: str) -> set[str]:
    return {unicodedata.name(c).split()[0] for c in text if c.isalpha()}


def test_every_required_market_has_a_complete_profile():
    assert set(REQUIRED) <= set(known_markets())
    for market in REQUIRED:
        profile = load_profile(market)
        assert profile.market == market and profile.fonts and profile.seasons and profile.holidays
        assert profile.hemisphere in ("northern", "southern")
        assert profile.direction == ("rtl" if market == "ar-AE" else "ltr")
        copy = " ".join([*profile.copy_templates.values(), *profile.products.values(),
                         *(s.greeting for s in profile.seasons), *(h.greeting for h in profile.holidays)])
        for term in profile.banned_terms:  # what the market bans never appears in its own copy
            assert term.lower() not in copy.lower()


@pytest.mark.parametrize("market, script", [("th-TH", {"THAI"}), ("ar-AE", {"ARABIC"}),
                                            ("ja-JP", {"KATAKANA", "HIRAGANA", "KATAKANA-HIRAGANA", "CJK"})])
def test_copy_is_written_in_the_markets_script(market, script):
    profile = load_profile(market)
    for text in [*profile.copy_templates.values(), *profile.products.values(), *(s.greeting for s in profile.seasons)]:
        letters = _script_of(text.replace("{product}", ""))
        assert letters and letters <= script | {"LATIN"} and letters & script, (market, text)


def test_vietnamese_copy_keeps_its_diacritics():
    profile = load_profile("vi-VN")
    text = " ".join(profile.copy_templates.values()) + " ".join(profile.products.values())
    assert any(unicodedata.decomposition(c) for c in text)  # ả, ặ, ồ ... not stripped to ASCII


def test_december_is_summer_in_the_south_and_winter_in_the_north():
    december, june = date(2026, 12, 15), date(2026, 6, 15)
    for market in ("en-AU", "pt-BR"):
        assert occasion_on(load_profile(market), december).season.name == "summer"
        assert occasion_on(load_profile(market), june).season.name == "winter"
    for market in ("en-US", "de-DE", "ja-JP"):
        assert occasion_on(load_profile(market), december).season.name == "winter"
    assert load_profile("en-AU").hemisphere == load_profile("pt-BR").hemisphere == "southern"


@pytest.mark.parametrize("market, day, holiday", [
    ("de-DE", "2026-12-15", "Christmas"), ("en-AU", "2026-12-24", "Christmas"),
    ("vi-VN", "2026-02-10", "Tết"), ("vi-VN", "2027-02-01", "Tết"), ("ar-AE", "2026-03-01", "Ramadan"),
    ("ar-AE", "2027-02-20", "Ramadan"), ("ar-AE", "2026-03-21", "Eid al-Fitr"),
    ("ja-JP", "2026-05-03", "Golden Week"), ("ja-JP", "2027-01-03", "New Year"),
    ("th-TH", "2026-04-13", "Songkran"), ("pt-BR", "2026-02-16", "Carnival"), ("pt-BR", "2027-02-08", "Carnival"),
    ("en-US", "2026-11-27", "Black Friday"), ("de-DE", "2026-07-01", None), ("ar-AE", "2026-06-01", None),
])
def test_holidays_by_date(market, day, holiday):
    found = occasion_on(load_profile(market), date.fromisoformat(day)).holiday
    assert (found.name if found else None) == holiday


def test_easter_is_computed_for_moveable_feasts():
    assert [easter_sunday(y) for y in (2024, 2025, 2026, 2027)] == [
        date(2024, 3, 31), date(2025, 4, 20), date(2026, 4, 5), date(2027, 3, 28)]


def test_prompt_combines_product_theme_scene_and_season():
    text = campaign_text(MUG, load_profile("en-AU"), date(2026, 12, 15), "gifts")
    for part in ("Diner Mug", "white ceramic mug", "summer", "gift idea", "christmas"):
        assert part in text.prompt.lower() or part in text.prompt
    assert "beach" in text.prompt  # every en-AU summer scene is a beach
    assert text.season == "summer" and text.holiday == "Christmas"
    assert text.headline == "Merry Christmas\nGift ideas: Mugs"
    winter = campaign_text(MUG, load_profile("de-DE"), date(2026, 12, 15), "sale")
    assert "winter" in winter.prompt and winter.headline == "Frohe Weihnachten\nJetzt reduziert: Becher"


def test_banned_terms_leave_the_prompt_for_the_negative_prompt():
    wine_glass = {**MUG, "title": "Wine Tumbler", "attributes": "{}"}
    text = campaign_text(wine_glass, load_profile("ar-AE"), date(2026, 6, 1), "sale", base_negative="blurry",
                         brand_banned=("cheap",))
    assert "wine" not in text.prompt.lower() and "Tumbler" in text.prompt
    negative = text.negative_prompt.split(", ")
    assert negative[0] == "blurry" and {"wine", "alcohol", "bikini", "cheap"} <= set(negative)


@pytest.mark.parametrize("market, price, currency, expected", [
    ("en-US", 12.5, None, "$12.50"), ("de-DE", 12.5, None, "12,50\xa0€"), ("pt-BR", 89.9, None, "R$\xa089,90"),
    ("ja-JP", 12800, None, "￥12,800"), ("th-TH", 990, None, "฿990.00"), ("vi-VN", 650000, None, "650.000\xa0₫"),
    ("ar-AE", 99, None, "\u200f99.00\xa0د.إ.\u200f"), ("th-TH", 29, "USD", "US$29.00"), ("en-US", None, None, None),
    ("en-AU", 1234.5, "USD", "USD\xa01,234.50"), ("ja-JP", 999999999.99, "THB", "THB\xa0999,999,999.99"),
    ("en-US", 1.005, "USD", "$1.005"),  # ingest refuses it (below); never rounded to $1.00
])
def test_prices_follow_cldr_for_the_market(market, price, currency, expected):
    assert format_price(price, currency, load_profile(market)) == expected


def test_a_market_without_a_profile_is_a_bad_row(tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("sku,title,category,markets\nA,Mug,mug,de-DE\nB,Tee,t-shirt,fr-FR;de-DE\n", encoding="utf-8")
    result = read_manifest(manifest, parse_job_config({"markets": ["en-US"]}))
    assert result.products.column("sku").to_pylist() == ["A"]
    (problem,) = result.problems()
    assert "line 3, field 'markets'" in problem and "'fr-FR' has no market profile" in problem
    # the same row is fine for a job that makes no campaign creative
    training = parse_job_config({"markets": ["en-US"], "kinds": ["training"]})
    assert read_manifest(manifest, training).products.num_rows == 2


def test_a_price_that_cannot_be_drawn_as_given_is_a_bad_row_and_rows_record_the_currency_drawn(tmp_path):
    from pipeline.plan import plan_items

    manifest = tmp_path / "catalog.csv"
    manifest.write_text("sku,title,category,markets,price,currency\n"
                        "A,Mug,mug,en-US;ja-JP,12.5,\n"      # one number, two currencies: which?
                        "B,Mug,mug,ja-JP,12.5,JPY\n"         # the yen has no decimals: it would read ￥12
                        "C,Mug,mug,en-US,1.005,USD\n"        # nor has the dollar three
                        "D,Mug,mug,de-DE;pt-BR,9.90,EUR\n"   # drawn in euros in both
                        "E,Mug,mug,ja-JP,1280,\n"            # its market's currency
                        "F,Mug,mug,en-US;de-DE,,\n", encoding="utf-8")
    config = parse_job_config({"markets": ["en-US"]})
    result = read_manifest(manifest, config)
    assert result.products.column("sku").to_pylist() == ["D", "E", "F"]
    problems = result.problems()
    assert "line 2, field 'currency': price 12.5 has no currency and its markets use USD, JPY" in problems[0]
    assert "line 3, field 'price': price 12.5 has more decimals than JPY's 0" in problems[1]
    assert "line 4, field 'price': price 1.005 has more decimals than USD's 2" in problems[2]
    items = plan_items(result.products, config, run_id="r", run_date="2026-05-01", width=64, height=64)
    drawn = {(r["sku"], r["market"]): (r["currency"], r["price_text"]) for r in items.to_pylist()}
    assert drawn == {("D", "de-DE"): ("EUR", "9,90\xa0€"), ("D", "pt-BR"): ("EUR", "€\xa09,90"),
                     ("E", "ja-JP"): ("JPY", "￥1,280"), ("F", "en-US"): (None, None), ("F", "de-DE"): (None, None)}
    # float noise is not a decimal: a float32 column's 12.99, JSON's 0.1 + 0.2
    import pyarrow as pa
    import pyarrow.parquet as pq

    noisy = tmp_path / "noisy.parquet"
    pq.write_table(pa.table({"sku": ["G", "H"], "title": ["Mug", "Mug"], "category": ["mug", "mug"],
                             "price": pa.array([12.99, 0.1 + 0.2], pa.float32()), "currency": ["USD", "EUR"]}), noisy)
    products = read_manifest(noisy, config).products
    assert products.num_rows == 2
    items = plan_items(products, config, run_id="r", run_date="2026-05-01", width=64, height=64)
    assert items.column("price_text").to_pylist() == ["$12.99", "€0.30"]
    # a training-only job draws no price: the same rows are fine
    assert read_manifest(manifest, parse_job_config({"markets": ["en-US"], "kinds": ["training"]})).bad_rows == 0


def test_job_markets_need_profiles_and_bad_profile_files_are_named(tmp_path):
    with pytest.raises(BadInputError, match=r"'fr-FR'.*no market profile"):
        parse_job_config({"markets": ["fr-FR"]})
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    good = (Path(__file__).resolve().parents[1] / "pipeline" / "markets" / "data" / "de-DE.yaml").read_text("utf-8")
    (profiles / "fr-FR.yaml").write_text(good.replace("market: de-DE", "market: fr-FR"), encoding="utf-8")
    config = parse_job_config({"markets": ["fr-FR"], "campaign": {"markets_dir": str(profiles)}})
    assert load_profile("fr-FR", config.campaign.markets_dir).currency == "EUR"
    (profiles / "fr-FR.yaml").write_text(good.replace("months: [12, 1, 2]", "months: [1, 2]")
                                         .replace("market: de-DE", "market: fr-FR"), encoding="utf-8")
    load_profile.__globals__["_profiles"].cache_clear()
    with pytest.raises(BadInputError, match=r"fr-FR.yaml: bad market profile.*each month 1-12 exactly once"):
        load_profile("fr-FR", profiles)
    for data in (b"\xff\xfe" + good.encode("utf-16-le"), b"a: " + b"[" * 5000):  # not UTF-8; nested too deeply
        (profiles / "fr-FR.yaml").write_bytes(data)
        load_profile.__globals__["_profiles"].cache_clear()
        with pytest.raises(BadInputError, match=r"fr-FR.yaml: cannot read market profile"):
            load_profile("fr-FR", profiles)
    load_profile.__globals__["_profiles"].cache_clear()


@pytest.mark.parametrize("old, new, message", [
    ('sale: "Jetzt reduziert: {product}"', 'sale: "Jetzt reduziert: {product:d}"', r"copy\.sale.*no format spec"),
    ('sale: "Jetzt reduziert: {product}"', 'sale: "Jetzt {product!r}"', r"copy\.sale.*no format spec"),
    ('sale: "Jetzt reduziert: {product}"', 'sale: "Jetzt {product:{x}}"', r"copy\.sale.*no format spec"),
    ('sale: "Jetzt reduziert: {product}"', 'sale: "Jetzt reduziert:\\n{product}"', r"copy\.sale.*line break"),
    ("greeting: Winterzeit,", 'greeting: "Winter\\tzeit",', r"seasons\.winter\.greeting.*control character"),
    ("fonts: [Noto Sans]", "fonts: [Arial, Noto Sans]", r"\['Arial'\] are not ones the project installs"),
    ("easter: [-14, 1]", "easter: [5, -5]", r"\[5, -5\] starts after it ends"),
])
def test_a_profile_that_would_break_every_creative_is_refused_naming_the_key(tmp_path, old, new, message):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    good = (Path(__file__).resolve().parents[1] / "pipeline" / "markets" / "data" / "de-DE.yaml").read_text("utf-8")
    assert old in good
    (profiles / "fr-FR.yaml").write_text(good.replace("market: de-DE", "market: fr-FR").replace(old, new), "utf-8")
    load_profile.__globals__["_profiles"].cache_clear()
    with pytest.raises(BadInputError, match=rf"fr-FR.yaml: bad market profile.*{message}"):
        load_profile("fr-FR", profiles)
    load_profile.__globals__["_profiles"].cache_clear()


def test_markets_dir_must_be_a_folder_and_a_config_files_relative_one_is_taken_from_its_folder(tmp_path):
    from pipeline.config import load_job_config

    with pytest.raises(BadInputError, match=r"key 'campaign.markets_dir': .*'/no/such/profiles' is not a folder"):
        parse_job_config({"campaign": {"markets_dir": "/no/such/profiles"}})
    (tmp_path / "jobs" / "profiles").mkdir(parents=True)
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text("campaign: {markets_dir: profiles}\n", encoding="utf-8")
    assert load_job_config(job).campaign.markets_dir == str((tmp_path / "jobs" / "profiles").resolve())
    from pipeline import orchestrate  # the DAGs read the same file the same way, wherever their task runs

    assert orchestrate._job_config({"config": str(job)}).campaign.markets_dir == \
        str((tmp_path / "jobs" / "profiles").resolve())


def test_market_tags_are_canonical_so_one_market_is_one_partition_and_unknown_regions_are_refused():
    from pipeline.ingest_fields import parse_markets
    from pipeline.locales import normalize_market

    # a tag is in every item id and partition: a deprecated alias is CLDR's language (iw -> he)
    assert [normalize_market(m) for m in ("iw-IL", "tl-PH", "in-ID", "he-IL", "en-us", "es-419", "zh-Hant-TW",
                                          "az-AZ")] == \
        ["he-IL", "fil-PH", "id-ID", "he-IL", "en-US", "es-419", "zh-Hant-TW", "az-AZ"]
    assert parse_markets("he-IL;iw-IL;en_us", ";") == ["he-IL", "en-US"]
    with pytest.raises(BadInputError, match=r"lists a market twice: 'iw-IL' and 'he_il' are both he-IL"):
        parse_job_config({"markets": ["en-US", "iw-IL", "he_il"], "kinds": ["training"]})
    with pytest.raises(ValueError, match=r"'en-ZZ' is not a locale known to CLDR"):
        normalize_market("en-ZZ")


def test_banned_terms_that_begin_or_end_with_a_sign_are_stripped_too():
    assert strip_terms("adult 18+ mug, c++ print, beach", ["18+", "C++"]) == "adult mug, print, beach"
    assert strip_terms("pineapple mug, apple", ["apple"]) == "pineapple mug"  # never inside a longer word


def test_a_profile_whose_copy_no_installed_font_draws_is_refused_with_its_characters(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    good = (Path(__file__).resolve().parents[1] / "pipeline" / "markets" / "data" / "de-DE.yaml").read_text("utf-8")
    hebrew = good.replace("market: de-DE", "market: he-IL").replace("language: de", "language: he")
    (profiles / "he-IL.yaml").write_text(hebrew.replace("Frohe Weihnachten", "חג שמח"), encoding="utf-8")
    with pytest.raises(BadInputError, match=r"he-IL\.yaml: bad market profile: holidays\.Christmas\.greeting: "
                                            r"no font of .*draws 'גחמש' \(U\+05D2, U\+05D7"):
        parse_job_config({"markets": ["he-IL"], "campaign": {"markets_dir": str(profiles)}})


def test_a_profile_named_by_a_deprecated_alias_serves_its_canonical_market(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    good = (Path(__file__).resolve().parents[1] / "pipeline" / "markets" / "data" / "en-US.yaml").read_text("utf-8")
    (profiles / "tl-PH.yaml").write_text(good.replace("market: en-US", "market: tl-PH"), encoding="utf-8")
    config = parse_job_config({"markets": ["tl-PH"], "campaign": {"markets_dir": str(profiles)}})
    assert config.markets == ("fil-PH",) and load_profile("fil-PH", config.campaign.markets_dir).market == "tl-PH"


def test_a_font_package_not_installed_leaves_profiles_loadable(monkeypatch):
    import sys

    from pipeline.campaign import fonts
    from pipeline.markets import profiles

    monkeypatch.setitem(sys.modules, "noto_cjk_sans_jp_regular", None)  # its wheel missing
    profiles._profiles.cache_clear()
    fonts.face.cache_clear()
    try:
        with pytest.raises(fonts.FontError, match="not installed"):
            fonts.face("Noto Sans CJK JP", 400)
        config = parse_job_config({"markets": ["en-US", "ja-JP"]})  # the overlay names it, row by row
        assert load_profile("ja-JP").fonts and config.markets == ("en-US", "ja-JP")
    finally:
        profiles._profiles.cache_clear()
        fonts.face.cache_clear()
