"""`--uncertain K`: the chips where the model is least sure, spread apart (`sparkinfer.uncertain`):
the pick on hand-made chips, chunks' candidates merged against the pick over the whole map, and
the job's GeoParquet."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from builders import write_raster
from conftest import ROOT
from rasterio.transform import Affine
from shapely import wkb

from sparkinfer.flags import config_from_args
from sparkinfer.plan import PixelWindow
from sparkinfer.uncertain import Chip, chunk_candidates, least_sure, pick


@pytest.mark.parametrize(
    "flags, measure, k",
    [
        (["--uncertain", "8"], "maxprob", 8),
        (["--confidence-measure", "margin", "--uncertain", "8"], "margin", 8),
        ([], None, 0),
    ],
)
def test_uncertain_chips_need_a_confidence_and_take_maxprob_by_default(flags, measure, k):
    argv = ["--input", "in.tif", "--model", "m.keras", "--output", "out", *flags]
    config = config_from_args(argv, ROOT / "conf" / "default.yaml")
    assert (config.confidence, config.uncertain, config.uncertain_size) == (measure, k, 256)


def chip(mean, row, col):
    return Chip(mean, row, col, 1, (1,))


def test_the_pick_skips_chips_that_touch_one_taken():
    chips = [
        chip(0.10, 0, 0),
        chip(0.11, 1, 1),  # touches (0, 0) diagonally: skipped
        chip(0.12, 0, 2),  # one chip apart from (0, 0): taken
        chip(0.13, 5, 5),
        chip(0.13, 2, 5),  # the same score: the lower row first
        chip(0.50, 9, 9),
    ]
    assert [(c.row, c.col) for c in pick(chips, 4)] == [(0, 0), (0, 2), (2, 5), (5, 5)]
    assert [(c.row, c.col) for c in pick(chips, 9)] == [(0, 0), (0, 2), (2, 5), (5, 5), (9, 9)]


def whole_map_pick(confidence, classes, k, size, count):
    """The same rule on the whole map at once, with numpy: every chip, then the pick."""
    rows, cols = confidence.shape[0] // size, confidence.shape[1] // size
    cells = confidence[: rows * size, : cols * size].reshape(rows, size, cols, size)
    labels = classes[: rows * size, : cols * size].reshape(rows, size, cols, size)
    chips = []
    for r in range(rows):
        for c in range(cols):
            cell, label = cells[r, :, c], labels[r, :, c]
            valid = cell != 255
            if valid.sum() * 2 < size * size:
                continue
            mean = round(float(cell[valid].astype(np.float64).mean()) / 255, 6)
            histogram = tuple(int((label[valid] == i).sum()) for i in range(count))
            chips.append(Chip(mean, r, c, int(valid.sum()), histogram))
    return chips, pick(chips, k)


@pytest.mark.parametrize("k", [1, 5, 12, 200])
def test_chunks_candidates_merged_pick_as_the_whole_map_does(k):
    rng = np.random.default_rng(28)
    height, width, size = 200, 263, 16  # edge cells narrower than a chip are left out
    confidence = rng.integers(0, 255, (height, width), dtype=np.uint8)
    confidence[40:90, 60:140] = rng.integers(0, 20, (50, 80))  # a cluster of unsure chips
    confidence[150:, :100] = 255  # nodata: chips there do not count, half-valid ones do
    classes = np.where(confidence == 255, 255, rng.integers(0, 3, (height, width))).astype(np.uint8)
    counting, expected = whole_map_pick(confidence, classes, k, size, 3)
    # Chunks whose borders cut chips (37, 91, 250) and follow them (128): each keeps its
    # 9 k lowest whole chips (the middle one has 45) and every part.
    tags = []
    for top, bottom in ((0, 37), (37, 128), (128, 200)):
        for left, right in ((0, 91), (91, 250), (250, 263)):
            core = PixelWindow(top, left, bottom - top, right - left)
            window = np.s_[top:bottom, left:right]
            tags.append(
                chunk_candidates(
                    confidence[window], classes[window], core, (height, width), size, k, 3
                )
            )
    assert least_sure(tags, k, size) == expected
    assert least_sure(reversed(tags), k, size) == expected  # in any order
    whole = [len(json.loads(t)["whole"]) for t in tags]
    assert max(whole) == min(9 * k, 45), "a chunk keeps at most its 9 k lowest whole chips"
    taken = {(c.row, c.col) for c in expected}
    assert len(expected) == k if k < 200 else len(expected) < 200
    assert len(counting) > 9 * 12, "more chips than the pick keeps, at every k"
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 2 for a in taken for b in taken if a != b)
    if k == 200:  # as many as fit: every chip left out touches one taken
        assert all(
            any(max(abs(c.row - r), abs(c.col - q)) <= 1 for r, q in taken) for c in counting
        )


@pytest.fixture(scope="class")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uncertain-in")
    mask = np.zeros((160, 192), bool)
    mask[:, :40] = True
    transform = Affine(30.0, 0, 290_000.0, 0, -30.0, 9_120_000.0)
    raster = write_raster(
        folder / "scene.tif", 160, 192, seed=29, nodata=0, nodata_mask=mask, transform=transform
    )
    return raster, transform


class TestWrittenByTheJob:
    def test_the_least_sure_chips_as_geoparquet(self, tmp_path, run, models, scene):
        raster, transform = scene
        output = tmp_path / "out"
        run(
            input=[str(raster)],
            model=str(models["conv"]),
            output=str(output),
            tile_size=64,
            uncertain=4,
            uncertain_size=32,
        )
        table = pq.read_table(output / "scene.uncertain.parquet")
        geo = json.loads(table.schema.metadata[b"geo"])
        assert geo["primary_column"] == "geometry" and geo["version"] == "1.1.0"
        assert table.column("rank").to_pylist() == [1, 2, 3, 4]
        with rasterio.open(output / "scene.confidence.tif") as src:
            confidence = src.read(1)
            assert src.descriptions == ("confidence (maxprob; 0 to 254 for 0 to 1)",)
        with rasterio.open(output / "scene.tif") as src:
            classes = src.read(1)
        means = []
        for row in table.to_pylist():
            assert (row["height"], row["width"]) == (32, 32)
            cell = np.s_[row["row_off"] : row["row_off"] + 32, row["col_off"] : row["col_off"] + 32]
            valid = confidence[cell] != 255
            assert row["valid_pixels"] == valid.sum() >= 512
            assert row["mean_confidence"] == round(confidence[cell][valid].mean() / 255, 6)
            assert sum(row["class_pixels"]) == row["valid_pixels"]
            assert row["class_pixels"][0] == (classes[cell][valid] == 0).sum()
            x0, y0 = transform * (row["col_off"], row["row_off"])
            x1, y1 = transform * (row["col_off"] + 32, row["row_off"] + 32)
            assert wkb.loads(row["geometry"]).bounds == (x0, y1, x1, y0)
            means.append(row["mean_confidence"])
        assert means == sorted(means)
        item = json.loads((output / "scene.stac.json").read_text())
        assert item["assets"]["uncertain"]["href"] == "./scene.uncertain.parquet"
