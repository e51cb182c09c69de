"""The parts of `--confidence` and `--uncertain` on a real map, apart from the job.

    .venv/bin/python -m benchmarks.confidence_parts [--repeats 5]

Reads the confidence and class COGs that `python -m benchmarks.options --cases sample-mirror
--options none,--confidence --size 8192` leaves in out/bench (run it first). Measures, medians
of `--repeats`:
- the confidence COG written again from its pixels with deflate at GDAL's default level (6)
  and at level 1 (`cogs.BandLayout.fastest`): seconds and bytes;
- `uncertain.chunk_candidates` on each 2048 x 2048 block of the map, at the default chip side
  (256) and K 256: milliseconds per block.

Writes benchmarks/results/DATE-HOST-confidence-parts.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil
import rasterio.windows

from benchmarks.run import envelope, write_result
from sparkinfer.plan import PixelWindow
from sparkinfer.uncertain import chunk_candidates

MAP = Path("out/bench/options/sample-mirror/sample-8192")
CHUNK, SIDE, K = 2048, 256, 256


def cog_levels(confidence: Path, repeats: int) -> dict:
    """Seconds (median) and bytes of the confidence COG at deflate's levels 6 and 1."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for level in (6, 1):
            target = Path(folder) / f"level-{level}.tif"
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                rasterio.shutil.copy(
                    str(confidence),
                    str(target),
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES",
                    LEVEL=level,
                    OVERVIEWS="AUTO",
                    RESAMPLING="AVERAGE",
                    NUM_THREADS="ALL_CPUS",
                )
                seconds.append(time.perf_counter() - started)
            results[f"level_{level}"] = {
                "seconds": round(statistics.median(seconds), 3),
                "bytes": target.stat().st_size,
            }
    return results


def candidates_ms(confidence: Path, classes: Path, repeats: int) -> float:
    """Milliseconds (median over blocks and repeats) of one block's candidates."""
    times = []
    with rasterio.open(confidence) as conf, rasterio.open(classes) as cls:
        grid, count = (conf.height, conf.width), len(json.loads(cls.tags()["CLASS_NAMES"]))
        for row in range(0, conf.height, CHUNK):
            for col in range(0, conf.width, CHUNK):
                window = rasterio.windows.Window(col, row, CHUNK, CHUNK)
                values, labels = conf.read(1, window=window), cls.read(1, window=window)
                core = PixelWindow(row, col, *values.shape)
                for _ in range(repeats):
                    started = time.perf_counter()
                    chunk_candidates(values, labels, core, grid, SIDE, K, count)
                    times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=MAP.parent)
    args = parser.parse_args()
    confidence, classes = MAP.with_suffix(".confidence.tif"), MAP.with_suffix(".tif")
    if not confidence.exists():
        raise SystemExit(f"{confidence}: missing; run benchmarks.options --cases sample-mirror")
    result = envelope(args, chunk=CHUNK, side=SIDE, k=K)
    result["cog"] = cog_levels(confidence, args.repeats)
    result["candidates_ms_per_chunk"] = candidates_ms(confidence, classes, args.repeats)
    print(result["cog"], f"candidates: {result['candidates_ms_per_chunk']} ms per chunk")
    write_result(result, "confidence-parts")


if __name__ == "__main__":
    main()
