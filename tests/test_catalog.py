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
from affine import Affine
from builders import tile_counts_of_index_and_cog, write_raster
from pystac.validation import JsonSchemaSTACValidator

DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


@pytest.fixture(scope="module")
def written(tmp_path_factory, spark, models):
    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job, run_job

    folder = tmp_path_factory.mktemp("catalog")
    (folder / "in").mkdir()
    nodata = np.zeros((150, 170), bool)
    nodata[:70, :80] = True  # the first tile's core and more: a skipped tile
    raster = write_raster(
        folder / "in" / "scene.tif", 150, 170, nodata=0, nodata_mask=nodata, seed=9
    )
    config = load_config(
        dict(
            input=[str(raster)],
            model=str(models["conv"]),
            output=str(folder / "out"),
            tile_size=64,
            quicklook=True,
        ),
        defaults_file=DEFAULTS,
    )
    report = run_job(spark, prepare_job(config)).report
    return raster, folder / "out", report


def test_the_stac_item_is_valid_and_describes_the_output(written):
    raster, out, report = written
    path = out / "scene.stac.json"
    data = json.loads(path.read_text())
    assert JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, "1.1.0")
    item = pystac.Item.from_file(str(path))
    with rasterio.open(raster) as src:
        west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        assert item.bbox == pytest.approx([west, south, east, north], abs=1e-9)
        assert item.properties["proj:code"] == "EPSG:32633"
        assert item.properties["proj:shape"] == [150, 170]
        assert item.properties["proj:transform"] == list(src.transform)[:6]
        assert item.properties["proj:bbox"] == pytest.approx(list(src.bounds))
    classes = item.assets["classes"].extra_fields["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2, 255] and classes[-1]["nodata"]
    assert set(item.assets) == {"classes", "quicklook", "tiles", "model"}
    for key in ("classes", "quicklook", "tiles"):  # the outputs; the model is where it was
        asset = item.assets[key]
        assert (out / Path(asset.href).name).is_file() and asset.href.startswith("./")
    (source,) = item.get_links("derived_from")
    assert source.href == raster.as_uri()
    assert item.stac_extensions == [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        "https://stac-extensions.github.io/mlm/v1.5.2/schema.json",
        "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
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
            rasterio.windows.bounds(rasterio.windows.Window(0, 0, 64, 64), cog.transform)
        )
    assert len(tiles) == report["tiles"]["planned"] == 9
    assert (tiles.status == "skipped_nodata").sum() == report["tiles"]["skipped_nodata"] == 1
    indexed, counted = tile_counts_of_index_and_cog(out, "scene")
    assert indexed == counted, "each tile's counts, as the inference stage made them"
    histogram = np.sum(np.stack(tiles.class_pixels.to_numpy()), axis=0)
    assert histogram.tolist() == np.bincount(classes[classes != 255], minlength=3).tolist()
    assert tiles.valid_pixels.sum() == (classes != 255).sum()


def _item_of(tmp_path, crs: str, transform, height: int, width: int) -> dict:
    """The STAC Item the job writes for a raster of this grid (written here, not inferred)."""
    from sparkinfer.catalog import write_stac_item
    from sparkinfer.raster import read_info

    raster = write_raster(tmp_path / "grid.tif", height, width, crs=crs, transform=transform)
    path = tmp_path / "grid.stac.json"
    write_stac_item(
        read_info(str(raster)), str(path), {"classes": str(tmp_path / "grid.tif")}, (), (), 2, {}
    )
    return json.loads(path.read_text())


def test_a_footprint_across_the_antimeridian_is_cut_and_its_bbox_wraps(tmp_path):
    # UTM 60N from 800 to 900 km east: about 179.70 E to 179.41 W at the equator.
    item = _item_of(tmp_path, "EPSG:32660", Affine(1000, 0, 800_000, 0, -1000, 100_000), 100, 100)
    assert item["geometry"]["type"] == "MultiPolygon"
    west, south, east, north = item["bbox"]
    assert west == pytest.approx(179.6951, abs=1e-4) and east == pytest.approx(-179.4073, abs=1e-4)
    assert (south, north) == pytest.approx((0.0, 0.9037), abs=1e-4)
    for polygon in item["geometry"]["coordinates"]:
        lons = [lon for lon, _ in polygon[0]]
        assert all(lon >= 179 for lon in lons) or all(lon <= -179 for lon in lons)


def test_a_footprint_follows_the_grid_s_curved_edges(tmp_path):
    """A 3000 km polar stereographic grid beside the pole: its straight edges are curves in
    longitude and latitude, which the footprint follows (points along each edge, not only the
    corners)."""
    from shapely.geometry import Point, shape

    left, top, side = 1_000_000, 1_500_000, 3_000_000
    item = _item_of(tmp_path, "EPSG:3413", Affine(30_000, 0, left, 0, -30_000, top), 100, 100)
    footprint = shape(item["geometry"])
    corners = rasterio.warp.transform("EPSG:3413", "EPSG:4326", [left, left + side], [top, top])
    chord = shape({"type": "LineString", "coordinates": list(zip(*corners, strict=True))})
    # The top edge, finely.
    edge = rasterio.warp.transform(
        "EPSG:3413", "EPSG:4326", np.linspace(left, left + side, 41), [top] * 41
    )
    points = [Point(p) for p in zip(*edge, strict=True)]
    from_footprint = max(footprint.exterior.distance(p) for p in points)
    from_chord = max(chord.distance(p) for p in points)
    assert from_footprint < 0.05 and from_chord > 4, (from_footprint, from_chord)
