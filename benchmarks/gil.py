"""Whether one task's reading, cutting and writing overlap its model calls, or the GIL makes
them take turns.

    python -m benchmarks.gil [--size 8192] [--cores 2] [--repeats 3] [--tile-size 2048 --halo 288]

One task of `cores` readers (the partition function in this process, no Spark), over all of a
raster's chunks, three ways, with the repeats interleaved:

- `host`: with a runtime that returns class 0 at once: what the task costs besides the model,
  `host_s`;
- `model`: the model's time alone, `model_s`: that runtime made to sleep (as a GPU call
  waits, without the GIL) for a fixed time per pixel, chosen so that `model_s` is about
  `host_s`;
- `both`: the task with that sleeping runtime.

If reading and writing run while the model waits, `both` takes about max(host_s, model_s); if
they take turns with it, host_s + model_s. The result is the overlap,
(host_s + model_s - both_s) / min(host_s, model_s): 1 is full overlap, 0 none. What the task's
main thread does itself (cutting windows, stacking batches) cannot overlap the call it makes:
its CPU time, `main_cpu_s`, gives the bound max(host_s, model_s + main_cpu_s), and
`bound_over_both` is how close the task comes to it. Writes
benchmarks/results/DATE-HOST-gil.json (-gil-scores.json with `--scores`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.feed import _job
from benchmarks.free_runtime import FreeRuntime
from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.run import envelope, write_result

ROOT = Path(__file__).resolve().parent.parent


class SleepingRuntime(FreeRuntime):
    """Class 0 everywhere after a sleep of `seconds_per_mpx` per megapixel of input: a model
    call that waits without holding the GIL, as a GPU's does, and costs the host nothing
    else (the free runtime's argmax would count as host work on the task's main thread)."""

    format = "sleep"

    def __init__(self, bands: int, channels: int, seconds_per_mpx: float) -> None:
        super().__init__(bands)
        self.channels = channels
        self.seconds_per_mpx = seconds_per_mpx
        self.mpx = 0.0  # given to it
        self.slept = 0.0

    def classify(self, pixels: np.ndarray, valid, with_scores: bool = False):
        mpx = pixels.shape[0] * pixels.shape[1] * pixels.shape[2] / 1e6
        time.sleep(mpx * self.seconds_per_mpx)
        self.mpx += mpx
        self.slept += mpx * self.seconds_per_mpx
        classes = np.zeros(pixels.shape[:3], np.uint8)
        scores = np.zeros((*pixels.shape[:3], self.channels), np.float32) if with_scores else None
        return classes, scores


def run_task(job, cores: int, runtime) -> tuple[float, float]:
    """One task of `cores` readers over all of `job`'s chunks, with `runtime`: its seconds, and
    the CPU seconds of its main thread, the one that calls the model."""
    import sparkinfer.executor.partition as partition
    from sparkinfer.devices import TaskResources
    from sparkinfer.job import chunks_to_do, prepare_staging
    from sparkinfer.stages.infer import plan_table, stage_spec

    for raster in job.rasters:
        prepare_staging(raster, overwrite=True)
    table = plan_table([chunks_to_do(r) for r in job.rasters])
    spec = stage_spec(job, job.rasters)
    partition.load_for_task = lambda package, options, resources: runtime
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in partition.infer_partition(table.to_batches(), spec, job.package, TaskResources(cores)):
        pass
    return time.perf_counter() - started, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--tile-size", help="the job's --tile-size (default: its own)")
    parser.add_argument("--halo", help="the job's --halo (default: the model's, 0)")
    parser.add_argument("--scores", action="store_true", help="also write float32 scores")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()

    raster = make_large_raster(args.work / "rasters" / f"nc_{args.size}.tif", args.size)
    model = save_model("null", args.work / "models")
    options = ["--scores"] if args.scores else []
    for flag, value in (("--tile-size", args.tile_size), ("--halo", args.halo)):
        options += [flag, value] if value else []
    job = _job(raster, model, args.work / "runs" / "gil" / "job", options)
    bands, channels = job.model.bands, job.model.channels

    counted = SleepingRuntime(bands, channels, 0.0)
    run_task(job, args.cores, counted)  # imports and GDAL's first opens: untimed
    host_s, _ = run_task(job, args.cores, SleepingRuntime(bands, channels, 0.0))
    seconds_per_mpx = host_s / counted.mpx  # the model alone takes about as long as the host
    runs: dict[str, list[float]] = {"host_s": [], "main_cpu_s": [], "model_s": [], "both_s": []}
    for _ in range(args.repeats):
        host_s, main_cpu_s = run_task(job, args.cores, SleepingRuntime(bands, channels, 0.0))
        sleeping = SleepingRuntime(bands, channels, seconds_per_mpx)
        both_s, _ = run_task(job, args.cores, sleeping)
        for name, value in zip(runs, (host_s, main_cpu_s, sleeping.slept, both_s), strict=True):
            runs[name].append(value)
        print(
            f"  host {host_s:.2f} s (its main thread {main_cpu_s:.2f} s of CPU), "
            f"model alone {sleeping.slept:.2f} s, both {both_s:.2f} s",
            flush=True,
        )
    median = {name: statistics.median(values) for name, values in runs.items()}
    host, main, model_s, both = median.values()
    overlap = (host + model_s - both) / min(host, model_s)
    bound = max(host, model_s + main)
    result = envelope(args) | {
        "raster": {"side": args.size, "pixels": args.size**2},
        "readers": args.cores,
        "runs": {name: [round(v, 3) for v in values] for name, values in runs.items()},
        "median": {name: round(value, 3) for name, value in median.items()},
        "overlap": round(overlap, 3),
        "bound_s": round(bound, 3),
        "bound_over_both": round(bound / both, 3),
        "main_thread_share_of_host": round(main / host, 3),
    }
    print(
        f"overlap {overlap:.3f} (1: the host's work hidden under the model's calls); "
        f"the bound max(host, model + main thread) is {bound / both:.3f} of the time taken"
    )
    write_result(result, "gil-scores" if args.scores else "gil")


if __name__ == "__main__":
    main()
