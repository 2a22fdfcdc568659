"""Label contracts of the training kind: bbox / mask of a composited product, and dataset metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers import make_output_table
from pipeline.models.renderer import RenderSpec, render_cutout, render_mask
from pipeline.schema import OUTPUT_SCHEMA, REGION_FIELDS
from pipeline.training.diversity import training_metrics, vendi_score
from pipeline.training.labels import (bbox_of, decode_mask, encode_mask, product_mask, region_columns,
                                      with_region)


@pytest.mark.parametrize("category", ["mug", "lamp", "sneaker"])
def test_bbox_and_mask_of_a_rendered_product_match_its_ground_truth(category):
    spec = RenderSpec(category, "blue", jitter=3)
    truth = render_mask(spec, 64)
    box, png = region_columns(truth)
    ys, xs = np.nonzero(truth)
    assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]  # COCO xywh
    assert np.array_equal(decode_mask(png), truth)
    # the same region from the alpha channel of the product's cut-out photo, as a compositor sees it
    alpha = np.asarray(render_cutout(spec, 64))[..., 3]
    from_alpha = product_mask(alpha)
    assert (from_alpha & truth).sum() / (from_alpha | truth).sum() > 0.8  # IoU (thin parts differ by resampling)


def test_unknown_or_empty_regions_stay_null():
    assert region_columns(None) == (None, None)
    assert region_columns(np.zeros((8, 8), bool)) == (None, None)
    assert bbox_of(np.ones((4, 6), bool)) == [0.0, 0.0, 6.0, 4.0]
    with pytest.raises(ValueError, match="2-D"):
        product_mask(np.zeros((2, 2, 3)))


def test_with_region_fills_only_the_rows_with_a_mask_and_keeps_the_input():
    batch = pa.table({"item_id": ["a", "b", "c"]})
    mask = np.zeros((16, 16), bool)
    mask[4:10, 2:5] = True
    out = with_region(batch, [mask, None, mask])
    assert batch.column_names == ["item_id"]  # input untouched
    assert out.schema.field("bbox").type == REGION_FIELDS[0].type
    assert out["bbox"].to_pylist() == [[2.0, 4.0, 3.0, 6.0], None, [2.0, 4.0, 3.0, 6.0]]
    assert out["mask"].to_pylist()[1] is None and out["mask"].to_pylist()[0] == encode_mask(mask)
    again = with_region(out, [None, mask, None])  # a later stage adds a region, keeps the others
    assert again["bbox"].to_pylist()[0] == [2.0, 4.0, 3.0, 6.0] and again["bbox"].to_pylist()[1] is not None
    with pytest.raises(ValueError, match="2 masks for 3 rows"):
        with_region(batch, [None, None])


def test_vendi_score_counts_effectively_distinct_images():
    rng = np.random.default_rng(0)
    one = rng.standard_normal(16)
    assert vendi_score(np.tile(one, (10, 1))) == pytest.approx(1.0)
    assert vendi_score(np.eye(6)) == pytest.approx(6.0)
    two_groups = np.concatenate([np.tile(np.eye(4)[0], (5, 1)), np.tile(np.eye(4)[1], (5, 1))])
    assert vendi_score(two_groups) == pytest.approx(2.0)
    assert vendi_score(np.zeros((0, 4))) == 0.0


def test_training_metrics_count_classes_splits_and_duplicates():
    table = make_output_table(12)  # rows alternate campaign / training
    labels = ["mug", "lamp", "mug", "lamp", "mug", "lamp"] * 2
    splits = ["train", "train", "val", "test", "train", "train"] * 2
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits))
    accepted, rejected = table.slice(0, 8), table.slice(8)
    ids = rejected["item_id"].to_pylist()
    rejected = rejected.set_column(rejected.schema.get_field_index("dup_group"), "dup_group",
                                   pa.array([ids[0], ids[0], None, None]))  # row 1 duplicates row 0
    metrics = training_metrics(accepted, rejected)
    kinds = table["kind"].to_pylist()
    assert metrics["images"] == kinds.count("training") == 6
    assert metrics["accepted"] == 4 and metrics["rejected"] == 2
    expected = {label: sum(1 for k, l in zip(kinds[:8], labels[:8]) if k == "training" and l == label)
                for label in ("mug", "lamp")}
    assert {label: c["accepted"] for label, c in metrics["classes"].items()} == {k: v for k, v in expected.items() if v}
    assert sum(metrics["splits"].values()) == 4
    assert metrics["duplicates"] == (1 if kinds[9] == "training" else 0)
    assert 1.0 <= metrics["classes"]["lamp"]["vendi"] <= metrics["classes"]["lamp"]["accepted"]
    assert training_metrics(OUTPUT_SCHEMA.empty_table(), OUTPUT_SCHEMA.empty_table()) == {}
