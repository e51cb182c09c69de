"""`--verify`: one sample window of a raster inferred as a whole, against the tiled output.

The window lies near the raster's centre, shifted half a tile off the tile grid so that tile
borders cross it, on the model's stride grid. Inside it, less a margin of the halo on each side
(whose context the window itself lacks), a seam-free run gives the same classes both ways: a
model with a local receptive field agrees everywhere. A model with global context is compared
with the same model run on the larger window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from sparkinfer.cuts import Tiling
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.raster import RasterInfo, read_window
from sparkinfer.runtimes import Runtime

SAMPLE_TILES = 3  # a free-size model's sample window spans this many tiles (and their halo)


@dataclass(frozen=True)
class SampleWindow:
    """A square window of the raster, and the margin left out of the comparison."""

    row_off: int
    col_off: int
    size: int
    margin: int


def sample_window(
    height: int, width: int, tiling: Tiling, input_size: int | None
) -> SampleWindow | None:
    """Where to verify a raster; None where no pixel would be compared."""
    size = input_size or SAMPLE_TILES * tiling.tile_size + 2 * tiling.halo
    if input_size is None:
        size = min(size, height, width) // tiling.stride * tiling.stride
    if size > min(height, width) or size <= 2 * tiling.halo:
        return None

    def offset(length: int) -> int:
        shifted = (length - size) // 2 + tiling.tile_size // 2
        return min(shifted, length - size) // tiling.stride * tiling.stride

    return SampleWindow(offset(height), offset(width), size, tiling.halo)


def verify(
    info: RasterInfo,
    bands: tuple[int, ...],
    classes_path: str,
    runtime: Runtime,
    window: SampleWindow,
) -> dict:
    """The agreement between the tiled class map at `classes_path` and the model run on
    `window` whole, over the window less its margin."""
    size, m = window.size, window.margin
    with rasterio.open(info.dataset) as src:
        data, valid = read_window(
            src, list(bands), window.row_off, window.col_off, size, size, info.masking
        )
    classes, _ = runtime.classify(np.moveaxis(data, 0, -1)[None], valid[None])
    whole = classes[0].copy()
    whole[~valid] = CLASS_NODATA
    with rasterio.open(classes_path) as cog:
        tiled = cog.read(1, window=Window(window.col_off, window.row_off, size, size))
    inner = (slice(m, size - m), slice(m, size - m))
    agree = whole[inner] == tiled[inner]
    return {
        "window": {"row_off": window.row_off, "col_off": window.col_off, "size": size},
        "compared_pixels": int(agree.size),
        "agreement": float(agree.mean()),
    }
