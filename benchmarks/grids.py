"""One map over many scenes on a grid (issue 25): what reading pixels through the warped mosaic
costs, against reading a raster's own pixels.

    .venv/bin/python -m benchmarks.grids [--size 4096] [--repeats 3]

The scenes: a mirrored copy of the Olinda sample data/L7_ETMs.tif (`large_raster`: SIZE x SIZE,
6 bands uint8, nodata 0, deflate, tiled 512; EPSG:31985 at 28.5 m, moved by half a pixel onto
a grid of 28.5 m from the CRS's origin, which a map's grid is) and three copies of it moved
by three quarters of its side east, south and both, each warped (bilinear) into another CRS:
four scenes that overlap two by two along their edges and all four around one corner. They are
made in `--work` once and reused. Measured side by side in one run:

1. Read rate per core (one thread, GDAL_NUM_THREADS=1): megapixels (all bands) per second of
   `mosaic.read_mosaic` over one chunk's read window as the job reads it (tile 512, halo 32,
   4 x 4 tiles: 2112 x 2112 pixels), against `raster.read_window` of the same window: on a grid
   in the scene's own CRS and resolution whose pixels are the scene's (the same pixels: checked),
   bilinear (the job's default); onto EPSG:3857 at the scene's own resolution there; and from an
   input that does not meet the window. Each is the median of `--repeats` reads after an
   unmeasured one of 8 x 8 pixels (the file is in the page cache already); the median of as many
   8 x 8 reads gives a read's fixed cost. Each read opens its datasets afresh, as `read_mosaic`
   does. All with the job's GDAL settings (`raster.GDAL_READ_OPTIONS`: a 256 MiB block cache),
   nearest too.
2. Pixels warped per useful output pixel, from the plan alone (no pixels): the map of 2 and of
   4 scenes on EPSG:3857 planned by `grid.plan_grid`, each grid tile planned as the job plans it
   (`grid_rasters.tile_margins`, its inputs those meeting its read windows), summing over every
   chunk its read window's pixels times the inputs warped for it. Split into the halo's factor
   (read / core pixels), the overlap's (inputs warped per read pixel) and the empty part of the
   grid tiles (core pixels / valid pixels); valid pixels are those inside at least one input's
   footprint (the union of footprints, by area). Also: the same per pixel of the scenes' data
   (the warped copies' footprints hold nodata corners), and what `read_mosaic`'s early stop
   (it warps no more inputs once every pixel is valid) and per-chunk input lists would save,
   estimated from the scenes' data outlines.
3. Peak memory of one task's read: one chunk window of a grid tile that the four scenes meet
   read with `MosaicSource.read` (all four warped), the same window from the first scene alone,
   and `read_window` of as many pixels of that scene, each in a fresh process: the increase of
   peak resident memory (VmHWM, reset through /proc/self/clear_refs just before the read) and
   the peak of memory traced by tracemalloc (numpy's arrays; not GDAL's own buffers and cache).

Writes benchmarks/results/DATE-HOST-grids.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import rasterio.warp
import shapely
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from benchmarks.large_raster import make_large_raster
from benchmarks.run import envelope, write_result
from sparkinfer import mosaic
from sparkinfer.cuts import Tiling
from sparkinfer.grid import OutputGrid, footprint, plan_grid
from sparkinfer.grid_rasters import read_bounds, tile_margins
from sparkinfer.mosaic import MosaicSource, read_mosaic
from sparkinfer.plan import Chunk, RasterPlan
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo, read_info, read_window

ROOT = Path(__file__).resolve().parent.parent
MAP_CRS = "EPSG:3857"
TILE, HALO, CHUNK_TILES = 512, 32, 4  # the job's tile, a small model's halo, chunk_tiles auto
MODEL_HALO = 288  # the U-Net's of benchmarks.models (as in benchmarks.same_bytes)
GRID_TILES = (1024, 2048, 4096)  # 4096: --grid-tile's default
# Each scene: its name, the CRS of its copy (None: the mirrored scene itself), and how far it is
# moved east and south, in the scene's sides.
SCENES = (
    ("a", None, 0.0, 0.0),
    ("b", "EPSG:32724", 0.75, 0.0),  # WGS 84 / UTM 24S
    ("c", "EPSG:5641", 0.0, 0.75),  # SIRGAS 2000 / Brazil Mercator
    ("d", "EPSG:31984", 0.75, 0.75),  # SIRGAS 2000 / UTM 24S
)
SOURCE = ROOT / "data" / "L7_ETMs.tif"  # Olinda: 6 bands uint8 (1 to 255), EPSG:31985, 28.5 m
BANDS = (1, 2, 3, 4, 5, 6)
TINY = 8  # pixels on a side of a window whose read is a read's fixed cost


def make_scenes(work: Path, size: int) -> list[Path]:
    """The four scenes (made once): the mirrored scene and its moved, warped copies."""
    base = make_large_raster(work / f"olinda_{size}.tif", size, SOURCE, BANDS)
    with rasterio.open(base, "r+") as dst:
        # On a grid in its own CRS at 28.5 m (its corners on multiples of 28.5 m from the
        # origin, as a grid's pixels are: the sample's are half a pixel off them).
        t, side = dst.transform, 28.5
        on_grid = Affine(side, 0.0, round(t.c / side) * side, 0.0, -side, round(t.f / side) * side)
        if (dst.transform, dst.nodata) != (on_grid, 0):
            dst.transform = on_grid
            dst.nodata = 0  # the sample has no 0: it marks no pixel of it, as the copies' does
    paths = [base]
    for name, crs, east, south in SCENES[1:]:
        path = work / f"olinda_{size}_{name}.tif"
        if not path.exists():
            _moved_copy(base, path, crs, east, south)
        paths.append(path)
    return paths


def _moved(src: rasterio.DatasetReader, east: float, south: float) -> Affine:
    t = src.transform
    return Affine(t.a, t.b, t.c + east * src.width * t.a, t.d, t.e, t.f + south * src.height * t.e)


def _moved_copy(source: Path, path: Path, crs: str, east: float, south: float) -> None:
    """`source` moved by `east` and `south` of its sides and warped (bilinear) to `crs`, nodata
    0 where it does not reach (as tests/builders.shifted_copy_in, moved both ways)."""
    with rasterio.open(source) as src:
        moved = _moved(src, east, south)
        right, bottom = moved * (src.width, src.height)
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, moved.c, bottom, right, moved.f
        )
        profile = src.profile | dict(
            crs=crs, transform=transform, width=width, height=height, nodata=0
        )
        tmp = path.with_name(f".{path.name}.tmp")
        with rasterio.open(tmp, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                out = np.zeros((height, width), src.dtypes[0])
                reproject(
                    src.read(band),
                    out,
                    src_transform=moved,
                    src_crs=src.crs,
                    src_nodata=0,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=0,
                    resampling=Resampling.bilinear,
                    num_threads=os.cpu_count() or 1,
                )
                dst.write(out, band)
    tmp.replace(path)


def _own_resolution(info: RasterInfo, crs: str) -> float:
    """The scene's pixel side in `crs`, as gdalwarp would choose it."""
    left, top = info.transform[2], info.transform[5]
    right, bottom = left + info.width * info.transform[0], top + info.height * info.transform[4]
    own, _, _ = calculate_default_transform(
        info.crs, crs, info.width, info.height, left, bottom, right, top
    )
    return own.a


def map_grid(infos: list[RasterInfo], tile_size: int) -> OutputGrid:
    """The map's grid: EPSG:3857 at the first scene's resolution there (to 0.1 unit)."""
    return OutputGrid(MAP_CRS, round(_own_resolution(infos[0], MAP_CRS), 1), tile_size)


def data_outlines(infos: list[RasterInfo], grid: OutputGrid) -> list[shapely.Polygon]:
    """Where each scene has data, in the grid's CRS: the mirrored scene's outline, moved as the
    scene was, without the nodata corners of its warped copy."""
    base = infos[0]
    outlines = []
    with rasterio.open(base.dataset) as src:
        for _, _, east, south in SCENES[: len(infos)]:
            moved = SimpleNamespace(
                path=base.path,
                crs=base.crs,
                transform=tuple(_moved(src, east, south))[:6],
                width=base.width,
                height=base.height,
            )
            outlines.append(footprint(moved, grid))
    return outlines


# 1. Read rates -------------------------------------------------------------------------------


def _window_raster(info: RasterInfo, transform: Affine, side: int) -> SimpleNamespace:
    """A window of `info`'s CRS as `grid.footprint` takes a raster."""
    return SimpleNamespace(
        path="window", crs=info.crs, transform=tuple(transform)[:6], width=side, height=side
    )


def _median_seconds(read: Callable[[int, int], object], side: int, repeats: int) -> float:
    read(TINY, TINY)  # unmeasured: GDAL's drivers and PROJ's database loaded
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read(side, side)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _direct(info: RasterInfo, bands: list[int], row: int, col: int, height: int, width: int):
    with rasterio.Env(**mosaic.GDAL_READ_OPTIONS), rasterio.open(info.dataset) as src:
        return read_window(src, bands, row, col, height, width, info.masking)


def read_rates(infos: list[RasterInfo], repeats: int) -> dict:
    """Median read times of one chunk window, directly and through the mosaic."""
    base = infos[0]
    bands = list(range(1, base.count + 1))
    side = CHUNK_TILES * TILE + 2 * HALO
    row = col = max(0, (base.height - side) // 2)
    own = OutputGrid(base.crs, base.transform[0], 4096)  # the scene's CRS, its pixels' side
    aligned = Affine(*base.transform[:6]) * Affine.translation(col, row)
    # The same centre on EPSG:3857 at the scene's resolution there, on the grid's pixels.
    web = OutputGrid(MAP_CRS, round(_own_resolution(base, MAP_CRS), 2), 4096)
    cx, cy = aligned * (side / 2, side / 2)
    (cx,), (cy,) = rasterio.warp.transform(base.crs, MAP_CRS, [cx], [cy])
    left = math.floor(cx / web.resolution - side / 2) * web.resolution
    top = math.ceil(cy / web.resolution + side / 2) * web.resolution
    web_window = Affine(web.resolution, 0.0, left, 0.0, -web.resolution, top)
    # An input that does not meet a window: the last scene, moved south-east, and a window at
    # the first scene's top-left corner.
    far, corner = infos[-1], Affine(*base.transform[:6])
    far_meets = footprint(far, own).intersects(footprint(_window_raster(base, corner, side), own))

    def direct(height: int, width: int):
        return _direct(base, bands, row, col, height, width)

    def warped(grid: OutputGrid, transform: Affine, inputs, resampling: str):
        def read(height: int, width: int):
            return read_mosaic(grid, transform, height, width, inputs, bands, resampling)

        return read

    full = direct(side, side)  # also puts the file in the page cache
    same = {}
    for resampling in ("nearest", "bilinear"):
        pixels = warped(own, aligned, [base], resampling)(side, side)
        same[resampling] = all(np.array_equal(a, b) for a, b in zip(full, pixels, strict=True))
    own_bilinear = warped(own, aligned, [base], "bilinear")
    web_bilinear = warped(web, web_window, [base], "bilinear")
    missing = warped(own, corner, [far], "bilinear")
    ways = [  # name, read, whether its pixels equal the direct read's
        ("read_window (direct)", direct, None),
        ("mosaic, own grid, nearest", warped(own, aligned, [base], "nearest"), "nearest"),
        ("mosaic, own grid, bilinear", own_bilinear, "bilinear"),
        ("mosaic, EPSG:3857, bilinear", web_bilinear, None),
        ("mosaic, an input missing the window", missing, None),
    ]
    found = {}
    with rasterio.Env(GDAL_NUM_THREADS=1):
        for name, read, same_as in ways:
            seconds = _median_seconds(read, side, repeats)
            tiny = _median_seconds(read, TINY, repeats)
            found[name] = {
                "median_s": round(seconds, 4),
                "mpx_per_s": round(side * side / seconds / 1e6, 2),
                f"median_s_{TINY}x{TINY}": round(tiny, 4),
            }
            if same_as:
                found[name]["same_pixels_as_direct"] = same[same_as]
            print(f"  {name}: {found[name]}", flush=True)
    direct_s = found["read_window (direct)"]["median_s"]
    for entry in found.values():
        entry["time_vs_direct"] = round(entry["median_s"] / direct_s, 2)
    return {
        "window": [side, side],
        "bands": len(bands),
        "own_grid": {"crs": "the scene's (EPSG:31985)", "resolution": own.resolution},
        "web_grid": {"crs": MAP_CRS, "resolution": web.resolution},
        "gdal_read_options": GDAL_READ_OPTIONS,
        "missing_input_meets_its_window": bool(far_meets),
        "ways": found,
    }


# 2. Pixels warped per useful pixel -----------------------------------------------------------


def _chunk_bounds(transform: Affine, chunk: Chunk) -> tuple[float, ...]:
    read = chunk.read
    x0, y0 = transform * (read.col_off, read.row_off)
    x1, y1 = transform * (read.col_off + read.width, read.row_off + read.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _warped_until_valid(inputs: tuple[int, ...], outlines, box: shapely.Polygon) -> int:
    """How many of `inputs` read_mosaic warps before every pixel of `box` is valid (estimated
    from the data outlines: every pixel inside one is taken as valid)."""
    covered = shapely.Polygon()
    for count, index in enumerate(inputs, 1):
        covered = covered.union(outlines[index])
        if covered.covers(box):
            return count
    return len(inputs)


def read_factors(infos: list[RasterInfo], grid_tile: int, halo: int) -> dict:
    """The plan's pixels warped per valid output pixel, for a map of `infos`."""
    grid = map_grid(infos, grid_tile)
    plan = plan_grid(grid, infos)
    outlines = data_outlines(infos, grid)
    tiling = Tiling(TILE, halo, chunk_tiles=CHUNK_TILES)
    core = read = warped = early = per_chunk = 0
    for tile in plan.tiles:
        raster_plan = RasterPlan(tile.height, tile.width, tiling, tile_margins(plan, tile))
        inputs = plan.inputs_meeting(read_bounds(tile, raster_plan))  # MosaicSource.inputs
        for row in raster_plan.chunks().to_pylist():
            chunk = Chunk.of_row(row)
            pixels = chunk.read.height * chunk.read.width
            bounds = _chunk_bounds(tile.transform, chunk)
            box = shapely.box(*bounds)
            meeting = plan.inputs_meeting(bounds)
            core += chunk.core.height * chunk.core.width
            read += pixels
            warped += pixels * len(inputs)
            early += pixels * _warped_until_valid(inputs, outlines, box)
            per_chunk += pixels * _warped_until_valid(meeting, outlines, box)
    pixel_area = grid.resolution**2
    valid = shapely.union_all(plan.footprints).area / pixel_area
    data = shapely.union_all(outlines).area / pixel_area
    return {
        "scenes": len(infos),
        "grid_tile": grid_tile,
        "tile_size": TILE,
        "halo": halo,
        "chunk_tiles": CHUNK_TILES,
        "grid": {"crs": grid.crs, "resolution": grid.resolution},
        "grid_tiles": len(plan.tiles),
        "chunks_read": sum(
            RasterPlan(t.height, t.width, tiling, tile_margins(plan, t)).chunk_count
            for t in plan.tiles
        ),
        "core_px": core,
        "read_px": read,
        "warped_px": warped,
        "valid_px": round(valid),
        "data_px": round(data),
        "halo_factor": round(read / core, 3),
        "overlap_factor": round(warped / read, 3),
        "empty_factor": round(core / valid, 3),
        "warped_per_valid": round(warped / valid, 3),
        "warped_per_data_px": round(warped / data, 3),
        "with_early_stop_per_valid": round(early / valid, 3),
        "with_early_stop_and_chunk_inputs_per_valid": round(per_chunk / valid, 3),
    }


# 3. Peak memory of one task's read -----------------------------------------------------------

MEMORY_CASES = (
    "mosaic of 4 scenes",
    "mosaic of 1 scene",
    "read_window, 1 scene",
)


def memory_chunk(infos: list[RasterInfo]) -> tuple[MosaicSource, Chunk]:
    """The chunk (grid tile 4096, tile 512, halo 32) whose read window's centre is nearest the
    first scene's south-east corner, where the four scenes meet, and its grid tile's mosaic."""
    grid = map_grid(infos, 4096)
    plan = plan_grid(grid, infos)
    corner = Affine(*infos[0].transform[:6]) * (infos[0].width, infos[0].height)
    (x,), (y,) = rasterio.warp.transform(infos[0].crs, grid.crs, [corner[0]], [corner[1]])
    tiling = Tiling(TILE, HALO, chunk_tiles=CHUNK_TILES)
    found = []
    for tile in plan.tiles:
        raster_plan = RasterPlan(tile.height, tile.width, tiling, tile_margins(plan, tile))
        for row in raster_plan.chunks().to_pylist():
            chunk = Chunk.of_row(row)
            left, bottom, right, top = _chunk_bounds(tile.transform, chunk)
            distance = math.hypot((left + right) / 2 - x, (bottom + top) / 2 - y)
            found.append((distance, tile, raster_plan, chunk))
    _, tile, raster_plan, chunk = min(found, key=lambda place: place[0])
    inputs = tuple(infos[i] for i in plan.inputs_meeting(read_bounds(tile, raster_plan)))
    return MosaicSource(grid, tuple(tile.transform)[:6], inputs, "bilinear"), chunk


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def measure_memory(case: str, infos: list[RasterInfo]) -> dict:
    """In this process: one read of the case's window; its peak memory."""
    source, chunk = memory_chunk(infos)
    read = chunk.read
    bands = list(range(1, infos[0].count + 1))
    warps = []
    warp = mosaic._warped

    def counted(info, *args, **kwargs):  # read_mosaic looks it up at each call
        warps.append(info.path)
        return warp(info, *args, **kwargs)

    mosaic._warped = counted
    if case == "read_window, 1 scene":
        base = infos[0]
        row = col = max(0, (base.height - read.height) // 2)

        def do(height: int, width: int):
            return _direct(base, bands, row, col, height, width)
    else:
        if case == "mosaic of 1 scene":
            source = replace(source, inputs=source.inputs[:1])

        def do(height: int, width: int):
            return source.read(bands, read.row_off, read.col_off, height, width)

    with rasterio.Env(GDAL_NUM_THREADS=1):
        do(TINY, TINY)  # unmeasured: GDAL's drivers and PROJ's database loaded
        gc.collect()
        warps.clear()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # VmHWM := VmRSS
        before = _status_kib("VmRSS:")
        tracemalloc.start()
        started = time.perf_counter()
        data, valid = do(read.height, read.width)
        seconds = time.perf_counter() - started
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = _status_kib("VmHWM:")
    return {
        "window": [read.height, read.width],
        "inputs_warped": len(warps),
        "seconds": round(seconds, 3),
        "result_mib": round((data.nbytes + valid.nbytes) / 2**20, 1),
        "peak_rss_increase_mib": round((peak - before) / 1024, 1),
        "numpy_peak_mib": round(traced / 2**20, 1),
        "valid_share": round(float(valid.mean()), 3),
    }


def _shares(infos: list[RasterInfo], source: MosaicSource, chunk: Chunk) -> list[float]:
    """The share of the chunk's read window that each input fills, in mosaic order (from the
    data outlines)."""
    box = shapely.box(*_chunk_bounds(Affine(*source.transform), chunk))
    outlines = data_outlines(infos, source.grid)
    covered, shares = shapely.Polygon(), []
    for info in source.inputs:
        more = covered.union(outlines[infos.index(info)].intersection(box))
        shares.append(round((more.area - covered.area) / box.area, 3))
        covered = more
    return shares


def memory(infos: list[RasterInfo], work: Path, size: int) -> dict:
    source, chunk = memory_chunk(infos)
    found: dict = {"chunk_read": vars(chunk.read), "shares": _shares(infos, source, chunk)}
    for case in MEMORY_CASES:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.grids", "--work", str(work), "--size", str(size)]
            + ["--memory", case],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        found[case] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {case}: {found[case]}", flush=True)
    return found


# ----------------------------------------------------------------------------------------------


def _table(rates: dict, factors: list[dict], peaks: dict) -> str:
    lines = [
        f"1. Read rate, one thread, {rates['window'][0]} x {rates['window'][1]} px x "
        f"{rates['bands']} bands (median of reads)",
        f"| read | time | Mpx/s | time vs direct | {TINY} x {TINY} read | same pixels |",
        "|---|---|---|---|---|---|",
    ]
    for name, way in rates["ways"].items():
        lines.append(
            f"| {name} | {way['median_s'] * 1000:.0f} ms | {way['mpx_per_s']} | "
            f"{way['time_vs_direct']} | {way[f'median_s_{TINY}x{TINY}'] * 1000:.1f} ms | "
            f"{way.get('same_pixels_as_direct', '')} |"
        )
    lines += [
        "",
        "2. Pixels warped per valid output pixel (plan only; EPSG:3857, tile 512, 4 x 4 tiles)",
        "| scenes | grid tile | halo | tiles | halo x | overlap x | empty x | per valid px | "
        "per data px | early stop | + chunk inputs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in factors:
        lines.append(
            f"| {f['scenes']} | {f['grid_tile']} | {f['halo']} | {f['grid_tiles']} | "
            f"{f['halo_factor']} | {f['overlap_factor']} | {f['empty_factor']} | "
            f"{f['warped_per_valid']} | {f['warped_per_data_px']} | "
            f"{f['with_early_stop_per_valid']} | "
            f"{f['with_early_stop_and_chunk_inputs_per_valid']} |"
        )
    lines += [
        "",
        "3. Peak memory of one chunk's read (fresh process each); the 4 scenes fill "
        f"{', '.join(str(share) for share in peaks['shares'])} of its window",
        "| read | window | inputs warped | seconds | result | peak RSS increase | numpy peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in MEMORY_CASES:
        p = peaks[case]
        lines.append(
            f"| {case} | {p['window'][0]} x {p['window'][1]} | {p['inputs_warped']} | "
            f"{p['seconds']} | {p['result_mib']} MiB | {p['peak_rss_increase_mib']} MiB | "
            f"{p['numpy_peak_mib']} MiB |"
        )
    return "\n".join(lines)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def _code() -> str:
    """This checkout's commit, with `-dirty` where sparkinfer/ has changes not committed."""
    try:
        dirty = _git("status", "--porcelain", "--", "sparkinfer")
        return _git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="the scenes' side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="reads per figure (median)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "grids")
    parser.add_argument(
        "--code", default=_code(), help="the version of sparkinfer measured (default: git's)"
    )
    parser.add_argument("--memory", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    paths = make_scenes(args.work, args.size)
    infos = [read_info(str(path)) for path in paths]
    if args.memory:
        print(json.dumps(measure_memory(args.memory, infos)))
        return
    started = time.perf_counter()
    print("1. read rates", flush=True)
    rates = read_rates(infos, args.repeats)
    print("2. pixels warped per valid pixel", flush=True)
    factors = [
        read_factors(infos[:scenes], grid_tile, halo)
        for scenes in (2, 4)
        for grid_tile in GRID_TILES
        for halo in (HALO, MODEL_HALO)
    ]
    print("3. peak memory", flush=True)
    peaks = memory(infos, args.work, args.size)
    del args.memory
    result = envelope(
        args,
        tile_size=TILE,
        halo=HALO,
        model_halo=MODEL_HALO,
        chunk_tiles=CHUNK_TILES,
        scenes=[
            {"file": path.name, "crs": crs or "EPSG:31985", "moved_east": e, "moved_south": s}
            for path, (_, crs, e, s) in zip(paths, SCENES, strict=True)
        ],
    ) | {
        "seconds": round(time.perf_counter() - started, 1),
        "read_rates": rates,
        "read_factors": factors,
        "memory": peaks,
    }
    print(_table(rates, factors, peaks))
    write_result(result, "grids")


if __name__ == "__main__":
    main()
