"""`--estimate` against the run it predicts: on an 8192² raster, with the tiny model and with the
sample model, the estimate's wall time for the cluster it ran on against the run's own.

    python -m benchmarks.estimate [--size 8192] [--models tiny sample] [--repeats 1]

For each model, in fresh processes through `./spark-submit.sh` on `local[2]` (as a user runs
it): `--estimate` into an empty folder, then the same command without it, which records its
figures next to the estimate in `_run.json` (`estimate`: predicted, actual and their ratio, part
by part, each timed from the start of the command's `main`). The machine's load average is
recorded before each process: the machine is shared, and a busy neighbour slows one run and
not the other. Writes benchmarks/results/DATE-HOST-estimate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.paths import SCALE
from benchmarks.run import envelope, write_result

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_MODEL = ROOT / "data" / "landcover.keras"
TARGET = 0.25  # the prediction within ±25% of the run
SAMPLE_BANDS = (1, 2, 3, 4, 5, 6)  # the sample model takes the scene's six bands


def submit(args: list[str], output: Path) -> tuple[float, float, str]:
    """`./spark-submit.sh` with `args` on local[2]; the process's wall seconds, the load
    average before it, and its stdout."""
    load = os.getloadavg()[0]
    env = os.environ | {
        "SPARK_MASTER": "local[2]",
        "PYTHONPATH": str(ROOT),
        "SPARKINFER_VENV": str(Path(sys.executable).parent.parent),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / "spark-submit.sh"), *args, "--output", str(output), "--progress", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"spark-submit.sh failed:\n{done.stderr[-3000:]}")
    return seconds, load, done.stdout


def one_model(args: list[str], work: Path) -> dict:
    """An estimate, then the run, into a fresh folder; what each found."""
    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    estimate_s, estimate_load, printed = submit([*args, "--estimate"], output)
    estimate = json.loads((output / "_estimate.json").read_text(encoding="utf-8"))
    run_s, run_load, _ = submit(args, output)
    run = json.loads((output / "_run.json").read_text(encoding="utf-8"))
    section = run["estimate"]
    ratio = section["predicted_over_actual"]["wall_s"]
    return {
        "predicted_wall_s": section["predicted"]["wall_s"],
        "actual_wall_s": section["actual"]["wall_s"],
        "predicted_over_actual": ratio,
        "within_target": abs(ratio - 1) <= TARGET,
        "parts": section,
        "processes_s": {"estimate": round(estimate_s, 2), "run": round(run_s, 2)},
        "load_average_before": {"estimate": round(estimate_load, 2), "run": round(run_load, 2)},
        "estimate_printed": printed.splitlines(),
        "estimate": {
            key: estimate[key]
            for key in (
                "plan",
                "bytes",
                "sample",
                "measured",
                "rate",
                "predicted",
                "slot_hours",
                "core_hours_per_1000_km2",
                "area_km2",
            )
        },
        "run_timings_s": {k: round(v, 2) for k, v in run["timings"].items()},
        "run_tiles": run["tiles"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "sample"], choices=["tiny", "sample", "unet"]
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--note", default="", help="what else to record with the results")
    args = parser.parse_args()
    rasters = args.work / "rasters"
    found = {}
    for name in args.models:
        if name == "sample":
            raster = make_large_raster(
                rasters / f"nc6_{args.size}.tif", args.size, bands=SAMPLE_BANDS
            )
            model, options = SAMPLE_MODEL, []
        else:
            raster = make_large_raster(rasters / f"nc_{args.size}.tif", args.size)
            model, options = save_model(name, args.work / "models"), ["--scale", str(SCALE)]
        command = [
            "--input",
            str(raster),
            "--model",
            str(model),
            "--tile-size",
            str(args.tile),
            *options,
        ]
        found[name] = []
        for repeat in range(args.repeats):
            result = one_model(command, args.work / "runs" / "estimate" / name)
            found[name].append(result)
            print(
                f"  {name} run {repeat + 1}: predicted {result['predicted_wall_s']:.1f} s, "
                f"actual {result['actual_wall_s']:.1f} s, ratio "
                f"{result['predicted_over_actual']:.3f} (load {result['load_average_before']})",
                flush=True,
            )
    target = f"predicted / actual within 1 ± {TARGET}"
    result = envelope(args, master="local[2]") | {"target": target, "models": found}
    write_result(result, "estimate")


if __name__ == "__main__":
    main()
