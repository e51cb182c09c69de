"""Chip classifiers: a model of one input size that gives one score vector per window. The job
cuts chips every `--chip-stride` pixels and writes a class per chip on the chips' own grid, and
NAME.chips.parquet with each chip's footprint, class, scores and valid share.

The hand-checked case: a model whose logits are (mean of band 1, mean of band 2, 0.5) over an
8 x 8 chip (invalid pixels enter as 0), on a 20 x 28 raster of 8 x 8 blocks of known values."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from builders import export_onnx
from rasterio.transform import from_origin

from sparkinfer.cli import main
from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError
from sparkinfer.inspection import inspect_model
from sparkinfer.job import prepare_job

NODATA = -1.0
BAND1 = [0.0, 1.0, 2.0, 4.0]  # by 8-pixel column of blocks
BAND2 = [0.0, 3.0, 6.0]  # by 8-pixel row of blocks
# Worked by hand: each chip's means with its invalid pixels (the nodata block at chip (1, 1),
# the nodata top half of chip (0, 2), the padding past rows 20 and columns 28) as 0.
EXPECTED_CLASSES = [[2, 0, 0, 0], [1, 255, 1, 0], [1, 1, 1, 1]]
EXPECTED_SHARES = [[1.0, 1.0, 0.5, 0.5], [1.0, 0.0, 1.0, 0.5], [0.5, 0.5, 0.5, 0.25]]


def chip_model(path, size: int | None = 8):
    """The hand-checked classifier, of one input size or (`size` None) of any."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 2))
    dense = layers.Dense(3, activation="softmax")
    outputs = dense(layers.GlobalAveragePooling2D()(inputs))
    dense.set_weights(
        [np.array([[1, 0, 0], [0, 1, 0]], np.float32), np.array([0, 0, 0.5], np.float32)]
    )
    keras.Model(inputs, outputs).save(path)
    return path


def _pixels() -> np.ndarray:
    rows, cols = np.mgrid[0:20, 0:28]
    pixels = np.stack([np.array(BAND1)[cols // 8], np.array(BAND2)[rows // 8]]).astype(np.float32)
    pixels[:, 8:16, 8:16] = NODATA  # chip (1, 1)
    pixels[:, 0:4, 16:24] = NODATA  # the top half of chip (0, 2)
    return pixels


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chips")
    (folder / "in").mkdir()
    path = folder / "in" / "blocks.tif"
    profile = dict(
        driver="GTiff",
        height=20,
        width=28,
        count=2,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(500_000, 4_000_000, 10, 10),
        nodata=NODATA,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(_pixels())
    model = chip_model(folder / "chips.keras")
    return {
        "raster": path,
        "keras": model,
        "onnx": export_onnx(model, folder / "chips.onnx"),
        "any_size": chip_model(folder / "any_size.keras", None),
        "folder": folder,
    }


def expected_scores(size: int, stride: int) -> np.ndarray:
    """Each chip's scores with numpy: softmax of (mean band 1, mean band 2, 0.5) over the chip,
    invalid and padding pixels as 0."""
    pixels = _pixels()
    pixels[pixels == NODATA] = 0
    rows = max(1, -(-(20 - size) // stride) + 1)
    cols = max(1, -(-(28 - size) // stride) + 1)
    padded = np.zeros((2, (rows - 1) * stride + size, (cols - 1) * stride + size), np.float32)
    padded[:, :20, :28] = pixels
    out = np.zeros((rows, cols, 3))
    for i in range(rows):
        for j in range(cols):
            chip = padded[:, i * stride : i * stride + size, j * stride : j * stride + size]
            logits = np.array([chip[0].mean(), chip[1].mean(), 0.5])
            out[i, j] = np.exp(logits) / np.exp(logits).sum()
    return out


def _run(spark, scene, out, *options):
    code = main(
        [
            "--input",
            str(scene["raster"]),
            "--output",
            str(out),
            "--progress",
            "0",
            "--chunk-tiles",
            "2",
            *options,
        ],
        spark,
    )
    assert code == 0
    return json.loads((out / "_run.json").read_text())


@pytest.fixture(scope="module")
def side_by_side(spark, scene):
    """Chips side by side (the default stride: the chip size), with scores."""
    out = scene["folder"] / "out"
    report = _run(spark, scene, out, "--model", str(scene["keras"]), "--scores")
    return out, report


def test_the_model_is_a_chip_classifier(scene):
    info = inspect_model(scene["keras"])
    assert (info.task, info.input_size, info.channels, info.bands) == ("chips", 8, 3, 2)
    assert inspect_model(scene["onnx"]).task == "chips"


def test_a_class_per_chip_on_the_chips_grid(side_by_side):
    out, report = side_by_side
    assert report["tiling"] == {"chips": {"size": 8, "stride": 8, "chunk_tiles": 2}}
    assert report["model"]["task"] == "chips"
    assert report["tiles"] == {"planned": 12, "skipped_nodata": 1, "inferred": 11}
    assert report["rasters"][0]["chunks"]["planned"] == 4
    with rasterio.open(out / "blocks.tif") as cog:
        assert cog.read(1).tolist() == EXPECTED_CLASSES
        assert (cog.nodata, cog.crs.to_epsg()) == (255, 32633)
        assert cog.transform == from_origin(500_000, 4_000_000, 80, 80)
    with rasterio.open(out / "blocks.scores.tif") as scores:
        got = np.moveaxis(scores.read(), 0, -1)
    expected = expected_scores(8, 8)
    valid = np.array(EXPECTED_CLASSES) != 255
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-6)
    assert np.isnan(got[~valid]).all()


def test_the_chip_table(side_by_side):
    out, _ = side_by_side
    table = pq.read_table(out / "blocks.chips.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 32633}
    rows = sorted(table.to_pylist(), key=lambda r: (r["chip_row"], r["chip_col"]))
    assert len(rows) == 12
    expected = expected_scores(8, 8)
    for row in rows:
        i, j = row["chip_row"], row["chip_col"]
        assert (row["row_off"], row["col_off"], row["size"]) == (8 * i, 8 * j, 8)
        assert row["valid_share"] == EXPECTED_SHARES[i][j]
        footprint = shapely.from_wkb(row["geometry"])
        x, y = 500_000 + 80 * j, 4_000_000 - 80 * i
        assert footprint.equals(shapely.box(x, y - 80, x + 80, y))
        if EXPECTED_CLASSES[i][j] == 255:
            assert (row["status"], row["class"], row["scores"]) == ("skipped_nodata", None, None)
            continue
        assert (row["status"], row["class"]) == ("inferred", EXPECTED_CLASSES[i][j])
        assert row["class_name"] == str(row["class"])
        np.testing.assert_allclose(row["scores"], expected[i, j], atol=1e-6)


def test_the_stac_item_lists_the_chips(side_by_side):
    out, _ = side_by_side
    item = json.loads((out / "blocks.stac.json").read_text())
    assert item["assets"]["chips"]["href"] == "./blocks.chips.parquet"
    assert item["properties"]["proj:shape"] == [3, 4]
    assert item["properties"]["sparkinfer:chip_size"] == 8
    assert "tiles" not in item["assets"]


def test_overlapping_chips_on_a_finer_grid_through_onnx(spark, scene, tmp_path):
    """A stride of 4: 4 x 6 chips whose cells are centred on them, 2 pixels in; the ONNX export
    gives the same (its outputs are (batch, classes), no layout to read)."""
    report = _run(spark, scene, tmp_path, "--model", str(scene["onnx"]), "--chip-stride", "4")
    assert report["tiles"]["planned"] == 24
    expected = expected_scores(8, 4)
    with rasterio.open(tmp_path / "blocks.tif") as cog:
        classes = cog.read(1)
        assert cog.transform == from_origin(500_000 + 20, 4_000_000 - 20, 40, 40)
    table = pq.read_table(tmp_path / "blocks.chips.parquet").to_pylist()
    assert len(table) == 24
    for row in table:
        i, j = row["chip_row"], row["chip_col"]
        assert classes[i, j] == (255 if row["class"] is None else row["class"])
        if row["class"] is not None:
            assert row["class"] == expected[i, j].argmax()
            np.testing.assert_allclose(row["scores"], expected[i, j], atol=1e-5)
    assert sum(r["class"] is None for r in table) == 1, "only chip (2, 2) is all nodata"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(merge="blend"), "a chip classifier gives one class per window, so --merge blend"),
        (dict(verify=True), "so --verify does not apply"),
        (dict(chip_stride=9), "--chip-stride 9 is larger than the chips"),
        (dict(polygons=True), "so --polygons does not apply"),
        (dict(estimate=True), "--estimate covers per-pixel models"),
    ],
)
def test_options_of_per_pixel_models_are_refused(scene, tmp_path, options, message):
    config = (
        dict(input=[str(scene["raster"])], model=str(scene["keras"]), output=str(tmp_path))
        | options
    )
    with pytest.raises(ConfigError, match=message):
        prepare_job(load_config(config))


@pytest.mark.parametrize(
    "option, flag", [("chip_stride", "--chip-stride"), ("chip_size", "--chip-size")]
)
def test_chip_options_for_a_per_pixel_model_are_refused(models, scene, tmp_path, option, flag):
    config = dict(
        input=[str(scene["raster"])],
        model=str(models["conv"]),
        output=str(tmp_path),
        bands=[1, 2, 1, 2],
    ) | {option: 4}
    with pytest.raises(ConfigError, match=f"{flag} applies to chip classifiers"):
        prepare_job(load_config(config))


def test_a_classifier_of_any_size_takes_the_chip_size_given(spark, scene, tmp_path):
    """The same classifier saved for any input size: with --chip-size 8, the grid worked by
    hand; without, one line; and a model of one size refuses another."""
    info = inspect_model(scene["any_size"])
    assert (info.task, info.input_size, info.channels) == ("chips", None, 3)
    onnx = inspect_model(export_onnx(scene["any_size"], tmp_path / "any_size.onnx"))
    assert (onnx.task, onnx.input_size) == ("chips", None)
    report = _run(
        spark, scene, tmp_path / "out", "--model", str(scene["any_size"]), "--chip-size", "8"
    )
    assert report["tiling"] == {"chips": {"size": 8, "stride": 8, "chunk_tiles": 2}}
    with rasterio.open(tmp_path / "out" / "blocks.tif") as cog:
        assert cog.read(1).tolist() == EXPECTED_CLASSES
    config = dict(input=[str(scene["raster"])], output=str(tmp_path / "refused"))
    with pytest.raises(
        ConfigError, match="takes any input size; give the chips' side with --chip-size PIXELS"
    ):
        prepare_job(load_config(config | dict(model=str(scene["any_size"]))))
    with pytest.raises(ConfigError, match="takes 8-pixel chips only; --chip-size 6 does not"):
        prepare_job(load_config(config | dict(model=str(scene["keras"]), chip_size=6)))
