"""Brand style: colour science (CIEDE2000, WCAG), the palette gate, the committed LoRA adapter fused
into the tiny model, brand rules in the plan (adapter lineage, banned terms, logo-free zones)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.campaign.brand import WEIGHT_NAME, adapter_file, fused_pipeline
from pipeline.campaign.colour import ciede2000, contrast_ratio, hex_to_rgb, relative_luminance
from pipeline.campaign.gates import campaign_reasons
from pipeline.campaign.layout import intersects, zone_boxes
from pipeline.campaign.palette import dominant_colours, palette_distance
from pipeline.config import parse_job_config
from pipeline.errors import BadInputError
from pipeline.plan import plan_items
from pipeline.schema import PRODUCT_SCHEMA

NORTHWIND = ["#1F3A5F", "#88919A", "#F2E8D5"]
ADAPTER = "northwind-look"
# Sharma, Wu and Dalal (2005), supplementary test data: (Lab 1, Lab 2, Delta E 2000)
SHARMA = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0),
          ((50, 0, 0), (50, -1, 2), 2.3669), ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792),
          ((50, 2.5, 0), (73, 25, -18), 27.1492), ((50, 2.5, 0), (61, -5, 29), 22.8977),
          ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
          ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373),
          ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
          ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082)]


def test_ciede2000_matches_the_published_test_data():
    first, second, expected = (np.array([row[i] for row in SHARMA], float) for i in range(3))
    assert np.abs(ciede2000(first, second) - expected).max() < 1e-4
    assert np.abs(ciede2000(second, first) - expected).max() < 1e-4  # symmetric


def test_wcag_contrast_ratios():
    white, black, grey = (relative_luminance(np.array(c, float)) for c in ((255,) * 3, (0,) * 3, (118,) * 3))
    assert contrast_ratio(white, black) == pytest.approx(21.0)
    assert contrast_ratio(grey, white) == pytest.approx(4.54, abs=0.01)  # #767676: the lightest AA grey on white
    with pytest.raises(ValueError, match="not a colour"):
        hex_to_rgb("navy")


def test_palette_distance_is_small_on_brand_and_large_off_brand():
    stripes = np.zeros((60, 90, 3), np.uint8)
    for i, colour in enumerate(NORTHWIND):
        stripes[:, i * 30:(i + 1) * 30] = hex_to_rgb(colour)
    on_brand = Image.fromarray(stripes)
    colours, shares = dominant_colours(on_brand)
    assert shares.sum() == pytest.approx(1.0) and len(colours) == 3
    assert palette_distance(on_brand, NORTHWIND) < 1.0
    off_brand = Image.new("RGB", (60, 60), (230, 30, 40))
    assert palette_distance(off_brand, NORTHWIND) > 30
    table = pa.table({"kind": ["campaign", "campaign", "training"], "headline": ["x"] * 3, "overlay_text": ["x"] * 3,
                      "overlay_contrast": [7.0] * 3, "product_image": [None] * 3, "product_diff": [None] * 3,
                      "palette_distance": [palette_distance(on_brand, NORTHWIND), 41.5, 99.0]})
    reasons = campaign_reasons(table, 25.0, 0.0)
    assert reasons[0] == [] and reasons[2] == []  # on brand; another kind is not gated
    assert reasons[1] == ["palette: CIEDE2000 41.5 from the brand palette > 25"]
    assert campaign_reasons(table, None, 0.0) == [[], [], []]  # no limit: recorded, not gated


@pytest.fixture(scope="module")
def base(models_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(models_dir / "tiny" / "diffusion"), local_files_only=True,
                                                   use_safetensors=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, prompts):
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.inference_mode():
        out = pipe(prompts, generator=generators, num_inference_steps=8, guidance_scale=7.5, output_type="np")
    return [Image.fromarray((out.images[i] * 255).round().astype(np.uint8)) for i in range(len(prompts))]


def test_the_committed_adapter_is_small_and_fuses_without_touching_the_base(base, models_dir):
    lora_dir = models_dir / "tiny" / "lora"
    assert adapter_file(lora_dir, ADAPTER).stat().st_size < 1_000_000
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    fused = fused_pipeline(base, lora_dir, ADAPTER, 1.0)
    assert all(torch.equal(before[k], v) for k, v in base.unet.state_dict().items())  # base untouched
    changed = [k for k, v in fused.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and not any("lora" in k for k in fused.unet.state_dict())  # fused in, layers unloaded
    with pytest.raises(RuntimeError, match="changed since the run was planned"):
        fused_pipeline(base, lora_dir, ADAPTER, 1.0, sha256="0" * 64)


def test_the_adapter_moves_images_toward_the_brand_palette(base, models_dir):
    prompts = ["a red mug on a beach, product photo", "a green backpack in a forest",
               "a yellow chair in a living room", "an orange sneaker on a city street"]
    plain = _images(base, prompts)
    styled = _images(fused_pipeline(base, models_dir / "tiny" / "lora", ADAPTER, 1.0), prompts)
    plain_d = [palette_distance(im, NORTHWIND) for im in plain]
    styled_d = [palette_distance(im, NORTHWIND) for im in styled]
    assert np.mean(styled_d) < np.mean(plain_d) - 3, (plain_d, styled_d)
    assert sum(s < p for s, p in zip(styled_d, plain_d)) >= 3


def test_brand_rules_reach_the_plan(models_dir):
    config = parse_job_config({"markets": ["ar-AE"], "formats": ["1:1"], "campaign": {"brands": {"Northwind": {
        "adapters": {"tiny": ADAPTER}, "adapter_scale": 0.8, "palette": NORTHWIND,
        "logo_free_zones": [[0.0, 0.0, 0.3, 0.25]], "banned_terms": ["cheap"]}}}})
    products = pa.Table.from_pylist([
        {"line": 2, "sku": "MUG-1", "title": "Cheap Mug", "category": "mug", "attributes": "{}", "markets": [],
         "brand": "Northwind"},
        {"line": 3, "sku": "MUG-2", "title": "Mug", "category": "mug", "attributes": "{}", "markets": [],
         "brand": "Other"},
        {"line": 4, "sku": "MUG-3", "title": "Cheap Cup", "category": "mug", "attributes": "{}", "markets": [],
         "brand": " northwind "}], schema=PRODUCT_SCHEMA)  # as another exporter writes the brand
    items = plan_items(products, config, run_id="r", run_date="2026-11-26", width=64, height=64,
                       models_dir=models_dir).to_pylist()
    branded, other, lower = sorted(items, key=lambda item: item["sku"])
    assert (lower["brand_adapter"], "cheap" in lower["prompt"].lower()) == (ADAPTER, False)  # the same brand
    expected = hashlib.sha256((models_dir / "tiny" / "lora" / ADAPTER / WEIGHT_NAME).read_bytes()).hexdigest()
    assert (branded["brand_adapter"], branded["brand_adapter_sha256"]) == (ADAPTER, expected)
    assert branded["brand_adapter_scale"] == pytest.approx(0.8)
    assert other["brand_adapter"] is None and other["brand_adapter_sha256"] is None
    assert "cheap" not in branded["prompt"].lower() and "cheap" in branded["negative_prompt"].split(", ")
    (zone,) = zone_boxes([(0.0, 0.0, 0.3, 0.25)], 512, 512)
    assert not intersects(tuple(branded["text_box"]), zone) and intersects(tuple(other["text_box"]), zone)


@pytest.mark.parametrize("brand, message", [({"palette": ["navy"]}, "not a colour like"),
                                            ({"logo_free_zones": [[0.5, 0.1, 0.4, 0.2]]}, "0 <= x0 < x1 <= 1")])
def test_bad_brand_profiles_are_refused_naming_the_key(brand, message):
    with pytest.raises(BadInputError, match=f"campaign.brands.B.*{message}"):
        parse_job_config({"campaign": {"brands": {"B": brand}}})


def test_two_brand_profiles_whose_names_differ_only_in_case_are_refused():
    with pytest.raises(BadInputError, match=r"campaign.brands.*'Northwind' and 'NORTHWIND' differ only in case"):
        parse_job_config({"campaign": {"brands": {"Northwind": {}, "NORTHWIND": {}}}})
