"""The tiling plan: pure arithmetic on raster sizes, no pixels and no Spark.

A raster is cut (a `Tiling`, `sparkinfer.cuts`) into *core tiles* of `tile_size` pixels that
cover it exactly once. Each core tile is inferred from a *read window*: the core grown by `halo`
pixels on every side, so that every kept output pixel sees its whole receptive field. Read
windows all have one shape (`tile_size + 2 * halo`): near the raster's edges they are shifted
inward instead of shrunk.
A raster that is part of a larger one (a grid tile of a map, `Margins`) is planned as that one.

Models that downsample (total stride `stride` > 1) only give whole-image results when their
sampling grid is the same in every window, so tile origins, halos and window sizes are multiples
of `stride`, and the raster is treated as padded with zeros on its bottom and right edges up to a
multiple of `stride` (exactly what whole-image inference of such a model needs too). Pixels of a
read window beyond the raster are read as zeros. Tiles are grouped into square *chunks* of
`chunk_tiles` x `chunk_tiles` tiles: the unit of a Spark task's work and of the files it writes.

Tiles' outputs are merged in one of two ways. `crop` keeps each window's core: seam-free when
the halo covers the model's receptive field. `blend` (for models with global context, where no
halo is exact) keeps whole windows, which then overlap by `overlap` = 2 x `halo`, and averages
each pixel's scores over the windows that cover it (`sparkinfer.blend`). A chunk then infers
every window that reaches into it, its neighbours' included, so that chunks stay independent:
a pixel's value never depends on how the raster was cut into chunks.

A chip classifier (one class per window) is planned the same way on a `ChipGrid`: its windows
are chips of the model's size every `stride` pixels; cores are in cells (one per chip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa

from sparkinfer.cuts import ChipGrid, Tiling


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


def plan_axis(length: int, tiling: Tiling | ChipGrid, before: int = 0, after: int = 0) -> AxisPlan:
    """Cut one axis of `length` pixels into core tiles and their read windows (a chip's core is
    its cell of the output grid). The axis may be a stretch of a longer one, with `before` and
    `after` pixels on either side: windows reach into them, shifted inward only at the ends of
    the longer axis, as its own plan's windows are (for `before` a multiple of the stride)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if isinstance(tiling, ChipGrid):
        cell = np.arange(tiling.cells(length), dtype=np.int64)
        return AxisPlan(cell, cell + 1, cell * tiling.stride, cell * tiling.stride + tiling.size)
    tile, halo, window = tiling.tile_size, tiling.halo, tiling.window_size
    padded = round_up(before + length + after, tiling.stride)
    core_start = np.arange(0, length, tile, dtype=np.int64)
    core_stop = np.minimum(core_start + tile, length)
    if padded <= window:
        read_start = np.full_like(core_start, -before)
        read_stop = read_start + (window if tiling.fixed_window else padded)
    else:
        read_start = np.clip(core_start - halo, -before, padded - before - window)
        read_stop = read_start + window
    return AxisPlan(core_start, core_stop, read_start, read_stop)


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of a raster's pixels: its offsets and size."""

    row_off: int
    col_off: int
    height: int
    width: int

    def slices(self, outer: PixelWindow) -> tuple[slice, slice]:
        """Where this window's pixels are in an array of the pixels of `outer` (which holds
        it)."""
        top, left = self.row_off - outer.row_off, self.col_off - outer.col_off
        return slice(top, top + self.height), slice(left, left + self.width)


@dataclass(frozen=True)
class Tile:
    """One window of the plan: its place in the tile grid, the core whose output is kept, and
    the read window the model sees (the core grown by the halo)."""

    row: int
    col: int
    core: PixelWindow
    read: PixelWindow


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan: its place in the chunk grid, the core it writes, the window it
    reads in one piece (its windows' union), its tiles and windows (more with `blend`)."""

    row: int
    col: int
    core: PixelWindow
    read: PixelWindow
    tiles: int
    windows: int

    @classmethod
    def of_row(cls, row: dict) -> Chunk:
        """The chunk of one row of `RasterPlan.chunks`."""
        return cls(
            row["chunk_row"],
            row["chunk_col"],
            PixelWindow(row["row_off"], row["col_off"], row["height"], row["width"]),
            PixelWindow(
                row["read_row_off"], row["read_col_off"], row["read_height"], row["read_width"]
            ),
            row["tiles"],
            row["windows"],
        )


@dataclass(frozen=True)
class ChunkAxis:
    """Chunks along one axis, as arrays indexed by chunk: their core interval (`off`, `size`),
    the union of the read intervals of the windows they infer (`read_off`, `read_size`), their
    tiles, and the windows they infer (`first_window` to `last_window`, `chunk_windows`)."""

    off: np.ndarray
    size: np.ndarray
    read_off: np.ndarray
    read_size: np.ndarray
    tiles: np.ndarray
    first_window: np.ndarray
    last_window: np.ndarray


def _chunk_axis(axis: AxisPlan, side: int, merge: str) -> ChunkAxis:
    """Chunks along one axis: runs of `side` tiles."""
    first = np.arange(0, len(axis), side)
    last = np.minimum(first + side, len(axis)) - 1
    start, stop = axis.core_start[first], axis.core_stop[last]
    first_window, last_window = first, last
    if merge == "blend":  # read intervals are sorted by both ends
        first_window = np.searchsorted(axis.read_stop, start, side="right")
        last_window = np.searchsorted(axis.read_start, stop, side="left") - 1
    return ChunkAxis(
        off=start,
        size=stop - start,
        read_off=axis.read_start[first_window],
        read_size=axis.read_stop[last_window] - axis.read_start[first_window],
        tiles=last - first + 1,
        first_window=first_window,
        last_window=last_window,
    )


@dataclass(frozen=True)
class Margins:
    """Pixels of a larger raster around one that is part of it (a grid tile of a map)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0


@dataclass(frozen=True)
class RasterPlan:
    """The tiling of one raster of `height` x `width` pixels, maybe part of a larger one."""

    height: int
    width: int
    tiling: Tiling | ChipGrid
    margins: Margins = Margins()

    @cached_property
    def rows(self) -> AxisPlan:
        return plan_axis(self.height, self.tiling, self.margins.top, self.margins.bottom)

    @cached_property
    def cols(self) -> AxisPlan:
        return plan_axis(self.width, self.tiling, self.margins.left, self.margins.right)

    @property
    def tile_grid(self) -> tuple[int, int]:
        """Number of tile rows and tile columns (with chips: the output grid's size)."""
        return len(self.rows), len(self.cols)

    @property
    def tile_count(self) -> int:
        return math.prod(self.tile_grid)

    @property
    def chunk_grid(self) -> tuple[int, int]:
        rows, cols = self.tile_grid
        side = self.tiling.chunk_tiles
        return math.ceil(rows / side), math.ceil(cols / side)

    @property
    def chunk_count(self) -> int:
        return math.prod(self.chunk_grid)

    def _chunk_axes(self) -> tuple[ChunkAxis, ChunkAxis]:
        side, merge = self.tiling.chunk_tiles, self.tiling.merge
        return _chunk_axis(self.rows, side, merge), _chunk_axis(self.cols, side, merge)

    def chunks(self) -> pa.Table:
        """One row per chunk, in row-major order: a few numbers each, whatever the chunk size.

        Columns: `chunk_row`, `chunk_col`, `row_off`, `col_off`, `height`, `width` (the chunk's
        core window), `read_row_off`, `read_col_off`, `read_height`, `read_width` (the union of
        the read windows it infers, read in one piece), `tiles`, how many tiles it holds, and
        `windows`, how many windows it infers (`chunk_windows`).
        """
        rows, cols = self._chunk_axes()
        grid = np.meshgrid(np.arange(len(rows.off)), np.arange(len(cols.off)), indexing="ij")
        r, c = (g.ravel() for g in grid)
        columns = {
            "chunk_row": r,
            "chunk_col": c,
            "row_off": rows.off[r],
            "col_off": cols.off[c],
            "height": rows.size[r],
            "width": cols.size[c],
            "read_row_off": rows.read_off[r],
            "read_col_off": cols.read_off[c],
            "read_height": rows.read_size[r],
            "read_width": cols.read_size[c],
            "tiles": rows.tiles[r] * cols.tiles[c],
            "windows": (rows.last_window[r] - rows.first_window[r] + 1)
            * (cols.last_window[c] - cols.first_window[c] + 1),
        }
        return pa.table({name: pa.array(values, pa.int32()) for name, values in columns.items()})

    def tiles_of_chunk(self, chunk_row: int, chunk_col: int) -> list[Tile]:
        """The tiles of one chunk, row-major."""
        rows, cols = self.chunk_tile_grid(chunk_row, chunk_col)
        return [self._tile(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]

    def chunk_tile_grid(self, chunk_row: int, chunk_col: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile rows and columns of one chunk's tiles, row-major, as arrays."""
        side = self.tiling.chunk_tiles
        rows = np.arange(chunk_row * side, min((chunk_row + 1) * side, len(self.rows)))
        cols = np.arange(chunk_col * side, min((chunk_col + 1) * side, len(self.cols)))
        grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
        return grid_rows.ravel(), grid_cols.ravel()

    def chunk_windows(self, chunk_row: int, chunk_col: int) -> list[Tile]:
        """The windows one chunk infers, row-major, each a tile whose core is the part of the
        window's output the chunk keeps: with `crop` its tiles, with `blend` every window that
        reaches into the chunk, its core clipped to the chunk."""
        if self.tiling.merge == "crop":
            return self.tiles_of_chunk(chunk_row, chunk_col)
        rows, cols = self._chunk_axes()
        top, left = int(rows.off[chunk_row]), int(cols.off[chunk_col])
        bottom, right = top + int(rows.size[chunk_row]), left + int(cols.size[chunk_col])
        windows = []
        for r in range(rows.first_window[chunk_row], rows.last_window[chunk_row] + 1):
            for c in range(cols.first_window[chunk_col], cols.last_window[chunk_col] + 1):
                window = self._tile(r, c)
                read = window.read
                row_start, col_start = max(top, read.row_off), max(left, read.col_off)
                row_stop = min(bottom, read.row_off + read.height)
                col_stop = min(right, read.col_off + read.width)
                core = PixelWindow(row_start, col_start, row_stop - row_start, col_stop - col_start)
                windows.append(replace(window, core=core))
        return windows

    def _tile(self, r: int, c: int) -> Tile:
        rows, cols = self.rows, self.cols
        core = PixelWindow(
            int(rows.core_start[r]),
            int(cols.core_start[c]),
            int(rows.core_stop[r] - rows.core_start[r]),
            int(cols.core_stop[c] - cols.core_start[c]),
        )
        read = PixelWindow(
            int(rows.read_start[r]),
            int(cols.read_start[c]),
            int(rows.read_stop[r] - rows.read_start[r]),
            int(cols.read_stop[c] - cols.read_start[c]),
        )
        return Tile(r, c, core, read)


def task_bounds(count: int, partitions: int, tapered: bool = False) -> np.ndarray:
    """Where the rows of each of (at most) `partitions` tasks start, and the last ends, in
    `count` rows: even runs, as `spark.range` cuts its ids; or `tapered`, runs that shrink from
    the first task to the last (weights `partitions` down to 1). Spark starts a stage's tasks in
    order, so tapered tasks leave short ones for the end, where an executor that is slower
    than the others would otherwise hold the stage up with a long one (guided self-scheduling,
    cut ahead of time). No task is empty."""
    parts = max(1, min(partitions, count))
    if not tapered or count <= partitions:  # one row a task is as fine as tasks get
        return np.arange(parts + 1, dtype=np.int64) * count // parts
    cumulative = np.concatenate([[0], np.cumsum(np.arange(parts, 0, -1, dtype=np.int64))])
    return np.unique(cumulative * count // cumulative[-1])
