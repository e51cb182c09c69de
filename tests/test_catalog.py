"""Catalog outputs: a STAC Item (validated against the STAC 1.1 schemas pystac ships) and a
GeoParquet tile index that geopandas reads, both agreeing with the COG and the input."""

import json
from pathlib import Path

import geopandas
import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
from builders import write_raster
from pystac.validation import JsonSchemaSTACValidator

DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


@pytest.fixture(scope="module")
def written(tmp_path_factory, spark, models):
    from sparkinfer.config import load_config
    from sparkinfer.job import run_job
    from sparkinfer.prepare import prepare_job

    folder = tmp_path_factory.mktemp("catalog")
    (folder / "in").mkdir()
    nodata = np.zeros((150, 170), bool)
    nodata[:70, :80] = True  # the first tile's core and more: a skipped tile
    raster = write_raster(folder / "in" / "scene.tif", 150, 170, nodata=0, nodata_mask=nodata,
                          seed=9)  # fmt: skip
    config = load_config(dict(input=[str(raster)], model=str(models["conv"]),
                              output=str(folder / "out"), tile_size=64, quicklook=True),
                         defaults_file=DEFAULTS)  # fmt: skip
    report = run_job(spark, prepare_job(config))
    return raster, folder / "out", report


def test_the_stac_item_is_valid_and_describes_the_output(written):
    raster, out, report = written
    path = out / "scene.stac.json"
    data = json.loads(path.read_text())
    assert JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, "1.1.0")
    item = pystac.Item.from_file(str(path))
    with rasterio.open(raster) as src:
        west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326",
                                                                  *src.bounds)  # fmt: skip
        assert item.bbox == pytest.approx([west, south, east, north], abs=1e-9)
        assert item.properties["proj:code"] == "EPSG:32633"
        assert item.properties["proj:shape"] == [150, 170]
        assert item.properties["proj:transform"] == list(src.transform)[:6]
        assert item.properties["proj:bbox"] == pytest.approx(list(src.bounds))
    classes = item.assets["classes"].extra_fields["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2, 255] and classes[-1]["nodata"]
    assert set(item.assets) == {"classes", "quicklook", "tiles"}
    for asset in item.assets.values():
        assert (out / Path(asset.href).name).is_file() and asset.href.startswith("./")
    (source,) = item.get_links("derived_from")
    assert source.href == raster.as_uri()
    assert item.stac_extensions == [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    ]


def test_the_tile_index_is_geoparquet_that_agrees_with_the_cog(written):
    raster, out, report = written
    tiles = geopandas.read_parquet(out / "scene.tiles.parquet")
    with rasterio.open(out / "scene.tif") as cog:
        assert tiles.crs == cog.crs
        classes = cog.read(1)
        assert tuple(tiles.total_bounds) == pytest.approx(tuple(cog.bounds))
        first = tiles[(tiles.tile_row == 0) & (tiles.tile_col == 0)].iloc[0]
        assert first.geometry.bounds == pytest.approx(
            rasterio.windows.bounds(rasterio.windows.Window(0, 0, 64, 64), cog.transform))
    assert len(tiles) == report["tiles"]["planned"] == 9
    assert (tiles.status == "skipped_nodata").sum() == report["tiles"]["skipped_nodata"] == 1
    histogram = np.sum(np.stack(tiles.class_pixels.to_numpy()), axis=0)
    assert histogram.tolist() == np.bincount(classes[classes != 255], minlength=3).tolist()
    assert tiles.valid_pixels.sum() == (classes != 255).sum()
