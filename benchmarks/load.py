"""Load: the driver's time and memory for plans of over 100,000 tiles, and one run over 200
small rasters.

    .venv/bin/python -m benchmarks.load [--rasters 200] [--cores 2]

Each measurement runs in a fresh process (peak memory is per process). The plans are of sparse
GeoTIFFs that declare huge sizes and hold no pixels: planning reads metadata only. The 200
rasters are windows of the real sample scene (data/nc_landsat7_2000.tif), each with its own
georeference, run with the sample model. Results go to benchmarks/results/DATE-HOST-load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.paths import DEFAULTS, ROOT, _spark, peak_memory
from benchmarks.run import write_result

SAMPLE = ROOT / "data" / "nc_landsat7_2000.tif"
SAMPLE_MODEL = ROOT / "data" / "landcover.keras"
PLAN_SIDES = (262_144, 1_000_000)  # at tile 512: 262,144 and 3,818,116 tiles


def _config(inputs: list[str], output: Path, **options):
    from sparkinfer.config_sources import load_config

    return load_config(
        dict(input=inputs, model=str(SAMPLE_MODEL), output=str(output), **options),
        defaults_file=DEFAULTS,
    )


def _jvm_heap_used_mb(spark) -> float:
    runtime = spark._jvm.java.lang.Runtime.getRuntime()
    return round((runtime.totalMemory() - runtime.freeMemory()) / 2**20, 1)


def measure_plan(side: int, work: Path, cores: int) -> dict:
    """Plan one sparse raster of side x side pixels and put its chunks through Spark."""
    import pyarrow as pa

    from sparkinfer.job import chunks_to_do, prepare_job, prepare_staging
    from sparkinfer.session import map_in_partitions
    from sparkinfer.stages.infer import plan_table

    (work / "in").mkdir(parents=True, exist_ok=True)
    raster = work / "in" / f"sparse-{side}.tif"
    with rasterio.open(
        raster,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=6,
        dtype="uint8",
        crs="EPSG:32617",
        nodata=0,
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        sparse_ok=True,
        bigtiff="yes",
        transform=from_origin(600_000, 4_000_000, 10, 10),
    ):
        pass
    started = time.perf_counter()
    job = prepare_job(_config([str(raster)], work / "out"))  # imports TF, checks the model
    prepare_s = time.perf_counter() - started
    (only,) = job.rasters
    prepare_staging(only, overwrite=False)
    tracemalloc.start()
    started = time.perf_counter()
    table = plan_table([chunks_to_do(only)])
    plan_s = time.perf_counter() - started
    _, plan_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    spark = _spark(cores)
    try:

        def count(batches):
            yield pa.RecordBatch.from_pylist([{"chunks": sum(b.num_rows for b in batches)}])

        started = time.perf_counter()
        schema = pa.schema([("chunks", pa.int64())])
        rows = map_in_partitions(spark, table, 4 * cores, count, schema)
        spark_s = time.perf_counter() - started
        assert sum(r.chunks for r in rows) == len(table)
        jvm_heap = _jvm_heap_used_mb(spark)
        memory = peak_memory()  # while the Python workers are alive
    finally:
        spark.stop()
    return {
        "raster_side_px": side,
        "tiles": only.plan.tile_count,
        "chunks": len(table),
        "plan_table_mb": round(table.nbytes / 2**20, 1),
        "prepare_job_s": round(prepare_s, 2),
        "plan_s": round(plan_s, 2),
        "plan_python_allocations_peak_mb": round(plan_peak / 2**20, 1),
        "plan_through_spark_s": round(spark_s, 2),
        "driver_jvm_heap_used_mb": jvm_heap,
        "memory": memory,
    }


def measure_many(count: int, work: Path, cores: int) -> dict:
    """One run over `count` windows of the sample scene, each a raster of its own."""
    from sparkinfer.job import prepare_job, run_job

    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    side = 128
    with rasterio.open(SAMPLE) as src:
        profile = src.profile
        for i in range(count):
            row, col = (i * 37) % (src.height - side), (i * 53) % (src.width - side)
            window = Window(col, row, side, side)
            profile.update(width=side, height=side, transform=src.window_transform(window))
            with rasterio.open(folder / f"nc-{i:03d}.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
    spark = _spark(cores)
    try:
        started = time.perf_counter()
        job = prepare_job(_config([str(folder)], work / "out", tile_size=128))
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        report = run_job(spark, job).report
        run_s = time.perf_counter() - started
        jvm_heap = _jvm_heap_used_mb(spark)
        memory = peak_memory()
    finally:
        spark.stop()
    written = sum(r["status"] == "written" for r in report["rasters"])
    assert written == count and not report["failed"], report["failed"]
    return {
        "rasters": count,
        "raster_px": f"{side}x{side}",
        "written": written,
        "prepare_job_s": round(prepare_s, 2),
        "run_s": round(run_s, 2),
        "per_raster_ms": round(1000 * (prepare_s + run_s) / count, 1),
        "stage_timings_s": {k: round(v, 2) for k, v in report["timings"].items()},
        "driver_jvm_heap_used_mb": jvm_heap,
        "memory": memory,
    }


def _in_fresh_process(part: str, value: int, work: Path, cores: int) -> dict:
    result = work / f"{part}-{value}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.load",
        "--part",
        part,
        "--value",
        str(value),
        "--work",
        str(work),
        "--cores",
        str(cores),
        "--result",
        str(result),
    ]
    env = os.environ | {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONWARNINGS": "ignore",
        "PYSPARK_PYTHON": sys.executable,
    }
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"load benchmark {part} {value} failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rasters", type=int, default=200)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-load")
    parser.add_argument("--part", choices=("plan", "many"), help=argparse.SUPPRESS)
    parser.add_argument("--value", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # one measurement, in this fresh process
        work = args.work / f"{args.part}-{args.value}"
        measure = measure_plan if args.part == "plan" else measure_many
        args.result.write_text(json.dumps(measure(args.value, work, args.cores), indent=2))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    results = {
        "host": socket.gethostname(),
        "date": datetime.now(UTC).date().isoformat(),
        "cores": args.cores,
        "plans": [_in_fresh_process("plan", side, args.work, args.cores) for side in PLAN_SIDES],
        "many_rasters": _in_fresh_process("many", args.rasters, args.work, args.cores),
    }
    print(json.dumps(results, indent=2))
    write_result(results, "load")


if __name__ == "__main__":
    main()
