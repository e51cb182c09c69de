"""The cost of the job's options: the same job with each option, side by side in one session.

    .venv/bin/python -m benchmarks.options [--repeats 2] [--size 1024]

Two cases: the sample (data/'s NC scene and land-cover model, tile 128), where the job's fixed
costs weigh, and the benchmark U-Net on a SIZE x SIZE mirror of it, where the model's do. Every
option runs `--repeats` times in a rotating order on one warm local[2] session, each run from
scratch (--overwrite). Reported: the median wall time of the run and of its inference stage, and
their ratio to the same case without options. Writes benchmarks/results/DATE-HOST-options.json
and prints the table of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.paths import SCALE
from benchmarks.run import envelope, write_result

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {  # name: the job's options on top of the case's (a function of them)
    "none": lambda case: {},
    "--tta flips": lambda case: {"tta": "flips"},
    "--tta d4": lambda case: {"tta": "d4"},
    # The model twice: the cost of a second model, without a second model to build.
    "--model M M": lambda case: {"model": [case["model"], case["model"]]},
}


def cases(work: Path, size: int) -> dict[str, dict]:
    return {
        "sample": dict(
            input=[str(ROOT / "data" / "nc_landsat7_2000.tif")],
            model=str(ROOT / "data" / "landcover.keras"),
            tile_size=128,
        ),
        "unet": dict(
            input=[str(make_large_raster(work / f"mirror-{size}.tif", size))],
            model=str(save_model("unet", work / "models")),
            tile_size=512,
            normalization={"scale": SCALE},
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()

    from pyspark.sql import SparkSession

    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job, run_job

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    runs: dict = {}
    for case, base in cases(args.work, args.size).items():
        names = list(OPTIONS)
        for repeat in range(args.repeats + 1):  # the first round warms the workers: not kept
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                options = (
                    base
                    | OPTIONS[name](base)
                    | {"output": str(args.work / "options" / case), "overwrite": True}
                )
                config = load_config(options, ROOT / "conf" / "default.yaml")
                started = time.perf_counter()
                report = run_job(spark, prepare_job(config, spark)).report
                wall = time.perf_counter() - started
                if repeat:
                    found = runs.setdefault(case, {}).setdefault(
                        name, {"wall_s": [], "stage_s": []}
                    )
                    found["wall_s"].append(round(wall, 2))
                    found["stage_s"].append(round(report["timings"]["infer_write_s"], 2))
                print(f"  {case} {name}: {wall:.1f} s", flush=True)
    spark.stop()
    medians = {
        case: {
            name: {k: statistics.median(v) for k, v in found.items()}
            for name, found in by_option.items()
        }
        for case, by_option in runs.items()
    }
    write_result(envelope(args) | {"runs": runs, "medians": medians}, "options")
    print(
        "| option | "
        + " | ".join(f"{c}: run | {c}: stage | {c}: stage ratio" for c in medians)
        + " |"
    )
    print("|---|" + "---|---|---|" * len(medians))
    for name in OPTIONS:
        cells = []
        for by_option in medians.values():
            m, base = by_option[name], by_option["none"]
            cells += [
                f"{m['wall_s']:.1f} s",
                f"{m['stage_s']:.1f} s",
                f"{m['stage_s'] / base['stage_s']:.2f}x",
            ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
