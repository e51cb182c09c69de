"""What `_estimate.json` says: the plan's figures, what the sample stage measured and what it
predicts for the whole run (the arithmetic is `sparkinfer.estimate`; the stages that measure,
`stages.estimate`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rasterio

from sparkinfer import __version__, storage
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.estimate import (
    Rates,
    Workload,
    blocks_read,
    core_hours_per_1000_km2,
    job_identity,
    makespan,
    pixel_area_m2,
    predict,
    read_pixels,
    slot_hours,
    tasks_of,
)
from sparkinfer.prepare import Job
from sparkinfer.raster import GDAL_READ_OPTIONS
from sparkinfer.raster_job import RasterJob
from sparkinfer.tiling import tiling_report


@dataclass(frozen=True)
class Measured:
    """What the sample run found: the rates, and the sample's own figures for the record."""

    rates: Rates
    sample: dict
    bytes_per_pixel: float  # output files: COGs (and scores)
    staging_bytes_per_pixel: float  # chunk files
    index_bytes_per_tile: float
    item_bytes: float  # STAC Item per raster


def estimate_document(
    job: Job, plans: list[pa.Table], measured: Measured, cluster: dict, slots: int, cpus: int
) -> dict:
    """`_estimate.json`'s content: the plan's figures (`plans`, each raster's chunks), what the
    sample `measured` on the `cluster` of `slots` task slots of `cpus` cores, and the
    predictions."""
    rasters = list(job.rasters)
    table = pa.concat_tables(plans)
    rates = measured.rates
    workload = Workload(
        pc.multiply(table["height"].cast(pa.int64()), table["width"].cast(pa.int64())).to_numpy(),
        tuple(r.info.width * r.info.height for r in rasters),
        tuple(r.plan.tile_count for r in rasters),
    )
    pixels, tiles = sum(workload.raster_pixels), sum(workload.raster_tiles)
    figures = [_raster_figures(r, c, len(job.bands)) for r, c in zip(rasters, plans, strict=True)]
    areas = [f["area_km2"] for f in figures]
    # Rounded as reported, and the derived figure made from what is reported: a reader who
    # recomputes it from the file's own values gets the file's figure.
    area = None if None in areas else round(sum(areas), 3)
    hours = float(f"{slot_hours(rates, workload):.6g}")
    blocks = sum(f["blocks_read"] for f in figures)
    per_slot = job.config.tasks_per_slot
    return {
        "sparkinfer_version": __version__,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "identity": job_identity([r.identity for r in rasters]),
        "cluster": cluster | {"task_slots": slots, "cpus_per_slot": cpus},
        "plan": {
            "rasters": len(rasters),
            "pixels": pixels,
            "tiles": tiles,
            "windows": sum(pc.sum(c["windows"]).as_py() for c in plans),
            "chunks": len(table),
        }
        | tiling_report(job.model, job.tiling),
        "bytes": {
            "read_decoded": sum(f["read_decoded"] for f in figures),  # halo included
            "read_from_storage": round(sum(f["read_from_storage"] for f in figures)),
            "input_blocks_read": blocks,
            "input_blocks_per_chunk": round(blocks / len(table), 2),
            "write_staging": round(measured.staging_bytes_per_pixel * pixels),
            "write_outputs": round(
                measured.bytes_per_pixel * pixels
                + measured.index_bytes_per_tile * tiles
                + measured.item_bytes * len(rasters)
            ),
        },
        "sample": measured.sample,
        "measured": {
            key: round(value, 12 if "_per_" in key else 3) for key, value in asdict(rates).items()
        },
        "rate": {"mpx_per_s_per_slot": float(f"{1e-6 / rates.slot_s_per_px:.4g}")},
        "predicted": {
            "this_cluster": predict(rates, workload, slots, per_slot).figures(),
            "by_slots": {
                str(n): predict(rates, workload, n, per_slot).figures()
                for n in job.config.estimate_slots
            },
        },
        "slot_hours": hours,
        "area_km2": area,
        "core_hours_per_1000_km2": None
        if not area
        else round(core_hours_per_1000_km2(hours, cpus, area), 6),
        "rasters": [f | {"identity": r.identity} for r, f in zip(rasters, figures, strict=True)],
        "modelled": MODELLED,
        "config": job.config.model_dump(mode="json"),
    }


MODELLED = (
    "measured on the sample: setup (command start to the inference stage), each stage's "
    "fixed seconds, a worker's first model call, the seconds per pixel of a task slot, "
    "the assembly's seconds per pixel, per tile and per raster, the bytes written per "
    "pixel; modelled: every chunk at the sampled rate per pixel (all-nodata tiles as "
    "sampled), chunks cut into 4 tasks per slot as spark.range cuts them, tasks run in "
    "order on the first free slot, input bytes fetched in proportion to the blocks read "
    "(halo blocks twice), the setup the same on any number of slots; not included: "
    "--verify, rasters already complete (the estimate is of a run from scratch)"
)


def _raster_figures(raster: RasterJob, chunks: pa.Table, bands: int) -> dict:
    """One raster's plan figures: ground, bytes and blocks its chunks read."""
    info = raster.info
    with storage.gdal_env(**GDAL_READ_OPTIONS), rasterio.open(storage.gdal_path(info.path)) as src:
        block_height, block_width = src.block_shapes[0]
    pixels = info.width * info.height
    area = pixel_area_m2(info.crs, info.transform, info.height)
    read = read_pixels(chunks)
    blocks = blocks_read(chunks, block_height, block_width)
    all_blocks = math.ceil(info.height / block_height) * math.ceil(info.width / block_width)
    return {
        "input": info.path,
        "width": info.width,
        "height": info.height,
        "tiles": raster.plan.tile_count,
        "chunks": raster.plan.chunk_count,
        "pixel_size_m": None if area is None else round(area**0.5, 3),
        "area_km2": None if area is None else round(area * pixels / 1e6, 6),
        "read_decoded": read * bands * np.dtype(info.dtype).itemsize,
        "read_from_storage": info.size * blocks / all_blocks,
        "block": [block_height, block_width],
        "blocks_read": blocks,
    }


def stage_overhead(stage_s: float, task_s: np.ndarray, slots: int) -> float:
    """A stage's fixed seconds: its wall time less its tasks' run on `slots` (never below 0)."""
    partitions = TASKS_PER_SLOT * slots
    return max(0.0, stage_s - makespan(tasks_of(task_s, partitions), slots))


def measured_from(
    chunks: int,
    sample: pa.Table,
    results: pa.Table,
    assembled: pa.Table,
    cogs: int,
    seconds: dict[str, float],
    slots: int,
) -> Measured:
    """What the sample stages found: `results` (`sampling.SAMPLE_SCHEMA`) of the `sample` of
    the plan's `chunks`, `assembled` (`sampling.ASSEMBLY_SCHEMA`) with `cogs` COGs, and the
    `seconds` of the setup (`setup_s`) and of both stages (`stage_s`, `assembly_s`) on
    `slots` task slots."""
    tasks = (
        results.group_by("task")
        .aggregate([("task_s", "max"), ("calls_s", "max"), ("first_call_s", "max")])
        .sort_by("task")
    )
    task_s, calls_s = tasks["task_s_max"].to_numpy(), tasks["calls_s_max"].to_numpy()
    pixels = pc.sum(
        pc.multiply(sample["height"].cast(pa.int64()), sample["width"].cast(pa.int64()))
    ).as_py()
    total = {name: pc.sum(assembled[name]).as_py() for name in assembled.column_names}
    stage_s, assembly_s = seconds["stage_s"], seconds["assembly_s"]
    rates = Rates(
        setup_s=seconds["setup_s"],
        stage_overhead_s=stage_overhead(stage_s, task_s + calls_s, slots),
        first_call_s=float(tasks["first_call_s_max"].to_numpy().max()),
        slot_s_per_px=float(task_s.sum()) / pixels,
        assemble_overhead_s=stage_overhead(assembly_s, assembled["task_s"].to_numpy(), slots),
        cog_s_per_px=total["cog_s"] / total["pixels"],
        index_s_per_tile=total["index_s"] / total["tiles"],
        item_s=total["item_s"] / len(assembled),
    )
    errors = results.filter(pc.is_valid(results["error"]))["error"].to_pylist()
    figures = {
        "chunks": len(sample),
        "of_chunks": chunks,
        "pixels": pixels,
        "tasks": len(tasks),
        "tiles_inferred": pc.sum(results["inferred"]).as_py(),
        "tiles_skipped_nodata": pc.sum(results["skipped"]).as_py(),
        "failed": sorted(set(errors)),
        "stage_s": round(stage_s, 3),
        "assembled": {
            "rasters": len(assembled),
            "cogs": cogs,
            "cog_pixels": int(total["pixels"]),
            "tiles_indexed": int(total["tiles"]),
            "stage_s": round(assembly_s, 3),
        },
    }
    return Measured(
        rates,
        figures,
        total["cog_bytes"] / total["pixels"],
        total["chunk_bytes"] / total["pixels"],
        total["index_bytes"] / total["tiles"],
        total["item_bytes"] / len(assembled),
    )
