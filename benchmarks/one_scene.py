"""One scene, whole process: `./spark-submit.sh` against the plain single-process script, side by
side in one run, the way a user with one scene would run either.

    python -m benchmarks.one_scene [--sizes 8192 16384] [--repeats 3] [--model tiny]

Each run is a fresh process, timed from start to exit, in alternating order: the job through
spark-submit.sh on `local[*]` (JVM, session, planning, Python workers, inference, COG), and
benchmarks/paths.py's plain_script (interpreter, TensorFlow, a sliding window writing a tiled
GeoTIFF). The result is `plain / job`: above 1, the job is faster. Writes
benchmarks/results/DATE-HOST-one-scene.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.paths import SCALE
from benchmarks.run import envelope, run_path, write_result

ROOT = Path(__file__).resolve().parent.parent
TILE = 512


def run_job(raster: Path, model: Path, output: Path) -> tuple[float, dict]:
    """spark-submit.sh as a user types it; wall seconds and the run report."""
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(ROOT / "spark-submit.sh"),
        "--input",
        str(raster),
        "--model",
        str(model),
        "--output",
        str(output),
        "--tile-size",
        str(TILE),
        "--scale",
        str(SCALE),
        "--progress",
        "0",
    ]
    env = os.environ | {"SPARKINFER_VENV": str(Path(sys.executable).parent.parent)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"spark-submit.sh failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((output / "_run.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="tiny", choices=["null", "tiny", "unet"])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    model = save_model(args.model, args.work / "models")
    cores = os.cpu_count()
    found = {}
    for size in args.sizes:
        raster = make_large_raster(args.work / "rasters" / f"nc_{size}.tif", size)
        work = args.work / "runs" / "one_scene" / str(size)
        seconds: dict[str, list[float]] = {"job": [], "plain": []}
        report = {}
        for repeat in range(args.repeats):
            for path in ("job", "plain") if repeat % 2 == 0 else ("plain", "job"):
                if path == "job":
                    spent, report = run_job(raster, model, work / "job")
                else:
                    spent = run_path(
                        "plain_script", raster, model, TILE, None, work / "plain", cores
                    )["process_s"]
                seconds[path].append(spent)
                print(f"  {size} {path} run {repeat + 1}: {spent:.1f} s", flush=True)
        medians = {p: statistics.median(v) for p, v in seconds.items()}
        found[size] = {
            "seconds": {p: [round(s, 2) for s in v] for p, v in seconds.items()},
            "median_s": {p: round(m, 2) for p, m in medians.items()},
            "plain_over_job": round(medians["plain"] / medians["job"], 3),
            "job_timings_s": {k: round(v, 2) for k, v in report["timings"].items()},
        }
    result = envelope(args, tile=TILE) | {"sizes": found}
    print(json.dumps(found, indent=2))
    write_result(result, "one-scene")


if __name__ == "__main__":
    main()
