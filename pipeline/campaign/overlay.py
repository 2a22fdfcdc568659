"""Draw campaign copy on an image: shaped in the market's script, auto-fitted, legible (WCAG).

Lines are laid out by Pillow's raqm engine (HarfBuzz shapes Arabic joining forms, Thai
stacked marks and Vietnamese diacritics; FriBiDi orders right-to-left runs), each in the
first font of the market's list that has every one of its glyphs. The largest size at
which every line fits the copy area (wrapping at spaces, or between characters for
Japanese; never the price) is used. The text colour is white or near-black, whichever contrasts more with
the pixels behind the copy; when even that falls under the WCAG AA ratio of 4.5:1 a
plate of the opposite colour is laid under the copy, as opaque as needed and no more.
The contrast is then measured on the final pixels: the worst ratio between the text
colour and any background pixel next to the glyphs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.campaign import fonts
from pipeline.campaign.colour import contrast_ratio, relative_luminance
from pipeline.campaign.layout import Box

MIN_CONTRAST = 4.5                      # WCAG 2 AA for normal text
TEXT_COLOURS = ((255, 255, 255), (17, 17, 17))
STYLES = {"greeting": (700, 1.0), "offer": (400, 0.8), "price": (700, 0.95)}  # role -> weight, size factor
MIN_SIZE = 9
# kinsoku shori: what never begins a line (closing marks, small kana, iteration marks) and what
# never ends one (opening brackets, a currency sign before its amount)
_NO_LINE_START = set("、。，．・：；？！ー）」』】〕〉》!?,.:;)]}%"
                     "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ々ゝゞヽヾ゛゜")
_NO_LINE_END = set("（「『【〔〈《([{￥¥$€£＄")
# in `chars` line breaking, a run of Latin letters or digits (a brand, a price: ￥128,000 with its
# sign) is one unit
_UNBREAKABLE = re.compile(r"[￥¥$€£＄]?[0-9A-Za-z０-９Ａ-Ｚａ-ｚ]+(?:[.,，．][0-9０-９]+)*|.", re.DOTALL)


class CopyDoesNotFit(ValueError):
    """The copy does not fit its area even at the smallest size."""


@dataclass(frozen=True)
class Copy:
    """What to draw: (role, text) lines in order, and how the market writes."""

    lines: tuple[tuple[str, str], ...]
    language: str
    direction: str            # "ltr" | "rtl"
    fonts: tuple[str, ...]    # families, in order of preference
    line_break: str = "spaces"  # "spaces" | "chars"


@dataclass(frozen=True)
class Overlay:
    image: Image.Image
    text: str            # exactly what was drawn, wrapped lines joined by "\n"
    fonts: str           # the faces used (family, weight, file, sha256)
    contrast: float      # worst WCAG ratio of the text colour against the pixels behind it
    box: Box             # the copy's block (and plate, when one was drawn)
    plate_alpha: float   # 0 when no plate was needed


@dataclass(frozen=True)
class _Line:
    text: str
    face: fonts.FontFace
    size: int
    x: int
    y: int


def _wrap(text: str, fits, line_break: str) -> list[str] | None:
    """Greedy wrap of `text` so that `fits(line)` holds for every line; None if a unit is too wide.

    With `chars` (Japanese), a line never begins with a closing mark or small kana nor ends with an
    opening mark: the units before the break are carried over to the new line (oidashi)."""
    chars = line_break == "chars"
    units = _UNBREAKABLE.findall(text) if chars else text.split(" ")
    joiner = "" if chars else " "
    lines: list[list[str]] = []
    for unit in units:
        if lines and fits(joiner.join([*lines[-1], unit])):
            lines[-1].append(unit)
            continue
        new = [unit]
        while chars and lines and lines[-1] and (new[0][0] in _NO_LINE_START or lines[-1][-1][-1] in _NO_LINE_END):
            new.insert(0, lines[-1].pop())
        if lines and not lines[-1]:  # no break allowed anywhere on the line
            return None
        if not fits(joiner.join(new)):
            return None
        lines.append(new)
    wrapped = [joiner.join(line) for line in lines]
    return [line for line in wrapped if line.strip()]


def _layout(copy: Copy, size: int, area: Box) -> list[_Line] | None:
    """Lines placed inside `area` at base size `size` (`y` is each line's baseline), or None
    when they do not fit.

    Lines are spaced by their ink, at least a cap height above and a descender below the
    baseline: fonts for scripts with stacked marks (Arabic, Thai) declare very tall line
    metrics, which would shrink their copy for room that most lines never use.
    """
    x0, y0, x1, y1 = area
    pad = max(2, round(size * 0.3))
    width, spacing = (x1 - x0) - 2 * pad, round(size * 0.22)
    kwargs = fonts.layout_options(copy.direction, copy.language)
    anchor = "rs" if copy.direction == "rtl" else "ls"
    placed, y = [], 0  # y: the bottom of the ink so far
    for role, text in copy.lines:
        weight, factor = STYLES[role]
        face = fonts.pick_face(copy.fonts, text, weight)
        font = fonts.load(face, max(MIN_SIZE, round(size * factor)))
        def fits(line: str) -> bool:
            return font.getlength(line, **kwargs) <= width

        # a price is one unit in any script (CA$12,345.90, ₩123,456, 12,50 €): a smaller size, never a split
        wrapped = ([text] if fits(text) else None) if role == "price" else _wrap(text, fits, copy.line_break)
        if not wrapped or len(wrapped) > 2:
            return None
        for line in wrapped:
            _, up, _, down = font.getbbox(line, anchor=anchor, **kwargs)
            above, below = max(-up, round(0.72 * font.size)), max(down, round(0.22 * font.size))
            baseline = y + (spacing if placed else 0) + above
            placed.append(_Line(line, face, font.size, 0, baseline))
            y = baseline + below
    if y > (y1 - y0) - 2 * pad:
        return None
    top = y0 + ((y1 - y0) - y) // 2
    start = x1 - pad if copy.direction == "rtl" else x0 + pad
    lines = [_Line(p.text, p.face, p.size, start, top + p.y) for p in placed]
    for line in lines:  # the ink itself (overhanging letters, stacked marks) must stay in the area
        left, up, right, down = fonts.load(line.face, line.size).getbbox(line.text, anchor=anchor, **kwargs)
        if line.x + left < x0 or line.x + right > x1 or line.y + up < y0 or line.y + down > y1:
            return None
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[_Line], copy: Copy, fill) -> None:
    anchor = "rs" if copy.direction == "rtl" else "ls"
    for line in lines:
        draw.text((line.x, line.y), line.text, font=fonts.load(line.face, line.size), fill=fill,
                  anchor=anchor, **fonts.layout_options(copy.direction, copy.language))


def fit(copy: Copy, area: Box) -> list[_Line]:
    """The largest size at which the copy fits `area` (binary search on the base size)."""
    lo, hi, best = MIN_SIZE, max(MIN_SIZE, (area[3] - area[1]) // 2), None
    while lo <= hi:
        mid = (lo + hi) // 2
        lines = _layout(copy, mid, area)
        if lines is None:
            hi = mid - 1
        else:
            best, lo = lines, mid + 1
    if best is None:
        raise CopyDoesNotFit(f"the copy {[t for _, t in copy.lines]} does not fit {area} even at {MIN_SIZE}px")
    return best


def _glyph_mask(size: tuple[int, int], lines: list[_Line], copy: Copy) -> Image.Image:
    mask = Image.new("L", size, 0)
    _draw_lines(ImageDraw.Draw(mask), lines, copy, 255)
    return mask


def _worst(text_rgb, background: np.ndarray) -> float:
    """The lowest contrast of `text_rgb` against any of the background pixels."""
    if background.size == 0:
        return 21.0
    lum = relative_luminance(background.reshape(-1, 3))
    return float(contrast_ratio(relative_luminance(np.array(text_rgb)), lum).min())


def _plate_alpha(text_rgb, plate_rgb, behind: np.ndarray) -> float:
    """The least plate opacity, in steps of 1/20, at which the copy reaches MIN_CONTRAST (with a
    0.05 margin); 1 when even a full plate does not. The plate's colour is the one opposite the
    text's, so contrast rises with opacity: a bisection over the 21 steps (5 checks, not 20)."""
    def legible(step: int) -> bool:
        alpha = step / 20
        return _worst(text_rgb, behind * (1 - alpha) + np.array(plate_rgb) * alpha) >= MIN_CONTRAST + 0.05

    if legible(0):
        return 0.0
    fails, passes = 0, 20  # passes: the full plate, used even when it falls short
    while passes - fails > 1:
        mid = (fails + passes) // 2
        fails, passes = (fails, mid) if legible(mid) else (mid, passes)
    return passes / 20


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """`mask` grown by a size x size square (Pillow's MaxFilter, as two 1-D passes: O(size), not O(size^2))."""
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask, size=size, mode="nearest")


def draw_copy(image: Image.Image, copy: Copy, area: Box) -> Overlay:
    """Draw `copy` into `area` of `image` (a new image is returned; the input is not changed)."""
    lines = fit(copy, area)
    base = image.convert("RGB")
    glyphs = _glyph_mask(base.size, lines, copy)
    ink = glyphs.getbbox() or (area[0], area[1], area[0] + 1, area[1] + 1)
    pad = max(2, round(lines[0].size * 0.3))
    box = (max(area[0], ink[0] - pad), max(area[1], ink[1] - pad), min(area[2], ink[2] + pad), min(area[3], ink[3] + pad))
    behind = np.asarray(base.crop(box))
    # 1. The text colour that contrasts more with what is behind the copy
    text_rgb = max(TEXT_COLOURS, key=lambda c: _worst(c, behind))
    plate_rgb = TEXT_COLOURS[1] if text_rgb == TEXT_COLOURS[0] else TEXT_COLOURS[0]
    # 2. A plate, only as opaque as legibility needs
    alpha = _plate_alpha(text_rgb, plate_rgb, behind)
    out = base.copy()
    if alpha > 0:
        layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
        ImageDraw.Draw(layer).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(*plate_rgb, round(alpha * 255)))
        out = Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")
    # 3. The copy, then the contrast it really has: background pixels around (not under) glyphs
    before = np.asarray(out.crop(box))
    _draw_lines(ImageDraw.Draw(out), lines, copy, text_rgb)
    glyphs = np.asarray(glyphs.crop(box)) > 0
    near = _dilate(glyphs, 2 * (pad // 2) + 1)
    under = _dilate(glyphs, 3)  # glyphs and their anti-aliased edge
    contrast = _worst(text_rgb, before[near & ~under])
    used = "; ".join(dict.fromkeys(line.face.label for line in lines))
    return Overlay(out, "\n".join(line.text for line in lines), used, round(contrast, 3), box, alpha)
