"""A map's grid tiles as the rasters of a run, planned on the driver from metadata only.

With a grid (`--grid`), each grid tile that an input meets (`grid.plan_grid`) is one raster of
the run: planned as a part of the whole map (`plan.Margins`), so its read windows reach into its
neighbours as whole-map inference would see them and the stitched tiles equal it; read from a
mosaic of the inputs that meet those windows (`mosaic.MosaicSource`); written as a COG of its own
under `OUT/tiles/`. Everything else (chunks, resume, assembly) is a raster's as without a grid.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from rasterio.crs import CRS

from sparkinfer import storage
from sparkinfer.config import GridOptions, JobConfig
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.errors import ConfigError
from sparkinfer.grid import GridPlan, GridTile, OutputGrid, plan_grid
from sparkinfer.model import ModelPackage
from sparkinfer.mosaic import MosaicSource, check_bands
from sparkinfer.outputs import STAGING_FOLDER
from sparkinfer.plan import Margins, RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.raster_job import RasterJob, identity, input_version
from sparkinfer.zarr_map import ZARR_STORE, ZarrRegion

TILES_FOLDER = "tiles"
MAP_NAME = "map"  # the map's own files (OUT/map.vrt, OUT/map.zarr) and its tiles' names


def check_grid_run(options: GridOptions, config: JobConfig, tiling: Tiling | ChipGrid) -> None:
    """Refuse, in one line, what a map does not do yet."""
    if isinstance(tiling, ChipGrid):
        raise ConfigError(
            "--grid: a chip classifier's map is not made on a grid yet; run it without --grid"
        )
    for flag, used in (
        ("--merge blend", config.merge == "blend"),
        ("--quicklook with --format zarr", config.quicklook and options.format == "zarr"),
        ("--polygons", config.polygons),
        ("--verify", config.verify),
        ("--estimate", config.estimate),
    ):
        if used:
            raise ConfigError(
                f"--grid: {flag} is not made on a grid yet; run without --grid, or without {flag}"
            )
    if options.tile_size % tiling.stride:
        raise ConfigError(
            f"--grid-tile {options.tile_size}: give a multiple of the model's total stride "
            f"{tiling.stride}, so that every grid tile samples the map alike"
        )


def plan_map(options: GridOptions, infos: tuple[RasterInfo, ...]) -> GridPlan:
    """The map's grid tiles over `infos`, in mosaic order, from their metadata: before Spark
    starts, so that a map the inputs cannot make is one line at once. Inputs of one map have
    the same bands: a band index means the same band in each."""
    check_bands(infos)
    if options.mosaic == "newest":  # sorted is stable: inputs of one time keep their order
        infos = tuple(sorted(infos, key=acquired, reverse=True))
    grid = OutputGrid(options.crs, options.resolution, options.tile_size)
    return plan_grid(grid, infos, options.bounds, force=options.force)


def acquired(info: RasterInfo) -> float:
    """When an input was taken, as `--mosaic newest` orders them: a STAC Item's datetime, else
    its file's modification time (seconds since 1970)."""
    if info.item is not None and info.item.acquired is not None:
        return info.item.acquired
    return info.mtime_ns / 1e9


def tile_margins(plan: GridPlan, tile: GridTile) -> Margins:
    """The pixels of the whole map around `tile`: its block of grid tiles, the extent."""
    extent, side = plan.extent, plan.grid.tile_size
    return Margins(
        top=(tile.row - extent.rows.start) * side,
        bottom=(extent.rows.stop - tile.row - 1) * side,
        left=(tile.col - extent.cols.start) * side,
        right=(extent.cols.stop - tile.col - 1) * side,
    )


def read_bounds(tile: GridTile, raster_plan: RasterPlan) -> tuple[float, float, float, float]:
    """The bounds, in the grid's CRS, of all the pixels the tile's read windows take."""
    rows, cols = raster_plan.rows, raster_plan.cols
    top, bottom = int(rows.read_start.min()), int(rows.read_stop.max())
    left, right = int(cols.read_start.min()), int(cols.read_stop.max())
    x0, y0 = tile.transform * (left, top)
    x1, y1 = tile.transform * (right, bottom)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def grid_rasters(
    plan: GridPlan,
    config: JobConfig,
    tiling: Tiling,
    package: ModelPackage,
    output: str,
    labels: tuple | None = None,
) -> tuple[RasterJob, ...]:
    """The grid tiles of the map (`plan_map`) as rasters of the run; `labels` as `identity`
    takes them."""
    grid, infos = plan.grid, plan.inputs
    crs = CRS.from_user_input(grid.crs).to_wkt()
    dtype = str(np.result_type(*(info.dtype for info in infos)))
    rasters = []
    for tile in plan.tiles:
        raster_plan = RasterPlan(tile.height, tile.width, tiling, tile_margins(plan, tile))
        inputs = tuple(infos[i] for i in plan.inputs_meeting(read_bounds(tile, raster_plan)))
        name = f"{MAP_NAME}_{tile.col}_{tile.row}"
        info = RasterInfo(
            path=f"grid tile {tile.col},{tile.row}",
            width=tile.width,
            height=tile.height,
            count=infos[0].count,
            dtype=dtype,
            crs=crs,
            transform=tuple(tile.transform)[:6],
            nodata=None,
            masking="mask",
            size=0,
            mtime_ns=0,
        )
        source = {
            "grid": [grid.crs, grid.resolution, grid.tile_size, tile.col, tile.row],
            "margins": list(vars(raster_plan.margins).values()),
            "inputs": [input_version(i) for i in inputs],
            "mosaic": config.grid.mosaic,
            "resampling": config.resampling,
            "format": config.grid.format,
        }
        made_from = identity([source], package, config, tiling, labels)
        folder = storage.join(output, TILES_FOLDER)
        rasters.append(
            RasterJob(
                info=info,
                plan=raster_plan,
                identity=made_from,
                classes_path=storage.join(folder, f"{name}.tif"),
                scores_path=storage.join(folder, f"{name}.scores.tif") if config.scores else None,
                confidence_path=(
                    storage.join(folder, f"{name}.confidence.tif") if config.confidence else None
                ),
                uncertain_path=(
                    storage.join(folder, f"{name}.uncertain.parquet") if config.uncertain else None
                ),
                quicklook_path=None,  # the map has one (`map_index`), not each tile
                polygons_path=None,
                staging=storage.join(output, STAGING_FOLDER, f"{name}-{made_from}"),
                mosaic=MosaicSource(grid, info.transform, inputs, config.resampling),
                zarr=(
                    zarr_region(raster_plan.margins, output)
                    if config.grid.format == "zarr"
                    else None
                ),
            )
        )
    return tuple(rasters)


def zarr_region(margins: Margins, output: str) -> ZarrRegion:
    """Where a grid tile goes in the map's Zarr store, whose arrays span the map's extent: as
    many pixels in as the tile has of the map above it and left of it (`tile_margins`)."""
    return ZarrRegion(storage.join(output, ZARR_STORE), margins.top, margins.left)


def map_extent(tile: RasterJob) -> RasterInfo:
    """The grid of the whole map (its block of grid tiles), from one of its tiles."""
    info, margins = tile.info, tile.plan.margins
    a, b, c, d, e, f = info.transform
    return replace(
        info,
        path="map",
        width=margins.left + info.width + margins.right,
        height=margins.top + info.height + margins.bottom,
        transform=(a, b, c - margins.left * a, d, e, f - margins.top * e),
    )
