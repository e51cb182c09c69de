"""Speed and memory of sparkinfer against the model alone, a plain script and predict_batch_udf.

    make bench            # or: .venv/bin/python -m benchmarks.run [--repeats 3] [--quick]

For each model (tiny, unet) every path runs `--repeats` times on the same raster and tiles, each
run in a fresh process (benchmarks/paths.py), in a rotating order. Rates are useful output pixels
(the raster's, halo excluded) per second of a path's medians. Then sparkinfer runs on a raster
16 times larger to show its peak memory stays flat. Results go to
benchmarks/results/DATE-HOST.json and a Markdown table is printed for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from sparkinfer.cuts import Tiling

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PATHS = ("model_only", "plain_script", "predict_batch_udf", "sparkinfer")
OUTPUTS = {"plain_script": "plain.tif", "predict_batch_udf": "udf.tif"}
DEFAULT_TILE = 512
TARGETS = {  # (model, ratio, at least)
    "sparkinfer / model_only on unet": ("unet", "sparkinfer / model_only", 0.90),
    "sparkinfer / plain_script on tiny": ("tiny", "sparkinfer / plain_script", 1.0),
    "sparkinfer / predict_batch_udf on tiny": ("tiny", "sparkinfer / predict_batch_udf", 1.5),
}


def run_path(
    path: str, raster: Path, model: Path, tile: int, batch: int | None, work: Path, cores: int
) -> dict:
    """One path in a fresh process; its result with the process's wall time."""
    output = work / "out"
    result_file = work / "result.json"
    shutil.rmtree(output, ignore_errors=True)  # a fresh run each time: nothing to resume
    work.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.paths",
        path,
        "--raster",
        str(raster),
        "--model",
        str(model),
        "--output",
        str(output),
        "--result",
        str(result_file),
        "--tile-size",
        str(tile),
        "--cores",
        str(cores),
    ]
    if batch:
        command += ["--batch-size", str(batch)]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmark path {path} failed:\n{done.stderr[-3000:]}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_s"] = time.perf_counter() - started
    return result


def agreement(first: Path, second: Path) -> float:
    """Fraction of pixels where two class maps agree, compared strip by strip."""
    same = total = 0
    with rasterio.open(first) as a, rasterio.open(second) as b:
        for top in range(0, a.height, 1024):
            window = Window(0, top, a.width, min(1024, a.height - top))
            same += int(np.count_nonzero(a.read(1, window=window) == b.read(1, window=window)))
            total += window.width * window.height
    return same / total


def benchmark_model(name: str, raster: Path, tile: int, batch: int | None, args) -> dict:
    model = save_model(name, args.work / "models")
    with rasterio.open(raster) as src:
        pixels = src.width * src.height
    runs: dict[str, list[dict]] = {p: [] for p in PATHS}
    outputs: dict[str, Path] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(PATHS)
        for path in PATHS[shift:] + PATHS[:shift]:
            work = args.work / "runs" / name / path
            result = run_path(path, raster, model, tile, batch, work, args.cores)
            runs[path].append(result)
            if path in OUTPUTS:
                outputs[path] = work / "out" / OUTPUTS[path]
            elif path == "sparkinfer":
                outputs[path] = work / "out" / f"{raster.stem}.tif"
            print(f"  {name} {path} run {repeat + 1}: {result['seconds']:.1f} s", flush=True)
    report = runs["sparkinfer"][-1]["report"]
    summary = {}
    for path, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        summary[path] = {
            "seconds": [round(r["seconds"], 3) for r in results],
            "median_s": round(seconds, 3),
            "mpx_per_s": round(pixels / seconds / 1e6, 3),
            "process_s": round(statistics.median(r["process_s"] for r in results), 2),
            "startup": {
                k: round(statistics.median(r["startup"][k] for r in results), 2)
                for k in results[0].get("startup", {})
            },
            "peak_memory_mb": {
                k: max(r["memory"][k] for r in results) for k in results[0]["memory"]
            },
        }
    summary["sparkinfer"]["stage_timings_s"] = {
        k: round(v, 2) for k, v in report["timings"].items()
    }
    rate = {p: summary[p]["mpx_per_s"] for p in PATHS}
    tiling = report["tiling"]
    default = Tiling(DEFAULT_TILE, tiling["halo"], tiling["stride"])
    return {
        "model": {
            "name": name,
            "parameters": _parameters(model),
            "bands": report["model"]["bands"],
            "receptive_halo": report["model"]["receptive_halo"],
        },
        "raster": {"path": str(raster), "width_x_height": int(np.sqrt(pixels)), "pixels": pixels},
        "tiling": tiling | {"tiles": report["tiles"]["planned"]},
        "halo_share_at_default_tile": round(default.halo_share, 4),
        "paths": summary,
        "ratios": {f"sparkinfer / {p}": round(rate["sparkinfer"] / rate[p], 3) for p in PATHS[:3]},
        "agreement_with_plain_script": {
            p: round(agreement(outputs["plain_script"], outputs[p]), 6)
            for p in ("predict_batch_udf", "sparkinfer")
        },
    }


def _parameters(model: Path) -> int:
    import keras

    return keras.models.load_model(model, compile=False).count_params()


def memory_scaling(args) -> dict:
    """sparkinfer's peak memory per process on two rasters, the second 16 times larger."""
    model = save_model("tiny", args.work / "models")
    found = {}
    for size in args.memory_sizes:
        raster = make_large_raster(args.work / "rasters" / f"nc_{size}.tif", size)
        work = args.work / "runs" / "memory" / str(size)
        result = run_path("sparkinfer", raster, model, DEFAULT_TILE, None, work, args.cores)
        found[size] = {
            "seconds": round(result["seconds"], 2),
            "memory_mb": result["memory"],
            "tiles": result["report"]["tiles"]["planned"],
        }
        print(f"  memory {size}: {result['memory']}", flush=True)
    small, large = (found[s]["memory_mb"] for s in args.memory_sizes)
    growth = {
        k: round(large[k] / small[k] - 1, 4) for k in ("driver_mb", "jvm_mb", "worker_max_mb")
    }
    return {"sizes": found, "growth": growth}


def result_text(result: dict) -> str:
    """A result as the JSON text that is kept, with this machine's paths as any reader's: the
    checkout's relative to it, the temporary folder's under $TMPDIR."""
    text = json.dumps(result, indent=2) + "\n"
    text = text.replace(f"{ROOT}/", "").replace(str(ROOT), ".")
    return text.replace(f"{tempfile.gettempdir()}/", "$TMPDIR/")


def write_result(result: dict, kind: str) -> Path:
    """Save a benchmark's result as benchmarks/results/DATE-HOST-KIND.json; its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    destination = RESULTS / f"{result['date'][:10]}-{socket.gethostname()}-{kind}.json"
    destination.write_text(result_text(result), encoding="utf-8")
    print(f"results: {destination}")
    return destination


def envelope(args, **settings) -> dict:
    """What a benchmark's result file starts with: when, on what machine, with which arguments
    (`args`, with a `work` folder) and the `settings` the benchmark fixed itself."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": vars(args) | {"work": str(args.work)} | settings,
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "versions": {
            p: version(p)
            for p in ("pyspark", "tensorflow-cpu", "keras", "rasterio", "numpy", "pyarrow")
        },
        "gdal": rasterio.__gdal_version__,
    }


def markdown(results: dict) -> str:
    lines = [
        "| model | raster | tile + halo | halo share | model only | plain script | "
        "predict_batch_udf | sparkinfer | vs model | vs script | vs UDF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        rates = [f"{r['paths'][p]['mpx_per_s']:.2f}" for p in PATHS]
        ratios = [f"{v:.2f}x" for v in r["ratios"].values()]
        t = r["tiling"]
        lines.append(
            f"| {name} | {r['raster']['width_x_height']}² | {t['tile_size']} + {t['halo']} | "
            f"{t['halo_share']:.1%} | " + " | ".join(rates + ratios) + " |"
        )
    lines.append("")
    lines.append("Rates in megapixels of output per second (medians); ratios are sparkinfer's.")
    m = results["memory_scaling"]
    sizes = list(m["sizes"])
    lines.append("")
    lines.append(f"| peak memory (MiB) | {sizes[0]}² | {sizes[1]}² | growth |")
    lines.append("|---|---|---|---|")
    for key, label in (
        ("driver_mb", "driver (Python)"),
        ("jvm_mb", "JVM"),
        ("worker_max_mb", "Python worker (max)"),
    ):
        a, b = (m["sizes"][s]["memory_mb"][key] for s in sizes)
        lines.append(f"| {label} | {a:.0f} | {b:.0f} | {m['growth'][key]:+.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-size", type=int, default=8192, help="raster side for tiny")
    parser.add_argument("--unet-size", type=int, default=4096, help="raster side for unet")
    parser.add_argument("--unet-tile", type=int, default=1024, help="tile size for unet")
    parser.add_argument("--unet-batch", type=int, default=2, help="batch size for unet")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[4096, 16384])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--quick", action="store_true", help="small rasters, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.tiny_size, args.unet_size = 1, 2048, 1024
        args.memory_sizes = [1024, 4096]
    rasters = args.work / "rasters"
    plan = {
        "tiny": (
            make_large_raster(rasters / f"nc_{args.tiny_size}.tif", args.tiny_size),
            DEFAULT_TILE,
            None,
        ),
        "unet": (
            make_large_raster(rasters / f"nc_{args.unet_size}.tif", args.unet_size),
            args.unet_tile,
            args.unet_batch,
        ),
    }
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"repeats": args.repeats, "cores": args.cores, "quick": args.quick},
        "models": {},
    }
    for name, (raster, tile, batch) in plan.items():
        print(f"{name}: {raster.name}, tile {tile}", flush=True)
        results["models"][name] = benchmark_model(name, raster, tile, batch, args)
    print("memory", flush=True)
    results["memory_scaling"] = memory_scaling(args)
    results["targets"] = {
        label: {
            "value": results["models"][m]["ratios"][ratio],
            "target": least,
            "met": results["models"][m]["ratios"][ratio] >= least,
        }
        for label, (m, ratio, least) in TARGETS.items()
    }
    results["targets"]["halo share at tile 512 on tiny <= 12%"] = {
        "value": results["models"]["tiny"]["halo_share_at_default_tile"],
        "target": 0.12,
        "met": results["models"]["tiny"]["halo_share_at_default_tile"] <= 0.12,
    }
    growth = results["memory_scaling"]["growth"]
    results["targets"]["peak memory growth at 16x raster <= 10%"] = {
        "value": max(growth.values()),
        "target": 0.10,
        "met": max(growth.values()) <= 0.10,
    }
    results["table"] = markdown(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = results["date"][:10] + ("-quick" if args.quick else "")
    destination = RESULTS / f"{stamp}-{results['machine']['host']}.json"
    destination.write_text(result_text(results), encoding="utf-8")
    print(results["table"])
    for label, target in results["targets"].items():
        print(f"{'met ' if target['met'] else 'MISSED'} {label}: {target['value']}")
    print(f"results: {destination}")


if __name__ == "__main__":
    main()
