"""Feed rate: the job's inference-and-writing stage with a model that costs nothing, against an
I/O floor on the same cores, side by side in one run.

    python -m benchmarks.feed [--size 16384] [--repeats 3] [--cores 2]
                              [--tile-size 2048 --halo 288] [--chunk-tiles 1]

- `floor`: the job's chunk windows (the same plan) read with rasterio in `cores` processes, an
  argmax over the bands, each window written as a deflate GeoTIFF: no Spark, no model. What
  reading, a trivial computation and writing cost on these cores.
- `stage`: sparkinfer's inference stage (`timings.infer_write_s` of `run_job`, on `local[cores]`
  whose Python workers were started by a first job) with `null`, one 1x1 convolution.
- `pipeline`: what the executor itself costs, without Spark or a framework: its partition
  function (`executor.infer_partition`, what each task runs) over the same chunks in `cores`
  processes, 4 tasks per core as the stage cuts them, with the free runtime
  (`benchmarks.free_runtime`: the argmax over the bands, as the floor computes).

`--tile-size`, `--halo` and `--chunk-tiles` are the job's (default: the job's defaults, the null
model's halo of 0): the tiles and halo of a GPU run, in chunks of one tile or as `auto` sizes
them, show what the halo decoded again costs. Rates are useful megapixels per second and per
core; the results are `stage / floor` and `pipeline / floor`. Writes
benchmarks/results/DATE-HOST-feed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.paths import DEFAULTS, _spark, _warm_up
from benchmarks.run import envelope, write_result
from sparkinfer.plan import Chunk

ROOT = Path(__file__).resolve().parent.parent


def _floor_chunk(task: tuple) -> None:
    """Read one chunk's window, argmax over its bands, write its core as a deflate GeoTIFF."""
    raster, output, chunk = task
    read, kept = chunk.read, chunk.core
    with rasterio.open(raster) as src:
        data = src.read(window=Window(read.col_off, read.row_off, read.width, read.height))
        classes = data.argmax(axis=0).astype(np.uint8)
        core = classes[kept.slices(read)]
        core_window = Window(kept.col_off, kept.row_off, kept.width, kept.height)
        profile = {
            "driver": "GTiff",
            "width": core.shape[1],
            "height": core.shape[0],
            "count": 1,
            "dtype": "uint8",
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "crs": src.crs,
            "transform": src.window_transform(core_window),
        }
        name = f"chunk_{chunk.row}_{chunk.col}.tif"
        with rasterio.open(Path(output) / name, "w", **profile) as dst:
            dst.write(core, 1)


def floor(job, output: Path, cores: int) -> float:
    output.mkdir(parents=True, exist_ok=True)
    raster = job.rasters[0]
    tasks = [
        (raster.info.path, str(output), Chunk.of_row(row))
        for row in raster.plan.chunks().to_pylist()
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_floor_chunk, tasks))
    return time.perf_counter() - started


def _pipeline_task(task: tuple) -> None:
    """One task of the partition function, the free runtime loaded in its stead of the model."""
    import sparkinfer.executor.partition as partition
    from benchmarks.free_runtime import free_loader

    table, spec, package, bands = task
    partition.load_for_task = free_loader(bands)  # this worker process's own module
    for _ in partition.infer_partition(table.to_batches(), spec, package):
        pass


def task_slices(job, cores: int) -> tuple:
    """The stage's spec and its plan table cut as the stage cuts it, 4 tasks per core, for
    `job`'s chunks, its staging folders emptied."""
    from sparkinfer.job import chunks_to_do, prepare_staging
    from sparkinfer.plan import task_bounds
    from sparkinfer.stages.infer import plan_table, stage_spec

    for raster in job.rasters:
        prepare_staging(raster, overwrite=True)
    table = plan_table([chunks_to_do(r) for r in job.rasters])
    bounds = task_bounds(len(table), 4 * cores)
    slices = [
        table.slice(start, stop - start)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return stage_spec(job, job.rasters), slices


def pipeline(job, cores: int) -> float:
    """Seconds of the partition function over all of `job`'s chunks in `cores` processes."""
    from sparkinfer.job import prepare_staging

    spec, slices = task_slices(job, cores)
    tasks = [(part, spec, job.package, job.model.bands) for part in slices]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_pipeline_task, [tasks[0]] * cores))  # imports, one chunk each: untimed
        for raster in job.rasters:
            prepare_staging(raster, overwrite=True)
        started = time.perf_counter()
        list(pool.map(_pipeline_task, tasks))
        return time.perf_counter() - started


def _job(raster: Path, model: Path, output: Path, options: list[str]):
    from sparkinfer.flags import config_from_args
    from sparkinfer.job import prepare_job

    argv = [
        "--input",
        str(raster),
        "--model",
        str(model),
        "--output",
        str(output),
        "--progress",
        "0",
        "--overwrite",
    ]
    return prepare_job(config_from_args(argv + options, defaults_file=DEFAULTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--readers", help="the job's --readers (default: its own)")
    parser.add_argument("--tile-size", help="the job's --tile-size (default: its own)")
    parser.add_argument("--halo", help="the job's --halo (default: the model's, 0)")
    parser.add_argument("--chunk-tiles", help="the job's --chunk-tiles (default: auto)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this venv's Python too
    from sparkinfer.job import run_job

    raster = make_large_raster(args.work / "rasters" / f"nc_{args.size}.tif", args.size)
    model = save_model("null", args.work / "models")
    spark = _spark(args.cores)
    _warm_up(spark, args.cores)
    options = [
        part
        for flag, value in (
            ("--readers", args.readers),
            ("--tile-size", args.tile_size),
            ("--halo", args.halo),
            ("--chunk-tiles", args.chunk_tiles),
        )
        if value
        for part in (flag, value)
    ]
    seconds: dict[str, list[float]] = {"floor": [], "stage": [], "pipeline": []}
    report = {}
    try:
        for repeat in range(args.repeats):
            job = _job(raster, model, args.work / "runs" / "feed" / "job", options)
            seconds["floor"].append(
                floor(job, args.work / "runs" / "feed" / f"floor{repeat}", args.cores)
            )
            report = run_job(spark, job).report
            seconds["stage"].append(report["timings"]["infer_write_s"])
            seconds["pipeline"].append(pipeline(job, args.cores))
            print(
                f"  run {repeat + 1}: floor {seconds['floor'][-1]:.1f} s, "
                f"stage {seconds['stage'][-1]:.1f} s, pipeline {seconds['pipeline'][-1]:.1f} s",
                flush=True,
            )
    finally:
        spark.stop()
    pixels = args.size * args.size
    rates = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        rate = pixels / median / 1e6
        rates[name] = {
            "seconds": [round(v, 2) for v in values],
            "median_s": round(median, 2),
            "mpx_per_s": round(rate, 2),
            "mpx_per_s_per_core": round(rate / args.cores, 2),
        }
    result = envelope(args) | {
        "raster": {"side": args.size, "pixels": pixels},
        "tiling": report["tiling"],
        "task_timings_s": {k: round(v, 2) for k, v in report["timings"].items()},
        "rates": rates,
        "stage_over_floor": round(rates["stage"]["mpx_per_s"] / rates["floor"]["mpx_per_s"], 3),
        "pipeline_over_floor": round(
            rates["pipeline"]["mpx_per_s"] / rates["floor"]["mpx_per_s"], 3
        ),
        "decoded_per_useful_pixel": report["decoded_per_useful_pixel"],
    }
    shown = ("rates", "stage_over_floor", "pipeline_over_floor", "decoded_per_useful_pixel")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    write_result(result, "feed")


if __name__ == "__main__":
    main()
