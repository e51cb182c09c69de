"""A map as one Zarr v3 store (`--format zarr`), `OUT/map.zarr`, that xarray opens and rioxarray
georeferences: `xarray.open_zarr(path).classes.rio.crs`.

The driver creates the store from metadata (`create_map_store`): the arrays `classes` (y, x;
uint8, 255 where no input is valid), with scores `scores` (band, y, x; float32, NaN) and with a
confidence `confidence` (y, x; uint8, 255, scaled by 1/255 for CF readers), over the map's
block of grid tiles; the coordinates `x` and `y` (pixel centres) and `spatial_ref` (the CF
grid mapping: the CRS as WKT and the GeoTransform). Each array is sharded by grid tile
(a band at a time for the scores), so a grid tile is one object per array and band, written
whole by the assembly task that makes that tile from its chunks (`write_tile`): no object is
written in part, and a retried or speculated task writes the same bytes again. The driver
consolidates the metadata at the end (`finish_map_store`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.windows import Window

from sparkinfer import s3, storage
from sparkinfer.cogs import BandLayout
from sparkinfer.outputs import CLASS_NODATA, SCORE_NODATA
from sparkinfer.raster import RasterInfo

ZARR_STORE = "map.zarr"
LAYOUT_ATTRIBUTE = "sparkinfer:layout"  # what the arrays were made for: another layout remakes
INNER_CHUNK = 512  # the largest side of a chunk inside a grid tile's shard


@dataclass(frozen=True)
class ZarrRegion:
    """Where a grid tile's pixels go in the map's store: its first pixel's row and column."""

    store: str  # local path or s3:// URI
    row_off: int
    col_off: int


def open_store(uri: str):
    """The Zarr store at `uri`: a local folder, or an S3 prefix with the job's AWS settings."""
    if not storage.is_s3(uri):
        return zarr.storage.LocalStore(uri)
    from obstore.store import S3Store

    endpoint = s3.endpoint_url()
    store = S3Store.from_url(
        uri,
        config={"endpoint": endpoint} if endpoint else {},
        client_options={"allow_http": True} if endpoint and endpoint.startswith("http:") else {},
    )
    return zarr.storage.ObjectStore(store)


def inner_chunk(tile_size: int) -> int:
    """The side of the chunks inside a grid tile: the largest divisor of it up to 512, so that
    chunks never cross a tile's edge."""
    return max(d for d in range(1, min(tile_size, INNER_CHUNK) + 1) if tile_size % d == 0)


def create_map_store(
    uri: str,
    extent: RasterInfo,
    tile_size: int,
    score_names: tuple[str, ...] | None,
    class_names: tuple[str, ...],
    overwrite: bool,
    confidence: str | None = None,
) -> None:
    """Make the map's store over `extent` (the block of grid tiles), with a `scores` array of a
    band per name in `score_names` (None: no scores) and a `confidence` array by that measure
    (None: none); keep the one there if it was made for the same layout (a re-run resumes into
    it), unless `overwrite`."""
    layout = {
        "crs": extent.crs,
        "transform": list(extent.transform),
        "shape": [extent.height, extent.width],
        "tile_size": tile_size,
        "scores": list(score_names) if score_names is not None else None,
        "confidence": confidence,
    }
    store = open_store(uri)
    if not overwrite:
        try:
            found = zarr.open_group(store, mode="r").attrs.get(LAYOUT_ATTRIBUTE)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            found = None
        if found == layout:
            return
    root = zarr.open_group(store, mode="w", zarr_format=3)
    side = inner_chunk(tile_size)
    grid = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    bytes_per_pixel = dict(  # (y, x) uint8 arrays, CLASS_NODATA where no input is valid
        shape=(extent.height, extent.width),
        chunks=(side, side),
        shards=(tile_size, tile_size),
        dtype="uint8",
        fill_value=CLASS_NODATA,
        dimension_names=("y", "x"),
    )
    nodata = {"_FillValue": CLASS_NODATA}
    classes = {"long_name": "class", "flag_meanings": class_names}
    root.create_array("classes", attributes=grid | nodata | classes, **bytes_per_pixel)
    if score_names is not None:
        root.create_array(
            "scores",
            shape=(len(score_names), extent.height, extent.width),
            chunks=(1, side, side),
            shards=(1, tile_size, tile_size),
            dtype="float32",
            fill_value=SCORE_NODATA,
            dimension_names=("band", "y", "x"),
            attributes=grid | {"long_name": "score", "band_names": score_names},
        )
    if confidence is not None:
        described = {"long_name": BandLayout.confidence(confidence).descriptions[0]}
        scaled = described | {"scale_factor": 1 / 255}
        root.create_array("confidence", attributes=grid | nodata | scaled, **bytes_per_pixel)
    a, _, c, _, e, f = extent.transform
    for name, size, start, step in (("x", extent.width, c, a), ("y", extent.height, f, e)):
        axis = root.create_array(
            name, shape=(size,), chunks=(size,), dtype="float64", dimension_names=(name,)
        )
        axis[:] = start + step * (np.arange(size) + 0.5)
    crs = CRS.from_user_input(extent.crs).to_wkt()
    spatial_ref = root.create_array(
        "spatial_ref",
        shape=(),
        dtype="int64",
        dimension_names=(),
        attributes={
            "crs_wkt": crs,
            "spatial_ref": crs,
            "GeoTransform": " ".join(repr(v) for v in (c, a, 0.0, f, 0.0, e)),
        },
    )
    spatial_ref[...] = 0
    root.attrs[LAYOUT_ATTRIBUTE] = layout


def write_tile(region: ZarrRegion, tile_vrts: dict[str, str]) -> None:
    """Write a grid tile into its shards of the store, array by array and band by band, each
    read whole from `tile_vrts` (array name -> a VRT of the tile's chunk files)."""
    root = zarr.open_group(open_store(region.store), mode="r+")
    for name, vrt in tile_vrts.items():
        array = root[name]
        with rasterio.open(vrt) as src:
            window = Window(0, 0, src.width, src.height)
            rows = slice(region.row_off, region.row_off + src.height)
            cols = slice(region.col_off, region.col_off + src.width)
            if array.ndim == 2:
                array[rows, cols] = src.read(1, window=window)
            else:
                for band in range(src.count):
                    array[band, rows, cols] = src.read(band + 1, window=window)


def finish_map_store(uri: str) -> None:
    """Consolidate the store's metadata, so that readers open it with one request (as xarray
    does first)."""
    with warnings.catch_warnings():  # that Zarr v3's specification has no such thing yet
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(open_store(uri))


def tile_marker(identity: str, region: ZarrRegion) -> str:
    """What a grid tile's marker file says: it is in the store (named from the output folder,
    which can move), at its offsets, made with `identity`."""
    where = {"store": storage.name(region.store), "row_off": region.row_off}
    return json.dumps({"identity": identity, **where, "col_off": region.col_off}) + "\n"
