"""Does GDAL's decoding scale with threads in one process? 2048-pixel windows of a raster read
with 1 and N threads (a dataset handle each), with GDAL's own N decoding threads, and with N
processes, side by side in one run.

    python -m benchmarks.decode [--size 16384] [--workers 2]

Rates are megapixels of the raster decoded per second. Writes
benchmarks/results/DATE-HOST-decode.json. The job's `--readers` are threads because of it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import rasterio
from rasterio.windows import Window

from benchmarks.large_raster import make_large_raster
from benchmarks.run import envelope, write_result
from sparkinfer.raster import GDAL_CACHE_BYTES

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 2048
_local = threading.local()


def _read_with_thread_handle(task: tuple[str, Window]) -> None:
    path, window = task
    if getattr(_local, "path", None) != path:
        _local.src, _local.path = rasterio.open(path), path
    _local.src.read(window=window)


def _read_with_own_handle(task: tuple[str, Window]) -> None:
    path, window = task
    with rasterio.open(path) as src:
        src.read(window=window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    raster = make_large_raster(args.work / "rasters" / f"nc_{args.size}.tif", args.size)
    offsets = range(0, args.size, WINDOW)
    tasks = [(str(raster), Window(col, row, WINDOW, WINDOW)) for row in offsets for col in offsets]
    n = args.workers
    ways: dict[str, Callable[[], object]] = {
        "1 thread": lambda: [_read_with_thread_handle(t) for t in tasks],
        f"{n} threads": lambda: list(ThreadPoolExecutor(n).map(_read_with_thread_handle, tasks)),
        f"1 thread, GDAL_NUM_THREADS={n}": lambda: [_read_with_own_handle(t) for t in tasks],
        f"{n} processes": lambda: list(ProcessPoolExecutor(n).map(_read_with_own_handle, tasks)),
    }
    rates = {}
    for name, way in ways.items():
        threads = n if "GDAL_NUM_THREADS" in name else 1
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS=threads):
            started = time.perf_counter()
            way()
            seconds = time.perf_counter() - started
        rates[name] = {
            "seconds": round(seconds, 2),
            "mpx_per_s": round(args.size**2 / seconds / 1e6, 1),
        }
        print(f"  {name}: {rates[name]}", flush=True)
    result = envelope(args, window=WINDOW) | {"rates": rates}
    print(json.dumps(rates, indent=2))
    write_result(result, "decode")


if __name__ == "__main__":
    main()
