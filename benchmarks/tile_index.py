"""The tile index's memory: peak memory of writing NAME.tiles.parquet for plans of 238,144 and
3,818,116 tiles (the load benchmark's largest plan has 3,818,116 tiles).

    .venv/bin/python -m benchmarks.tile_index

The plans are of rasters cut into 1-pixel tiles, so that millions of tiles fit in a few hundred
small chunk files: each chunk of 64 x 64 tiles is written by the job's `ChunkWriter` with the
class counts the inference stage stores (`catalog.tile_counts`). Each index is then written in
a fresh process (peak memory is per process), from the chunks streamed out of the plan. Writes
benchmarks/results/DATE-HOST-tile-index.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.run import envelope, write_result
from sparkinfer.catalog import TILE_COUNTS_TAG, tile_counts, write_tile_index
from sparkinfer.cuts import Tiling
from sparkinfer.plan import PixelWindow, RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import ChunkSpec, ChunkWriter

ROOT = Path(__file__).resolve().parent.parent
SIDES = (488, 1954)  # 1-pixel tiles: 238,144 and 3,818,116 of them
CHUNK_TILES = 64
CLASSES = 8


def _raster(side: int) -> RasterInfo:
    return RasterInfo(
        path=f"synthetic-{side}.tif",
        width=side,
        height=side,
        count=4,
        dtype="uint8",
        crs="EPSG:32617",
        nodata=None,
        masking="none",
        size=0,
        transform=(10.0, 0, 500_000, 0, -10.0, 4_000_000),
        mtime_ns=0,
    )


def _plan(side: int) -> RasterPlan:
    return RasterPlan(side, side, Tiling(tile_size=1, halo=0, chunk_tiles=CHUNK_TILES))


def _chunks(plan: RasterPlan, folder: Path):
    """The plan's chunks, a batch of rows at a time (no list of them all)."""
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    for batch in plan.chunks().select(fields).to_batches(max_chunksize=1024):
        for row in batch.to_pylist():
            yield ChunkSpec(folder=str(folder), **row)


def write_chunks(side: int, folder: Path) -> None:
    """Every chunk's class map (random classes) and tile counts, as the inference stage does."""
    folder.mkdir(parents=True, exist_ok=True)
    raster, plan = _raster(side), _plan(side)
    rng = np.random.default_rng(side)
    for spec in _chunks(plan, folder):
        writer = ChunkWriter(spec, raster, CLASSES, write_scores=False)
        classes = rng.integers(0, CLASSES, (spec.height, spec.width), np.uint8)
        writer.write(spec.row_off, spec.col_off, classes, None)
        tiles = plan.tiles_of_chunk(spec.chunk_row, spec.chunk_col)
        core = PixelWindow(spec.row_off, spec.col_off, spec.height, spec.width)
        writer.commit({TILE_COUNTS_TAG: tile_counts(writer.class_map, core, tiles, CLASSES)})


def measure(side: int, folder: Path) -> dict:
    """In this process: write the index; its time, rows and this process's peak memory."""
    started = time.perf_counter()
    path = folder / "index.parquet"
    write_tile_index(_raster(side), _plan(side), _chunks(_plan(side), folder), str(path), CLASSES)
    import pyarrow.parquet as pq

    return {
        "side": side,
        "tiles": pq.ParquetFile(path).metadata.num_rows,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(int(sys.argv[2]), Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "tile-index")
    args = parser.parse_args()
    found = []
    for side in SIDES:
        folder = args.work / str(side)
        if not (folder / "done").exists():
            write_chunks(side, folder)
            (folder / "done").touch()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.tile_index", "--measure", str(side), str(folder)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        found.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {found[-1]}", flush=True)
    write_result(envelope(args) | {"runs": found}, "tile-index")
    print("| tiles | chunks | index written in | peak memory |\n|---|---|---|---|")
    for run in found:
        chunks = _plan(run["side"]).chunk_count
        print(f"| {run['tiles']:,} | {chunks:,} | {run['seconds']} s | {run['peak_mib']} MiB |")


if __name__ == "__main__":
    main()
