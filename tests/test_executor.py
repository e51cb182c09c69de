"""The executor's parts without Spark, on tiny arrays with values worked by hand: cutting a
chunk's read window into windows, batching windows through a model, merging a chunk's windows
(cropped, blended, chips), committing its files, and the whole partition function."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import rasterio
from onnx import TensorProto, helper, numpy_helper
from rasterio.crs import CRS
from rasterio.transform import from_origin

from sparkinfer.catalog import TILE_COUNTS_TAG
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.executor import CHUNK_RESULT_SCHEMA, ChunkResult, StageSpec, infer_partition
from sparkinfer.executor.commit import ChipTable, Polygons, TileCounts, commit_chunk
from sparkinfer.executor.merge import BlendChunk, ChipChunk, CropChunk, PredictedChunk
from sparkinfer.executor.partition import Parts
from sparkinfer.executor.predict import Prediction, core_prediction, predict_windows
from sparkinfer.executor.read import (
    PlannedChunk,
    ReadChunk,
    cut,
    whole_window,
    window_core,
)
from sparkinfer.model import package_model
from sparkinfer.plan import Chunk, PixelWindow, RasterPlan, Tile
from sparkinfer.raster import RasterInfo, read_info
from sparkinfer.runtimes import RuntimeOptions, preprocess
from sparkinfer.runtimes.base import CPU, Runtime, classes_of
from sparkinfer.stages.infer import plan_table

ROOT = Path(__file__).resolve().parent.parent
NODATA = 255
NAN = np.nan


class BandAboveFive(Runtime):
    """A per-pixel model in numpy: scores (5, band 1), so class 1 where band 1 is above 5. It
    records the shape of each batch it is called on."""

    format = "numpy"

    def __init__(self) -> None:
        super().__init__(1, RuntimeOptions(), CPU)
        self.calls: list[tuple[int, ...]] = []

    def scores(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([np.full(batch.shape[:3], 5, np.float32), batch[..., 0]], axis=-1)

    def classify(self, pixels, valid, with_scores=False):
        self.calls.append(pixels.shape)
        scores = self.scores(preprocess(pixels, valid, self.options.normalization))
        return classes_of(scores), (scores if with_scores else None)


def band_above_five_onnx(path: Path, bands: int) -> Path:
    """The same model as an ONNX file: (batch, height, width, bands) @ weights + (5, 0)."""
    weights = np.zeros((bands, 2), np.float32)
    weights[0, 1] = 1
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "weights"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["scores"]),
        ],
        "band_above_five",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["b", "h", "w", bands])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", "h", "w", 2])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([5, 0], np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# A 12 x 12 raster in tiles of 4 with a halo of 2: windows of 8 at offsets 0, 2 and 4, one
# chunk of 3 x 3 tiles that reads the whole raster. Pixel (r, c) is (r + c) % 11; the core of
# tile (0, 0) and pixel (11, 11) are nodata.
PLAN_12 = RasterPlan(12, 12, Tiling(4, 2, chunk_tiles=3))


def planned(plan: RasterPlan, raster_index: int = 0) -> PlannedChunk:
    chunk = Chunk.of_row(plan.chunks().to_pylist()[0])
    return PlannedChunk(raster_index, chunk, tuple(plan.chunk_windows(0, 0)))


def read_12() -> ReadChunk:
    rows, cols = np.mgrid[0:12, 0:12]
    data = ((rows + cols) % 11).astype(np.uint16)[None]
    valid = np.ones((12, 12), bool)
    valid[0:4, 0:4] = False
    valid[11, 11] = False
    return ReadChunk(planned(PLAN_12), data, valid, read_s=0.25)


def read_6(raster_index: int) -> ReadChunk:
    """A 6 x 6 raster of 9s (tiles of 4, windows of 6): tile (0, 0)'s core is nodata."""
    valid = np.ones((6, 6), bool)
    valid[0:4, 0:4] = False
    plan = RasterPlan(6, 6, Tiling(4, 2, chunk_tiles=2))
    return ReadChunk(planned(plan, raster_index), np.full((1, 6, 6), 9, np.uint16), valid, 0.5)


def by_place(windows) -> dict:
    return {(w.place.window.row, w.place.window.col): w for w in windows}


def test_the_executor_never_imports_spark():
    package = ROOT / "sparkinfer" / "executor"
    assert not [p.name for p in package.glob("*.py") if "pyspark" in p.read_text()]
    code = "import sys, sparkinfer.executor; print(any('pyspark' in m for m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_a_chunk_is_cut_into_views_of_its_windows_with_their_validity():
    chunk = read_12()
    windows = by_place(cut(chunk, window_core))
    assert list(windows) == [(r, c) for r in range(3) for c in range(3)]
    skipped = windows[0, 0]
    assert (skipped.pixels, skipped.valid, skipped.kept_valid, skipped.error) == (
        None,
        None,
        None,
        None,
    )
    assert [w.read_s for w in windows.values()] == [0.25] + [0.0] * 8, "the read, counted once"

    middle = windows[1, 1]  # rows and columns 2 to 10
    assert np.shares_memory(middle.pixels, chunk.data) and middle.pixels.shape == (8, 8, 1)
    np.testing.assert_array_equal(middle.pixels[0, :, 0], [4, 5, 6, 7, 8, 9, 10, 0])
    expected = np.ones((8, 8), bool)
    expected[0:2, 0:2] = False  # the nodata core of tile (0, 0) reaches into its halo
    np.testing.assert_array_equal(middle.valid, expected)
    assert middle.kept_valid.shape == (4, 4) and middle.kept_valid.all()

    corner = windows[2, 2]  # rows and columns 4 to 12
    expected = np.ones((8, 8), bool)
    expected[7, 7] = False
    np.testing.assert_array_equal(corner.valid, expected)
    np.testing.assert_array_equal(corner.kept_valid, expected[4:, 4:])
    all_valid = [key for key, w in windows.items() if w.pixels is not None and w.valid is None]
    assert all_valid == [(0, 2), (1, 2), (2, 0), (2, 1)]


def test_a_chip_keeps_its_whole_window_and_an_unread_chunk_gives_its_error():
    chips = by_place(cut(read_12(), whole_window))
    assert chips[0, 0].pixels is not None, "a chip with valid pixels is inferred"
    assert chips[0, 0].kept_valid.mean() == 0.75  # 16 of its 64 pixels are nodata

    unread = ReadChunk(read_12().planned, None, None, 0.5, "scene.tif: cannot read pixels")
    windows = list(cut(unread, window_core))
    assert {(w.pixels, w.error) for w in windows} == {(None, "scene.tif: cannot read pixels")}
    assert [w.read_s for w in windows] == [0.5] + [0.0] * 8


def test_windows_are_batched_by_shape_and_cropped_to_their_cores():
    model = BandAboveFive()
    windows = [*cut(read_12(), window_core), *cut(read_6(1), window_core)]
    predicted = list(
        predict_windows(windows, model, core_prediction, with_scores=True, batch_size=3)
    )
    assert model.calls == [(3, 8, 8, 1), (3, 8, 8, 1), (2, 8, 8, 1), (3, 6, 6, 1)]
    # A window that is not inferred passes at once, ahead of the batch that waits.
    order = [(p.place.raster_index, p.place.window.row, p.place.window.col) for p in predicted]
    assert order == [
        *[(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2), (0, 2, 0)],
        *[(1, 0, 0), (0, 2, 1), (0, 2, 2), (1, 0, 1), (1, 1, 0), (1, 1, 1)],
    ]
    assert [p.prediction is None for p in predicted] == [True] + [False] * 6 + [True] + [False] * 5

    corner = predicted[9].prediction  # tile (2, 2): rows and columns 8 to 12
    np.testing.assert_array_equal(
        corner.classes, [[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, NODATA]]
    )
    np.testing.assert_array_equal(corner.scores[..., 0], [[5] * 4] * 3 + [[5, 5, 5, NAN]])
    np.testing.assert_array_equal(
        corner.scores[..., 1], [[5, 6, 7, 8], [6, 7, 8, 9], [7, 8, 9, 10], [8, 9, 10, NAN]]
    )
    assert corner.scores.dtype == np.float32 and corner.classes.dtype == np.uint8
    edge = predicted[10].prediction  # the 6 x 6 raster's tile (0, 1): rows 0 to 4, columns 4, 5
    np.testing.assert_array_equal(edge.classes, np.ones((4, 2)))
    assert predicted[1].read_s == 0.0 and predicted[0].read_s == 0.25
    assert predicted[0].infer_s == 0.0 and all(p.infer_s > 0 for p in predicted[1:7])


def test_batch_size_auto_takes_a_shape_s_windows_in_one_call_on_a_cpu():
    model = BandAboveFive()
    windows = [*cut(read_12(), window_core), *cut(read_6(1), window_core)]
    predicted = list(
        predict_windows(windows, model, core_prediction, with_scores=False, batch_size=None)
    )
    assert model.calls == [(8, 8, 8, 1), (3, 6, 6, 1)]
    assert {p.prediction.scores is None for p in predicted if p.prediction} == {True}


def window(row: int, col: int, core: PixelWindow, read: PixelWindow | None = None) -> Tile:
    return Tile(row, col, core, read or core)


def test_a_crop_chunk_is_its_windows_cores():
    core = PixelWindow(10, 20, 2, 3)
    chunk = CropChunk(core, channels=2, scores=True)
    scores = np.array([[[0.1, 0.9], [0.2, 0.8]], [[0.3, 0.7], [NAN, NAN]]], np.float32)
    prediction = Prediction(np.array([[0, 1], [0, NODATA]], np.uint8), scores)
    chunk.add(window(0, 0, PixelWindow(10, 20, 2, 2)), prediction)
    chunk.add(window(0, 1, PixelWindow(10, 22, 2, 1)), None)  # no valid pixel: nodata
    result = chunk.result()
    np.testing.assert_array_equal(result.classes, [[0, 1, NODATA], [0, NODATA, NODATA]])
    expected = np.array(
        [[[0.1, 0.9], [0.2, 0.8], [NAN, NAN]], [[0.3, 0.7], [NAN, NAN], [NAN, NAN]]], np.float32
    )
    np.testing.assert_array_equal(result.scores, expected)
    assert result.chips == ()
    assert CropChunk(core, channels=2, scores=False).result().scores is None


def test_a_blend_chunk_weighs_overlapping_windows_by_their_taper():
    chunk = BlendChunk(PixelWindow(0, 0, 1, 6), channels=2, scores=True, overlap=2)
    first = np.tile(np.array([1, 0], np.float32), (1, 4, 1))
    second = np.tile(np.array([0, 1], np.float32), (1, 4, 1))
    second[0, 3] = NAN  # nodata
    chunk.add(window(0, 0, PixelWindow(0, 0, 1, 4)), Prediction(np.zeros((1, 4), np.uint8), first))
    chunk.add(window(0, 1, PixelWindow(0, 2, 1, 4)), Prediction(np.ones((1, 4), np.uint8), second))
    chunk.add(window(0, 2, PixelWindow(0, 5, 1, 1), PixelWindow(0, 4, 1, 4)), None)
    result = chunk.result()
    # A window of 4 tapers over 2 pixels: sin^2 at pixel centres, w0 = sin^2(pi/8) rising to
    # w1 = sin^2(3 pi/8), then falling. Height 1 does not taper.
    w0 = np.float32(np.sin(np.pi / 8) ** 2)
    w1 = np.float32(np.sin(3 * np.pi / 8) ** 2)
    expected = np.array(
        [[[1, 0], [1, 0], [w1 / (w1 + w0), w0 / (w1 + w0)], [w0 / (w0 + w1), w1 / (w0 + w1)]]],
        np.float32,
    )
    expected = np.concatenate([expected, [[[0, 1], [NAN, NAN]]]], axis=1)
    np.testing.assert_array_equal(result.scores, expected)
    np.testing.assert_array_equal(result.classes, [[0, 0, 0, 1, 1, NODATA]])
    assert BlendChunk(PixelWindow(0, 0, 1, 6), 2, False, 2).result().scores is None


def test_a_chip_chunk_is_its_chips_cells_and_their_rows():
    chunk = ChipChunk(PixelWindow(0, 0, 1, 2), channels=3, scores=True)
    scores = np.array([[[0.125, 0.25, 0.625]]], np.float32)
    chunk.add(
        window(0, 0, PixelWindow(0, 0, 1, 1)), Prediction(np.array([[2]], np.uint8), scores, 0.75)
    )
    chunk.add(window(0, 1, PixelWindow(0, 1, 1, 1)), None)
    result = chunk.result()
    np.testing.assert_array_equal(result.classes, [[2, NODATA]])
    np.testing.assert_array_equal(result.scores, [[[0.125, 0.25, 0.625], [NAN, NAN, NAN]]])
    rows = [(c.row, c.col, c.classes, c.valid_share) for c in result.chips]
    assert rows == [(0, 0, 2, 0.75), (0, 1, None, 0.0)]
    np.testing.assert_array_equal(result.chips[0].scores, scores[0, 0])
    assert result.chips[1].scores is None


def spec_of(info: RasterInfo, plan: RasterPlan, staging: Path, **options) -> StageSpec:
    return StageSpec(
        rasters=(info,),
        plans=(plan,),
        staging=(str(staging),),
        bands=tuple(range(1, info.count + 1)),
        runtime=RuntimeOptions(),
        batch_size=options.get("batch_size"),
        readers=1,
        gpu_share=1,
        channels=options.get("channels", 3),
        scores=options.get("scores", True),
        polygons=options.get("polygons", False),
    )


def info_of(height: int, width: int, count: int = 1) -> RasterInfo:
    """A raster's metadata, as the driver would read it: only the grid matters here."""
    return RasterInfo(
        "scene.tif",
        width,
        height,
        count,
        "uint8",
        CRS.from_epsg(32633).to_wkt(),
        tuple(from_origin(500_000, 5_300_000, 10, 10))[:6],
        None,
        "none",
        1,
        0,
    )


# A 4 x 6 class map in tiles of 3: regions of class 0 (8 pixels), 1 (7) and 2 (8).
CLASSES = np.array(
    [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [0, 0, 1, NODATA, 2, 2], [0, 0, 1, 1, 2, 2]],
    np.uint8,
)


def test_a_committed_chunk_holds_its_maps_tile_counts_and_polygons(tmp_path):
    plan = RasterPlan(4, 6, Tiling(3, 0, chunk_tiles=2))
    spec = spec_of(info_of(4, 6), plan, tmp_path, polygons=True)
    scores = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3) / 100
    scores[2, 3] = NAN
    chunk = Chunk.of_row(plan.chunks().to_pylist()[0])
    sinks = (TileCounts(spec.plans, 3), Polygons(spec.rasters))
    commit_chunk(spec, 0, chunk, PredictedChunk(CLASSES, scores), sinks)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chunk_r00000_c00000.polygons.parquet",
        "chunk_r00000_c00000.scores.tif",
        "chunk_r00000_c00000.tif",
    ]
    with rasterio.open(tmp_path / "chunk_r00000_c00000.tif") as src:
        np.testing.assert_array_equal(src.read(1), CLASSES)
        assert src.nodata == NODATA and src.transform == from_origin(500_000, 5_300_000, 10, 10)
        # [tile row, tile column, class 0, 1 and 2 pixels] of tiles 3 x 3, 3 x 3, 1 x 3, 1 x 3
        counts = json.loads(src.tags()[TILE_COUNTS_TAG])
    assert counts == [[0, 0, 6, 3, 0], [0, 1, 0, 2, 6], [1, 0, 2, 1, 0], [1, 1, 0, 1, 2]]
    with rasterio.open(tmp_path / "chunk_r00000_c00000.scores.tif") as src:
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), scores)
    regions = pq.read_table(tmp_path / "chunk_r00000_c00000.polygons.parquet")
    pixels = zip(regions["class"].to_pylist(), regions["pixels"].to_pylist(), strict=True)
    assert sorted(pixels) == [(0, 8), (1, 7), (2, 8)]


def test_a_chip_table_is_committed_with_its_chunk(tmp_path):
    plan = RasterPlan(16, 8, ChipGrid(8, 8, 2))  # 2 x 1 chips of 8 pixels
    spec = spec_of(info_of(16, 8), plan, tmp_path, scores=False)
    chunk = Chunk.of_row(plan.chunks().to_pylist()[0])
    merged = ChipChunk(chunk.core, 3, scores=False)
    scores = np.array([[[0.5, 0.25, 0.25]]], np.float32)
    merged.add(
        window(0, 0, PixelWindow(0, 0, 1, 1)), Prediction(np.zeros((1, 1), np.uint8), scores, 1.0)
    )
    merged.add(window(1, 0, PixelWindow(1, 0, 1, 1)), None)
    commit_chunk(spec, 0, chunk, merged.result(), (ChipTable(3),))

    with rasterio.open(tmp_path / "chunk_r00000_c00000.tif") as src:
        np.testing.assert_array_equal(src.read(1), [[0], [NODATA]])
        assert src.transform == from_origin(500_000, 5_300_000, 80, 80), "a cell per chip"
    assert pq.read_table(tmp_path / "chunk_r00000_c00000.chips.parquet").to_pylist() == [
        {"chip_row": 0, "chip_col": 0, "class": 0, "scores": [0.5, 0.25, 0.25], "valid_share": 1.0},
        {"chip_row": 1, "chip_col": 0, "class": None, "scores": None, "valid_share": 0.0},
    ]


def test_a_chunk_that_fails_to_commit_leaves_no_file(tmp_path):
    plan = RasterPlan(4, 6, Tiling(3, 0, chunk_tiles=2))
    spec = spec_of(info_of(4, 6), plan, tmp_path, polygons=True)
    chunk = Chunk.of_row(plan.chunks().to_pylist()[0])

    def failing(writer, raster_index, chunk, predicted):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        commit_chunk(
            spec, 0, chunk, PredictedChunk(CLASSES, None), (Polygons(spec.rasters), failing)
        )
    assert list(tmp_path.iterdir()) == []


def test_the_options_choose_the_parts_once():
    info, staging = info_of(16, 16), Path("staging")
    chunk = Chunk.of_row(RasterPlan(16, 16, Tiling(8, 0)).chunks().to_pylist()[0])
    crop = Parts.of(spec_of(info, RasterPlan(16, 16, Tiling(8, 0)), staging, scores=False))
    assert isinstance(crop.chunk(chunk), CropChunk) and not crop.with_scores
    assert [type(s) for s in crop.sinks] == [TileCounts]
    blend = Tiling(8, 2, merge="blend")
    blended = Parts.of(
        spec_of(info, RasterPlan(16, 16, blend), staging, scores=False, polygons=True)
    )
    assert isinstance(blended.chunk(chunk), BlendChunk) and blended.with_scores
    assert [type(s) for s in blended.sinks] == [TileCounts, Polygons]
    chips = Parts.of(spec_of(info, RasterPlan(16, 16, ChipGrid(8, 8, 2)), staging, scores=False))
    assert isinstance(chips.chunk(chunk), ChipChunk) and chips.kept_part is whole_window
    assert [type(s) for s in chips.sinks] == [ChipTable]


def test_a_chunk_result_has_the_schema_s_columns():
    assert list(ChunkResult.__dataclass_fields__) == CHUNK_RESULT_SCHEMA.names


@pytest.fixture
def scene(tmp_path):
    """An 18 x 20 raster of two bands, band 1 (r + c) % 11, with a nodata (255) corner of 8 x 8
    pixels; its plan in tiles of 8 with a halo of 2, 2 x 2 tiles a chunk; the model."""
    rows, cols = np.mgrid[0:18, 0:20]
    pixels = np.stack([(rows + cols) % 11, np.zeros((18, 20))]).astype(np.uint8)
    pixels[:, :8, :8] = NODATA
    path = tmp_path / "scene.tif"
    profile = dict(
        driver="GTiff",
        height=18,
        width=20,
        count=2,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_000, 5_300_000, 10, 10),
        nodata=NODATA,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    (tmp_path / "staging").mkdir()
    plan = RasterPlan(18, 20, Tiling(8, 2, chunk_tiles=2))
    spec = spec_of(read_info(str(path)), plan, tmp_path / "staging", channels=2)
    package = package_model(band_above_five_onnx(tmp_path / "model.onnx", bands=2))
    expected = np.where((rows + cols) % 11 > 5, 1, 0).astype(np.uint8)
    expected[:8, :8] = NODATA
    return spec, package, expected


def mosaic(spec: StageSpec) -> np.ndarray:
    """The class map of the committed chunks, each placed by its transform."""
    out = np.zeros((18, 20), np.uint8)
    for path in Path(spec.staging[0]).glob("chunk_*[0-9].tif"):
        with rasterio.open(path) as src:
            top, left = int(5_300_000 - src.transform.f) // 10, int(src.transform.c - 500_000) // 10
            out[top : top + src.height, left : left + src.width] = src.read(1)
    return out


def test_the_partition_function_infers_and_commits_each_chunk(scene):
    spec, package, expected = scene
    plan = plan_table([spec.plans[0].chunks()])
    rows = [
        r for batch in infer_partition(plan.to_batches(), spec, package) for r in batch.to_pylist()
    ]
    np.testing.assert_array_equal(mosaic(spec), expected)
    got = [(r["chunk_row"], r["chunk_col"], r["tiles"], r["inferred"], r["skipped"]) for r in rows]
    assert got == [(0, 0, 4, 3, 1), (0, 1, 2, 2, 0), (1, 0, 2, 2, 0), (1, 1, 1, 1, 0)]
    assert {(r["error"], r["reused"], r["gpu"], r["device"]) for r in rows} == {
        (None, False, None, "cpu")
    }
    assert not list(Path(spec.staging[0]).glob(".*")), "no staged file is left"


def test_a_retried_task_keeps_the_chunks_its_first_attempt_committed(scene):
    spec, package, expected = scene
    plan = plan_table([spec.plans[0].chunks()])
    list(infer_partition(plan.to_batches(), spec, package))
    (Path(spec.staging[0]) / "chunk_r00001_c00000.scores.tif").unlink()  # not committed
    rows = [
        r
        for b in infer_partition(plan.to_batches(), spec, package, attempt=1)
        for r in b.to_pylist()
    ]
    assert [(r["chunk_row"], r["chunk_col"], r["reused"], r["inferred"]) for r in rows] == [
        (1, 0, False, 2),
        (0, 0, True, 0),
        (0, 1, True, 0),
        (1, 1, True, 0),
    ]
    np.testing.assert_array_equal(mosaic(spec), expected)
    again = [r for b in infer_partition(plan.to_batches(), spec, package) for r in b.to_pylist()]
    assert not any(r["reused"] for r in again), "a first attempt looks for nothing committed"
