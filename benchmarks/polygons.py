"""`--polygons`: the cost of polygonizing a chunk, and the time and peak memory of merging a
raster's chunks into NAME.polygons.parquet, on the sample's class map mirrored to 4096² and
16384² (4 and 64 chunks of 2048 pixels).

    .venv/bin/python -m benchmarks.polygons [--classes out/sample/nc_landsat7_2000.tif]

`--classes` is a class map the job wrote (`make run` writes the default one). Each chunk's
polygons are made as the inference stage makes them (`polygons.chunk_polygons`, timed), and each
raster's are merged in a fresh process (peak memory is per process) by `polygons.write_polygons`,
as the assembly stage does. Writes benchmarks/results/DATE-HOST-polygons.json.
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
import pyarrow.parquet as pq
import rasterio

from benchmarks.run import envelope, write_result
from sparkinfer.cuts import Tiling
from sparkinfer.plan import PixelWindow, RasterPlan
from sparkinfer.polygon_merge import write_polygons
from sparkinfer.polygons import chunk_polygons, write_chunk_polygons
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import ChunkSpec

ROOT = Path(__file__).resolve().parent.parent
SIDES = (4096, 16384)
CHUNK = 2048


def _raster(side: int, crs: str) -> RasterInfo:
    return RasterInfo(
        path=f"mirrored-{side}.tif",
        width=side,
        height=side,
        count=1,
        dtype="uint8",
        crs=crs,
        nodata=None,
        masking="none",
        size=0,
        transform=(28.5, 0, 600_000, 0, -28.5, 230_000),
        mtime_ns=0,
    )


def _chunks(side: int, folder: Path) -> list[ChunkSpec]:
    """The chunks of 2048 pixels of a raster of `side` pixels, row-major, as the plan lists them."""
    plan = RasterPlan(side, side, Tiling(tile_size=CHUNK, halo=0, chunk_tiles=1))
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    rows = plan.chunks().select(fields).to_pylist()
    return [ChunkSpec(folder=str(folder), **row) for row in rows]


def write_chunks(classes: np.ndarray, side: int, folder: Path, crs: str) -> list[float]:
    """Each chunk's polygons, of the class map mirrored to `side`; seconds per chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = classes.shape
    reps = (side // height + 2, side // width + 2)
    mirrored = np.pad(classes, ((0, height * reps[0]), (0, width * reps[1])), mode="symmetric")
    seconds = []
    for spec in _chunks(side, folder):
        core = PixelWindow(spec.row_off, spec.col_off, spec.height, spec.width)
        class_map = np.ascontiguousarray(mirrored[core.slices(PixelWindow(0, 0, side, side))])
        started = time.perf_counter()
        polygons = chunk_polygons(class_map, core, side, side)
        write_chunk_polygons(Path(spec.polygons_path), polygons, _raster(side, crs).transform)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(side: int, folder: Path, crs: str) -> dict:
    """In this process: merge the chunks' polygons; time, regions and peak memory."""
    started = time.perf_counter()
    path = folder / "polygons.parquet"
    names = tuple(f"class {i}" for i in range(255))
    write_polygons(_raster(side, crs), _chunks(side, folder), str(path), names, 0.0)
    return {
        "side": side,
        "regions": pq.ParquetFile(path).metadata.num_rows,
        "merge_s": round(time.perf_counter() - started, 1),
        "merge_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _in_fresh_process(*args) -> dict:
    """A step run in a fresh process: its peak memory is its own (a child forked from this
    process would report this process's peak as its own)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.polygons", *map(str, args)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--write"]:
        side, folder, classes_path = int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
        with rasterio.open(classes_path) as src:
            classes, crs = src.read(1), src.crs.to_string()
        seconds = write_chunks(classes, side, folder, crs)
        print(
            json.dumps(
                {
                    "chunks": len(seconds),
                    "crs": crs,
                    "chunk_polygons_s_median": round(float(np.median(seconds)), 2),
                }
            )
        )
        return
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=ROOT / "out" / "sample" / "nc_landsat7_2000.tif")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "polygons")
    args = parser.parse_args()
    found = []
    for side in SIDES:
        folder = args.work / str(side)
        written = _in_fresh_process("--write", side, folder, args.classes)
        found.append(_in_fresh_process("--measure", side, folder, written.pop("crs")) | written)
        print(f"  {found[-1]}", flush=True)
    write_result(envelope(args) | {"runs": found}, "polygons")
    print("| raster | chunks | a chunk's polygons (median) | regions | merged in | peak memory |")
    print("|---|---|---|---|---|---|")
    for run in found:
        print(
            f"| {run['side']}² | {run['chunks']} | {run['chunk_polygons_s_median']} s | "
            f"{run['regions']:,} | {run['merge_s']} s | {run['merge_peak_mib']} MiB |"
        )


if __name__ == "__main__":
    main()
