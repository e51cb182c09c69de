"""Reading a window of the output grid from several input rasters, as an executor does: each
input warped onto the window with GDAL's warper, and each pixel taken from the first input that
is valid there. No Spark and no driver: pure functions over `OutputGrid` and `RasterInfo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling as GdalResampling
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from sparkinfer import storage
from sparkinfer.config import Resampling
from sparkinfer.errors import InputError, first_line
from sparkinfer.grid import OutputGrid, footprint
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo, nodata_marker, read_window

# The side of the blocks of the grid that inputs are warped in: a multiple of a warped VRT's
# block (512 x 128 pixels), which GDAL warps one by one.
ALIGNMENT = 512


def window_of(grid: OutputGrid, col: int, row: int, halo: int) -> tuple[Affine, int, int]:
    """The read window of grid tile (col, row): the tile plus `halo` pixels on every side, as
    its pixels' transform in the grid's CRS, its height and its width."""
    # From the index of the window's first pixel, as the grid computes tile edges, so that the
    # window's pixels fall exactly on the grid's (no rounding from adding a halo to an edge).
    left = (col * grid.tile_size - halo) * grid.resolution
    top = 0.0 - (row * grid.tile_size - halo) * grid.resolution
    side = grid.tile_size + 2 * halo
    return Affine(grid.resolution, 0.0, left, 0.0, -grid.resolution, top), side, side


@dataclass(frozen=True)
class MosaicSource:
    """Where a grid tile's pixels come from, as its executor reads them: the inputs that meet
    any of its read windows, in mosaic order, warped onto the grid (`read_mosaic`)."""

    grid: OutputGrid
    transform: tuple[float, ...]  # the tile's pixels', affine a, b, c, d, e, f
    inputs: tuple[RasterInfo, ...]
    resampling: Resampling

    def read(
        self, bands: list[int], row_off: int, col_off: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (bands, height, width) and validity of a window of the tile's pixels, which
        may reach past the tile into its neighbours'."""
        transform = Affine(*self.transform) * Affine.translation(col_off, row_off)
        return read_mosaic(self.grid, transform, height, width, self.inputs, bands, self.resampling)


def read_mosaic(
    grid: OutputGrid,
    window_transform: Affine,
    height: int,
    width: int,
    inputs: Sequence[RasterInfo],
    bands: list[int],
    resampling: Resampling,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (bands, height, width) and validity (height, width) of a window of the grid.

    Each input, in order, is warped onto the window (`resampling`, one of the names that
    `sparkinfer.config.Resampling` lists); each pixel comes from the first input that is valid
    there. A pixel is invalid where no input is: outside them all, or masked in each that
    covers it (nodata, internal mask or alpha, or not finite); its value is 0. The pixels take
    the common type of the inputs' types. Raises `InputError` where the inputs' band counts
    differ.
    """
    check_bands(inputs)
    dtype = np.result_type(*(info.dtype for info in inputs)) if inputs else np.uint8
    pixels = np.zeros((len(bands), height, width), dtype)
    valid = np.zeros((height, width), bool)
    window = shapely.box(*array_bounds(height, width, window_transform))
    for info in inputs:
        if valid.all():  # later inputs could only fill pixels that are already filled
            break
        if not _footprint(info, grid).intersects(window):  # warping it would cost, for nothing
            continue
        values, ok = _warped(info, grid, window_transform, height, width, bands, resampling)
        take = ok & ~valid
        pixels[:, take] = values[:, take]
        valid |= take
    return pixels, valid


def check_bands(inputs: Sequence[RasterInfo]) -> None:
    """Refuse inputs whose band counts differ: a band index would mean another band in each."""
    for info in inputs[1:]:
        if info.count != inputs[0].count:
            raise InputError(
                f"{info.path}: has {info.count} bands where {inputs[0].path} has "
                f"{inputs[0].count}; give inputs of one map the same bands in the same order"
            )


def _warped(
    info: RasterInfo,
    grid: OutputGrid,
    transform: Affine,
    height: int,
    width: int,
    bands: list[int],
    resampling: Resampling,
) -> tuple[np.ndarray, np.ndarray]:
    """One input onto the window: its pixels, in its own type, and their validity. An input on
    the grid already is read as it is; any other is warped with GDAL's warper."""
    offset = _offset_on_grid(info, grid, transform)
    if offset is not None:
        return _read_on_grid(info, *offset, height, width, bands)
    options: dict = {}
    if info.masking == "nodata":
        # Each band's nodata masks that band alone. GDAL's default would mask a pixel only
        # where all bands are nodata, and bilinear (or wider) resampling would then mix one
        # band's nodata value into its valid neighbours' values.
        options["UNIFIED_SRC_NODATA"] = "NO"
    elif info.masking == "mask":
        # An alpha band carries the input's internal mask or alpha band, which the warper
        # reads as the source's validity, and marks what the input does not cover.
        options["add_alpha"] = True
    # Every pixel valid: warped with no mask, GDAL's fastest kernels (an alpha band would make
    # it five times slower); what the input covers is its footprint (`_covered`).
    # A pixel must not depend on the window it is read in (a chunk's, or the whole map's).
    # GDAL's warper fits two things to the region it warps: its approximation of the
    # reprojection (to an eighth of a pixel) and its resampling kernel's scale. A warped VRT
    # warps block by block (512 x 128 pixels), so the VRT is laid on blocks fixed by the grid
    # (`_aligned`) and the window read from it; and the scale is the input's own.
    aligned, window = _aligned(transform, height, width)
    scale = _scale(info, grid.crs, transform.a)
    try:
        with (
            storage.gdal_env(**GDAL_READ_OPTIONS),
            rasterio.open(info.dataset) as src,
            WarpedVRT(
                src,
                crs=grid.crs,
                transform=aligned.transform,
                height=aligned.height,
                width=aligned.width,
                resampling=GdalResampling[resampling],
                XSCALE=scale,
                YSCALE=scale,
                **options,
            ) as vrt,
        ):
            # Band by band: a read of several bands at once warps the whole window in one go.
            # GDAL warps a block's bands together and caches them for the next band's read.
            values = np.stack([vrt.read(band, window=window) for band in bands])
            if info.masking == "nodata":
                # The warped bands keep the input's nodata, written where no valid source
                # pixel of that band reached (the warper nudges a valid value off it): a pixel
                # is valid where every band has a value. (Its masks would warp it all again.)
                ok = np.ones((height, width), bool)
                for band_values, band in zip(values, bands, strict=True):
                    marker = nodata_marker(band_values.dtype, vrt.nodatavals[band - 1])
                    if marker is not None:
                        ok &= band_values != marker
            elif info.masking == "mask":
                ok = vrt.read(vrt.count, window=window) > 0
            else:
                ok = _covered(info, grid, transform, height, width)
    except RasterioError as exc:
        raise InputError(f"{info.path}: cannot warp onto the grid ({first_line(exc)})") from None
    if values.dtype.kind == "f":
        ok &= np.isfinite(values).all(axis=0)
    return values, ok


def _offset_on_grid(info: RasterInfo, grid: OutputGrid, transform: Affine) -> tuple | None:
    """Where the window starts in the input's pixels (row, column), if the input is on the
    grid: its CRS, its pixels' size and their corners on the grid's; else None."""
    a, b, c, d, e, f = info.transform
    if (b, d, a, e) != (0.0, 0.0, transform.a, transform.e) or not _same_crs(info.crs, grid.crs):
        return None
    col, row = (transform.c - c) / a, (transform.f - f) / e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


@cache
def _same_crs(crs: str, other: str) -> bool:
    return CRS.from_user_input(crs) == CRS.from_user_input(other)


def _read_on_grid(
    info: RasterInfo, row: int, col: int, height: int, width: int, bands: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """A window of an input on the grid, which may reach past any of its edges (pixels there
    invalid)."""
    values = np.zeros((len(bands), height, width), info.dtype)
    ok = np.zeros((height, width), bool)
    top, left = max(row, 0), max(col, 0)
    bottom, right = min(row + height, info.height), min(col + width, info.width)
    if top < bottom and left < right:
        try:
            with storage.gdal_env(**GDAL_READ_OPTIONS), rasterio.open(info.dataset) as src:
                inside, inside_ok = read_window(
                    src, bands, top, left, bottom - top, right - left, info.masking
                )
        except RasterioError as exc:
            raise InputError(f"{info.path}: cannot read pixels ({first_line(exc)})") from None
        rows, cols = slice(top - row, bottom - row), slice(left - col, right - col)
        values[:, rows, cols], ok[rows, cols] = inside, inside_ok
    return values, ok


@cache
def _footprint(info: RasterInfo, grid: OutputGrid):
    return footprint(info, grid)


def _covered(
    info: RasterInfo, grid: OutputGrid, transform: Affine, height: int, width: int
) -> np.ndarray:
    """Which pixels of the window have their centre inside the input's footprint."""
    return rasterio.features.geometry_mask(
        [_footprint(info, grid)], (height, width), transform, invert=True
    )


def _scale(info: RasterInfo, crs: str, resolution: float) -> float:
    """Pixels of the grid per pixel of the input, along each axis: the ratio of the input's own
    resolution in the grid's CRS (as gdalwarp would choose it) to the grid's."""
    left, top = info.transform[2], info.transform[5]
    right = left + info.width * info.transform[0]
    bottom = top + info.height * info.transform[4]
    own, _, _ = rasterio.warp.calculate_default_transform(
        info.crs, crs, info.width, info.height, left, min(top, bottom), right, max(top, bottom)
    )
    return own.a / resolution


@dataclass(frozen=True)
class _Region:
    transform: Affine
    height: int
    width: int


def _aligned(transform: Affine, height: int, width: int) -> tuple[_Region, Window]:
    """The region of whole `ALIGNMENT`-pixel blocks of the grid (counted from its CRS's
    origin) that holds a window of the grid, and where the window lies in it."""
    resolution = transform.a
    col, row = round(transform.c / resolution), round(-transform.f / resolution)
    left, top = col // ALIGNMENT * ALIGNMENT, row // ALIGNMENT * ALIGNMENT
    right = -(-(col + width) // ALIGNMENT) * ALIGNMENT
    bottom = -(-(row + height) // ALIGNMENT) * ALIGNMENT
    region = Affine(resolution, 0.0, left * resolution, 0.0, -resolution, 0.0 - top * resolution)
    window = Window(col - left, row - top, width, height)
    return _Region(region, bottom - top, right - left), window
