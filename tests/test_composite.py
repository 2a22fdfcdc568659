"""Product photos: cut-out from alpha, background inpainted by the tiny model, product pixels exact,
the integrity gate; channel formats; the campaign CPU stages' contracts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from pipeline.campaign.chain import campaign_generation, campaign_stages
from pipeline.campaign.gates import campaign_reasons
from pipeline.campaign.photo import PhotoError, load_cutout, placed_cutout
from pipeline.campaign.planner import campaign_problems
from pipeline.config import parse_job_config
from pipeline.ingest import read_manifest
from pipeline.models.presets import resolve_model, weights_sha256
from pipeline.models.renderer import RenderSpec, render_cutout
from pipeline.plan import format_size, plan_items
from pipeline.training.labels import decode_mask
from pipeline.stages.generate import GenerateStage

FORMATS = ["1:1", "1.91:1"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    render_cutout(RenderSpec("bottle", "purple", jitter=7), size=128).save(folder / "bottle.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "flat.png")           # no alpha: not a cut-out
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(folder / "empty.png")          # nothing opaque
    Image.new("RGBA", (64, 64), (30, 160, 30, 255)).save(folder / "opaque.png")   # alpha, nothing clear
    path = folder / "catalog.csv"
    path.write_text("sku,title,category,markets,image,price,currency\n"
                    "BTL-1,Glass Bottle,bottle,th-TH;ar-AE,bottle.png,590,THB\n"
                    "MUG-1,Mug,mug,th-TH,,9,USD\n"
                    "BAD-1,Flat,mug,th-TH,flat.png,1,USD\n"
                    "BAD-2,Empty,mug,th-TH,empty.png,1,USD\n"
                    "BAD-3,Opaque,mug,th-TH,opaque.png,1,USD\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config():
    return parse_job_config({"markets": ["th-TH"], "formats": FORMATS, "executor": "local",
                             "campaign": {"canvas": 256, "background_strength": 0.9}})


@pytest.fixture(scope="module")
def ingested(catalog, config):
    return read_manifest(catalog, config)


@pytest.fixture(scope="module")
def produced(ingested, config, models_dir):
    """Generate (with inpainting around the photo) -> composite -> overlay -> integrity, 4 steps."""
    model = resolve_model("tiny", models_dir)
    items = plan_items(ingested.products, config, run_id="r", run_date="2026-11-26", width=64, height=64,
                       models_dir=models_dir)
    generator = {"path": str(model.path), "steps": 4, "guidance_scale": 7.5}
    generate = GenerateStage(model.path, model.name, weights_sha256(model.path), model.pipeline_class, 4, 7.5,
                             campaign=campaign_generation(config, generator))
    plain = GenerateStage(model.path, model.name, "x", model.pipeline_class, 4, 7.5)  # text to image only
    stages = campaign_stages(config)
    for stage in (generate, plain, *stages):
        stage.setup()
    generated = generate(items)
    out = generated
    for stage in stages:
        out = stage(out)
    return {"items": items, "generated": generated, "plain": plain(items.slice(0, 1)), "out": out, "stages": stages}


def test_unusable_product_photos_are_bad_rows(ingested, config):
    assert ingested.products.column("sku").to_pylist() == ["BTL-1", "MUG-1"]
    problems = "\n".join(ingested.problems())
    assert "line 4, field 'image': the product photo has no alpha channel" in problems
    assert "line 5, field 'image': the product photo is (almost) fully transparent" in problems
    assert "line 6, field 'image': the product photo's alpha channel is fully opaque" in problems
    # an https photo that ingest allowed is still not fetched for compositing
    remote = {"markets": ["th-TH"], "image": "https://cdn.example.com/a.png"}
    (problem,) = campaign_problems(remote, {"image": "image", "markets": "markets"}, config)
    assert problem == ("image", "background replacement reads local product photos only; "
                                "image URLs are not fetched for campaign creative")


def test_a_tightly_cropped_box_shaped_product_with_soft_edges_is_a_cut_out(tmp_path, config):
    box = Image.new("RGBA", (300, 400), (120, 80, 40, 255))
    box.paste((120, 80, 40, 180), (0, 0, 300, 1))  # the cut-out tool's soft top and bottom edges
    box.paste((120, 80, 40, 180), (0, 399, 300, 400))
    box.save(tmp_path / "box.png")
    assert campaign_problems({"markets": ["th-TH"], "image": str(tmp_path / "box.png")},
                             {"image": "image", "markets": "markets"}, config) == []


def test_a_photo_larger_than_any_creative_is_refused_before_it_is_decoded(tmp_path, config, monkeypatch):
    Image.new("LA", (4100, 4100)).save(tmp_path / "huge.png")  # 16.8 MP of nothing: a few KB on disk
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded the whole photo"))
    product = {"markets": ["th-TH"], "image": str(tmp_path / "huge.png")}
    (problem,) = campaign_problems(product, {"image": "image", "markets": "markets"}, config)
    assert problem == ("image", "the product photo is 4100x4100 px, over 16,777,216 pixels (4096x4096, the "
                                "largest canvas): scale it down")


def test_a_damaged_or_unusual_photo_is_a_bad_row_whatever_pillow_raises(tmp_path, config):
    """Pillow raises more than OSError: ValueError for a text chunk that unpacks too large (an
    editor's XMP), SyntaxError for a broken chunk length. Each is the row's problem, not a crash."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "x" * 2_000_000, zip=True)
    cutout = Image.new("RGBA", (8, 8), (200, 10, 10, 255))
    cutout.save(tmp_path / "xmp.png", pnginfo=info)
    good = tmp_path / "good.png"
    cutout.save(good)
    data = bytearray(good.read_bytes())
    idat = data.index(b"IDAT") - 4
    data[idat:idat + 4] = (6).to_bytes(4, "big")  # a chunk length that cuts the image data short
    (tmp_path / "length.png").write_bytes(bytes(data))
    for name, raised in (("xmp.png", "ValueError"), ("length.png", "SyntaxError")):
        product = {"markets": ["th-TH"], "image": str(tmp_path / name)}
        (problem,) = campaign_problems(product, {"image": "image", "markets": "markets"}, config)
        assert problem[0] == "image" and problem[1].startswith(f"cannot read the product photo ({raised}")


def test_product_pixels_are_kept_exactly_and_the_background_is_generated(produced):
    out, plain = produced["out"].to_pylist(), produced["plain"].to_pylist()
    photo_rows = [i for i, r in enumerate(out) if r["product_image"]]
    assert len(photo_rows) == 2 * len(FORMATS)  # BTL-1 in th-TH and ar-AE, every format
    for i in photo_rows:
        row = out[i]
        image = Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"])
        box = tuple(row["product_box"])
        placed = placed_cutout(row["product_image"], row["product_image_sha256"], box)
        opaque = np.asarray(placed.getchannel("A")) == 255
        shown = np.asarray(image.crop(box))
        assert np.array_equal(shown[opaque], np.asarray(placed.convert("RGB"))[opaque])
        assert row["product_diff"] == 0.0
        # the row says where the product is: COCO bbox and a PNG mask of the published image's size
        alpha = np.asarray(placed.getchannel("A")) >= 128
        ys, xs = np.nonzero(alpha)
        assert row["bbox"] == [box[0] + xs.min(), box[1] + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        mask = decode_mask(row["mask"])
        assert mask.shape == (row["height"], row["width"]) and mask.sum() == alpha.sum()
        assert np.array_equal(mask[box[1]:box[3], box[0]:box[2]], alpha)
    assert all(r["bbox"] is None and r["mask"] is None for r in out if not r["product_image"])
    # the background came from inpainting, not from the plain text-to-image scene: compare the
    # copy's area (well away from the product) at the model's size
    first = produced["generated"].slice(0, 1).to_pylist()[0]
    assert first["product_image"] and first["format"] == "1:1"
    scale = first["width"] / out[0]["width"]
    x0, y0, x1, y1 = (round(v * scale) for v in first["text_box"])
    inpainted = np.frombuffer(first["pixels"], np.uint8).reshape(64, 64, 3)[y0:y1, x0:x1]
    scene = np.frombuffer(plain[0]["pixels"], np.uint8).reshape(64, 64, 3)[y0:y1, x0:x1]
    assert np.abs(inpainted.astype(int) - scene).mean() > 5
    assert campaign_reasons(produced["out"], None, 0.0) == [[] for _ in out]


def test_copy_over_the_product_fails_the_integrity_gate(produced):
    out = produced["out"]
    row = next(i for i, r in enumerate(out.to_pylist()) if r["product_image"])
    tampered = out.slice(row, 1).to_pylist()[0]
    image = Image.frombytes("RGB", (tampered["width"], tampered["height"]), tampered["pixels"])
    x0, y0, x1, y1 = tampered["product_box"]
    ImageDraw.Draw(image).rectangle([x0, (y0 + y1) // 2, x1, (y0 + y1) // 2 + 12], fill=(255, 255, 255))
    table = out.slice(row, 1).set_column(out.schema.get_field_index("pixels"), "pixels",
                                         pa.array([image.tobytes()], pa.binary()))
    checked = produced["stages"][-1](table)  # the integrity stage
    diff = checked.column("product_diff")[0].as_py()
    assert 0 < diff < 1
    (reasons,) = campaign_reasons(checked, None, 0.0)
    assert reasons and reasons[0].startswith("product: the product photo is not intact")
    assert campaign_reasons(checked, None, 1.0) == [[]]  # a documented tolerance lets it through


def test_one_row_per_format_at_the_canvas_size(produced):
    out = produced["out"].to_pylist()
    for fmt in FORMATS:
        rows = [r for r in out if r["format"] == fmt]
        assert len(rows) == 3  # BTL-1 x 2 markets + MUG-1
        gen_w, gen_h = format_size(fmt, 64, 64)
        for r in rows:
            assert (r["generated_width"], r["generated_height"]) == (gen_w, gen_h)
            assert max(r["width"], r["height"]) == 256 and abs(r["width"] / r["height"] - gen_w / gen_h) < 0.02
            assert len(r["pixels"]) == r["width"] * r["height"] * 3
            assert r["overlay_text"] and r["overlay_contrast"] >= 4.5


def test_campaign_stages_pass_other_kinds_through_and_never_change_their_input(produced):
    generated = produced["generated"]
    other = generated.set_column(generated.schema.get_field_index("kind"), "kind",
                                 pa.array(["training"] * generated.num_rows))
    before = other.to_pylist()
    out = other
    for stage in produced["stages"]:
        out = stage(out)
        assert stage(out.slice(0, 0)).num_rows == 0
    assert other.to_pylist() == before
    assert out.column("pixels").to_pylist() == other.column("pixels").to_pylist()
    assert out.column("overlay_text").null_count == out.num_rows
    # deterministic: the same rows give the same pixels
    again = produced["generated"]
    for stage in produced["stages"]:
        again = stage(again)
    assert again.column("pixels").to_pylist() == produced["out"].column("pixels").to_pylist()


def test_a_photo_that_changed_after_planning_is_refused(tmp_path):
    path = tmp_path / "p.png"
    render_cutout(RenderSpec("mug", "red"), size=64).save(path)
    from pipeline.campaign.photo import check_cutout

    sha, _ = check_cutout(path)
    render_cutout(RenderSpec("mug", "blue"), size=64).save(path)
    with pytest.raises(PhotoError, match="changed since the run was planned"):
        load_cutout(str(path), sha)


def _square_items(ingested, config, models_dir):
    """The catalog's items at the tiny model's 64², and the indices of its square-format rows."""
    items = plan_items(ingested.products, config, run_id="r", run_date="2026-11-26", width=64, height=64,
                       models_dir=models_dir)
    return items, [i for i, r in enumerate(items.to_pylist()) if r["format"] == "1:1"]


def _background_and_scene(config, models_dir, steps: int, guidance: float):
    """Two set-up generate stages of the tiny model: with the campaign's photo backgrounds, and without."""
    model = resolve_model("tiny", models_dir)
    generator = {"path": str(model.path), "steps": steps, "guidance_scale": guidance}
    stages = (GenerateStage(model.path, model.name, "x", model.pipeline_class, steps, guidance,
                            campaign=campaign_generation(config, generator)),
              GenerateStage(model.path, model.name, "x", model.pipeline_class, steps, guidance))
    for stage in stages:
        stage.setup()
    return stages


def _compiled_photo_stage(ingested, config, models_dir, engine):
    """A set-up tiny generate stage with the campaign's photo backgrounds, compiled as `engine`
    says (batch 4, 2 steps), the catalog's items, and a square photo row and plain row of them."""
    from pipeline.config import StageResources

    model = resolve_model("tiny", models_dir)
    items, square = _square_items(ingested, config, models_dir)
    photo = next(i for i in square if items.column("product_image")[i].as_py())
    plain = next(i for i in square if not items.column("product_image")[i].as_py())
    stage = GenerateStage(model.path, model.name, "x", model.pipeline_class, 2, 7.5,
                          resources=StageResources(batch_size=4), engine=engine,
                          campaign=campaign_generation(config, {"path": str(model.path), "steps": 2,
                                                                "guidance_scale": 7.5}))
    stage.setup()
    return stage, items, photo, plain


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_photo_backgrounds_never_recompile_a_compiled_unet(ingested, config, models_dir, scope):
    """A batch holds any number of photo rows; under torch.compile the inpainting pass must not
    hand the compiled UNet (or its blocks, compiled in place) or decoder a new shape for each
    count (a recompile per count)."""
    import torch._dynamo

    from pipeline.config import Engine

    torch._dynamo.reset()
    # The eager backend runs dynamo's tracing and guards without inductor's C++ build (CPU test).
    engine = Engine(compile=True, compile_backend="eager", compile_scope=scope)
    stage, items, photo, plain = _compiled_photo_stage(ingested, config, models_dir, engine)
    stage(items.take([plain]))  # the warm-up batch: no photo row
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    one = stage(items.take([photo, plain]))  # one photo row in the batch
    two = stage(items.take([photo, photo, photo]))  # three: another count
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0
    torch._dynamo.reset()
    # the same photo row, the same seed: the same pixels whatever else is in the batch
    first, again = (np.frombuffer(t.column("pixels")[0].as_py(), np.uint8).astype(int) for t in (one, two))
    assert np.abs(first - again).max() <= 2


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_a_batch_of_photo_rows_inpaints_through_the_compiled_unet(ingested, config, models_dir, scope):
    """A pass over as many photo rows as the compiled generation call fits the compiled graph:
    it runs it (counted by the backend) instead of the eager weights, and compiles nothing new;
    a pass of another count runs eagerly. Both give a row the same pixels."""
    import torch._dynamo

    from pipeline.config import Engine

    runs = {"graphs": 0}

    def counting(gm, example_inputs):  # a backend that runs dynamo's graph as traced, counting runs
        def run(*args):
            runs["graphs"] += 1
            return gm.forward(*args)
        return run

    torch._dynamo.reset()
    engine = Engine(compile=True, compile_scope=scope).model_copy(update={"compile_backend": counting})
    stage, items, photo, plain = _compiled_photo_stage(ingested, config, models_dir, engine)
    stage(items.take([plain] * 4))  # the warm-up batch: compiles the UNet and decoder for 4 rows
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def graph_runs(batch):
        before = runs["graphs"]
        out = stage(batch)
        return runs["graphs"] - before, np.frombuffer(out.column("pixels")[0].as_py(), np.uint8).astype(int)

    full, full_pixels = graph_runs(items.take([photo] * 4))  # four photo rows: the compiled shape
    part, part_pixels = graph_runs(items.take([photo] * 3 + [plain]))  # three: eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0
    torch._dynamo.reset()
    assert full > part > 0  # the same generation call and decode; the full pass adds the UNet's runs
    assert np.abs(full_pixels - part_pixels).max() <= 2


def test_a_fused_scorer_scores_photo_rows_after_their_background_is_repainted(ingested, config, models_dir):
    """The fused scorer reads the generator's decoded images on the device, except for photo rows:
    their device copy is the scene before the inpainting pass, so they come from `pixels`."""
    from pipeline.models.presets import resolve_scorer
    from pipeline.stages.fused import GenerateScoreStage
    from pipeline.stages.score import ScoreStage

    items, square = _square_items(ingested, config, models_dir)
    photos = items.column("product_image").to_pylist()
    batch = items.take(square)
    stage, _ = _background_and_scene(config, models_dir, steps=2, guidance=7.5)
    generated, on_device = stage.generate(batch)
    is_photo = [bool(photos[i]) for i in square]
    assert any(is_photo) and not all(is_photo)
    assert [t is None for t in on_device] == is_photo
    pixels = generated.column("pixels").to_pylist()
    assert all(t.numpy().tobytes() == p for t, p in zip(on_device, pixels) if t is not None)
    scorer = ScoreStage(resolve_scorer("tiny", models_dir).path, "tiny")
    scorer.setup()
    expected = scorer(generated).column("clip_score").to_pylist()
    fused = GenerateScoreStage(stage, scorer)(batch)
    assert fused.column("pixels").to_pylist() == pixels
    assert np.allclose(fused.column("clip_score").to_pylist(), expected, atol=1e-6)


@pytest.mark.parametrize("steps,strength,expected", [(20, 0.9, 20), (1, 1.0, 1), (1, 0.9, 2), (1, 0.3, 4), (2, 0.5, 2)])
def test_inpainting_always_runs_at_least_one_step(steps, strength, expected):
    from pipeline.campaign.generation import inpaint_steps

    assert inpaint_steps(steps, strength) == expected
    assert int(expected * strength) >= 1  # diffusers runs int(steps * strength) of them


def test_a_one_step_model_inpaints_product_photo_backgrounds(ingested, config, models_dir):
    """SD-Turbo-style presets sample in one step; at strength 0.9 that would leave the inpainting
    pass no step at all (diffusers refuses the call), so it runs the fewest steps that leave one."""
    items, _ = _square_items(ingested, config, models_dir)
    photo = next(i for i, r in enumerate(items.to_pylist()) if r["product_image"])
    stage, scene = _background_and_scene(config, models_dir, steps=1, guidance=0.0)
    inpainted, plain = (np.frombuffer(s(items.take([photo])).column("pixels")[0].as_py(), np.uint8)
                        for s in (stage, scene))
    assert inpainted.shape == plain.shape and not np.array_equal(inpainted, plain)


def test_background_pass_matches_diffusers_inpainting_row_by_row(ingested, config, models_dir):
    """The engine encodes the photo rows' start images in one VAE call (each row sampling with its
    own generator) and hands diffusers the latents; each row must come out as diffusers' own
    inpainting pipeline makes it from the PIL start image and mask, one row at a time."""
    import torch
    from diffusers import AutoPipelineForInpainting

    from pipeline.campaign.generation import PHOTO_SEED_OFFSET, inpaint_steps, start_and_mask
    from pipeline.campaign.layout import canvas_size
    from pipeline.stages.engine import decode

    items, square = _square_items(ingested, config, models_dir)
    photos = items.column("product_image").to_pylist()
    rows = [i for i in square if photos[i]][:3]
    plain = [i for i in square if not photos[i]][:1]
    assert len(rows) >= 2 and plain  # several photo rows share the batched encode
    batch = items.take(rows + plain)
    stage, scene = _background_and_scene(config, models_dir, steps=4, guidance=7.5)
    got = [np.frombuffer(p, np.uint8).reshape(64, 64, 3) for p in stage(batch).column("pixels").to_pylist()]
    scenes = [np.frombuffer(p, np.uint8).reshape(64, 64, 3) for p in scene(batch).column("pixels").to_pylist()]
    assert np.array_equal(got[-1], scenes[-1])  # a row without a photo keeps its scene
    inpaint = AutoPipelineForInpainting.from_pipe(scene._pipe)
    strength = config.campaign.background_strength
    for k, row in enumerate(batch.slice(0, len(rows)).to_pylist()):
        start, mask = start_and_mask(scenes[k], row["product_image"], row["product_image_sha256"],
                                     row["product_box"], canvas_size(64, 64, config.campaign.canvas))
        with torch.inference_mode():
            latents = inpaint(prompt=[row["prompt"]], negative_prompt=[row["negative_prompt"] or ""], image=[start],
                              mask_image=[mask], height=64, width=64, strength=strength,
                              num_inference_steps=inpaint_steps(4, strength), guidance_scale=7.5,
                              generator=[torch.Generator("cpu").manual_seed(row["seed"] ^ PHOTO_SEED_OFFSET)],
                              output_type="latent").images
            want = decode(inpaint.vae, latents, 8).numpy()[0]
        assert np.abs(got[k].astype(int) - want.astype(int)).max() <= 1, row["item_id"]  # batched kernels: last bit
