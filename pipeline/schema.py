"""Column names and Arrow schemas: the one place every stage takes them from."""

from __future__ import annotations

import json

import pyarrow as pa

# --- ingest: one row per catalog product --------------------------------------------------------
PRODUCT_SCHEMA = pa.schema([
    ("line", pa.int64()),            # 1-based line (CSV: physical line of the row's start; JSONL/Parquet: row + 1)
    ("sku", pa.string()),
    ("title", pa.string()),
    ("category", pa.string()),
    ("attributes", pa.string()),     # JSON object text, keys sorted
    ("description", pa.string()),
    ("image", pa.string()),
    ("markets", pa.list_(pa.string())),  # canonical locale tags; empty = the job's markets
    ("brand", pa.string()),
    ("price", pa.float64()),
    ("currency", pa.string()),
])

INPUT_REJECT_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("line", pa.int64()),
    ("sku", pa.string()),
    ("field", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),            # the row as JSON text, for the operator to fix it
])

# --- campaign (kind "campaign"; null on other kinds) -------------------------------------------
# Planned per item (pipeline/campaign/planner.py): copy, brand adapter, product photo, layout.
CAMPAIGN_PLAN_FIELDS = [
    pa.field("theme", pa.string()),                 # campaign theme (job config campaign.theme)
    pa.field("season", pa.string()),                # the market's season on run_date
    pa.field("holiday", pa.string()),               # the market's holiday on run_date, if one is on
    pa.field("headline", pa.string()),              # greeting + "\n" + offer, in the market's language
    pa.field("price_text", pa.string()),            # babel format_currency(price, currency, locale=market)
    pa.field("brand_adapter", pa.string()),         # LoRA adapter fused for the brand (name)
    pa.field("brand_adapter_sha256", pa.string()),  # sha256 of its safetensors file
    pa.field("brand_adapter_scale", pa.float32()),
    pa.field("product_image", pa.string()),         # resolved product photo (RGBA cut-out)
    pa.field("product_image_sha256", pa.string()),
    pa.field("product_box", pa.list_(pa.int32())),  # x0, y0, x1, y1 of the product on the canvas
    pa.field("text_box", pa.list_(pa.int32())),     # x0, y0, x1, y1 the copy is fitted into
]
# Measured by the campaign stages (pipeline/stages/composite.py, overlay.py, integrity.py).
CAMPAIGN_FIELDS = [
    pa.field("generated_width", pa.int32()),        # the model's size; width/height are the canvas
    pa.field("generated_height", pa.int32()),
    pa.field("overlay_text", pa.string()),          # exactly the text drawn, lines joined by "\n"
    pa.field("overlay_font", pa.string()),          # font family, weight, file and sha256 of each face
    pa.field("overlay_contrast", pa.float32()),     # worst WCAG contrast of the copy against its background
    pa.field("overlay_box", pa.list_(pa.int32())),  # the copy's block (and plate) on the canvas
    pa.field("palette_distance", pa.float32()),     # CIEDE2000, dominant colours -> brand palette
    pa.field("product_diff", pa.float32()),         # share of opaque product pixels that differ from the photo
]

# --- training (kind "training"; null on other kinds; pipeline/training/) -------------------------
# Planned per item (pipeline/training/plan.py).
TRAINING_ITEM_FIELDS = [
    pa.field("label", pa.string()),                 # the class: the product's catalog category
    pa.field("taxonomy", pa.list_(pa.string())),    # root-to-leaf path ending in `label`
    pa.field("facets", pa.string()),                # JSON: template, scene, viewpoint, lighting, material, colour
    pa.field("split", pa.string()),                 # train | val | test, by SKU (pipeline/training/splits.py)
    pa.field("guidance_override", pa.float32()),    # this item's sampler guidance; null: the run's (not published)
]
# Where a product photo was composited into the image (any kind; pipeline/training/labels.py);
# present on every row, null where unknown.
REGION_FIELDS = [
    pa.field("bbox", pa.list_(pa.float32())),       # COCO [x, y, width, height], pixels of `image`
    pa.field("mask", pa.binary()),                  # PNG, mode L, 255 = product, the size of `image`
]
TRAINING_FIELDS = TRAINING_ITEM_FIELDS + REGION_FIELDS

# --- plan: one row per item (sku x market x kind x variant x format) ----------------------------
ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("shard_id", pa.string()),
    ("dataset", pa.string()),
    ("run_id", pa.string()),
    ("run_date", pa.string()),
    ("sku", pa.string()),
    ("market", pa.string()),
    ("locale", pa.string()),
    ("kind", pa.string()),
    ("variant", pa.int32()),
    ("format", pa.string()),
    ("attempt", pa.int32()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("title", pa.string()),
    ("category", pa.string()),
    ("attributes", pa.string()),
    ("brand", pa.string()),
    ("price", pa.float64()),
    ("currency", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
] + CAMPAIGN_PLAN_FIELDS + TRAINING_ITEM_FIELDS)

# --- generate: adds raw pixels (HWC uint8, never published) and generation lineage ---------------
GENERATION_FIELDS = [
    pa.field("pixels", pa.binary()),
    pa.field("model_id", pa.string()),
    pa.field("model_sha256", pa.string()),
    pa.field("scheduler", pa.string()),
    pa.field("steps", pa.int32()),
    pa.field("guidance_scale", pa.float32()),
    pa.field("torch_version", pa.string()),
    pa.field("device", pa.string()),
    # ||eps(x_T, prompt) - eps(x_T, "")||_2 at the first denoising step (Wen et al., ICLR 2024):
    # large for memorized prompts; free under classifier-free guidance, null without it
    pa.field("mem_cfg_gap", pa.float32()),
]

# --- score --------------------------------------------------------------------------------------
SCORE_FIELDS = [
    pa.field("clip_model", pa.string()),
    pa.field("clip_score", pa.float32()),            # cosine(image, prompt) in [-1, 1]
    pa.field("clip_embedding", pa.list_(pa.float32())),  # L2-normalised image embedding
]

# --- encode: Hugging Face `Image` layout --------------------------------------------------------
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
ENCODE_FIELDS = [
    pa.field("image", IMAGE_TYPE),
    pa.field("image_sha256", pa.string()),
    pa.field("image_phash", pa.string()),     # 64-bit perceptual hash (DCT pHash), 16 hex digits
    pa.field("pixel_mean", pa.float32()),     # sanity evidence: mean and std of the 0-255 pixels
    pa.field("pixel_std", pa.float32()),
]

# Small images later steps of the run read, made by the encode stage while the pixels are at hand
# so the driver does not decode every image again after the last one was generated. Kept in the
# shards, never published.
STAGING_FIELDS = [
    pa.field("thumbnail", pa.binary()),       # the run report's thumbnail (JPEG, or PNG if not shrunk: pipeline/thumbnail.py)
    pa.field("copy_thumbnail", pa.binary()),  # the 64 px PNG the memorization gate's pixel check compares
    pa.field("image_nbytes", pa.int64()),     # the encoded image's size: the gate step reads no image
]

# --- gate ---------------------------------------------------------------------------------------
GATE_FIELDS = [
    pa.field("dup_group", pa.string()),      # item_id of the group's kept image; null when unique
    pa.field("dup_reason", pa.string()),     # exact | perceptual | semantic; null when unique
    pa.field("dup_similarity", pa.float32()),  # Hamming distance (perceptual) or cosine (semantic)
    pa.field("ref_nearest_id", pa.string()),   # nearest image of the reference index (memorization)
    pa.field("ref_similarity", pa.float32()),  # its CLIP-embedding cosine; null without an index
    pa.field("ref_tile_l2", pa.float32()),     # tiled pixel L2 to the closest of its 5 nearest references
    pa.field("gate_status", pa.string()),    # "accepted" | "rejected"
    pa.field("gate_reasons", pa.list_(pa.string())),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
]

ACCEPTED, REJECTED = "accepted", "rejected"

# Columns dropped before publishing: raw pixels are re-derivable from the encoded image,
# and `shard_id` / `dataset` describe the run layout, not the row.
_UNPUBLISHED = {"pixels", "shard_id", "dataset", "guidance_override"}  # guidance: in `guidance_scale`

OUTPUT_SCHEMA = pa.schema(
    [f for f in ITEM_SCHEMA if f.name not in _UNPUBLISHED]
    + [f for f in GENERATION_FIELDS if f.name not in _UNPUBLISHED]
    + SCORE_FIELDS + ENCODE_FIELDS + GATE_FIELDS + CAMPAIGN_FIELDS + REGION_FIELDS
)
# A run's gated rows as its gate step stages them for validation and publish: the published
# columns but the encoded image, which stays in the shards until publish copies it into the
# dataset's files (pipeline/shards.py), and the image's size, which validation checks. A driver
# holding these holds kilobytes a row however large the images are.
GATED_SCHEMA = pa.schema([f for f in OUTPUT_SCHEMA if f.name != "image"]
                         + [f for f in STAGING_FIELDS if f.name == "image_nbytes"])
SHARD_SCHEMA = pa.schema(list(ITEM_SCHEMA) + [f for f in GENERATION_FIELDS if f.name != "pixels"]
                         + SCORE_FIELDS + ENCODE_FIELDS + STAGING_FIELDS + CAMPAIGN_FIELDS + REGION_FIELDS)

PARTITION_COLUMNS = ("run_date", "market")


def _hf_feature(arrow_type: pa.DataType) -> dict:
    """The `datasets` feature dict of a plain Arrow type (only the types our schemas use)."""
    if pa.types.is_list(arrow_type):
        return {"feature": _hf_feature(arrow_type.value_type), "_type": "List"}
    if pa.types.is_timestamp(arrow_type):
        return {"dtype": f"timestamp[{arrow_type.unit}, tz={arrow_type.tz}]", "_type": "Value"}
    names = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64",
             pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool",
             pa.binary(): "binary"}
    return {"dtype": names[arrow_type], "_type": "Value"}


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    """Attach the `huggingface` schema metadata so `datasets` decodes `image` as an Image."""
    features = {
        f.name: {"_type": "Image"} if f.name == "image" else _hf_feature(f.type) for f in schema
    }
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features}}).encode()
    return schema.with_metadata(metadata)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table` to `schema`, adding missing nullable columns as nulls."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
