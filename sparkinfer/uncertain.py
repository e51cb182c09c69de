"""What to label next: the chips of a raster where the model is least sure (`--uncertain K`),
as NAME.uncertain.parquet.

Chips are the cells of a grid of `size` x `size` pixels from the raster's corner (edge cells
smaller than that are left out); a chip counts when at least half of its pixels are valid. Its
score is its pixels' mean confidence (`sparkinfer.confidence`). The K chips taken are picked
lowest score first, skipping any chip that touches one already taken (8-neighbours on the
chip grid), so that two chips are at least one chip's side apart and do not cluster.

The assembly reads the raster's confidence and class COGs a strip of chips at a time and keeps
only the `9 K` lowest chips: each chip taken rules out at most 8 others, so the K picks are
always among them. Memory holds one strip and those candidates, whatever the raster's size.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from rasterio.windows import Window

from sparkinfer import storage
from sparkinfer.catalog import geoparquet_metadata, grid_bbox, wkb_rectangles
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.raster import RasterInfo

MIN_VALID_SHARE = 0.5  # of a chip's pixels, for it to count


@dataclass(frozen=True, order=True)
class Chip:
    """A chip of the grid, ordered by its score, then by its place (ties broken alike
    everywhere)."""

    mean_confidence: float  # 0 to 1
    row: int  # on the chip grid
    col: int
    valid_pixels: int
    class_pixels: tuple[int, ...]


def strip_chips(confidence: np.ndarray, classes: np.ndarray, row: int, size: int, count: int):
    """The chips that count in one strip of `size` rows (chip row `row`): the strip's
    confidence and class map, uint8, 255 where nodata."""
    columns = confidence.shape[1] // size
    for col in range(columns):
        cell = np.s_[:, col * size : (col + 1) * size]
        valid = confidence[cell] != CLASS_NODATA
        pixels = int(valid.sum())
        if pixels < MIN_VALID_SHARE * size * size:
            continue
        mean = float(confidence[cell][valid].mean(dtype=np.float64)) / 255
        histogram = np.bincount(classes[cell][valid].ravel(), minlength=count)[:count]
        yield Chip(round(mean, 6), row, col, pixels, tuple(int(n) for n in histogram))


def pick(candidates: list[Chip], k: int) -> list[Chip]:
    """The K lowest chips, each skipped where it touches one taken before it."""
    taken: list[Chip] = []
    near: set[tuple[int, int]] = set()
    for chip in sorted(candidates):
        if len(taken) == k:
            break
        if (chip.row, chip.col) in near:
            continue
        taken.append(chip)
        near |= {(chip.row + dr, chip.col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    return taken


def least_sure(confidence_path: str, classes_path: str, k: int, size: int, count: int):
    """`pick` over the chips of a raster's local confidence and class COGs, read a strip at a
    time, keeping the `9 k` lowest chips."""
    kept: list[tuple] = []  # a max-heap by (score, place), as negated keys
    with rasterio.open(confidence_path) as conf, rasterio.open(classes_path) as cls:
        for row in range(conf.height // size):
            window = Window(0, row * size, conf.width, size)
            confidence, classes = conf.read(1, window=window), cls.read(1, window=window)
            for chip in strip_chips(confidence, classes, row, size, count):
                key = (-chip.mean_confidence, -chip.row, -chip.col)
                if len(kept) < 9 * k:
                    heapq.heappush(kept, (key, chip))
                elif key > kept[0][0]:
                    heapq.heapreplace(kept, (key, chip))
    return pick([chip for _, chip in kept], k)


UNCERTAIN_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),  # 1: the least sure
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("mean_confidence", pa.float64()),
        ("valid_pixels", pa.int64()),
        ("class_pixels", pa.list_(pa.int64())),  # pixels of each class, by class index
        ("geometry", pa.binary()),  # the chip's footprint, WKB polygon in the raster's CRS
    ]
)


def write_uncertain(
    info: RasterInfo, chips: list[Chip], size: int, path: str, class_names: tuple[str, ...]
) -> None:
    """GeoParquet 1.1 of the chips, least sure first."""
    transform = Affine(*info.transform)
    geo = geoparquet_metadata(info.crs, ["Polygon"], grid_bbox(transform, info.height, info.width))
    metadata = {b"geo": json.dumps(geo).encode(), b"class_names": json.dumps(class_names).encode()}
    top = np.array([c.row * size for c in chips], np.int64)
    left = np.array([c.col * size for c in chips], np.int64)
    sides = np.full(len(chips), size, np.int64)
    table = pa.table(
        {
            "rank": np.arange(1, len(chips) + 1, dtype=np.int32),
            "row_off": top,
            "col_off": left,
            "height": sides,
            "width": sides,
            "mean_confidence": [c.mean_confidence for c in chips],
            "valid_pixels": [c.valid_pixels for c in chips],
            "class_pixels": [list(c.class_pixels) for c in chips],
            "geometry": wkb_rectangles(transform, top, left, sides, sides),
        },
        schema=UNCERTAIN_SCHEMA.with_metadata(metadata),
    )
    with storage.staged(path) as local:
        pq.write_table(table, local, compression="zstd")
