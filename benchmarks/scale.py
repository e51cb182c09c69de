"""Scaling on paper: Earth's land at 10 m and 1 m, from the measured rates in benchmarks/results
and the list prices below; the tables of docs/scale.md.

    python -m benchmarks.scale [--estimate benchmarks/results/DATE-HOST-estimate.json]

Every figure comes from a results file (named in the table), a constant below with its source,
or arithmetic on those. Prices are inputs: list prices as published, to be updated.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
UNET_CPU = RESULTS / "2026-11-26-vm-unet-8192.json"
LOAD = RESULTS / "2026-11-26-vm-load.json"
TILE_INDEX = RESULTS / "2026-11-27-vm-tile-index.json"
SHARED_GPU = RESULTS / "2026-11-28-h200-shared-gpu.json"  # benchmarks/device.py on one H200

LAND_KM2 = 149e6  # Earth's land area, km² (the issue; e.g. CIA World Factbook: 148.94 M km²)
CHUNK_PIXELS = 2048 * 2048  # chunk_tiles auto, tiles of 512 (sparkinfer/tiling.py)
RASTER_PIXELS = 10980 * 10980  # rasters of a Sentinel-2 tile's size (ESA: 10980² at 10 m)
OUTPUT_PUTS = 3  # a raster's COG, tile index and STAC Item, a PUT each (more for multipart)

# Accelerator figures from the field notes' "Accelerators" (one H200, 2026-11-27;
# shared/FIELD-NOTES.md beside the checkout).
GPU_TINY_MPX_S = 666  # tiny 3-conv model, host uint8 -> host classes
HOST_DECODE_MPX_S = 388  # rasterio decode, 4-band uint8, 16 processes on the GPU's host

# List prices (inputs; AWS, region us-east-1, on-demand, Linux), as published in 2024-2025.
VCPU_HOUR_USD = 0.08925 / 2  # c7i.large: $0.08925 per hour for 2 vCPUs (EC2 On-Demand pricing)
GPU_HOUR_USD = 98.32 / 8  # p5.48xlarge: $98.32 per hour for 8 H100 (EC2 On-Demand pricing, 2024)
S3_GET_USD = 0.0004 / 1000  # S3 Standard GET, per request (S3 pricing page)
S3_PUT_USD = 0.005 / 1000  # S3 Standard PUT, COPY, POST, LIST, per request (S3 pricing page)
S3_GET_PER_PREFIX_S = 5500  # GET/HEAD per second per prefix (S3 performance guidelines)
S3_PUT_PER_PREFIX_S = 3500  # PUT/COPY/POST/DELETE per second per prefix (same)
LUNGA_KM2_S = 5.245  # Lunga et al. 2020, IEEE JSTARS 13, 271-283


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def cpu_rates(estimate: dict) -> dict:
    """Task-slot seconds per output pixel (read, infer, write, assemble) on the 2-core VM."""
    sample = estimate["models"]["sample"]
    measured = [run["estimate"]["measured"] for run in sample]
    tiles = sample[0]["estimate"]["plan"]["tiles"]
    pixels = sample[0]["estimate"]["plan"]["pixels"]
    per_px = statistics.median(
        m["slot_s_per_px"] + m["cog_s_per_px"] + m["index_s_per_tile"] * tiles / pixels
        for m in measured
    )
    unet = _load(UNET_CPU)
    timings, side = unet["sparkinfer"]["timings"], 8192
    unet_px = (2 * timings["infer_write_s"] + timings["assemble_s"]) / side**2  # 2 slots
    return {"sample": per_px, "unet": unet_px}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimate", type=Path, default=RESULTS / "2026-11-27-vm-estimate.json")
    args = parser.parse_args()
    estimate = _load(args.estimate)
    cpu = cpu_rates(estimate)
    # The U-Net: the partition function measured on one H200 and its 16 host cores (the best
    # of its process counts). The sample model, not measured so: a bound, its 6 bands decoding
    # at 4/6 of the 4-band figure.
    unet_gpu = max(run["mpx_per_s"] for run in _load(SHARED_GPU)["shared_gpu"])
    gpu = {"sample": min(GPU_TINY_MPX_S, HOST_DECODE_MPX_S * 4 / 6), "unet": unet_gpu}
    storage = estimate["models"]["sample"][0]["estimate"]
    read_per_px = storage["bytes"]["read_from_storage"] / storage["plan"]["pixels"]
    blocks_per_chunk = storage["bytes"]["input_blocks_per_chunk"]
    out_per_px = storage["bytes"]["write_outputs"] / storage["plan"]["pixels"]
    print(f"CPU slot-seconds per pixel: {cpu}; GPU Mpx/s: {gpu}")
    print(
        f"storage: {read_per_px:.3f} B/px read, {out_per_px:.4f} B/px written, "
        f"{blocks_per_chunk} input blocks per chunk"
    )
    print()
    print(
        "| resolution | pixels | chunks (2048²) | model | core-hours (CPU) | CPU cost | "
        "GPU-hours (H200) | GPU cost | GB read | GETs (1 per block) | GET cost | PUTs | "
        "PUT cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for metres in (10, 1):
        pixels = LAND_KM2 * 1e6 / metres**2
        chunks = pixels / CHUNK_PIXELS
        gets = chunks * blocks_per_chunk
        puts = chunks + OUTPUT_PUTS * pixels / RASTER_PIXELS  # chunk files, then outputs
        for model in ("sample", "unet"):
            core_hours = pixels * cpu[model] / 3600
            gpu_hours = pixels / (gpu[model] * 1e6) / 3600
            print(
                f"| {metres} m | {pixels:.3g} | {chunks:,.0f} | {model} | {core_hours:,.0f} | "
                f"${core_hours * VCPU_HOUR_USD:,.0f} | {gpu_hours:,.1f} | "
                f"${gpu_hours * GPU_HOUR_USD:,.0f} | {pixels * read_per_px / 1e9:,.0f} | "
                f"{gets:,.0f} | ${gets * S3_GET_USD:,.0f} | {puts:,.0f} | "
                f"${puts * S3_PUT_USD:,.0f} |"
            )
    print()
    for model in ("sample", "unet"):
        for metres in (10, 1):
            km2_s_core = metres**2 / 1e6 / cpu[model]  # pixels per second x km² per pixel
            km2_s_gpu = gpu[model] * metres**2
            print(
                f"{model} at {metres} m: {km2_s_core:.3g} km²/s per core "
                f"({LUNGA_KM2_S / km2_s_core:,.1f} cores for {LUNGA_KM2_S} km²/s); "
                f"{km2_s_gpu:,.0f} km²/s per H200"
            )
    load = _load(LOAD)["plans"][-1]
    index = _load(TILE_INDEX)["runs"][-1]
    print(
        f"plan of {load['tiles']:,} tiles: {load['chunks']:,} chunks, "
        f"{load['plan_table_mb']} MB, {load['plan_s']} s, through Spark "
        f"{load['plan_through_spark_s']} s, JVM heap {load['driver_jvm_heap_used_mb']} MiB; "
        f"tile index {index['seconds']} s, {index['peak_mib']} MiB"
    )
    per_chunk_mb = load["plan_table_mb"] / load["chunks"]
    for metres in (10, 1):
        chunks = LAND_KM2 * 1e6 / metres**2 / CHUNK_PIXELS
        print(f"{metres} m: plan table {chunks * per_chunk_mb:,.0f} MB for {chunks:,.0f} chunks")
    for model in ("sample", "unet"):
        chunks_s = gpu[model] * 1e6 / CHUNK_PIXELS
        gets = chunks_s * blocks_per_chunk
        print(
            f"{model}: one H200 commits {chunks_s:.0f} chunks/s: {gets:,.0f} GETs/s at one per "
            f"block; {S3_GET_PER_PREFIX_S / gets:.1f} GPUs per input prefix; "
            f"{S3_PUT_PER_PREFIX_S / chunks_s:.0f} GPUs per staging prefix"
        )


if __name__ == "__main__":
    main()
