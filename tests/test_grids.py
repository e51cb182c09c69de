"""Many scenes, one map: two real scenes in neighbouring UTM zones that overlap by about a
third, mapped on a grid of a third CRS (EPSG:3857) in grid tiles smaller than either scene.

The reference is whole-mosaic inference: the region's mosaic (the block of grid tiles the
inputs reach into) read in one piece with GDAL's warper (`mosaic.read_mosaic`, checked against
`rasterio.warp.reproject` in test_mosaic) and inferred whole by the model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from builders import shifted_copy_in, unet, whole_image_outputs
from processes import committed_chunks, kill_whole, start, submit, wait_until

from sparkinfer.config_sources import load_config
from sparkinfer.grid import OutputGrid, plan_grid
from sparkinfer.job import prepare_job, run_job
from sparkinfer.mosaic import read_mosaic
from sparkinfer.raster import read_info

ROOT = Path(__file__).resolve().parent.parent
OLINDA = ROOT / "data" / "L7_ETMs.tif"  # Landsat 7 ETM+, 6 bands, EPSG:31985 (UTM 25S)
GRID = dict(crs="EPSG:3857", resolution=30.0, tile_size=128)
# What the shared maps also write, in either format: a confidence and each tile's unsure chips.
MEASURED = dict(confidence="margin", uncertain=2, uncertain_size=32)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "in").mkdir()
    west = folder / "in" / "west.tif"
    shutil.copy(OLINDA, west)
    # Two thirds of a width to the east, in UTM zone 24S: they overlap by about a third.
    east = shifted_copy_in(OLINDA, folder / "in" / "east.tif", "EPSG:31984", 2 / 3)
    return folder, [west, east], unet(folder / "unet.keras", bands=6, classes=4)


def _map(spark, inputs, model, output, options=(), **grid) -> dict:
    """The map of `inputs` on the grid (`grid` added to GRID), with more `options`, as the
    job's report."""
    config = load_config(
        dict(
            input=[str(p) for p in inputs],
            model=str(model),
            output=str(output),
            tile_size=64,
            scores=True,
            quicklook=not grid,
            grid=GRID | grid,
            **dict(options),
        ),
        defaults_file=ROOT / "conf" / "default.yaml",
    )
    return run_job(spark, prepare_job(config)).report


@pytest.fixture(scope="module")
def mapped(scenes, spark):
    folder, inputs, model = scenes
    return folder / "out", _map(spark, inputs, model, folder / "out", MEASURED)


@pytest.fixture(scope="module")
def zarr_mapped(scenes, spark):
    folder, inputs, model = scenes
    return folder / "zarr", _map(spark, inputs, model, folder / "zarr", MEASURED, format="zarr")


def _reference(folder, inputs, model):
    """Whole-mosaic inference over the map's block of grid tiles, and that block's transform."""
    infos = [read_info(str(p)) for p in inputs]
    grid = OutputGrid(GRID["crs"], GRID["resolution"], GRID["tile_size"])
    extent = plan_grid(grid, infos).extent
    transform = grid.tile_transform(extent.cols.start, extent.rows.start)
    height = len(extent.rows) * grid.tile_size
    width = len(extent.cols) * grid.tile_size
    bands = list(range(1, 7))
    pixels, valid = read_mosaic(grid, transform, height, width, infos, bands, "bilinear")
    mosaic = folder / "mosaic.tif"
    profile = dict(driver="GTiff", count=6, dtype="uint8", crs=GRID["crs"], transform=transform)
    with rasterio.open(mosaic, "w", width=width, height=height, **profile) as dst:
        dst.write(pixels)
        dst.write_mask(valid)
    classes, _, valid = whole_image_outputs(model, mosaic, stride=4)
    return classes, valid, transform


def _window_in(outer: Affine, inner: Affine) -> tuple[int, int]:
    """Row and column of `inner`'s top-left pixel in the grid of `outer`."""
    col, row = ~outer * (inner.c, inner.f)
    assert col == round(col) and row == round(row)
    return round(row), round(col)


def test_the_map_equals_whole_mosaic_inference_across_scene_and_tile_borders(scenes, mapped):
    folder, inputs, model = scenes
    out, report = mapped
    expected, valid, transform = _reference(folder, inputs, model)
    assert len(np.unique(expected[valid])) >= 2, "the test model must not be constant"
    with rasterio.open(out / "map.vrt") as vrt:
        assert vrt.crs.to_epsg() == 3857
        side = GRID["tile_size"] * GRID["resolution"]
        assert vrt.transform.c % side == 0 and vrt.transform.f % side == 0
        classes = vrt.read(1)
        row, col = _window_in(transform, vrt.transform)
    expected = expected[row : row + classes.shape[0], col : col + classes.shape[1]]
    valid = valid[row : row + classes.shape[0], col : col + classes.shape[1]]
    # Nodata exactly where no scene is valid; elsewhere the classes of whole-mosaic inference.
    np.testing.assert_array_equal(classes == 255, ~valid)
    assert (classes[valid] == expected[valid]).mean() >= 0.9999

    # Tiles across the scenes' border, met by both, are among those checked, each equal too.
    across = []
    for item_path in sorted((out / "tiles").glob("*.stac.json")):
        item = json.loads(item_path.read_text())
        sources = {link["href"] for link in item["links"] if link["rel"] == "derived_from"}
        if len(sources) == 2:
            across.append(item_path.name.removesuffix(".stac.json"))
    assert across, "a grid tile takes pixels from both scenes"
    for name in across:
        with rasterio.open(out / "tiles" / f"{name}.tif") as tile:
            r, c = _window_in(transform, tile.transform)
            mine = tile.read(1)
        theirs = expected[r - row : r - row + mine.shape[0], c - col : c - col + mine.shape[1]]
        ok = valid[r - row : r - row + mine.shape[0], c - col : c - col + mine.shape[1]]
        assert (mine[ok] == theirs[ok]).mean() >= 0.9999
    assert report["rasters"] and not report["failed"]


def test_each_grid_tile_is_a_cog_on_the_grid_listed_by_the_collection(mapped):
    out, report = mapped
    tiles = sorted((out / "tiles").glob("map_*[0-9].tif"))
    assert len(tiles) == len(report["rasters"]) >= 6
    side = GRID["tile_size"] * GRID["resolution"]
    for path in tiles:
        with rasterio.open(path) as tile:
            assert tile.shape == (128, 128) and tile.crs.to_epsg() == 3857
            col, row = (int(v) for v in path.stem.split("_")[1:])
            assert tile.transform == Affine(30.0, 0, col * side, 0, -30.0, -row * side)
    collection = json.loads((out / "collection.json").read_text())
    items = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert items == sorted(f"./tiles/{p.stem}.stac.json" for p in tiles)
    with rasterio.open(out / "map.scores.vrt") as scores:
        assert scores.count == 4 and scores.dtypes[0] == "float32"
    # One quicklook, of the whole map; none per tile.
    assert report["map"] == [
        str(out / name) for name in ("map.vrt", "map.scores.vrt", "map.png", "collection.json")
    ]
    assert not list((out / "tiles").glob("*.png"))


def test_a_rerun_skips_complete_tiles_and_remakes_a_lost_one_byte_for_byte(scenes, mapped, spark):
    folder, inputs, model = scenes
    out, _ = mapped
    tiles = sorted((out / "tiles").glob("map_*[0-9].tif"))
    before = {p.name: p.read_bytes() for p in tiles}
    lost = tiles[len(tiles) // 2]
    lost.unlink()
    again = _map(spark, inputs, model, out, MEASURED)
    made = [r["input"] for r in again["rasters"] if r["status"] == "written"]
    col, row = lost.stem.split("_")[1:]
    assert made == [f"grid tile {col},{row}"]  # the lost tile alone, the others complete
    assert {p.name: p.read_bytes() for p in tiles} == before


def test_the_zarr_store_equals_the_cog_tiles_with_the_same_georeference(mapped, zarr_mapped):
    import rioxarray  # noqa: F401 -- gives xarray its .rio accessor
    import xarray

    cogs, _ = mapped
    out, report = zarr_mapped
    assert report["map"] == [str(out / "map.zarr"), str(out / "collection.json")]
    store = xarray.open_zarr(out / "map.zarr", mask_and_scale=False)
    classes, scores, confidence = store["classes"], store["scores"], store["confidence"]
    assert classes.rio.crs.to_epsg() == 3857 and classes.dtype == np.uint8
    assert classes.rio.nodata == 255 and scores.shape[0] == 4
    transform = classes.rio.transform()
    side = GRID["tile_size"]
    tiles = sorted((cogs / "tiles").glob("map_*[0-9].tif"))
    made = np.zeros(classes.shape, bool)
    for path in tiles:
        with rasterio.open(path) as tile:
            row, col = _window_in(transform, tile.transform)
            rows, cols = slice(row, row + side), slice(col, col + side)
            np.testing.assert_array_equal(classes[rows, cols].values, tile.read(1))
        with rasterio.open(path.with_suffix(".scores.tif")) as tile:
            np.testing.assert_array_equal(scores[:, rows, cols].values, tile.read())
        with rasterio.open(path.with_suffix(".confidence.tif")) as tile:
            np.testing.assert_array_equal(confidence[rows, cols].values, tile.read(1))
        # Each tile's unsure chips, picked from the store's tile as from its COGs.
        chips = [
            pq.read_table(f.with_name(f"{path.stem}.uncertain.parquet"))
            for f in (path, out / "tiles" / path.name)
        ]
        assert chips[0].num_rows >= 1 and chips[0].equals(chips[1])
        made[rows, cols] = True
    # The store spans the map's block of grid tiles; tiles no input meets hold nodata.
    assert (classes.values[~made] == 255).all() and (confidence.values[~made] == 255).all()
    assert 0 < confidence.values[made].mean() < 254, "a confidence that varies"
    measured = xarray.open_zarr(out / "map.zarr")["confidence"]  # as CF readers see it
    valid = confidence.values != 255
    np.testing.assert_allclose(measured.values[valid], confidence.values[valid] / 255, rtol=1e-6)
    assert np.isnan(measured.values[~valid]).all()
    assert len(list((out / "tiles").glob("*.zarr.json"))) == len(tiles)


def test_a_rerun_remakes_a_zarr_tile_whose_marker_is_missing(scenes, zarr_mapped, spark):
    """A tile killed between its shards and its marker is made again; the others are kept."""
    import zarr

    folder, inputs, model = scenes
    out, _ = zarr_mapped
    before = zarr.open_group(out / "map.zarr", mode="r")
    classes, scores = before["classes"][...], before["scores"][...]
    marker = sorted((out / "tiles").glob("*.zarr.json"))[0]
    region = json.loads(marker.read_text())
    marker.unlink()
    shard = f"{region['row_off'] // GRID['tile_size']}/{region['col_off'] // GRID['tile_size']}"
    (out / "map.zarr" / "classes" / "c" / shard).unlink()  # as if its write was cut short
    again = _map(spark, inputs, model, out, MEASURED, format="zarr")
    made = [r["input"] for r in again["rasters"] if r["status"] == "written"]
    col, row = marker.name.removesuffix(".zarr.json").split("_")[1:]
    assert made == [f"grid tile {col},{row}"]
    after = zarr.open_group(out / "map.zarr", mode="r")
    np.testing.assert_array_equal(after["classes"][...], classes)
    np.testing.assert_array_equal(after["scores"][...], scores)


def test_a_killed_map_is_resumed_by_the_same_command_byte_for_byte(scenes, spark, tmp_path):
    folder, inputs, model = scenes
    slow = dict(chunk_tiles=1, batch_size=1)  # 72 chunks, committed one by one
    _map(spark, inputs, model, tmp_path / "clean", slow)
    out = tmp_path / "out"
    args = ["--input", *inputs, "--model", model, "--output", out, "--tile-size", 64]
    args += ["--scores", "--quicklook", "--chunk-tiles", 1, "--batch-size", 1]
    args += ["--grid", GRID["crs"], "--resolution", GRID["resolution"], "--grid-tile", 128]
    job = start(args, "local[2]", tmp_path / "job.log")
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    kill_whole(job)
    # Class maps of chunks, in every grid tile's staging folder (their names repeat).
    committed = list(out.glob("_staging/*/chunk_*[0-9].tif"))
    assert 0 < len(committed) < 72

    again = submit(args, "local[2]")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "_run.json").read_text())
    assert sum(r["chunks"]["resumed"] for r in report["rasters"]) == len(committed)
    clean = sorted(p.relative_to(tmp_path / "clean") for p in (tmp_path / "clean").rglob("*.tif"))
    assert clean == sorted(p.relative_to(out) for p in out.rglob("*.tif"))
    for path in clean:
        assert (out / path).read_bytes() == (tmp_path / "clean" / path).read_bytes(), path
    assert not (out / "_staging").exists()
