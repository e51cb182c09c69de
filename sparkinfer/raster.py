"""Raster I/O with rasterio: finding inputs, reading their metadata, reading tile windows.

Only metadata is read on the driver. Pixels are read on executors, one read window at a time.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from sparkinfer import storage
from sparkinfer.errors import InputError, first_line

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")

# GDAL's block cache for a process's reads and writes: 256 MiB. In bytes: rasterio sets it with
# GDALSetCacheMax64, where 256 would be a cache of 256 bytes.
GDAL_CACHE_BYTES = 256 * 2**20
# GDAL settings for reading inputs: no listing of the folder of each file (slow on large
# folders and object storage), side-car files (.msk masks, .aux.xml, world files) still looked
# up by name (TRUE; EMPTY_DIR would ignore them); a bounded block cache.
GDAL_READ_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "TRUE", "GDAL_CACHEMAX": GDAL_CACHE_BYTES}


# "none": every pixel is valid; "nodata": bands mark invalid pixels with their nodata value
# (found by comparing the pixels already read); "mask": an internal mask or an alpha band.
Masking = Literal["none", "nodata", "mask"]


@dataclass(frozen=True)
class StackedItem:
    """A STAC Item read as one raster: its chosen assets stacked as bands (`sparkinfer.stac`)."""

    id: str
    file: str  # the JSON file it was read from (an Item's or an ItemCollection's)
    href: str  # where the Item is, for its outputs' derived_from link: its self link, or the file
    vrt: str  # GDAL VRT XML stacking the assets: what GDAL opens, no file written
    digest: str  # sha256 of the Item, the VRT and the assets' sizes and times
    acquired: float | None = None  # its datetime (or start_datetime), in seconds since 1970


@dataclass(frozen=True)
class RasterInfo:
    """Metadata of one input raster: all the driver ever reads of it."""

    path: str  # a raster file, or a STAC Item's file (with `#id` for an ItemCollection's Item)
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None  # WKT
    transform: tuple[float, ...]  # affine a, b, c, d, e, f
    nodata: float | None
    masking: Masking  # how invalid pixels are marked in the bands
    size: int  # bytes; with mtime_ns, what tells this file from an edited one
    mtime_ns: int
    item: StackedItem | None = None  # the STAC Item whose assets are the bands
    descriptions: tuple[str, ...] = ()  # each band's description, "" where it has none

    @property
    def dataset(self) -> str:
        """What GDAL opens."""
        return _dataset(self.path, self.item)

    @property
    def stem(self) -> str:
        """What its outputs are named after: the file's name less its extension, or the Item's
        id."""
        return self.item.id if self.item else storage.name(self.path).rsplit(".", 1)[0]


def resolve_inputs(patterns: list[str]) -> list[str]:
    """Expand files, folders (their rasters, not recursive) and glob patterns, local or s3://,
    in order; local paths made absolute."""
    found: list[str] = []
    for pattern in patterns:
        try:
            found.extend(_expand(pattern))
        except OSError as exc:  # S3: no such bucket, no credentials, endpoint unreachable
            raise InputError(f"{pattern}: cannot list inputs ({first_line(exc, 300)})") from None
    unique: dict[str, None] = {}
    for location in found:
        unique.setdefault(location if storage.is_s3(location) else str(Path(location).resolve()))
    return list(unique)


def _expand(pattern: str) -> list[str]:
    if glob.has_magic(pattern):
        try:
            matches = storage.glob_files(pattern)
        except ValueError as exc:
            raise InputError(f"{pattern}: {exc}") from None
        if not matches:
            raise InputError(f"{pattern}: no files match this pattern")
        return matches
    if storage.is_file(pattern):
        return [pattern]
    if storage.is_dir(pattern):
        names = sorted(storage.list_names(pattern))
        rasters = [storage.join(pattern, n) for n in names if n.lower().endswith(RASTER_SUFFIXES)]
        if not rasters:
            raise InputError(f"{pattern}: folder holds no rasters ({', '.join(RASTER_SUFFIXES)})")
        return rasters
    raise InputError(f"{pattern}: input not found")


def _dataset(path: str, item: StackedItem | None) -> str:
    """What GDAL opens: the file (/vsis3/ on S3), or the VRT stacking an Item's assets."""
    return item.vrt if item else storage.gdal_path(path)


def read_info(path: str, item: StackedItem | None = None) -> RasterInfo:
    """Open a raster's metadata, or raise `InputError` saying what is wrong with it: a raster
    file's, or with `item` the stack of a STAC Item's assets (`path` is the Item's)."""
    try:
        size, mtime_ns = storage.size_and_mtime(item.file if item else path)
    except FileNotFoundError:
        raise InputError(f"{path}: input not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({first_line(exc)})") from None
    if size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        # No georeference is said below, in one line: rasterio's warning (GDAL found no
        # geotransform) is kept here, not shown.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGeoreferencedWarning)
            with storage.gdal_env(**GDAL_READ_OPTIONS), rasterio.open(_dataset(path, item)) as src:
                if src.count < 1:
                    raise InputError(f"{path}: raster has no bands")
                if len(set(src.dtypes)) != 1:
                    raise InputError(f"{path}: bands have different data types {src.dtypes}")
                # GDAL may find no geotransform where rasterio still gives one: a damaged
                # GeoTIFF's pixel size without its tie point, which would place outputs at 0, 0.
                unplaced = any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)
                if src.crs is None or src.transform.is_identity or unplaced:
                    raise InputError(f"{path}: raster has no georeference (CRS and transform)")
                return RasterInfo(
                    path=str(path),
                    width=src.width,
                    height=src.height,
                    count=src.count,
                    dtype=src.dtypes[0],
                    crs=src.crs.to_wkt(),
                    transform=tuple(src.transform)[:6],
                    nodata=src.nodata,
                    masking=_masking(src),
                    size=size,
                    mtime_ns=mtime_ns,
                    item=item,
                    descriptions=tuple(d or "" for d in src.descriptions),
                )
    except RasterioError as exc:
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from None


def _masking(src: rasterio.DatasetReader) -> Masking:
    flags = {f for band in src.mask_flag_enums for f in band}
    if flags == {MaskFlags.all_valid}:
        return "none"
    if flags == {MaskFlags.nodata}:
        return "nodata"
    return "mask"


def read_window(
    src: rasterio.DatasetReader,
    bands: list[int],
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    masking: Masking,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (bands, height, width) in the raster's own type and validity (height, width).

    The window may reach past the raster's bottom and right edges (padding for strided models):
    those pixels are zero and invalid. A pixel is invalid where any selected band is masked
    (nodata, internal mask or alpha) or not finite.
    """
    data = np.zeros((len(bands), height, width), src.dtypes[bands[0] - 1])
    valid = np.zeros((height, width), bool)
    h = max(0, min(height, src.height - row_off))
    w = max(0, min(width, src.width - col_off))
    if h and w:
        window = Window(col_off, row_off, w, h)
        inside = data[:, :h, :w]
        src.read(bands, window=window, out=inside)
        ok = valid[:h, :w]
        ok[:] = True
        if data.dtype.kind == "f":
            ok &= np.isfinite(inside).all(axis=0)
        if masking == "nodata":  # compared in the band's own type, before any conversion
            for values, band in zip(inside, bands, strict=True):
                marker = nodata_marker(values.dtype, src.nodatavals[band - 1])
                if marker is not None:
                    ok &= values != marker
        elif masking == "mask":
            ok &= src.read_masks(bands, window=window).all(axis=0)
    return data, valid


def nodata_marker(dtype: np.dtype, nodata: float | None):
    """The band's nodata value in its own type; None where no pixel can equal it."""
    if nodata is None or np.isnan(nodata):  # NaN is caught as non-finite
        return None
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if nodata != int(nodata) or not limits.min <= nodata <= limits.max:
            return None
    return dtype.type(nodata)
