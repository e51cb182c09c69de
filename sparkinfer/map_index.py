"""A map's own files over its grid tiles' COGs, written on the driver from metadata alone:

- `OUT/map.vrt` (and `OUT/map.scores.vrt`): the whole map as one raster that GDAL, QGIS and
  rasterio open, its tiles named relative to it, so the folder can move; with `--quicklook`,
  `OUT/map.png`, the map in the model's colours;
- `OUT/collection.json`: a STAC Collection whose Items are the tiles' (`tiles/*.stac.json`).

Both list the tiles that are complete; a tile that failed is missing from them until a re-run
makes it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import rasterio.warp

from sparkinfer import __version__, storage
from sparkinfer.cogs import BandLayout, vrt_xml
from sparkinfer.inspection import ModelInfo
from sparkinfer.plan import PixelWindow
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster import RasterInfo
from sparkinfer.raster_job import RasterJob
from sparkinfer.zarr_map import finish_map_store

MAP_VRT = "map.vrt"
MAP_SCORES_VRT = "map.scores.vrt"
MAP_QUICKLOOK = "map.png"
COLLECTION = "collection.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"


def tiles_extent(tiles: list[RasterJob]) -> RasterInfo:
    """The grid of the smallest block of grid tiles that holds `tiles` (all on one grid)."""
    first = tiles[0].info
    resolution = first.transform[0]
    left = min(t.info.transform[2] for t in tiles)
    top = max(t.info.transform[5] for t in tiles)
    right = max(t.info.transform[2] + t.info.width * resolution for t in tiles)
    bottom = min(t.info.transform[5] - t.info.height * resolution for t in tiles)
    return replace(
        first,
        path="map",
        width=round((right - left) / resolution),
        height=round((top - bottom) / resolution),
        transform=(resolution, 0.0, left, 0.0, -resolution, top),
    )


def _relative(path: str) -> str:
    """A tile's file as named from the output folder: `tiles/NAME`."""
    return f"{storage.name(storage.parent(path))}/{storage.name(path)}"


def _placed(tiles: list[RasterJob], extent: RasterInfo, scores: bool):
    """Each tile's COG, named from the output folder, at its window of the map."""
    resolution, left, top = extent.transform[0], extent.transform[2], extent.transform[5]
    for tile in tiles:
        window = PixelWindow(
            round((top - tile.info.transform[5]) / resolution),
            round((tile.info.transform[2] - left) / resolution),
            tile.info.height,
            tile.info.width,
        )
        yield _relative(tile.scores_path if scores else tile.classes_path), window


def write_map_index(
    output: str, tiles: list[RasterJob], model: ModelInfo, quicklook: bool = False
) -> list[str]:
    """The map's VRT(s), with `quicklook` its PNG (read from the tiles' overviews), and STAC
    Collection over `tiles` (complete, on one grid), in `output`; the paths written."""
    extent = tiles_extent(tiles)
    if tiles[0].zarr is not None:  # the store is the map
        finish_map_store(tiles[0].zarr.store)
        path = storage.join(output, COLLECTION)
        store = storage.name(tiles[0].zarr.store)
        collection = _collection(tiles, extent, {"href": f"./{store}", "type": ZARR_MEDIA_TYPE})
        storage.write_text(path, json.dumps(collection, indent=2) + "\n")
        return [tiles[0].zarr.store, path]
    metadata = {"sparkinfer_version": __version__}
    written = []
    for scores, name in ((False, MAP_VRT), (True, MAP_SCORES_VRT)):
        if scores and tiles[0].scores_path is None:
            continue
        layout = BandLayout.of(
            scores, model.classes, model.channels, model.class_names, model.class_colors
        )
        sources = list(_placed(tiles, extent, scores))
        path = storage.join(output, name)
        storage.write_text(path, vrt_xml(extent, sources, layout, metadata, relative=True))
        written.append(path)
    if quicklook:
        path = storage.join(output, MAP_QUICKLOOK)
        write_quicklook(written[0], path, model.class_names, model.class_colors)
        written.append(path)
    path = storage.join(output, COLLECTION)
    vrt = {"href": f"./{MAP_VRT}", "type": "application/xml"}
    storage.write_text(path, json.dumps(_collection(tiles, extent, vrt), indent=2) + "\n")
    return [*written, path]


def _collection(tiles: list[RasterJob], extent: RasterInfo, map_asset: dict) -> dict:
    """A STAC 1.1 Collection of the map (`map_asset`: its VRT or its Zarr store) and of the
    tiles' Items where each tile is a COG; its extent the map's block of tiles."""
    a, _, left, _, e, top = extent.transform
    right, bottom = left + extent.width * a, top + extent.height * e
    west, south, east, north = rasterio.warp.transform_bounds(
        extent.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21
    )
    links = [
        {
            "rel": "item",
            "href": f"./{_relative(tile.stac_path)}",
            "type": "application/geo+json",
        }
        for tile in tiles
        if tile.zarr is None
    ]
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "map",
        "description": f"Predictions of sparkinfer {__version__}"
        + ("" if tiles[0].zarr is not None else ", a grid tile per Item"),
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[west, south, east, north]]},
            "temporal": {"interval": [[datetime.now(UTC).isoformat(), None]]},
        },
        "links": links,
        "assets": {"map": map_asset | {"roles": ["data"]}},
    }
