"""The plan of one map over many input rasters: pure geometry on metadata, no pixels and no Spark.

The map is an *output grid*: square pixels of `resolution` units of its CRS, cut into *grid
tiles* of `tile_size` x `tile_size` pixels. The tiles are fixed by the CRS's origin (0, 0),
not by the inputs, so that two runs over neighbouring regions share one grid and their tiles
line up. With S = tile_size x resolution, grid tile (col, row) spans

    x in [col * S, (col + 1) * S)    and    y in ((-row - 1) * S, -row * S]

so row 0 is the row whose top edge is at y = 0, rows count down (north-up, as pixel rows do),
and tiles left of or below the origin have negative indexes. A tile's edges are computed from
the index of its first pixel, (col * tile_size) * resolution, so neighbouring tiles share their
edges exactly.

Each input's *footprint* is its outline, densified and reprojected to the grid's CRS. A grid
tile is made where at least one footprint meets it (overlaps it with positive area, not just
along an edge), and lists those inputs in input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import compress
from typing import Protocol

import numpy as np
import rasterio
import rasterio.warp
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError  # a failed PROJ transformation's; not in rasterio.errors
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.errors import CRSError

from sparkinfer.catalog import FOOTPRINT_EDGE_POINTS, densified, window_outline
from sparkinfer.errors import ConfigError, InputError, first_line


class InputRaster(Protocol):
    """What the plan reads of an input raster: its metadata, as `sparkinfer.raster.RasterInfo`
    holds it."""

    @property
    def path(self) -> str: ...

    @property
    def crs(self) -> str | None: ...  # WKT, or anything rasterio's CRS reads

    @property
    def transform(self) -> tuple[float, ...]: ...  # affine a, b, c, d, e, f

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


@dataclass(frozen=True)
class TileRange:
    """A block of grid tiles: the columns and rows it spans."""

    cols: range
    rows: range

    @property
    def count(self) -> int:
        """How many tiles it holds (not `len`, which cannot exceed a C integer)."""
        return (self.cols.stop - self.cols.start) * (self.rows.stop - self.rows.start)

    def within(self, other: TileRange) -> TileRange:
        """The tiles of this block that are also in `other`."""
        return TileRange(_common(self.cols, other.cols), _common(self.rows, other.rows))


def _common(a: range, b: range) -> range:
    start = max(a.start, b.start)
    return range(start, max(start, min(a.stop, b.stop)))


@dataclass(frozen=True)
class GridTile:
    """One grid tile of the map: its place in the grid, its bounds and pixels' transform in the
    grid's CRS, its size in pixels, and the indexes of the inputs that meet it, in input
    order."""

    col: int
    row: int
    bounds: BoundingBox
    transform: Affine
    width: int
    height: int
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class OutputGrid:
    """The map's grid: its CRS (WKT or "EPSG:n"), the side of its square pixels in the CRS's
    units, and the side of its grid tiles in pixels."""

    crs: str
    resolution: float
    tile_size: int = 4096

    def __post_init__(self) -> None:
        try:
            with rasterio.Env():  # GDAL's errors to Python's logging, not a line of its own
                CRS.from_user_input(self.crs)
        except CRSError as exc:
            raise ConfigError(
                f"--grid {self.crs}: not a CRS ({first_line(exc)}); give one as EPSG:n or WKT"
            ) from None
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise ConfigError(
                f"--resolution {self.resolution}: give a positive pixel side, in the units of "
                "the grid's CRS"
            )
        if not (isinstance(self.tile_size, int) and self.tile_size > 0):
            raise ConfigError(f"--grid-tile {self.tile_size}: give a positive number of pixels")

    @cached_property
    def crs_name(self) -> str:
        """The CRS as messages name it: "EPSG:n" where it has a code, else its PROJ string (its
        WKT would fill the line)."""
        crs = CRS.from_user_input(self.crs)
        authority = crs.to_authority()
        return ":".join(authority) if authority else crs.to_proj4()

    def _edge(self, index: int) -> float:
        """Where tile column `index` starts along x, and tile row `index` along -y."""
        return (index * self.tile_size) * self.resolution

    def _top(self, row: int) -> float:
        """Where tile row `row` starts along y (0.0 minus the edge: never -0.0)."""
        return 0.0 - self._edge(row)

    def tile_bounds(self, col: int, row: int) -> BoundingBox:
        """The bounds of grid tile (col, row) in the grid's CRS."""
        return BoundingBox(self._edge(col), self._top(row + 1), self._edge(col + 1), self._top(row))

    def tile_transform(self, col: int, row: int) -> Affine:
        """The transform of grid tile (col, row)'s pixels: north-up, from its top-left corner."""
        return Affine(self.resolution, 0.0, self._edge(col), 0.0, -self.resolution, self._top(row))

    def grid_tile(self, col: int, row: int, inputs: tuple[int, ...] = ()) -> GridTile:
        """Grid tile (col, row), met by the inputs of indexes `inputs`."""
        bounds, transform = self.tile_bounds(col, row), self.tile_transform(col, row)
        return GridTile(col, row, bounds, transform, self.tile_size, self.tile_size, inputs)

    def tiles_covering(self, bounds: Sequence[float]) -> TileRange:
        """The block of grid tiles that `bounds` (minx, miny, maxx, maxy in the grid's CRS) reach
        into: the bounds snapped outward to tile edges. An edge of the bounds on a tile edge
        takes no tile beyond it."""
        minx, miny, maxx, maxy = bounds
        return TileRange(self._indexes(minx, maxx), self._indexes(-maxy, -miny))

    def _indexes(self, low: float, high: float) -> range:
        """The tiles i whose interval [edge(i), edge(i + 1)) holds part of [low, high], `high`
        on an edge taking no tile beyond it. Division guesses them; the loops settle its
        rounding against the edges themselves, so that the answer agrees with `tile_bounds`."""
        side = self.tile_size * self.resolution
        start, stop = math.floor(low / side), math.ceil(high / side)
        while self._edge(start + 1) <= low:
            start += 1
        while self._edge(start) > low:
            start -= 1
        while self._edge(stop) < high:
            stop += 1
        while self._edge(stop - 1) >= high:
            stop -= 1
        return range(start, max(start, stop))


def footprint(raster: InputRaster, grid: OutputGrid) -> shapely.Polygon:
    """The outline of `raster` in the grid's CRS: its edges densified (straight in its own CRS,
    they bend in another) and reprojected. Raises `InputError` where that CRS cannot hold it:
    PROJ refuses or sends points to infinity, or the outline folds over itself (a pole or the
    antimeridian inside it)."""
    ring = window_outline(Affine(*raster.transform[:6]), 0, 0, raster.height, raster.width)
    xs, ys = zip(*densified(ring, FOOTPRINT_EDGE_POINTS), strict=True)
    try:
        xs, ys = rasterio.warp.transform(raster.crs, grid.crs, xs, ys)
    except CRSError as exc:
        raise InputError(
            f"{raster.path}: the raster's CRS cannot be used ({first_line(exc)}); set a valid "
            "one (gdal_edit.py -a_srs)"
        ) from None
    except CPLE_BaseError:  # PROJ's words ("err = 2050") depend on how many points failed
        why = f"reaches outside the domain of the grid's CRS {grid.crs_name}"
    else:
        if not np.isfinite([xs, ys]).all():
            why = f"reaches where the grid's CRS {grid.crs_name} is infinite"
        else:
            outline = shapely.Polygon(zip(xs, ys, strict=True))
            if outline.is_valid:
                return outline
            why = (
                f"folds over itself in the grid's CRS {grid.crs_name} (a pole or the antimeridian)"
            )
    raise InputError(f"{raster.path}: the raster {why}; choose a --grid CRS that covers it")


@dataclass(frozen=True)
class GridPlan:
    """The map's plan: its grid, its bounds in the grid's CRS (given, or the union of the
    inputs' footprints), the grid tiles to make (those that an input meets), by row then
    column, and the inputs with their footprints in the grid's CRS."""

    grid: OutputGrid
    bounds: BoundingBox
    tiles: tuple[GridTile, ...]
    inputs: tuple[InputRaster, ...]  # in mosaic order, as the tiles' indexes count them
    footprints: tuple[shapely.Polygon, ...]

    @property
    def extent(self) -> TileRange:
        """The block of grid tiles the bounds reach into: the map that whole-map inference
        would see."""
        return self.grid.tiles_covering(self.bounds)

    def inputs_meeting(self, bounds: Sequence[float]) -> tuple[int, ...]:
        """The indexes of the inputs whose footprints meet `bounds` (in the grid's CRS) with
        positive area, in input order."""
        box = shapely.box(*bounds)
        return tuple(
            i
            for i, outline in enumerate(self.footprints)
            if outline.intersects(box) and not outline.touches(box)
        )


def plan_grid(
    grid: OutputGrid,
    inputs: Sequence[InputRaster],
    bounds: Sequence[float] | None = None,
    max_pixels: int = 10**12,
    force: bool = False,
) -> GridPlan:
    """Which grid tiles to make over `bounds` (minx, miny, maxx, maxy in the grid's CRS; by
    default the union of the inputs' footprints), and which inputs meet each. Refuses, in one
    line: an input the grid's CRS cannot hold, bounds that no input meets, and tiles of more
    than `max_pixels` pixels over the bounds unless `force`."""
    if not inputs:
        raise ConfigError("no inputs to place on the grid; give input rasters")
    footprints = [footprint(raster, grid) for raster in inputs]
    lefts, bottoms, rights, tops = zip(*(outline.bounds for outline in footprints), strict=True)
    union = BoundingBox(min(lefts), min(bottoms), max(rights), max(tops))
    if bounds is None:
        named, bounds = "the inputs' bounds", union
    else:
        named, bounds = "--bounds", BoundingBox(*bounds)
        if not (
            np.isfinite(bounds).all() and bounds.left < bounds.right and bounds.bottom < bounds.top
        ):
            raise ConfigError(
                f"--bounds {_flag_value(bounds)}: give minx,miny,maxx,maxy with minx < maxx and "
                "miny < maxy"
            )
    covering = grid.tiles_covering(bounds)
    pixels = covering.count * grid.tile_size**2
    if pixels > max_pixels and not force:
        raise ConfigError(
            f"{named} {_flag_value(bounds)} at --resolution {grid.resolution} hold {pixels:,} "
            f"pixels ({covering.count:,} grid tiles), more than {max_pixels:,}; "
            "check --resolution and --bounds (in the grid CRS's units), or pass --force"
        )
    meeting: dict[tuple[int, int], list[int]] = {}
    for index, outline in enumerate(footprints):
        candidates = grid.tiles_covering(outline.bounds).within(covering)
        places = [(row, col) for row in candidates.rows for col in candidates.cols]
        boxes = [shapely.box(*grid.tile_bounds(col, row)) for row, col in places]
        shapely.prepare(outline)
        # Interiors overlap: a tile the footprint only touches along an edge is not met.
        met = shapely.intersects(outline, boxes) & ~shapely.touches(outline, boxes)
        for place in compress(places, met):
            meeting.setdefault(place, []).append(index)
    if not meeting:
        raise ConfigError(
            f"{named} {_flag_value(bounds)}: no input meets them (the inputs span "
            f"{_flag_value(union)}); give bounds in the grid's CRS {grid.crs_name} that "
            "overlap them"
        )
    tiles = tuple(
        grid.grid_tile(col, row, tuple(meeting[row, col])) for row, col in sorted(meeting)
    )
    return GridPlan(grid, bounds, tiles, tuple(inputs), tuple(footprints))


def _flag_value(bounds: BoundingBox) -> str:
    """Bounds as --bounds takes them."""
    return ",".join(str(float(value)) for value in bounds)
