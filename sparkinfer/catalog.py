"""Catalog outputs beside each COG: a STAC Item and a GeoParquet index of its tiles.

Both are written on the executor that assembled the COG, from the COG itself (the tile index
reads it tile by tile: memory stays one tile), under temporary names renamed when whole.
"""

from __future__ import annotations

import json
import os
import re
import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.windows import Window

from sparkinfer import storage
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import CLASS_NODATA

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


def _footprint(transform: Affine, row_off: int, col_off: int, height: int, width: int):
    """Corners of a pixel window, closed ring, in the raster's CRS."""
    corners = [(col_off, row_off), (col_off + width, row_off), (col_off + width, row_off + height),
               (col_off, row_off + height), (col_off, row_off)]  # fmt: skip
    return [transform * corner for corner in corners]


def _wkb_polygon(ring: list[tuple[float, float]]) -> bytes:
    """A one-ring polygon as little-endian WKB (ISO type 3)."""
    return struct.pack(f"<BIII{2 * len(ring)}d", 1, 3, 1, len(ring), *np.ravel(ring))


def write_tile_index(
    info: RasterInfo, plan: RasterPlan, classes_path: str, path: str, classes: int
) -> None:
    """GeoParquet 1.1 of the raster's tiles (from the class map COG at `classes_path`):
    footprint, class histogram and status."""
    transform = Affine(*info.transform)
    rows = []
    chunk_rows, chunk_cols = plan.chunk_grid
    chunks = ((r, c) for r in range(chunk_rows) for c in range(chunk_cols))
    with storage.open_own_raster(classes_path) as cog:
        for chunk_row, chunk_col in chunks:
            for tile in plan.chunk_tiles(chunk_row, chunk_col):
                top, left = tile["core_row_off"], tile["core_col_off"]
                height, width = tile["core_height"], tile["core_width"]
                values = cog.read(1, window=Window(left, top, width, height)).ravel()
                counts = np.bincount(values, minlength=CLASS_NODATA + 1)
                valid = int(counts[:CLASS_NODATA].sum())
                rows.append({
                    "tile_row": tile["tile_row"], "tile_col": tile["tile_col"],
                    "row_off": top, "col_off": left, "height": height, "width": width,
                    "status": "inferred" if valid else "skipped_nodata",
                    "valid_pixels": valid, "class_pixels": counts[:classes].tolist(),
                    "geometry": _wkb_polygon(_footprint(transform, top, left, height, width)),
                })  # fmt: skip
    bounds = _footprint(transform, 0, 0, info.height, info.width)
    xs, ys = zip(*bounds, strict=True)
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": rasterio.crs.CRS.from_user_input(info.crs).to_dict(projjson=True),
                "bbox": [min(xs), min(ys), max(xs), max(ys)],
            }
        },
    }
    table = pa.Table.from_pylist(rows, schema=TILE_INDEX_SCHEMA)
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    with storage.staged(path) as local:
        pq.write_table(table, local, compression="zstd")


def write_stac_item(
    info: RasterInfo,
    path: str,
    assets: dict[str, str],
    class_names: tuple[str, ...],
    class_colors: tuple[str, ...],
    classes: int,
    properties: dict,
) -> None:
    """A STAC 1.1 Item for one output: footprint in EPSG:4326, the projection and
    classification extensions, the outputs as assets and a link to the input."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension

    transform = Affine(*info.transform)
    ring = _footprint(transform, 0, 0, info.height, info.width)
    native = {"type": "Polygon", "coordinates": [ring]}
    geometry = rasterio.warp.transform_geom(info.crs, "EPSG:4326", native)
    lons, lats = zip(*geometry["coordinates"][0], strict=True)
    xs, ys = zip(*ring, strict=True)
    item = pystac.Item(
        id=storage.name(path).removesuffix(".stac.json"),
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
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
    media = {".tif": pystac.MediaType.COG, ".png": pystac.MediaType.PNG,
             ".parquet": "application/vnd.apache.parquet"}  # fmt: skip
    roles = {"classes": ["data"], "scores": ["data"], "quicklook": ["overview"],
             "tiles": ["metadata"]}  # fmt: skip
    for key, asset_path in assets.items():
        asset_name = storage.name(asset_path)
        item.add_asset(key, pystac.Asset(href=f"./{asset_name}",
                                         media_type=media[os.path.splitext(asset_name)[1]],
                                         roles=roles[key]))  # fmt: skip
    names = class_names or tuple(f"class {i}" for i in range(classes))
    ClassificationExtension.ext(item.assets["classes"], add_if_missing=True).classes = [
        Classification.create(
            value=i, name=re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{i}",
            description=name,
            color_hint=class_colors[i].lstrip("#").upper() if class_colors else None,
        )
        for i, name in enumerate(names)
    ] + [Classification.create(value=CLASS_NODATA, name="nodata", nodata=True)]  # fmt: skip
    source = info.path if storage.is_s3(info.path) else Path(info.path).absolute().as_uri()
    item.add_link(pystac.Link("derived_from", source, media_type=pystac.MediaType.GEOTIFF,
                              title="input raster"))  # fmt: skip
    storage.write_text(path, json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
