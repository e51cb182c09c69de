"""Reading a window of the output grid from several input rasters, as an executor does: each
input warped onto the window with GDAL's warper, and each pixel taken from the first input that
is valid there. No Spark and no driver: pure functions over `OutputGrid` and `RasterInfo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.enums import Resampling as GdalResampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from sparkinfer import storage
from sparkinfer.config import Resampling
from sparkinfer.errors import InputError, first_line
from sparkinfer.grid import OutputGrid
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo


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
    _check_bands(inputs)
    dtype = np.result_type(*(info.dtype for info in inputs)) if inputs else np.uint8
    pixels = np.zeros((len(bands), height, width), dtype)
    valid = np.zeros((height, width), bool)
    for info in inputs:
        if valid.all():  # later inputs could only fill pixels that are already filled
            break
        values, ok = _warped(info, grid.crs, window_transform, height, width, bands, resampling)
        take = ok & ~valid
        pixels[:, take] = values[:, take]
        valid |= take
    return pixels, valid


def _check_bands(inputs: Sequence[RasterInfo]) -> None:
    """Refuse inputs whose band counts differ: a band index would mean another band in each."""
    for info in inputs[1:]:
        if info.count != inputs[0].count:
            raise InputError(
                f"{info.path}: has {info.count} bands where {inputs[0].path} has "
                f"{inputs[0].count}; give inputs of one map the same bands in the same order"
            )


def _warped(
    info: RasterInfo,
    crs: str,
    transform: Affine,
    height: int,
    width: int,
    bands: list[int],
    resampling: Resampling,
) -> tuple[np.ndarray, np.ndarray]:
    """One input warped onto the window: its pixels, in its own type, and their validity."""
    options: dict = {}
    if info.masking == "nodata":
        # Each band's nodata masks that band alone. GDAL's default would mask a pixel only
        # where all bands are nodata, and bilinear (or wider) resampling would then mix one
        # band's nodata value into its valid neighbours' values.
        options["UNIFIED_SRC_NODATA"] = "NO"
    else:
        # No nodata to mark what the input does not cover: an alpha band marks it, and also
        # carries an internal mask or alpha band of the input, which the warper reads as the
        # source's validity.
        options["add_alpha"] = True
    # A pixel must not depend on the window it is read in (a chunk's, or the whole map's).
    # The warper's defaults make it so: its approximation of the reprojection (an eighth of a
    # pixel) and its resampling kernel's scale are both fitted to each window. Instead, each
    # pixel's source position is computed (all but) exactly, and the scale is the input's.
    scale = _scale(info, crs, transform.a)
    try:
        with (
            storage.gdal_env(**GDAL_READ_OPTIONS),
            rasterio.open(info.dataset) as src,
            WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                height=height,
                width=width,
                resampling=GdalResampling[resampling],
                tolerance=1e-6,  # 0 is refused by rasterio
                XSCALE=scale,
                YSCALE=scale,
                **options,
            ) as vrt,
        ):
            values = vrt.read(bands)
            if info.masking == "nodata":
                # The warped bands keep the input's nodata, written where no valid source
                # pixel of that band reached: a pixel is valid where every band has a value.
                ok = vrt.read_masks(bands).all(axis=0)
            else:
                ok = vrt.read(vrt.count) > 0
    except RasterioError as exc:
        raise InputError(f"{info.path}: cannot warp onto the grid ({first_line(exc)})") from None
    if values.dtype.kind == "f":
        ok &= np.isfinite(values).all(axis=0)
    return values, ok


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
