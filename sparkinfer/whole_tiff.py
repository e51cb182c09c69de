"""Whether a GeoTIFF GDAL has just written reached the disk whole, before it is committed.

GDAL writes a tile when its cache flushes it and the directory when the file closes; a write
that fails then (a full disk, a file size limit) is logged, but rasterio's `close` does not raise
it. The file is left without its directory (nothing opens it) or with tiles of no bytes, which
GDAL would read back as empty tiles. Committed, such a file is a chunk every later run trusts.
So each written file is opened again and each tile's bytes must lie inside it: a look at the
directory, not at the pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError


def check_whole(path: Path, final: str | None = None) -> None:
    """Raise OSError unless the GeoTIFF at the local `path` opens and every tile of every band
    and overview has bytes inside the file; the message names `final`, what `path` is to
    become, where given."""
    size = path.stat().st_size
    name = final or path.name
    try:
        with rasterio.open(path) as src:
            levels = [None, *range(len(src.overviews(1)))]
            for band in range(1, src.count + 1):
                for level in levels:
                    _check_tiles(src, band, level, size, name)
    except RasterioIOError:
        message = f"{name} was not written whole (GDAL cannot open it); is its disk full?"
        raise OSError(message) from None


def _check_tiles(src, band: int, level: int | None, size: int, name: str) -> None:
    factor = 1 if level is None else src.overviews(band)[level]
    height, width = math.ceil(src.height / factor), math.ceil(src.width / factor)
    block_height, block_width = src.block_shapes[band - 1]
    for row in range(math.ceil(height / block_height)):
        for col in range(math.ceil(width / block_width)):
            offset = _item(src, f"BLOCK_OFFSET_{col}_{row}", band, level)
            count = _item(src, f"BLOCK_SIZE_{col}_{row}", band, level)
            if not offset or not count or offset + count > size:
                raise OSError(
                    f"{name} was not written whole (tile {row}, {col} of band {band} has no "
                    f"bytes in its {size:,} bytes); is its disk full?"
                )


def _item(src, name: str, band: int, level: int | None) -> int:
    value = src.get_tag_item(name, "TIFF", bidx=band, ovr=level)
    return int(value) if value else 0
