"""The dataset card: `README.md` at the dataset root, in the Hugging Face dataset-card format.

A YAML header (licence, task, size, tags, the features with `label` as a `ClassLabel` of the
dataset's class list (pipeline.training.classes: ids kept from run to run), and `configs` that
read only the accepted rows under `data/`, never `rejects/`: `load_dataset(<root>)` gives the
training splits, each from its own files, `load_dataset(<root>, "campaign")` the campaign rows) and
Markdown sections: class counts, the generation settings of every live run, models and their
hashes, gate statistics, licence, intended use, limits.
Rebuilt from the live dataset (published files and the manifests of the runs that own them)
at every publish, so it always describes what a reader gets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline.fsops import replacing
from pipeline.layout import HF_SPLITS, split_of
from pipeline.training import TRAINING_KIND
from pipeline.training.classes import class_names, record_classes
from pipeline.training.splits import SPLITS

CARD = "README.md"
_EVERY_ROW = {"split": "train", "path": "data/**/*.parquet"}  # the default config without split files
_LIGHT = ["kind", "label", "split", "sku", "run_date", "run_id", "scheduler", "model_sha256"]
_LOADING = """import datasets
splits = datasets.load_dataset("<this folder>")  # train / validation / test by SKU; rejects/ never
train = splits["train"]
names = train.features["label"].names  # ids kept from run to run
"""
_LOADING_ALL = """import datasets
ds = datasets.load_dataset("<this folder>", split="train")  # every published row; rejects/ never
train = ds.filter(lambda kind, split: kind == "training" and split == "train", input_columns=["kind", "split"])
names = train.features["label"].names  # ids kept from run to run
"""
DEFAULT_INTENDED_USE = (
    "Training and evaluating image classifiers (and, where `bbox`/`mask` are set, detectors or "
    "segmenters) for the product categories listed above, as a supplement to real images. Use the "
    "`split` column: it is assigned per SKU, so no product appears in two splits.")
DEFAULT_LIMITS = (
    "Synthetic images from a text-to-image model: they inherit its biases, artefacts and "
    "vocabulary (words it never learnt are ignored). Labels come from the catalog category of the "
    "prompted product, not from looking at the image; the alignment gate (`clip_score`) removes "
    "only the clearest misses. Evaluate on real images before relying on a model trained here.")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def _published_rows(root: Path) -> tuple[pa.Table, list[dict]]:
    """The published rows' light columns, and the card's `configs` for the files that hold them."""
    parts, splits, unsplit_training, other_folders = [], set(), False, set()
    for path in sorted((root / "data").rglob("*.parquet")):
        names = pq.read_schema(path).names
        parts.append(pq.read_table(path, columns=[c for c in _LIGHT if c in names]))
        kinds = set(pc.unique(parts[-1]["kind"]).to_pylist()) if "kind" in names else set()
        if split := split_of(path.name):
            splits.add(split)
        elif TRAINING_KIND in kinds:  # training rows published before their split named their file
            unsplit_training = True
        if kinds - {TRAINING_KIND}:  # campaign rows: in their markets' folders, never in market=global
            other_folders.add(path.parent.name)
    configs = _configs(splits, unsplit_training, other_folders)
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in _LIGHT}), configs
    return pa.concat_tables(parts, promote_options="permissive"), configs


def _configs(splits: set[str], unsplit_training: bool, other_folders: set[str]) -> list[dict]:
    """`load_dataset(<root>)`: the training splits as train / validation / test (from their files'
    names, pipeline/layout.py); while training rows published before that naming are live, or
    where there are no training rows, one `train` split of every row. `load_dataset(<root>,
    "campaign")`: the other rows, from their markets' folders, whenever there are any."""
    if unsplit_training or not splits:
        default = [dict(_EVERY_ROW)]
    else:
        default = [{"split": HF_SPLITS[s], "path": f"data/**/*.{s}.parquet"} for s in SPLITS if s in splits]
    configs = [{"config_name": "default", "data_files": default}]
    if other_folders:
        configs.append({"config_name": "campaign", "data_files": [
            {"split": "train", "path": [f"data/*/{folder}/*.parquet" for folder in sorted(other_folders)]}]})
    return configs


def _live_manifests(root: Path, run_ids: set[str]) -> list[dict]:
    """Manifests of the runs whose rows are published now, oldest first."""
    manifests = []
    for run_id in sorted(run_ids):
        path = root / "_runs" / run_id / "manifest.json"
        if path.is_file():
            manifests.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(manifests, key=lambda m: m.get("published_at", ""))


def _md(text: str) -> str:
    """Catalog text (a category label) as literal Markdown on one line: it cannot end a table cell,
    open a heading, a link or HTML, or comment out the sections after it."""
    text = re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", " ".join(str(text).split()))
    return re.sub(r"(?i)(://|\bwww\.)", lambda m: m.group(0).replace("/", "\\/").replace(".", "\\."), text)  # no autolinks


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _class_counts(rows: list[dict], names: list[str]) -> str:
    counts: dict[str, dict[str, int]] = {}
    skus: dict[str, set] = {}
    for row in rows:  # one pass over the published rows, whatever the number of classes
        counts.setdefault(row["label"], {s: 0 for s in SPLITS})[row["split"]] += 1
        skus.setdefault(row["label"], set()).add(row["sku"])
    if not counts:
        return "No training rows are published."
    ids = {name: i for i, name in enumerate(names)}
    body = [[ids[label], _md(label), *(c[s] for s in SPLITS), sum(c.values()), len(skus[label])]
            for label, c in sorted(counts.items(), key=lambda item: ids[item[0]])]
    totals = [sum(c[s] for c in counts.values()) for s in SPLITS]
    body.append(["", "**all**", *totals, sum(totals), len({r["sku"] for r in rows})])
    return _table(["id", "label", *SPLITS, "total", "SKUs"], body)


def _features(root: Path, names: list[str]) -> dict:
    """The published files' features (their `huggingface` schema metadata), in the card's YAML
    form, with `label` a ClassLabel of `names`: `datasets` then reads each label as its id.
    Files without that metadata (not written by synthcat): none, `datasets` infers them."""
    newest = max((root / "data").rglob("*.parquet"), key=lambda p: p.relative_to(root).parts)
    metadata = pq.read_schema(newest).metadata or {}
    if b"huggingface" not in metadata:
        return {}
    features = json.loads(metadata[b"huggingface"])["info"]["features"]
    listed = []
    for name, feature in features.items():
        if name == "label":
            listed.append({"name": name, "dtype": {"class_label": {"names": dict(enumerate(names))}}})
        elif feature["_type"] == "Image":
            listed.append({"name": name, "dtype": "image"})
        elif feature["_type"] == "List":
            listed.append({"name": name, "list": feature["feature"]["dtype"]})
        else:
            listed.append({"name": name, "dtype": feature["dtype"]})
    return {"features": listed}


def _all_settings(manifests: list[dict]) -> str:
    """The settings of every live run: once when they all agree, else per group of runs that agree
    (the runs named, oldest group first), so rows from an older run are described as they were made."""
    groups: dict[str, list[dict]] = {}
    for manifest in manifests:
        groups.setdefault(_settings(manifest), []).append(manifest)
    if len(groups) == 1:
        return next(iter(groups)) + ("\n\nEvery live run used these settings." if len(manifests) > 1 else "")
    return "\n\n".join("Runs " + ", ".join(f"`{m['run_id']}` ({m['run_date']})" for m in runs) + ":\n\n" + text
                       for text, runs in groups.items())


def _settings(manifest: dict) -> str:
    config, generator = manifest["config"], manifest["models"]["generator"]
    training = config.get("training", {})
    guidance = training.get("guidance_scale")
    lines = [
        f"- model preset `{generator['id']}` ({generator.get('class', '')}), {generator['steps']} steps, "
        f"guidance {guidance if guidance is not None else generator['guidance_scale']} for training images "
        f"({generator['guidance_scale']} otherwise)",
        f"- negative prompt: `{config['generation']['negative_prompt']}`",
        f"- images per class: {training.get('images_per_class')}; class quotas: "
        f"{json.dumps(training.get('class_quotas') or {})}",
        f"- split ratios (by SKU): {json.dumps(training.get('splits'))}",
        f"- seeds: derived from `item_id` and `attempt` (see the `seed` column); up to "
        f"{config['gates']['max_attempts']} attempts per image",
        "- prompts: templates x scenes x viewpoints x lighting x materials, each cycling evenly within "
        "a class, with paraphrases of the class name; the chosen values are in the `facets` column",
    ]
    if training:  # the vocabulary actually used, built-in lists included
        from pipeline.config import Training
        from pipeline.training.prompts import Vocabulary

        vocabulary = Vocabulary.from_config(Training.model_validate(training))
        used = {"templates": vocabulary.templates, "scenes": sorted(vocabulary.scenes),
                "viewpoints": vocabulary.viewpoints, "lighting": vocabulary.lighting,
                "materials": vocabulary.materials}
        lines += [f"- {key}: `{json.dumps(list(values), ensure_ascii=False)}`" for key, values in used.items()]
    return "\n".join(lines)


def _models(manifests: list[dict]) -> str:
    from pipeline.models.presets import weights_sha256

    rows, seen = [], set()
    for m in manifests:
        generator, scorer = m["models"]["generator"], m["models"]["scorer"]
        scorer_path = Path(scorer["path"]) if scorer.get("path") else None
        scorer_sha = scorer.get("sha256") or (weights_sha256(scorer_path) if scorer_path and scorer_path.is_dir()
                                              else "unknown")
        for role, name, sha in (("generator", generator["id"], generator["sha256"]),
                                ("scorer", scorer["id"], scorer_sha)):
            if (role, name, sha) not in seen:
                seen.add((role, name, sha))
                rows.append([role, f"`{name}`", f"`{sha}`"])
    return _table(["role", "preset", "sha256 of the safetensors weights"], rows)


def _gates(manifests: list[dict]) -> str:
    rows = []
    for m in manifests:
        t = m.get("training") or {}
        rows.append([m["run_id"], m["run_date"], m["rows"]["accepted"], m["rows"]["rejected"],
                     ", ".join(f"{k} {v}" for k, v in sorted(m.get("reasons", {}).items())) or "none",
                     f"{100 * t['duplicate_rate']:.1f}%" if t else "–",
                     f"{t['clip_score']['p50']:.3f}" if t.get("clip_score", {}).get("n") else "–"])
    text = _table(["run", "run_date", "accepted", "rejected", "rejections by reason",
                   "training duplicate rate", "training clip_score median"], rows)
    latest = (manifests[-1].get("training") or {}) if manifests else {}
    if latest.get("classes"):
        text += "\n\nDiversity of the latest run (Vendi score over CLIP image embeddings, per class): " + ", ".join(
            f"{_md(label)} {c['vendi']:.2f}" for label, c in latest["classes"].items())
    return text


def render_card(root: Path) -> str:
    """The card's text for the dataset at `root`, as published now."""
    return _card(Path(root))[0]


def _card(root: Path) -> tuple[str, list[str]]:
    """The card's text, and the dataset's class names in id order."""
    published, configs = _published_rows(root)
    by_split = configs[0]["data_files"] != [_EVERY_ROW]
    training_rows = published.filter(pc.equal(published.column("kind"), TRAINING_KIND))
    rows = training_rows.select([c for c in ("label", "split", "sku") if c in published.column_names]).to_pylist()
    kinds = set(pc.unique(published.column("kind")).to_pylist())
    names = class_names(root, (row["label"] for row in rows))
    manifests = _live_manifests(root, set(pc.unique(published.column("run_id")).to_pylist()))
    latest = manifests[-1] if manifests else None
    training = (latest or {}).get("config", {}).get("training", {})
    header = {
        "license": training.get("license") or "other",
        "pretty_name": root.name,
        # labelled training rows serve classifiers; campaign creatives, text-to-image work
        "task_categories": [task for kind, task in ((TRAINING_KIND, "image-classification"), ("campaign", "text-to-image"))
                            if kind in kinds] or ["image-classification"],
        "tags": ["synthetic", "synthcat", "product-images"],
        "size_categories": [_size_category(published.num_rows)],
        # `datasets` keys its cache of `load_dataset(<root>)` on the card's dataset_info (not on the
        # files): the published files' bytes change it at each publish, so no reader gets stale rows
        "dataset_info": {"config_name": "default",
                         **(_features(root, names) if rows else {}),
                         "download_size": sum(p.stat().st_size for p in (root / "data").rglob("*.parquet"))},
        "configs": configs,
    }
    dates = sorted({r for r in published.column("run_date").to_pylist()}) if published.num_rows else []
    sections = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---",
        f"# {root.name}",
        f"Synthetic product images made by synthcat from a product catalog: {published.num_rows} published "
        f"rows ({len(rows)} labelled `training` rows) over run dates {', '.join(dates) or 'none'}. "
        "Every row carries its image (Hugging Face `Image`), its label and its full lineage.",
        "## Dataset structure\nOne Parquet row per image under `data/run_date=<date>/market=<market>/`; "
        "training rows are in `market=global` (they are not localized; `locale` is `und`). Columns for "
        "training: `label` (the catalog category), `taxonomy` (root-to-leaf path), `attributes` (the "
        "product's, JSON), `facets` (scene, viewpoint, lighting, material and template of the prompt, JSON), "
        "`split` (train/val/test by SKU), `bbox` (COCO `[x, y, width, height]`) and `mask` (PNG) of a "
        "composited product photo, null where unknown. " + (
            "The `default` config below reads the training rows as the splits train, validation and test "
            "(each split's files are named `*.<split>.parquet`), the `campaign` config any other rows."
            if by_split else "The `train` split of the `default` config below holds every published row: "
            "select on the `split` column."),
        "## Class counts\nA label's `id` is its `ClassLabel` value; ids are kept from run to run (`_classes.json`: "
        "a new class gets the next id, a class no longer published keeps its own).\n\n" + _class_counts(rows, names),
        "## Generation settings\n" + (_all_settings(manifests) if manifests else "No published run."),
        "## Models and hashes\n" + (_models(manifests) if manifests else "No published run."),
        "## Gate statistics\n" + (_gates(manifests) if manifests else "No published run."),
        "## Licence\n" + f"`{header['license']}`. " + (training.get("license_note") or
            "The images were generated by the models above; their licences and the catalog owner's "
            "terms apply."),
        "## Intended use\n" + (training.get("intended_use") or DEFAULT_INTENDED_USE),
        "## Limits\n" + (training.get("limitations") or DEFAULT_LIMITS),
        "## Loading\n```python\n" + (_LOADING if by_split else _LOADING_ALL) + "```",
    ]
    return "\n\n".join(sections) + "\n", names


def write_dataset_card(root: Path) -> Path:
    """Write `<root>/README.md` atomically (temporary name, then rename), after the class list it
    declares, and return its path. Called under the publish lock."""
    path = Path(root) / CARD
    text, names = _card(Path(root))
    if names:
        record_classes(root, names)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
