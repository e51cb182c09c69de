"""Outputs: georeferencing, COG layout, nodata, several inputs, run report."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from builders import whole_image_outputs, write_raster
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_output_is_a_valid_cog_with_the_inputs_georeference(tmp_path, run, models, crs):
    (tmp_path / "in").mkdir()
    transform = (
        Affine(0.0002, 0, -47.9, 0, -0.0002, -15.7)
        if crs == "EPSG:4326"
        else Affine(30.0, 0, 290_000.0, 0, -30.0, 9_120_000.0)
    )
    raster = write_raster(tmp_path / "in" / "scene.tif", 333, 301, crs=crs, transform=transform)
    run(
        input=[str(raster)],
        model=str(models["conv"]),
        output=str(tmp_path / "out"),
        tile_size=96,
        cog={"blocksize": 128},
    )
    output = tmp_path / "out" / "scene.tif"
    with rasterio.open(raster) as src, rasterio.open(output) as out:
        assert out.crs == src.crs and out.crs.to_epsg() == int(crs.split(":")[1])
        assert out.transform == src.transform
        assert (out.width, out.height) == (src.width, src.height)
        assert out.nodata == 255 and out.dtypes == ("uint8",) and out.count == 1
        assert out.descriptions == ("class",)
        factors = out.overviews(1)
        assert factors and max(out.shape) / factors[-1] <= 128, "overviews down to one block"
        assert out.tags()["halo"] == "4" and out.tags()["source"] == str(raster.resolve())
    valid, errors, warnings = cog_validate(str(output), strict=True)
    assert valid, (errors, warnings)


def test_nodata_tiles_are_skipped_and_nodata_pixels_kept_exactly(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    mask = np.zeros((256, 320), bool)
    mask[:, :128] = True  # two whole columns of 64-pixel tiles
    mask[150:170, 200:215] = True  # part of one tile
    mask[3, 300] = True  # a single pixel
    raster = write_raster(
        tmp_path / "in" / "scene.tif", 256, 320, dtype="uint16", nodata=0, nodata_mask=mask
    )
    report = run(
        input=[str(raster)],
        model=str(models["conv"]),
        output=str(tmp_path / "out"),
        tile_size=64,
        scores=True,
    )
    assert report["tiles"] == {"planned": 20, "skipped_nodata": 8, "inferred": 12}

    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        classes = out.read(1)
    with rasterio.open(tmp_path / "out" / "scene.scores.tif") as out:
        scores = out.read()
    np.testing.assert_array_equal(classes == 255, mask)
    np.testing.assert_array_equal(np.isnan(scores).all(axis=0), mask)
    expected, _, _ = whole_image_outputs(models["conv"], raster)
    assert (classes == expected).mean() >= 0.9999


def test_an_external_mask_file_marks_nodata(tmp_path, run, models):
    """GDAL side-car files of an input (here scene.tif.msk, as GDAL writes masks of JPEG
    imagery) are read: their masked pixels are nodata in the output."""
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 96, 128, seed=5)
    valid = np.full((96, 128), 255, np.uint8)
    valid[:, :40] = 0
    valid[70:80, 100:110] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(raster, "r+") as dst:
        dst.write_mask(valid)
    assert (tmp_path / "in" / "scene.tif.msk").is_file()
    run(input=[str(raster)], model=str(models["conv"]), output=str(tmp_path / "out"), tile_size=32)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        np.testing.assert_array_equal(out.read(1) == 255, valid == 0)


def test_several_inputs_of_different_sizes_and_crs_in_one_run(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    (tmp_path / "more").mkdir()
    a = write_raster(tmp_path / "in" / "a.tif", 200, 150, crs="EPSG:32633", seed=1)
    b = write_raster(tmp_path / "in" / "b.tif", 97, 130, crs="EPSG:4326", seed=2)
    tiny = write_raster(tmp_path / "more" / "tiny.tif", 20, 13, crs="EPSG:3857", seed=4)
    report = run(
        input=[str(tmp_path / "in"), str(tmp_path / "more" / "*.tif")],
        model=str(models["conv"]),
        output=str(tmp_path / "out"),
        tile_size=64,
    )
    assert [r["input"] for r in report["rasters"]] == [str(p.resolve()) for p in (a, b, tiny)]
    for raster in (a, b, tiny):
        with rasterio.open(raster) as src, rasterio.open(tmp_path / "out" / raster.name) as out:
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        expected, _, _ = whole_image_outputs(models["conv"], raster)
        with rasterio.open(tmp_path / "out" / raster.name) as out:
            assert (out.read(1) == expected).mean() >= 0.9999
    assert report["rasters"][2]["tiles"]["planned"] == 1, "smaller than one tile: one tile"

    saved = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert saved["tiles"] == {"planned": 12 + 6 + 1, "skipped_nodata": 0, "inferred": 19}
    assert set(saved["timings"]) >= {"plan_s", "infer_write_s", "assemble_s", "total_s"}
    assert saved["config"]["tile_size"] == 64 and saved["model"]["receptive_halo"] == 4
    assert saved["tiling"]["chunk_tiles"] == 2048 // 64, "chunk_tiles auto: chunks of ~2048 px"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["_run.json"]
        + [f"{n}{s}" for n in ("a", "b", "tiny") for s in (".tif", ".stac.json", ".tiles.parquet")]
    )


def test_savedmodel_folder_with_explicit_halo_matches_the_keras_file(tmp_path, run, models):
    import keras

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 150, 170)
    keras.models.load_model(models["unet"]).export(tmp_path / "saved", verbose=False)
    run(input=[str(raster)], model=str(models["unet"]), output=str(tmp_path / "k"), tile_size=64)
    run(
        input=[str(raster)],
        model=str(tmp_path / "saved"),
        output=str(tmp_path / "s"),
        tile_size=64,
        halo=24,
    )
    with rasterio.open(tmp_path / "k" / "scene.tif") as k:
        from_keras = k.read(1)
    with rasterio.open(tmp_path / "s" / "scene.tif") as s:
        assert (s.read(1) == from_keras).mean() >= 0.9999


def test_one_sigmoid_channel_is_two_classes_in_every_output(tmp_path, run):
    from builders import conv_stack

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 150, 130)
    model = conv_stack(tmp_path / "binary.keras", classes=1, depth=2, seed=4)
    report = run(
        input=[str(raster)],
        model=str(model),
        output=str(tmp_path / "out"),
        tile_size=64,
        scores=True,
        quicklook=True,
    )
    assert (report["model"]["classes"], report["model"]["channels"]) == (2, 1)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        classes = out.read(1)
        assert json.loads(out.tags()["CLASS_NAMES"]) == ["0", "1"]
    with rasterio.open(tmp_path / "out" / "scene.scores.tif") as out:
        assert out.count == 1 and out.descriptions == ("score 1",)
        score = out.read(1)
    assert set(np.unique(classes)) == {0, 1}, "both classes present on this scene"
    np.testing.assert_array_equal(classes, (score >= 0.5).astype(np.uint8))
    tiles = pq.read_table(tmp_path / "out" / "scene.tiles.parquet").to_pylist()
    assert all(len(t["class_pixels"]) == 2 for t in tiles)
    assert sum(sum(t["class_pixels"]) for t in tiles) == classes.size
    assert sum(t["class_pixels"][1] for t in tiles) == int((classes == 1).sum())
    item = json.loads((tmp_path / "out" / "scene.stac.json").read_text())
    stac_classes = item["assets"]["classes"]["classification:classes"]
    assert [c["value"] for c in stac_classes] == [0, 1, 255] and stac_classes[2]["nodata"]
