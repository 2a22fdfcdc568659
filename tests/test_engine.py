"""The generation engine (padding, chunked decode, fused scoring, compile), the random-weight
architecture presets, and the cost of a run."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import Cost, Engine, JobConfig, StageResources
from pipeline.cost import add_held, add_held_idle, describe_cost, devices_held, run_cost
from pipeline.models.presets import resolve_model, resolve_scorer
from pipeline.plan import plan_items
from pipeline.schema import PRODUCT_SCHEMA
from pipeline.stages.engine import compile_counters, compile_seconds, decode, model_dtype, padded, to_uint8
from pipeline.stages.fused import GenerateScoreStage, generate_and_score
from pipeline.stages.generate import GenerateStage
from pipeline.stages.score import ScoreStage

PRODUCTS = pa.Table.from_pylist([
    {"line": 2, "sku": "MUG-1", "title": "Red mug", "category": "mug", "attributes": '{"color": "red"}',
     "markets": ["en-US", "de-DE"]},
], schema=PRODUCT_SCHEMA)


@pytest.fixture(scope="module")
def items():
    return plan_items(PRODUCTS, JobConfig(variants=2), run_id="r", run_date="2026-11-26", width=64, height=64)


def _generate(models_dir, engine: Engine = Engine(), batch_size: int = 8, guidance: float = 7.5,
              steps: int = 3) -> GenerateStage:
    model = resolve_model("tiny", models_dir)
    stage = GenerateStage(model.path, "tiny", "x", model.pipeline_class, steps, guidance,
                          resources=StageResources(batch_size=batch_size), engine=engine)
    stage.setup()
    return stage


def _pixels(table: pa.Table) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8) for b in table.column("pixels").to_pylist()]).astype(int)


@pytest.fixture(scope="module")
def plain(items, models_dir):
    return _generate(models_dir)(items)


def test_padding_to_a_fixed_batch_leaves_images_and_lineage_alone(items, models_dir, plain):
    stage = _generate(models_dir, Engine(pad_batches=True), batch_size=4)
    assert stage._pad_size == 4
    out = stage(items.slice(0, 3))  # 3 rows: one copy of the last row pads the call to 4, then is dropped
    assert out.num_rows == 3 and out.column("item_id").to_pylist() == items.column("item_id").to_pylist()[:3]
    difference = np.abs(_pixels(out) - _pixels(plain)[:3])
    assert difference.max() <= 2 and difference.mean() < 0.01  # batched kernels' last float bit at most
    assert np.allclose(out.column("mem_cfg_gap").to_pylist(), plain.column("mem_cfg_gap").to_pylist()[:3], rtol=1e-4)
    assert padded([5, 6, 7], 4) == [5, 6, 7, 7] and padded([5, 6], None) == [5, 6] and padded([], 4) == []
    assert padded([1, 2, 3, 4, 5], 4) == [1, 2, 3, 4, 5, 5, 5, 5]


def test_vae_decodes_in_chunks_like_one_call_and_nan_is_black(models_dir):
    import torch

    stage = _generate(models_dir)
    vae = stage._pipe.vae
    latents = torch.randn(5, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(vae.dtype)
    with torch.inference_mode():
        whole = decode(vae, latents, chunk=8)
        chunked = decode(vae, latents, chunk=2, fixed=True)  # 2 + 2 + (1 padded to 2)
    assert whole.shape == (5, 64, 64, 3) and whole.dtype == torch.uint8
    assert (whole.int() - chunked.int()).abs().max() <= 1
    values = torch.tensor([[[[float("nan"), -2.0], [0.0, 1.0]]]]).expand(1, 3, 2, 2)
    assert to_uint8(values)[0, :, :, 0].tolist() == [[0, 0], [128, 255]]


def test_fused_generate_and_score_equals_the_two_stages(items, models_dir, plain):
    scorer = resolve_scorer("tiny", models_dir)
    separate = ScoreStage(scorer.path, "tiny")
    separate.setup()
    expected = separate(plain)
    fused = GenerateScoreStage(_generate(models_dir), ScoreStage(scorer.path, "tiny"))
    fused.setup()
    out = fused(items)
    assert out.schema == expected.schema
    assert out.column("pixels").to_pylist() == expected.column("pixels").to_pylist()
    assert np.allclose(out.column("clip_score").to_pylist(), expected.column("clip_score").to_pylist(), atol=1e-6)
    assert fused(items.slice(0, 0)).num_rows == 0


def test_a_scorer_reads_the_images_handed_to_it_on_the_device_and_the_rest_from_pixels(items, models_dir):
    """A fused generator hands its scorer the decoded images where they are (on its GPU); the
    scorer must score those and read only the other rows from the `pixels` column."""
    generate = _generate(models_dir)
    table, on_device = generate.generate(items)
    assert [bytes(t.numpy().tobytes()) for t in on_device] == table.column("pixels").to_pylist()
    scorer = ScoreStage(resolve_scorer("tiny", models_dir).path, "tiny")
    scorer.setup()
    expected = scorer(table).column("clip_score").to_pylist()
    blank = table.set_column(table.schema.get_field_index("pixels"), "pixels",
                             pa.array([bytes(len(p)) for p in table.column("pixels").to_pylist()], pa.binary()))
    black = scorer(blank).column("clip_score").to_pylist()
    assert not np.allclose(black, expected, atol=1e-3)  # a black image scores otherwise
    mixed = scorer(blank, [t if i % 2 == 0 else None for i, t in enumerate(on_device)]).column("clip_score").to_pylist()
    assert np.allclose(mixed[0::2], expected[0::2], atol=1e-6) and np.allclose(mixed[1::2], black[1::2], atol=1e-6)


def test_generate_and_score_fuse_only_on_the_same_device_kind(models_dir):
    def stages(gen_gpus, score_gpus, fuse=True):
        gen = GenerateStage(models_dir, "m", "x", "StableDiffusionPipeline", 1, 0.0,
                            resources=StageResources(num_gpus=gen_gpus, num_cpus=2, batch_size=16))
        score = ScoreStage(models_dir, "c", resources=StageResources(num_gpus=score_gpus, num_cpus=0.5))
        return generate_and_score(gen, score, Engine(fuse_score=fuse))

    fused = stages(1, 1)
    assert len(fused) == 1 and fused[0].name == "generate" and fused[0].resources.num_gpus == 1
    assert fused[0].score.resources == fused[0].resources  # the scorer runs on the generator's device
    assert len(stages(0, 0)) == 1
    assert [s.name for s in stages(1, 0)] == ["generate", "score"]
    assert [s.name for s in stages(0, 0, fuse=False)] == ["generate", "score"]


def test_brand_adapters_turn_off_the_options_that_would_hide_them():
    from pipeline.stages.engine import engine_for

    plain = JobConfig(engine={"fuse_qkv": True, "compile": True})
    assert engine_for(plain) == plain.engine
    branded = JobConfig(model="tiny", engine={"fuse_qkv": True, "compile": True, "channels_last": True},
                        campaign={"brands": {"acme": {"adapters": {"tiny": "acme-style"}}}})
    engine = engine_for(branded)
    assert (engine.fuse_qkv, engine.compile, engine.channels_last) == (False, False, True)
    other_model = branded.model_copy(update={"model": "sd15"})  # the adapter is for another preset
    assert engine_for(other_model).compile is True


def test_the_generator_runs_in_bf16_on_a_cpu_with_native_bf16_and_the_scorer_in_fp32(models_dir, monkeypatch):
    """`dtype: auto`: bf16 on CUDA; on a CPU bf16 only for the generator and only with native
    bf16 instructions (emulated bf16 is slower than fp32); an explicit dtype wins everywhere."""
    import torch

    from pipeline.stages import engine as engine_module

    auto = Engine()
    assert model_dtype(auto, "cuda") == model_dtype(auto, "cuda", cpu_bf16=True) == torch.bfloat16
    assert model_dtype(auto, "cpu") == torch.float32  # the scorer, whatever the CPU
    assert model_dtype(Engine(dtype="float32"), "cuda") == torch.float32
    assert model_dtype(Engine(dtype="bfloat16"), "cpu") == torch.bfloat16
    native = engine_module.cpu_has_native_bf16()
    assert model_dtype(auto, "cpu", cpu_bf16=True) == (torch.bfloat16 if native else torch.float32)
    assert _generate(models_dir, steps=1)._pipe.dtype == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setattr(engine_module, "cpu_has_native_bf16", lambda: False)
    assert model_dtype(auto, "cpu", cpu_bf16=True) == torch.float32
    assert _generate(models_dir, steps=1)._pipe.dtype == torch.float32


def test_a_small_round_runs_eagerly_unless_compile_is_asked_for():
    from pipeline.stages.engine import engine_for

    auto = JobConfig(engine={"compile_min_items": 100})
    assert engine_for(auto).compile is None  # round size unknown: the device decides (on for CUDA)
    assert engine_for(auto, 99).compile is False  # a regeneration round: the compile would not pay
    assert engine_for(auto, 100).compile is None
    assert engine_for(JobConfig(engine={"compile": True, "compile_min_items": 100}), 5).compile is True
    always = JobConfig(engine={"compile_min_items": 0})
    assert engine_for(always, 1).compile is None


def test_compiled_unet_sees_one_shape_and_never_recompiles(items, models_dir):
    import torch._dynamo

    torch._dynamo.reset()
    # The eager backend runs dynamo's tracing and guards without inductor's C++ build (CPU test).
    stage = _generate(models_dir, Engine(compile=True, compile_backend="eager"), batch_size=4, guidance=1.0,
                      steps=1)
    assert stage._pad_size == 4  # compile implies fixed-shape batches
    traced = compile_seconds()
    stage(items.slice(0, 4))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # the first call's compile, split: dynamo's tracing is most of it with the eager backend
    spent = compile_seconds(traced)
    assert spent["total"] >= spent["dynamo_tracing"] > spent["backend"] >= 0 and spent["guards"] >= 0
    before, seconds = compile_counters(), compile_seconds()
    stage(items.slice(1, 1))  # a short last batch: padded to 4, so the same graphs serve it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs > 0
    # the counters are process-wide; a reading since `before` (what the bench reports) sees none of it
    assert compile_counters()["stats.unique_graphs"] == graphs
    assert compile_counters(before)["stats.unique_graphs"] == compile_counters(before)["recompiles"] == 0
    assert compile_seconds(seconds) == dict.fromkeys(spent, 0.0)  # nothing compiled: no time
    torch._dynamo.reset()


def test_regional_compile_compiles_the_unets_repeated_blocks_in_place(items, models_dir):
    """`compile_scope: blocks`: diffusers' regional compilation. The UNet stays the module (hooks,
    adapters and the inpainting pass see it), its transformer blocks are compiled, the decoder
    whole; images are those of the eager model."""
    import torch._dynamo
    from diffusers.models.attention import BasicTransformerBlock

    from pipeline.stages.engine import has_compiled_parts

    torch._dynamo.reset()
    eager = _generate(models_dir, batch_size=4, steps=2)
    stage = _generate(models_dir, Engine(compile=True, compile_backend="eager", compile_scope="blocks"),
                      batch_size=4, steps=2)
    unet = stage._pipe.unet
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert not hasattr(unet, "_orig_mod") and has_compiled_parts(unet) and blocks
    assert all(m._compiled_call_impl is not None for m in blocks)
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in unet.conv_in.modules())
    assert hasattr(stage._pipe.vae.decoder, "_orig_mod") and not has_compiled_parts(eager._pipe.unet)
    batch = items.slice(0, 4)
    assert _pixels(stage(batch)).tolist() == _pixels(eager(batch)).tolist()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()


def test_arch_presets_are_the_published_architectures():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.arch import arch_config

    # Published parameter counts: SD 1.5 / SD 2.1 UNet, the shared VAE, CLIP ViT-L/14 and
    # OpenCLIP ViT-H/14 text towers. Built on the meta device: no memory, no weights.
    expected = {"sd15-arch": (859_520_964, 83_653_863, 123_060_480),
                "sd-turbo-arch": (865_910_724, 83_653_863, 340_387_840)}
    for name, counts in expected.items():
        config = arch_config(name)
        with torch.device("meta"):
            models = (UNet2DConditionModel.from_config(config["unet"]), AutoencoderKL.from_config(config["vae"]),
                      CLIPTextModel(CLIPTextConfig(**config["text_encoder"])))
        assert tuple(sum(p.numel() for p in m.parameters()) for m in models) == counts, name


def test_arch_preset_materialises_and_runs_through_the_stages(tmp_path):
    from pipeline.models.arch import materialise_model, materialise_scorer
    from pipeline.models.presets import describe_presets, weights_sha256

    presets = {p["name"]: p for p in describe_presets(tmp_path)}
    assert presets["sd15-arch"]["on_demand"] and presets["sd-turbo-arch"]["steps"] == 1
    assert not presets["sd15-arch"]["available"]  # nothing is built by listing
    # A shrunk copy (same blocks, small widths) of the exact materialise -> from_pretrained path
    model = materialise_model("sd-turbo-arch", tmp_path / "sd-turbo-arch" / "diffusion", small=True)
    clip = materialise_scorer("vit-l-14-arch", tmp_path / "vit-l-14-arch" / "clip", small=True)
    assert (model / "tokenizer" / "tokenizer_config.json").is_file() and weights_sha256(model)
    assert json.loads((model / "scheduler" / "scheduler_config.json").read_text())["timestep_spacing"] == "trailing"
    stage = GenerateScoreStage(GenerateStage(model, "sd-turbo-arch", "x", "StableDiffusionPipeline", 1, 0.0),
                               ScoreStage(clip, "vit-l-14-arch"))
    stage.setup()
    batch = pa.table({"prompt": ["a red mug", "a blue shoe"], "negative_prompt": ["", ""], "seed": [1, 2],
                      "width": [64, 64], "height": [64, 64]})
    out = stage(batch)
    assert [len(p) for p in out.column("pixels").to_pylist()] == [64 * 64 * 3] * 2
    assert out.column("mem_cfg_gap").to_pylist() == [None, None]  # one step, no guidance
    assert all(-1 <= s <= 1 for s in out.column("clip_score").to_pylist())


def test_run_cost_per_accepted_image_and_per_thousand():
    gpu = StageResources(num_gpus=1, batch_size=32)
    assert devices_held([GenerateScoreStage(GenerateStage(None, "m", "x", "P", 1, 0.0, resources=gpu),
                                            ScoreStage(None, "c"))]) == ("gpu", 1)
    cpu_stages = [GenerateStage(None, "m", "x", "P", 1, 0.0, resources=StageResources(num_cpus=1, actors=2)),
                  ScoreStage(None, "c", resources=StageResources(num_cpus=0.5))]
    assert devices_held(cpu_stages) == ("cpu", 2.5)
    # two generation rounds (a regeneration) on one GPU: 700 s + 20 s, 30 s apart, by steps of their own
    device = add_held(add_held(None, "gpu", 1, "step-a", 0.0, 700.0), "gpu", 1, "step-b", 730.0, 750.0)
    assert {k: device[k] for k in ("kind", "count", "seconds", "held_idle_seconds", "rounds")} == \
        {"kind": "gpu", "count": 1, "seconds": 720.0, "held_idle_seconds": 0.0, "rounds": 2}
    # a warm generator on 2 GPUs: 10 s, 3 s of gates held idle, 4 s, then 2 s of the last gate pass
    warm = add_held(add_held(None, "gpu", 2, "hosts", 100.0, 110.0), "gpu", 2, "hosts", 110.0, 117.0, 3.0)
    warm = add_held_idle(warm, "hosts", 119.0, 2.0)
    assert (warm["seconds"], warm["held_idle_seconds"], warm["rounds"]) == (38.0, 10.0, 2)
    assert add_held_idle(device, "step-b", 800.0, 0.0) is device and add_held_idle(None, "hosts", 9.0, 5.0) is None
    assert run_cost(warm, 10, Cost())["held_idle_seconds"] == 10.0
    # two Airflow tasks of a run at once on the run's shared hosts: 0-60 s and 20-90 s, held 90 s, once;
    # the second found the hosts busy (no idle). On workers of their own, both count.
    shared = add_held(add_held(None, "gpu", 1, "hosts", 20.0, 90.0), "gpu", 1, "hosts", 0.0, 60.0)
    assert (shared["seconds"], shared["held_idle_seconds"], shared["rounds"]) == (90.0, 0.0, 2)
    own = add_held(add_held(None, "gpu", 1, "step-a", 20.0, 90.0), "gpu", 1, "step-b", 0.0, 60.0)
    assert own["seconds"] == 130.0
    # a later task took the hosts up after they sat 5 s idle (its span begins with them): counted once too
    later = add_held(shared, "gpu", 1, "hosts", 85.0, 100.0, idle=5.0)
    assert (later["seconds"], later["held_idle_seconds"]) == (100.0, 0.0)  # 85-90 was the other task's batches
    later = add_held(shared, "gpu", 1, "hosts", 90.0, 100.0, idle=5.0)
    assert (later["seconds"], later["held_idle_seconds"]) == (100.0, 5.0)
    # a record a run staged before spans were kept (resumed across an upgrade): its totals carry on
    legacy = {"kind": "gpu", "count": 1, "seconds": 500.0, "held_idle_seconds": 20.0, "rounds": 1}
    resumed = add_held_idle(add_held(legacy, "gpu", 1, "hosts", 0.0, 10.0), "hosts", 15.0, 5.0)
    assert (resumed["seconds"], resumed["held_idle_seconds"], resumed["rounds"]) == (515.0, 25.0, 2)
    cost = run_cost(device, accepted=10_000, prices=Cost(gpu_hour_usd=2.5))
    assert cost["device_s_per_accepted"] == pytest.approx(0.072)
    assert cost["usd"] == pytest.approx(0.5) and cost["usd_per_1000_accepted"] == pytest.approx(0.05)
    assert describe_cost(cost) == "0.072 GPU-s per accepted image · $0.05 per 1,000 accepted (at $2.50 per GPU-hour)"
    cpu = run_cost({"kind": "cpu", "count": 2, "seconds": 360.0, "rounds": 1}, 60, Cost(cpu_hour_usd=0.05))
    assert cpu["hour_usd"] == 0.05 and cpu["usd_per_1000_accepted"] == pytest.approx(0.0833, abs=1e-4)
    assert run_cost(device, 0, Cost())["usd_per_1000_accepted"] is None and run_cost(None, 5, Cost()) == {}
    # a spot CPU price under a cent keeps its digits, and so does the price of 1,000 images
    cheap = run_cost({"kind": "cpu", "count": 2, "seconds": 53.4, "rounds": 1}, 76, Cost(cpu_hour_usd=0.004))
    assert cheap["usd_per_1000_accepted"] == pytest.approx(53.4 / 3600 * 0.004 / 76 * 1000, rel=1e-3)
    assert describe_cost(cheap).endswith("$0.0007807 per 1,000 accepted (at $0.004 per CPU core-hour)")
    assert describe_cost({}) == ""
