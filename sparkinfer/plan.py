"""The tiling plan: pure arithmetic on raster sizes, no pixels and no Spark.

A raster is cut into *core tiles* of `tile_size` pixels that cover it exactly once. Each core tile
is inferred from a *read window*: the core grown by `halo` pixels on every side, so that every
kept output pixel sees its whole receptive field. Read windows all have one shape
(`tile_size + 2 * halo`): near the raster's edges they are shifted inward instead of shrunk.

Models that downsample (total stride `stride` > 1) only give whole-image results when their
sampling grid is the same in every window, so tile origins, halos and window sizes are multiples
of `stride`, and the raster is treated as padded with zeros on its bottom and right edges up to a
multiple of `stride` (exactly what whole-image inference of such a model needs too). Pixels of a
read window beyond the raster are read as zeros.

Tiles are grouped into square *chunks* of `chunk_tiles` x `chunk_tiles` tiles: a chunk is the
unit of a Spark task's work and of the files it writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Tiling:
    """How rasters are cut: core tile side, halo, model stride and chunk side, in pixels/tiles."""

    tile_size: int
    halo: int
    stride: int = 1
    chunk_tiles: int = 4

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.tile_size < 1 or self.tile_size % self.stride:
            raise ValueError(
                f"tile_size {self.tile_size} must be a positive multiple of the model's "
                f"total stride {self.stride}"
            )
        if self.halo < 0 or self.halo % self.stride:
            raise ValueError(f"halo {self.halo} must be a multiple of the stride {self.stride}")
        if self.chunk_tiles < 1:
            raise ValueError(f"chunk_tiles must be >= 1, got {self.chunk_tiles}")

    @property
    def window_size(self) -> int:
        """Side of every full-size read window."""
        return self.tile_size + 2 * self.halo

    @property
    def halo_share(self) -> float:
        """Fraction of a full read window's pixels that are halo (computed but not kept)."""
        return 1.0 - (self.tile_size / self.window_size) ** 2


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class AxisPlan:
    """Core and read intervals along one axis, as [start, stop) arrays indexed by tile."""

    core_start: np.ndarray
    core_stop: np.ndarray
    read_start: np.ndarray
    read_stop: np.ndarray

    def __len__(self) -> int:
        return len(self.core_start)


def plan_axis(length: int, tiling: Tiling) -> AxisPlan:
    """Cut one axis of `length` pixels into core tiles and their read windows."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    tile, halo, window = tiling.tile_size, tiling.halo, tiling.window_size
    padded = round_up(length, tiling.stride)
    core_start = np.arange(0, length, tile, dtype=np.int64)
    core_stop = np.minimum(core_start + tile, length)
    if padded <= window:
        read_start = np.zeros_like(core_start)
        read_stop = np.full_like(core_start, padded)
    else:
        read_start = np.clip(core_start - halo, 0, padded - window)
        read_stop = read_start + window
    return AxisPlan(core_start, core_stop, read_start, read_stop)


# One row per tile; the columns of the plan's Arrow tables.
TILE_FIELDS = (
    "tile_row",
    "tile_col",
    "core_row_off",
    "core_col_off",
    "core_height",
    "core_width",
    "read_row_off",
    "read_col_off",
    "read_height",
    "read_width",
)
TILE_TYPE = pa.struct([(name, pa.int32()) for name in TILE_FIELDS])


@dataclass(frozen=True)
class RasterPlan:
    """The tiling of one raster of `height` x `width` pixels."""

    height: int
    width: int
    tiling: Tiling

    @property
    def rows(self) -> AxisPlan:
        return plan_axis(self.height, self.tiling)

    @property
    def cols(self) -> AxisPlan:
        return plan_axis(self.width, self.tiling)

    @property
    def tile_grid(self) -> tuple[int, int]:
        """Number of tile rows and tile columns."""
        tile = self.tiling.tile_size
        return math.ceil(self.height / tile), math.ceil(self.width / tile)

    @property
    def tile_count(self) -> int:
        rows, cols = self.tile_grid
        return rows * cols

    @property
    def chunk_grid(self) -> tuple[int, int]:
        rows, cols = self.tile_grid
        side = self.tiling.chunk_tiles
        return math.ceil(rows / side), math.ceil(cols / side)

    @property
    def chunk_count(self) -> int:
        rows, cols = self.chunk_grid
        return rows * cols

    def chunks(self) -> pa.Table:
        """One row per chunk, in row-major order, with its core window and its tiles.

        Columns: `chunk_row`, `chunk_col`, `row_off`, `col_off`, `height`, `width` (the chunk's
        core window), `read_row_off`, `read_col_off`, `read_height`, `read_width` (the union of
        its tiles' read windows) and `tiles`, a list of `TILE_TYPE` structs in row-major order.
        """
        rows, cols = self.rows, self.cols
        side = self.tiling.chunk_tiles
        n_rows, n_cols = len(rows), len(cols)
        tile_r, tile_c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        chunk_r, chunk_c = tile_r // side, tile_c // side
        chunk_cols = self.chunk_grid[1]
        # Order tiles by chunk, then row-major inside the chunk.
        chunk_id = (chunk_r * chunk_cols + chunk_c).ravel()
        order = np.lexsort((tile_c.ravel(), tile_r.ravel(), chunk_id))
        tr, tc = tile_r.ravel()[order], tile_c.ravel()[order]
        columns = {
            "tile_row": tr,
            "tile_col": tc,
            "core_row_off": rows.core_start[tr],
            "core_col_off": cols.core_start[tc],
            "core_height": (rows.core_stop - rows.core_start)[tr],
            "core_width": (cols.core_stop - cols.core_start)[tc],
            "read_row_off": rows.read_start[tr],
            "read_col_off": cols.read_start[tc],
            "read_height": (rows.read_stop - rows.read_start)[tr],
            "read_width": (cols.read_stop - cols.read_start)[tc],
        }
        tiles = pa.StructArray.from_arrays(
            [pa.array(columns[name], pa.int32()) for name in TILE_FIELDS], fields=list(TILE_TYPE)
        )
        counts = np.bincount(chunk_id, minlength=self.chunk_count)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

        first = offsets[:-1]
        last = offsets[1:] - 1
        row_off = columns["core_row_off"][first]
        col_off = columns["core_col_off"][first]
        height = columns["core_row_off"][last] + columns["core_height"][last] - row_off
        width = columns["core_col_off"][last] + columns["core_width"][last] - col_off
        # The chunk's read window: the union of its tiles' read windows, read in one piece.
        read_row_off = np.minimum.reduceat(columns["read_row_off"], first)
        read_col_off = np.minimum.reduceat(columns["read_col_off"], first)
        read_row_end = np.maximum.reduceat(columns["read_row_off"] + columns["read_height"], first)
        read_col_end = np.maximum.reduceat(columns["read_col_off"] + columns["read_width"], first)
        return pa.table(
            {
                "chunk_row": pa.array(tr[first] // side, pa.int32()),
                "chunk_col": pa.array(tc[first] // side, pa.int32()),
                "row_off": pa.array(row_off, pa.int32()),
                "col_off": pa.array(col_off, pa.int32()),
                "height": pa.array(height, pa.int32()),
                "width": pa.array(width, pa.int32()),
                "read_row_off": pa.array(read_row_off, pa.int32()),
                "read_col_off": pa.array(read_col_off, pa.int32()),
                "read_height": pa.array(read_row_end - read_row_off, pa.int32()),
                "read_width": pa.array(read_col_end - read_col_off, pa.int32()),
                "tiles": pa.ListArray.from_arrays(pa.array(offsets), tiles),
            }
        )
