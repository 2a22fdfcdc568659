"""Image measures used to evaluate the tiny models: SSIM, product region and its colour name."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.models.renderer import COLOURS, RenderSpec, body_mask


def _gaussian_blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, radius, mode="reflect")
    rows = sum(w * pad[:, i:i + x.shape[1]] for i, w in enumerate(k))
    return sum(w * rows[i:i + x.shape[0], :] for i, w in enumerate(k))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of two RGB uint8
    images, computed on luma."""
    weights = np.array([0.299, 0.587, 0.114])
    x, y = (np.asarray(im, np.float64)[..., :3] @ weights for im in (a, b))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    vx, vy = _gaussian_blur(x * x) - mx * mx, _gaussian_blur(y * y) - my * my
    cov = _gaussian_blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


@lru_cache(maxsize=None)
def category_prior(category: str, size: int = 64, samples: int = 48) -> np.ndarray:
    """Where the coloured body of a `category` product lies, over many poses (fraction 0..1)."""
    masks = [body_mask(RenderSpec(category, "red", jitter=j), size) for j in range(samples)]
    return np.mean(masks, axis=0)


@lru_cache(maxsize=None)
def _references() -> tuple[np.ndarray, np.ndarray]:
    """Reference RGB values per colour name: the renderer's base colour under its side light,
    and its lighter tint (stripes, dots)."""
    refs, names = [], []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        base = np.array(rgb, np.float64)
        light = np.clip(base * 0.6 + 110, 0, 255) if name != "white" else base * 0.82
        for shade in (0.8, 0.9, 1.0, 1.05):
            refs += [np.clip(base * shade, 0, 255)]
            names.append(i)
        refs.append(light * 0.95)
        names.append(i)
    return np.array(refs), np.array(names)


def colour_votes(pixels: np.ndarray) -> np.ndarray:
    """How many of the N x 3 `pixels` are nearest to each named colour (in `COLOURS` order)."""
    refs, names = _references()
    d = ((pixels[:, None, :].astype(np.float64) - refs[None]) ** 2).sum(-1)
    return np.bincount(names[d.argmin(1)], minlength=len(COLOURS))


def product_pixels(image: np.ndarray, category: str) -> np.ndarray:
    """Pixels of the product region: inside the category's usual body area and unlike the
    image border (the scene), so backdrop pixels inside that area are left out."""
    img = np.asarray(image, np.float64)[..., :3]
    prior = category_prior(category, img.shape[0]) > 0.35
    border = np.concatenate([img[:3].reshape(-1, 3), img[:, :3].reshape(-1, 3), img[:, -3:].reshape(-1, 3)])
    border = border[:: max(1, len(border) // 256)]
    dist = np.sqrt(((img.reshape(-1, 1, 3) - border[None]) ** 2).sum(-1)).min(1).reshape(img.shape[:2])
    region = prior & (dist > 30)
    if region.sum() < 12:  # product matches its scene (a white mug in snow): use the prior alone
        region = prior
    return img[region]


def dominant_colour(image: np.ndarray, category: str) -> str:
    """The colour name most of the product region's pixels are closest to."""
    return list(COLOURS)[int(colour_votes(product_pixels(image, category)).argmax())]
