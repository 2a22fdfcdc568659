"""Render the example catalog's product photos: RGBA cut-outs (transparent background).

    .venv/bin/python examples/render_product_photos.py

They stand in for a shop's packshots: `examples/catalog.csv` names them in its `image` column
(paths relative to the catalog), and campaign creative keeps their pixels exactly while a new
background is generated around them.
"""

from pathlib import Path

from pipeline.models.renderer import RenderSpec, render_cutout

PHOTOS = {  # sku -> (category, colour, pattern); sizes as a shop's web packshots, small
    "SNK-001": ("sneaker", "white", "plain"),
    "BTL-002": ("bottle", "purple", "plain"),
    "LMP-001": ("lamp", "black", "plain"),
    "CHR-002": ("chair", "yellow", "plain"),
}

if __name__ == "__main__":
    folder = Path(__file__).resolve().parent / "products"
    folder.mkdir(exist_ok=True)
    for sku, (category, colour, pattern) in PHOTOS.items():
        image = render_cutout(RenderSpec(category, colour, pattern, jitter=7), size=384)
        image.save(folder / f"{sku}.png", optimize=True)
        print(folder / f"{sku}.png", image.size)
