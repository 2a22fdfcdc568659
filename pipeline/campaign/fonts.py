"""Fonts for campaign copy, from packages the project installs (`pip install -e .`), never the system.

Noto Sans (Latin, Vietnamese), Noto Sans Arabic and Noto Sans Thai come from the `fontpkg-*`
wheels (variable fonts: the weight axis is set); Noto Sans CJK JP from the
`noto-cjk-sans-jp-regular` wheel (one weight). A line of copy is drawn in the first family of
the market profile's list whose character map covers every character of the line, so no
character is ever drawn as a missing-glyph box ("tofu").
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# family -> (pip package, how to find the file). Variable fontpkg families take any weight.
FONT_PACKAGES = {
    "Noto Sans": "fontpkg-noto-sans",
    "Noto Sans Arabic": "fontpkg-noto-sans-arabic",
    "Noto Sans Thai": "fontpkg-noto-sans-thai",
    "Noto Sans CJK JP": "noto-cjk-sans-jp-regular",
}


# After a market's own fonts: a price in another market's currency (฿ in Dubai) still gets a face.
FALLBACK = ("Noto Sans", "Noto Sans Thai", "Noto Sans Arabic", "Noto Sans CJK JP")


class FontError(LookupError):
    """No installed font of a market's list can draw a line of its copy."""


class MissingGlyphs(FontError):
    """The fonts are installed, and none of them has a glyph the copy needs."""


@dataclass(frozen=True)
class FontFace:
    """A font file at one weight: what draws a line and what the row records."""

    family: str
    weight: int
    path: Path
    variable: bool

    @property
    def label(self) -> str:
        """`Noto Sans Thai 700 (NotoSansThai[wdth,wght].ttf, sha256 1a2b3c4d5e6f)` for lineage."""
        return f"{self.family} {self.weight} ({self.path.name}, sha256 {file_sha256(self.path)[:12]})"


@lru_cache(maxsize=None)
def file_sha256(path: Path) -> str:
    """The font file's sha256: the exact glyphs drawn, whatever the package version says."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def face(family: str, weight: int = 700) -> FontFace:
    """The installed file of `family` at `weight` (the nearest weight a static family has)."""
    if family not in FONT_PACKAGES:
        raise FontError(f"font family {family!r} is not one the project installs; known: {', '.join(FONT_PACKAGES)}")
    # A wheel missing from the environment is a FontError: the overlay stage rejects that row and
    # the run goes on (an ImportError inside a Ray task would abort it).
    if family == "Noto Sans CJK JP":
        try:
            import noto_cjk_sans_jp_regular
        except ImportError as exc:
            raise _not_installed(family, exc) from None
        return FontFace(family, 400, Path(str(noto_cjk_sans_jp_regular.FONT_PATH)), False)
    import fontpkg

    try:
        chosen = fontpkg.select_file(fontpkg.family(family), weight, "normal", nearest=True)
    except fontpkg.FontpkgError as exc:
        raise _not_installed(family, exc) from None
    return FontFace(family, weight if chosen.variable else (chosen.weight or 400), Path(chosen.path), chosen.variable)


def _not_installed(family: str, cause: Exception) -> FontError:
    return FontError(f"font family {family!r} is not installed ({cause}); pip install {FONT_PACKAGES[family]}")


@lru_cache(maxsize=None)
def _cmap(path: Path) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(str(path), lazy=True) as font:
        return frozenset(font.getBestCmap())


def _needs_glyph(char: str) -> bool:
    # Format characters (RLM, ALM, ZWJ ...) steer the bidi algorithm and shaping; they have no glyph.
    return unicodedata.category(char) not in ("Cf", "Cc", "Zl", "Zp")


def covers(font: FontFace, text: str) -> bool:
    """True when the font has a glyph for every visible character of `text`."""
    cmap = _cmap(font.path)
    return all(ord(c) in cmap for c in text if _needs_glyph(c))


def pick_face(families: tuple[str, ...], text: str, weight: int = 700) -> FontFace:
    """The first family of `families`, then of FALLBACK, that covers `text`; FontError names what
    no packaged font has."""
    families = tuple(dict.fromkeys((*families, *FALLBACK)))
    for family in families:
        candidate = face(family, weight)
        if covers(candidate, text):
            return candidate
    missing = sorted({c for c in text if _needs_glyph(c) and not any(covers(face(f, weight), c) for f in families)})
    raise MissingGlyphs(f"no font of {list(families)} draws {''.join(missing)!r} "
                    f"({', '.join(f'U+{ord(c):04X}' for c in missing)})")


@lru_cache(maxsize=1)
def has_raqm() -> bool:
    """Whether this Pillow has the raqm layout engine (asked once per process)."""
    from PIL import features

    return features.check("raqm")


def layout_options(direction: str, language: str) -> dict:
    """Pillow's text direction and language options: raqm takes them, basic layout takes none."""
    return {"direction": direction, "language": language} if has_raqm() else {}


# Faces whose scripts are unreadable without shaping (joining forms, reordering, mark stacking).
SHAPED_FAMILIES = frozenset({"Noto Sans Arabic", "Noto Sans Thai"})


@lru_cache(maxsize=256)
def load(font: FontFace, size: int):
    """A Pillow FreeType font with the raqm layout engine (HarfBuzz shaping, FriBiDi reordering).

    Without raqm (a Pillow built without libraqm) only the scripts that need no shaping are
    drawn, with Pillow's basic layout; Arabic and Thai faces are refused rather than drawn wrong.
    """
    from PIL import ImageFont

    layout = ImageFont.Layout.RAQM
    if not has_raqm():
        if font.family in SHAPED_FAMILIES:
            raise FontError(f"this Pillow has no raqm (libraqm): {font.family} would be drawn unshaped")
        layout = ImageFont.Layout.BASIC
    loaded = ImageFont.truetype(str(font.path), size, layout_engine=layout)
    if font.variable:
        axes = loaded.get_variation_axes()
        names = [a["name"].decode() if isinstance(a["name"], bytes) else a["name"] for a in axes]
        loaded.set_variation_by_axes([float(font.weight) if n.lower() in ("weight", "wght") else float(a["default"])
                                      for n, a in zip(names, axes)])
    return loaded
