"""Catalog outputs beside each COG: a STAC Item and a GeoParquet index of its tiles.

Both are written on the executor that assembles the COG, under temporary names renamed when
whole. The tile index does not read the COG: the inference stage counts each tile's classes
while they are in memory and stores the counts with the chunk (`tile_counts`), and the index is
streamed from them a chunk at a time.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.warp
from affine import Affine

from sparkinfer import storage
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow, RasterPlan, Tile
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import ChunkSpec

TILE_INDEX_SCHEMA = pa.schema(
    [
        ("tile_row", pa.int32()),
        ("tile_col", pa.int32()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("status", pa.string()),  # "inferred", or "skipped_nodata" (no valid input pixel)
        ("valid_pixels", pa.int64()),
        ("class_pixels", pa.list_(pa.int64())),  # pixels of each class, by class index
        ("geometry", pa.binary()),  # the tile's footprint, WKB polygon in the raster's CRS
    ]
)


def window_outline(transform: Affine, row_off: int, col_off: int, height: int, width: int):
    """Corners of a pixel window, closed ring, in the raster's CRS."""
    corners = [
        (col_off, row_off),
        (col_off + width, row_off),
        (col_off + width, row_off + height),
        (col_off, row_off + height),
        (col_off, row_off),
    ]
    return [transform * corner for corner in corners]


# Points along each edge of a raster's footprint before it is reprojected to longitude and
# latitude, where straight edges of the raster's grid become curves.
FOOTPRINT_EDGE_POINTS = 22  # 21 inside each edge: as rasterio.warp.transform_bounds


def densified(ring: list[tuple[float, float]], points: int) -> list[tuple[float, float]]:
    """The closed `ring` with `points` - 1 points added, evenly, inside each edge."""
    dense = []
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
        dense += [(x0 + (x1 - x0) * i / points, y0 + (y1 - y0) * i / points) for i in range(points)]
    return dense + [ring[-1]]


def _lonlat_bbox(geometry: dict) -> list[float]:
    """The STAC bbox of a GeoJSON (Multi)Polygon in longitude and latitude. Cut at the
    antimeridian (parts on both sides of it), its west is east of its east, as RFC 7946 says."""
    polygons = (
        geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    )
    parts = [np.asarray(polygon[0], float) for polygon in polygons]
    lats = np.concatenate([p[:, 1] for p in parts])
    east_side = [p for p in parts if p[:, 0].max() == 180.0]
    west_side = [p for p in parts if p[:, 0].min() == -180.0]
    if east_side and west_side:
        west = min(p[:, 0].min() for p in east_side)
        east = max(p[:, 0].max() for p in west_side)
    else:
        lons = np.concatenate([p[:, 0] for p in parts])
        west, east = lons.min(), lons.max()
    return [float(west), float(lats.min()), float(east), float(lats.max())]


# A closed 5-point ring as little-endian WKB: byte order, type 3 (Polygon), 1 ring, 5 points.
_RING_WKB = np.dtype([("header", "S13"), ("xy", "<f8", (10,))])
_RING_HEADER = struct.pack("<BIII", 1, 3, 1, 5)


def wkb_rectangles(transform: Affine, top, left, height, width) -> pa.Array:
    """The footprints of pixel windows (arrays of their offsets and sizes) as WKB polygons in
    the raster's CRS: one Arrow binary array, made without a Python object per window."""
    cols = np.stack([left, left + width, left + width, left, left], axis=1).astype(float)
    rows = np.stack([top, top, top + height, top + height, top], axis=1).astype(float)
    a, b, c, d, e, f = transform[:6]
    rings = np.empty(len(top), _RING_WKB)
    rings["header"] = _RING_HEADER
    rings["xy"][:, 0::2] = a * cols + b * rows + c
    rings["xy"][:, 1::2] = d * cols + e * rows + f
    offsets = pa.array(np.arange(len(top) + 1, dtype=np.int32) * _RING_WKB.itemsize)
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(top), [None, offsets.buffers()[1], pa.py_buffer(rings)]
    )


def grid_bbox(transform: Affine, height: int, width: int) -> list[float]:
    """The bounds of `height` x `width` pixels of a north-up grid, in its CRS: a GeoParquet
    bbox."""
    xs, ys = zip(*window_outline(transform, 0, 0, height, width), strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


# The per-tile class counts of a chunk, made where the tiles' classes are in memory (the
# inference stage) and stored in the chunk's class map's metadata, committed with it.
TILE_COUNTS_TAG = "SPARKINFER_TILE_COUNTS"


def tile_counts(class_map: np.ndarray, chunk: PixelWindow, tiles: list[Tile], classes: int) -> str:
    """The pixels of each class in each of `tiles` (whose cores lie in `class_map`, the class
    map of `chunk`), as the JSON of a `TILE_COUNTS_TAG`: one [tile row, tile column, class 0
    pixels, ..., class n-1 pixels] per tile."""
    rows = []
    for tile in tiles:
        core = class_map[tile.core.slices(chunk)]
        counts = np.bincount(core.ravel(), minlength=CLASS_NODATA + 1)[:classes]
        rows.append([tile.row, tile.col, *counts.tolist()])
    return json.dumps(rows, separators=(",", ":"))


def geoparquet_metadata(crs: str, geometry_types: list[str], bbox: list[float] | None) -> dict:
    """The `geo` metadata of a GeoParquet 1.1 file whose WKB column `geometry` holds geometries
    of `geometry_types` in `crs`, within `bbox` (none: no geometry)."""
    column = {
        "encoding": "WKB",
        "geometry_types": geometry_types,
        "crs": rasterio.crs.CRS.from_user_input(crs).to_dict(projjson=True),
    }
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def write_tile_index(
    info: RasterInfo, plan: RasterPlan, chunks: list[ChunkSpec], path: str, classes: int
) -> None:
    """GeoParquet 1.1 of the raster's tiles: footprint, class histogram and status, from the
    counts its `chunks` carry (`TILE_COUNTS_TAG`), streamed a chunk at a time: memory holds one
    chunk's tiles, whatever the raster's size."""
    transform = Affine(*info.transform)
    geo = geoparquet_metadata(info.crs, ["Polygon"], grid_bbox(transform, info.height, info.width))
    schema = TILE_INDEX_SCHEMA.with_metadata({b"geo": json.dumps(geo).encode()})
    with (
        storage.staged(path) as local,
        pq.ParquetWriter(local, schema, compression="zstd") as writer,
    ):
        for chunk in chunks:
            with storage.open_own_raster(chunk.classes_path) as src:
                counted = np.array(json.loads(src.tags()[TILE_COUNTS_TAG]), np.int64)
            rows, cols = plan.chunk_tile_grid(chunk.chunk_row, chunk.chunk_col)
            if not (np.array_equal(counted[:, 0], rows) and np.array_equal(counted[:, 1], cols)):
                raise RuntimeError(f"{chunk.classes_path}: its tile counts are not its tiles'")
            counts = counted[:, 2:].reshape(len(rows), classes)
            valid = counts.sum(axis=1)
            top, left = plan.rows.core_start[rows], plan.cols.core_start[cols]
            height = plan.rows.core_stop[rows] - top
            width = plan.cols.core_stop[cols] - left
            columns = {
                "tile_row": rows,
                "tile_col": cols,
                "row_off": top,
                "col_off": left,
                "height": height,
                "width": width,
                "status": np.where(valid > 0, "inferred", "skipped_nodata"),
                "valid_pixels": valid,
                "class_pixels": pa.FixedSizeListArray.from_arrays(counts.ravel(), classes).cast(
                    pa.list_(pa.int64())
                ),
                "geometry": wkb_rectangles(transform, top, left, height, width),
            }
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))


def write_stac_item(
    info: RasterInfo,
    path: str,
    assets: dict[str, str],
    class_names: tuple[str, ...],
    class_colors: tuple[str, ...],
    classes: int,
    properties: dict,
    sources: Sequence[RasterInfo] = (),
    provenance: dict | None = None,
) -> None:
    """A STAC 1.1 Item for one output: footprint in EPSG:4326, the projection and
    classification extensions, the outputs as assets and a `derived_from` link to each input it
    was made from: `sources`, by default `info`'s own; with `provenance` (`sparkinfer.provenance`)
    its extensions, properties and the model's assets."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension

    transform = Affine(*info.transform)
    ring = window_outline(transform, 0, 0, info.height, info.width)
    native = {"type": "Polygon", "coordinates": [densified(ring, FOOTPRINT_EDGE_POINTS)]}
    # Cut at the antimeridian into a MultiPolygon where the raster crosses it (RFC 7946).
    geometry = rasterio.warp.transform_geom(
        info.crs, "EPSG:4326", native, antimeridian_cutting=True
    )
    xs, ys = zip(*ring, strict=True)
    item = pystac.Item(
        id=storage.name(path).removesuffix(".stac.json"),
        geometry=geometry,
        bbox=_lonlat_bbox(geometry),
        datetime=datetime.now(UTC),  # when the predictions were made
        properties=properties,
    )
    crs = rasterio.crs.CRS.from_user_input(info.crs)
    epsg = crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        epsg=epsg,
        wkt2=None if epsg else crs.to_wkt(),
        shape=[info.height, info.width],
        transform=list(info.transform),
        bbox=[min(xs), min(ys), max(xs), max(ys)],
    )
    media = {
        ".tif": pystac.MediaType.COG,
        ".png": pystac.MediaType.PNG,
        ".parquet": "application/vnd.apache.parquet",
    }
    roles = {
        "classes": ["data"],
        "scores": ["data"],
        "confidence": ["data"],
        "uncertain": ["metadata"],
        "quicklook": ["overview"],
        "tiles": ["metadata"],
        "chips": ["data"],
        "polygons": ["data"],
    }
    for key, asset_path in assets.items():
        asset_name = storage.name(asset_path)
        item.add_asset(
            key,
            pystac.Asset(
                href=f"./{asset_name}",
                media_type=media[os.path.splitext(asset_name)[1]],
                roles=roles[key],
            ),
        )
    names = class_names or tuple(f"class {i}" for i in range(classes))
    ClassificationExtension.ext(item.assets["classes"], add_if_missing=True).classes = [
        Classification.create(
            value=i,
            name=re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{i}",
            description=name,
            color_hint=class_colors[i].lstrip("#").upper() if class_colors else None,
        )
        for i, name in enumerate(names)
    ] + [Classification.create(value=CLASS_NODATA, name="nodata", nodata=True)]
    for source in sources or (info,):
        if source.item is None:
            link = pystac.Link(
                "derived_from",
                storage.uri(source.path),
                media_type=pystac.MediaType.GEOTIFF,
                title="input raster",
            )
        else:
            link = pystac.Link(
                "derived_from",
                source.item.href,
                media_type=pystac.MediaType.GEOJSON,
                title=f"input STAC Item {source.item.id}",
            )
        item.add_link(link)
    if provenance is not None:
        item.stac_extensions += provenance["stac_extensions"]
        item.properties.update(provenance["properties"])
        for key, asset in provenance["assets"].items():
            item.add_asset(key, pystac.Asset.from_dict(asset))
    storage.write_text(path, json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
