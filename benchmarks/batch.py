"""Tiles per model call on a CPU: the model's rate per core for each batch size, with one process
per core running side by side as the stage's tasks do (one thread each).

    python -m benchmarks.batch [--models tiny unet] [--tile 512] [--batches 1 2 4 8] [--seconds 20]

Each configuration runs in fresh processes, one per core, started together; the rate is the
model's useful megapixels per second per process, through the job's own runtime (cast,
normalisation, model and argmax in one call). Writes benchmarks/results/DATE-HOST-batch.json.
`batch_size` auto (sparkinfer/runtimes/base.py, CPU_CALL_PIXELS) is chosen from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.models import BANDS, save_model
from benchmarks.paths import SCALE
from benchmarks.run import envelope, write_result

ROOT = Path(__file__).resolve().parent.parent


def measure(model: str, tile: int, batch: int, seconds: float, start_at: float) -> float:
    """In this process: megapixels per second of `batch` tiles per call, from `start_at`."""
    import numpy as np

    from sparkinfer.config import Normalization
    from sparkinfer.runtimes import RuntimeOptions, open_runtime

    options = RuntimeOptions(normalization=Normalization(scale=SCALE))
    runtime = open_runtime(Path(model), "keras", options, threads=1)
    pixels = np.random.default_rng(0).integers(0, 255, (batch, tile, tile, BANDS), np.uint8)
    runtime.classify(pixels, None)  # traced before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        runtime.classify(pixels, None)
        calls += 1
    return calls * batch * tile * tile / (time.perf_counter() - started) / 1e6


def side_by_side(model: Path, tile: int, batch: int, seconds: float, processes: int) -> list:
    """`processes` fresh processes measuring together; their rates."""
    start_at = time.time() + 20  # after every process has loaded its model
    command = [
        sys.executable,
        "-m",
        "benchmarks.batch",
        "--measure",
        str(model),
        str(tile),
        str(batch),
        str(seconds),
        str(start_at),
    ]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    running = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [round(float(p.communicate()[0].split()[-1]), 3) for p in running]


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        model, tile, batch, seconds, start_at = sys.argv[2:]
        print(measure(model, int(tile), int(batch), float(seconds), float(start_at)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "unet"])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    cores = os.cpu_count()
    found: dict = {}
    for name in args.models:
        model = save_model(name, args.work / "models")
        rates = {batch: [] for batch in args.batches}
        for _ in range(2):  # two rounds, interleaved, against drift of the machine
            for batch in args.batches:
                rates[batch] += side_by_side(model, args.tile, batch, args.seconds, cores)
                print(f"  {name} batch {batch}: {rates[batch]} Mpx/s per process", flush=True)
        found[name] = {
            str(b): {"mpx_s_per_core": r, "mean": round(sum(r) / len(r), 3)}
            for b, r in rates.items()
        }
    result = envelope(args, processes=cores) | {"models": found}
    print(json.dumps(found, indent=2))
    write_result(result, "batch")


if __name__ == "__main__":
    main()
