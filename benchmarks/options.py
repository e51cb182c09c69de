"""The cost of the job's options: the same job with each option, side by side in one session.

    .venv/bin/python -m benchmarks.options [--repeats 2] [--size 1024]
                                           [--cases sample,unet] [--options none,--tta flips]

Three cases: the sample (data/'s NC scene and land-cover model, tile 128), where the job's fixed
costs weigh; the benchmark U-Net on a SIZE x SIZE mirror of it, where the model's do; and
`sample-mirror`, the sample's model on a SIZE x SIZE mirror of its scene (all 6 bands) at the
job's default tiles. `--cases` and `--options` pick some (default: the first two cases, every
option). Each option runs `--repeats` times in a rotating order on one warm local[2] session,
each run from scratch (--overwrite). Reported: the median wall time of the run and of its
inference stage, and their ratio to the same case without options. Writes
benchmarks/results/DATE-HOST-options.json and prints the table of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.paths import SCALE
from benchmarks.run import envelope, write_result

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_BANDS = (1, 2, 3, 4, 5, 6)  # the land-cover model's
OPTIONS = {  # name: the job's options on top of the case's (a function of them)
    "none": lambda case: {},
    "--tta flips": lambda case: {"tta": "flips"},
    "--tta d4": lambda case: {"tta": "d4"},
    # The model twice: the cost of a second model, without a second model to build.
    "--model M M": lambda case: {"model": [case["model"], case["model"]]},
    "--confidence": lambda case: {"confidence": "maxprob"},
}


def case_options(name: str, work: Path, size: int) -> dict:
    """The job's options of case `name` (its inputs made in `work` on first use)."""
    if name == "sample":
        return dict(
            input=[str(ROOT / "data" / "nc_landsat7_2000.tif")],
            model=str(ROOT / "data" / "landcover.keras"),
            tile_size=128,
        )
    if name == "unet":
        return dict(
            input=[str(make_large_raster(work / f"mirror-{size}.tif", size))],
            model=str(save_model("unet", work / "models")),
            tile_size=512,
            normalization={"scale": SCALE},
        )
    if name == "sample-mirror":
        mirror = make_large_raster(work / f"sample-{size}.tif", size, bands=SAMPLE_BANDS)
        return dict(input=[str(mirror)], model=str(ROOT / "data" / "landcover.keras"))
    raise SystemExit(f"--cases: no case {name!r}; sample, unet or sample-mirror")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cases", default="sample,unet", help="comma-separated")
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    chosen = args.options.split(",")
    if "none" not in chosen:
        chosen.insert(0, "none")  # what each option is compared with

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this venv's Python too
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
    for case in args.cases.split(","):
        base = case_options(case, args.work, args.size)
        names = chosen
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
    kind = "options" if args.cases == "sample,unet" else f"options-{args.cases.replace(',', '-')}"
    write_result(envelope(args) | {"runs": runs, "medians": medians}, kind)
    print(
        "| option | "
        + " | ".join(f"{c}: run | {c}: stage | {c}: stage ratio" for c in medians)
        + " |"
    )
    print("|---|" + "---|---|---|" * len(medians))
    for name in chosen:
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
