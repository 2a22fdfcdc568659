"""Copy on the image: shaping per script (raqm), packaged fonts, auto-fit, WCAG contrast, layout."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageFont

from pipeline.campaign import fonts
from pipeline.campaign.colour import contrast_ratio, relative_luminance
from pipeline.campaign.layout import canvas_size, intersects, plan_layout, zone_boxes
from pipeline.campaign.overlay import TEXT_COLOURS, Copy, CopyDoesNotFit, _dilate, _plate_alpha, _worst, draw_copy
from pipeline.markets import load_profile

LINES = {
    "ar-AE": ("رمضان كريم", "تخفيضات: أكواب", "\u200f99.00\xa0د.إ.\u200f"),
    "th-TH": ("สุขสันต์วันสงกรานต์", "ลดราคา แก้วมัค", "฿990.00"),
    "ja-JP": ("ゴールデンウィーク", "セール：マグカップ", "￥12,800"),
    "vi-VN": ("Chúc Mừng Năm Mới", "Giảm giá: Cốc", "650.000\xa0₫"),
    "de-DE": ("Frohe Weihnachten", "Jetzt reduziert: Becher", "12,50\xa0€"),
}


def _copy(market: str, lines=None) -> Copy:
    profile = load_profile(market)
    lines = lines or LINES[market]
    return Copy(tuple(zip(("greeting", "offer", "price"), lines)), profile.language, profile.direction,
                profile.fonts, profile.line_break)


def _busy_background(size=(512, 512), seed=0) -> Image.Image:
    """Stripes from black to white with noise: no text colour is legible on it everywhere."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    stripes = np.where((np.arange(size[1]) // 24 % 2)[:, None, None] == 1, x, 255 - x)
    return Image.fromarray(np.clip(stripes + rng.normal(0, 20, stripes.shape), 0, 255).astype(np.uint8))


def _measured_contrast(source: Image.Image, drawn) -> float:
    """Independent check on the final pixels: rebuild the plate alone from the source image, call
    every pixel the copy changed "text", and take the worst WCAG ratio between the text colour (the
    most common changed colour) and the background pixels at least 2 px away from any text pixel."""
    box = drawn.box
    crop = np.asarray(drawn.image.crop(box)).astype(int)
    changed_colours, counts = np.unique(crop.reshape(-1, 3), axis=0, return_counts=True)
    text_rgb = max(TEXT_COLOURS, key=lambda c: counts[(changed_colours == c).all(-1)].sum())
    plate_rgb = np.array(TEXT_COLOURS[1] if text_rgb == TEXT_COLOURS[0] else TEXT_COLOURS[0])
    behind = np.asarray(source.crop(box)).astype(float)
    behind = behind * (1 - drawn.plate_alpha) + plate_rgb * drawn.plate_alpha
    text = (np.abs(crop - behind) > 3).any(-1)
    near = np.asarray(Image.fromarray((text * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(5)), bool)
    assert text.sum() > 50 and (~near).sum() > 50
    background = relative_luminance(crop[~near].reshape(-1, 3).astype(float))
    return float(contrast_ratio(relative_luminance(np.array(text_rgb)), background).min())


def test_fonts_come_from_installed_packages_and_cover_each_markets_copy():
    for market in ("en-US", "en-AU", "de-DE", "ja-JP", "vi-VN", "th-TH", "ar-AE", "pt-BR"):
        profile = load_profile(market)
        texts = [*(s.greeting for s in profile.seasons), *(h.greeting for h in profile.holidays),
                 *(t.format(product=w) for t in profile.copy_templates.values() for w in profile.products.values())]
        for text in texts:
            face = fonts.pick_face(profile.fonts, text)
            assert "site-packages" in str(face.path) and fonts.covers(face, text), (market, text)
    assert fonts.pick_face(("Noto Sans Arabic", "Noto Sans"), "Sale").family == "Noto Sans Arabic"
    assert fonts.pick_face(("Noto Sans Arabic",), "\u200f590.00\xa0฿").family == "Noto Sans Thai"  # fallback
    with pytest.raises(fonts.FontError, match="U\\+0D05"):
        fonts.pick_face(("Noto Sans",), "അ")  # Malayalam: no packaged font, so refused, never drawn as tofu
    loaded = fonts.load(fonts.face("Noto Sans Thai"), 40)
    assert loaded.layout_engine == ImageFont.Layout.RAQM


def test_a_missing_font_package_is_a_font_error_naming_it(monkeypatch):
    """A font wheel missing from an environment: a FontError naming the package to install (the
    overlay stage rejects that row, as for any line no packaged font draws), never an ImportError
    that stops the whole run."""
    import sys

    monkeypatch.setitem(sys.modules, "noto_cjk_sans_jp_regular", None)  # `import` raises ImportError
    fonts.face.cache_clear()
    try:
        with pytest.raises(fonts.FontError, match="pip install noto-cjk-sans-jp-regular"):
            fonts.face("Noto Sans CJK JP")
        with pytest.raises(fonts.FontError, match="noto-cjk-sans-jp-regular"):
            fonts.pick_face(("Noto Sans",), "Sale: ラグ")  # a Latin line that needs the CJK face
        assert fonts.pick_face(("Noto Sans",), "Sale").family == "Noto Sans"  # other lines still drawn
    finally:
        fonts.face.cache_clear()


def _mask(text: str, family: str, language: str, direction=None, engine=ImageFont.Layout.RAQM, size=48):
    font = ImageFont.truetype(str(fonts.face(family).path), size, layout_engine=engine)
    image = Image.new("L", (900, 120), 0)
    from PIL import ImageDraw

    ImageDraw.Draw(image).text((880 if direction == "rtl" else 10, 20), text, font=font, fill=255,
                               anchor="ra" if direction == "rtl" else "la", direction=direction, language=language)
    return np.asarray(image) > 127


def test_arabic_is_joined_and_runs_right_to_left():
    word, line = "رمضان", "رمضان كريم"
    shaped = _mask(word, "Noto Sans Arabic", "ar", "rtl")
    isolated = _mask(" ".join(word), "Noto Sans Arabic", "ar", "rtl")  # letters apart: isolated forms
    assert (shaped != isolated).mean() > 0.01  # joining forms differ from isolated letters
    # right to left: the first word of the line is drawn at its right end, exactly as alone
    full = _mask(line, "Noto Sans Arabic", "ar", "rtl")
    columns = np.nonzero(shaped.any(0))[0]
    right = full[:, columns.min():]
    assert (right != shaped[:, columns.min():]).sum() < 0.1 * shaped.sum()  # same up to anti-aliasing
    assert full[:, : columns.min() - 5].any()  # the second word is to its left


def test_thai_marks_sit_above_their_base_and_vietnamese_marks_stack():
    base, marked = _mask("ต", "Noto Sans Thai", "th"), _mask("ต้", "Noto Sans Thai", "th")
    mark = marked & ~base
    rows, cols = np.nonzero(mark)
    base_rows, base_cols = np.nonzero(base)
    assert rows.max() < base_rows.min()                                  # above the consonant ...
    assert base_cols.min() - 2 <= cols.min() and cols.max() <= base_cols.max() + 2  # ... not beside it
    composed = "Mừng Năm Mới, Cốc, Giảm giá"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    # HarfBuzz positions the combining marks as the precomposed glyphs look (within anti-aliasing)
    nfc, nfd = _mask(composed, "Noto Sans", "vi"), _mask(decomposed, "Noto Sans", "vi")
    assert (nfc != nfd).mean() < 0.002


@pytest.mark.parametrize("market", sorted(LINES))
def test_copy_is_fitted_in_its_area_and_legible(market):
    profile = load_profile(market)
    image = _busy_background()
    layout = plan_layout(512, 512, "1:1", profile.direction)
    drawn = draw_copy(image, _copy(market), layout.text)
    assert drawn.text == "\n".join(LINES[market])  # nothing wrapped at this size: drawn as given
    assert all(layout.text[i] <= drawn.box[i] for i in (0, 1)) and all(drawn.box[i] <= layout.text[i] for i in (2, 3))
    assert drawn.contrast >= 4.5 and _measured_contrast(image, drawn) >= 4.5
    assert drawn.plate_alpha > 0  # the stripes need a plate
    assert np.array_equal(np.asarray(image), np.asarray(_busy_background()))  # the input is not changed
    ink_x = np.nonzero((np.asarray(drawn.image) != np.asarray(image)).any(-1).any(0))[0]
    centre = (ink_x.min() + ink_x.max()) / 2
    assert (centre > 256) == (profile.direction == "rtl")  # Arabic is set from the right


def test_the_plate_is_the_least_legible_opacity_and_the_halo_is_pillows_max_filter():
    """The bisection finds the opacity a scan of all 21 steps finds; the separable dilation
    equals Pillow's MaxFilter (edges included)."""
    for seed in range(6):
        crop = np.asarray(_busy_background((160, 60), seed))
        if seed % 2:
            crop = np.clip(crop.astype(int) // 2 + 120, 0, 255).astype(np.uint8)  # light: dark text
        text_rgb = max(TEXT_COLOURS, key=lambda c: _worst(c, crop))
        plate = TEXT_COLOURS[1] if text_rgb == TEXT_COLOURS[0] else TEXT_COLOURS[0]
        scan = next((step / 20 for step in range(21)
                     if _worst(text_rgb, crop * (1 - step / 20) + np.array(plate) * step / 20) >= 4.55), 1.0)
        assert _plate_alpha(text_rgb, plate, crop) == scan > 0
    mask = np.random.default_rng(0).random((40, 70)) > 0.97
    mask[0, 5] = mask[-1, -1] = True
    for size in (3, 5, 9):
        pillow = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(size)), bool)
        assert np.array_equal(_dilate(mask, size), pillow)


def test_plain_backgrounds_need_no_plate_and_long_copy_wraps_or_shrinks():
    white = Image.new("RGB", (512, 512), (250, 250, 250))
    drawn = draw_copy(white, _copy("de-DE"), (20, 20, 492, 180))
    assert drawn.plate_alpha == 0 and drawn.contrast >= 4.5
    assert np.asarray(drawn.image)[drawn.box[1]:drawn.box[3], drawn.box[0]:drawn.box[2]].min() < 40  # dark text
    narrow = draw_copy(white, _copy("de-DE"), (20, 20, 150, 300))
    assert "\n" in narrow.text.split("\n", 1)[1] or narrow.text.count("\n") > 2  # wrapped at spaces
    assert narrow.text.replace("\n", " ").split() == " ".join(LINES["de-DE"]).split()
    japanese = draw_copy(white, _copy("ja-JP"), (20, 20, 140, 400))  # no spaces: breaks between characters
    assert japanese.text.replace("\n", "") == "".join(LINES["ja-JP"]) and japanese.text.count("\n") > 2
    assert not any(line.startswith(("ー", "：")) for line in japanese.text.split("\n"))
    with pytest.raises(CopyDoesNotFit):
        draw_copy(white, _copy("th-TH"), (0, 0, 30, 12))


@pytest.mark.parametrize("market, price", [("ja-JP", "CA$12,345,678.90"), ("ja-JP", "₩123,456,789,012"),
                                           ("ja-JP", "₹99,999,999.50"), ("de-DE", "12.345.678,90\xa0CHF")])
def test_a_price_is_never_split_across_lines_in_any_script(market, price):
    white = Image.new("RGB", (512, 268), (250, 250, 250))
    greeting, offer, _ = LINES[market]
    drawn = draw_copy(white, _copy(market, (greeting, offer, price)), (290, 30, 480, 238))  # 1.91:1's copy column
    assert drawn.text.split("\n")[-1] == price


def test_layout_keeps_copy_and_product_apart_and_clear_of_logo_zones():
    for fmt, (w, h) in {"1:1": (64, 64), "4:5": (56, 72), "9:16": (48, 88), "1.91:1": (88, 48)}.items():
        width, height = canvas_size(w, h, 512)
        assert max(width, height) == 512 and abs(width / height - w / h) < 0.02
        for direction in ("ltr", "rtl"):
            zones = ((0.75, 0.0, 1.0, 0.2),)
            layout = plan_layout(width, height, fmt, direction, zones)
            (zone,) = zone_boxes(zones, width, height)
            assert not intersects(layout.text, layout.product)
            assert not intersects(layout.text, zone) and not intersects(layout.product, zone)
            x0, y0, x1, y1 = layout.safe
            assert x0 <= layout.text[0] and layout.text[2] <= x1 and y0 <= layout.text[1] and layout.text[3] <= y1
    wide = plan_layout(512, 268, "1.91:1", "rtl")
    assert wide.text[0] > wide.product[2]  # Arabic copy on the right, the product on the left
    story = plan_layout(288, 512, "9:16", "ltr")
    assert story.text[1] >= round(0.14 * 512) and story.product[3] <= round(0.8 * 512)  # clear of the story UI


def test_without_raqm_latin_copy_uses_basic_layout_and_shaped_scripts_are_refused(monkeypatch):
    monkeypatch.setattr(fonts, "has_raqm", lambda: False)
    fonts.load.cache_clear()
    try:
        latin = fonts.load(fonts.face("Noto Sans", 700), 20)
        assert latin.layout_engine == ImageFont.Layout.BASIC
        assert fonts.layout_options("ltr", "en") == {}
        for family in sorted(fonts.SHAPED_FAMILIES):
            with pytest.raises(fonts.FontError, match="no raqm"):
                fonts.load(fonts.face(family, 700), 20)
    finally:
        fonts.load.cache_clear()  # later tests get raqm fonts again


def test_japanese_lines_break_between_characters_but_never_inside_a_price_or_before_a_closing_mark():
    from pipeline.campaign.overlay import _wrap

    def fits(n):
        return lambda line: len(line) <= n

    assert _wrap("セール：￥128,000", fits(8), "chars") == ["セール：", "￥128,000"]
    assert _wrap("￥128,000", fits(5), "chars") is None  # the price does not fit: a smaller size, not a split
    # ウ|ィ would begin a line with a small kana: ウ goes over with it
    assert _wrap("ゴールデンウィーク", fits(6), "chars") == ["ゴールデン", "ウィーク"]
    assert _wrap("ゴールデンウィーク", fits(8), "chars") == ["ゴールデンウィー", "ク"]
    assert _wrap("あああああ「ABC」です", fits(7), "chars") == ["あああああ", "「ABC」です"]  # 「 never ends a line
    assert _wrap("」」」", fits(1), "chars") is None  # no break allowed anywhere: a smaller size
    assert _wrap("Sale 20% off", fits(8), "spaces") == ["Sale 20%", "off"]
