"""`--estimate`: the run's real stages on a spread sample of its chunks, timed, and what they
predict for the whole run written to `_estimate.json` (the arithmetic is `sparkinfer.estimate`).

Under the output folder's lock, like a run: the sampled chunks go through the inference stage
(`infer_partition`, as a run's tasks) into a scratch folder, then a small assembly stage makes a
COG of a few of them, the tile index of each sampled raster's chunks and a STAC Item. The
scratch folder is removed at the end: `_estimate.json` is all the output folder keeps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rasterio
from affine import Affine

from sparkinfer import __version__, storage
from sparkinfer.catalog import write_stac_item, write_tile_index
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.devices import gpu_ordinal, task_resources
from sparkinfer.estimate import (
    ESTIMATE_FILE,
    Rates,
    Workload,
    blocks_read,
    core_hours_per_1000_km2,
    job_identity,
    makespan,
    pixel_area_m2,
    predict,
    read_pixels,
    sample_size,
    slot_hours,
    spread_sample,
    tasks_of,
)
from sparkinfer.job import stage_spec
from sparkinfer.lock import OutputLock
from sparkinfer.model import ModelPackage, load_package
from sparkinfer.prepare import Job, RasterJob
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster import GDAL_READ_OPTIONS
from sparkinfer.report import tiling_report
from sparkinfer.session import (
    application,
    map_in_partitions,
    shipped,
    spark_failures,
    task_gpu_share,
    task_slots,
    worker_environment,
)
from sparkinfer.stages.infer import CHUNK_RESULT_SCHEMA, StageSpec, infer_partition, plan_table
from sparkinfer.writers import ChunkSpec, assemble_cog

SCRATCH_FOLDER = "_estimate-scratch"
ASSEMBLED_PER_RASTER = 2  # sampled chunks made into COGs per raster: for rates, not outputs

SAMPLE_SCHEMA = pa.schema(
    list(CHUNK_RESULT_SCHEMA)
    + [
        ("task", pa.int32()),
        ("task_s", pa.float64()),
        ("calls_s", pa.float64()),
        ("first_call_s", pa.float64()),
    ]
)
ASSEMBLY_SCHEMA = pa.schema(
    [
        (name, pa.float64())
        for name in (
            "pixels",
            "cog_s",
            "tiles",
            "index_s",
            "item_s",
            "task_s",
            "chunk_bytes",
            "cog_bytes",
            "index_bytes",
            "item_bytes",
        )
    ]
)


def _first_call(spec: StageSpec, package: ModelPackage, row: dict) -> tuple[float, float]:
    """Two model calls on a batch of the stage's windows (zeros): by how much the first exceeds
    the second, which is the tracing or compiling a worker does once (nothing in a worker that
    did it before), and both calls' seconds."""
    index = row["raster_index"]
    window = spec.plans[index].chunk_windows(row["chunk_row"], row["chunk_col"])[0].read
    resources = task_resources()
    runtime = load_package(package, spec.runtime, gpu_ordinal(resources.gpu), resources.cpus)
    dtype = np.dtype(spec.rasters[index].dtype)
    batch = spec.batch_size or runtime.auto_batch(
        window.height, window.width, dtype, spec.gpu_share
    )
    pixels = np.zeros((batch, window.height, window.width, len(spec.bands)), dtype)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        runtime.classify(pixels, None, spec.scores or spec.blend)
        seconds.append(time.perf_counter() - started)
    return max(0.0, seconds[0] - seconds[1]), sum(seconds)


def sample_partition(
    batches: Iterator[pa.RecordBatch],
    spec: StageSpec,
    package: ModelPackage,
) -> Iterator[pa.RecordBatch]:
    """A task of the sample stage: the first call measured, then `infer_partition` on its
    chunks, timed; its chunks' result rows with the task's figures."""
    from pyspark import TaskContext

    batches = list(batches)  # a few numbers per chunk
    rows = [row for batch in batches for row in batch.to_pylist()]
    if not rows:
        return
    first_call_s, calls_s = _first_call(spec, package, rows[0])
    started = time.perf_counter()
    results = list(infer_partition(iter(batches), spec, package))
    task = {
        "task": TaskContext.get().partitionId(),
        "task_s": time.perf_counter() - started,
        "calls_s": calls_s,
        "first_call_s": first_call_s,
    }
    for batch in results:
        yield pa.RecordBatch.from_pylist([r | task for r in batch.to_pylist()], SAMPLE_SCHEMA)


@dataclass(frozen=True)
class AssemblySample:
    """One sampled raster's share of the assembly: a COG of each of `cogs` (chunks at the
    origin of a raster of their own size), the tile index of all its sampled `chunks`, a STAC
    Item; into `folder`."""

    raster: RasterJob
    chunks: tuple[ChunkSpec, ...]
    cogs: tuple[ChunkSpec, ...]
    folder: str


def _size(location: str) -> int:
    return storage.size_and_mtime(location)[0]


def assemble_sample(sample: AssemblySample, job: Job) -> dict:
    """Executor side: what `stages.assemble` does for a raster, on the sample; its seconds and
    bytes (an `ASSEMBLY_SCHEMA` row)."""
    started = time.perf_counter()
    raster, model, options = sample.raster, job.model, job.config.cog
    common = dict(
        classes=model.classes,
        channels=model.channels,
        metadata={"sparkinfer_version": __version__},
        class_names=model.class_names,
        class_colors=model.class_colors,
    )
    found = dict.fromkeys(ASSEMBLY_SCHEMA.names, 0.0)
    cog = None
    for chunk in sample.cogs:
        at_origin = replace(chunk, row_off=0, col_off=0)
        info = replace(
            raster.info,
            width=chunk.width,
            height=chunk.height,
            transform=tuple(
                Affine(*raster.info.transform) * Affine.translation(chunk.col_off, chunk.row_off)
            )[:6],
        )
        cog = storage.join(sample.folder, f"{chunk.chunk_row}-{chunk.chunk_col}.tif")
        t = time.perf_counter()
        if raster.scores_path is not None:
            scores = storage.join(sample.folder, f"{chunk.chunk_row}-{chunk.chunk_col}.scores.tif")
            with storage.staged(scores) as local:
                assemble_cog(info, [at_origin], local, options, scores=True, **common)
            found["cog_bytes"] += _size(scores)
        with storage.staged(cog) as local:
            assemble_cog(info, [at_origin], local, options, scores=False, **common)
        found["cog_s"] += time.perf_counter() - t
        found["pixels"] += chunk.width * chunk.height
        found["cog_bytes"] += _size(cog)
        found["chunk_bytes"] += _size(chunk.classes_path)
        if raster.scores_path is not None:
            found["chunk_bytes"] += _size(chunk.scores_path)
    index = storage.join(sample.folder, "tiles.parquet")
    t = time.perf_counter()
    write_tile_index(raster.info, raster.plan, list(sample.chunks), index, model.classes)
    found["index_s"] = time.perf_counter() - t
    found["index_bytes"] = _size(index)
    found["tiles"] = sum(
        len(raster.plan.chunk_tile_grid(c.chunk_row, c.chunk_col)[0]) for c in sample.chunks
    )
    t = time.perf_counter()
    item = storage.join(sample.folder, "item.stac.json")
    if raster.quicklook_path is not None:
        write_quicklook(
            cog, storage.join(sample.folder, "quicklook.png"), model.class_names, model.class_colors
        )
    write_stac_item(
        raster.info,
        item,
        {"classes": cog, "tiles": index},
        model.class_names,
        model.class_colors,
        model.classes,
        {},
    )
    found["item_s"] = time.perf_counter() - t
    found["item_bytes"] = _size(item)
    found["task_s"] = time.perf_counter() - started
    return found


def run_estimate(spark, job: Job, started: float | None = None) -> dict:
    """Measure the run of `job` on a sample of its chunks and predict the whole run; write and
    return `_estimate.json`. `started` is when the command started (`time.perf_counter`): the
    time until the sample stage is the setup a run pays too. Holds the output folder's lock."""
    started = time.perf_counter() if started is None else started
    storage.make_folders(job.output)
    backend = worker_environment(spark, "KERAS_BACKEND", job.config.backend)
    with OutputLock(job.output).held(), backend:
        scratch = storage.join(job.output, SCRATCH_FOLDER)
        storage.remove_tree(scratch)  # left by an estimate that was killed
        try:
            estimate = _estimate(spark, job, scratch, started)
        finally:
            storage.remove_tree(scratch)
        estimate["estimate_s"] = round(time.perf_counter() - started, 2)
        storage.write_text(
            storage.join(job.output, ESTIMATE_FILE), json.dumps(estimate, indent=2) + "\n"
        )
    return estimate


def _sample_stage(
    spark, job: Job, sample: pa.Table, spec: StageSpec, slots: int
) -> tuple[pa.Table, float]:
    """The sampled chunks through the inference stage, cut into tasks as a run cuts its
    chunks; their result rows with their tasks' figures, and the stage's wall seconds."""
    started = time.perf_counter()
    with (
        spark_failures(f"{job.output}: estimate failed", "nothing was written"),
        shipped(spark, job.package) as model,
    ):

        def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return sample_partition(batches, spec, model.package())

        rows = map_in_partitions(spark, sample, TASKS_PER_SLOT * slots, partition, SAMPLE_SCHEMA)
    results = pa.Table.from_pylist([r.asDict() for r in rows], schema=SAMPLE_SCHEMA)
    return results, time.perf_counter() - started


def _assembly_stage(
    spark, job: Job, samples: list[AssemblySample], slots: int
) -> tuple[pa.Table, float]:
    """The sampled rasters' assembly, a few per task as a run assembles rasters; one
    `ASSEMBLY_SCHEMA` row each (in order), and the stage's wall seconds."""
    started = time.perf_counter()
    for sample in samples:
        storage.make_folders(sample.folder)

    def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            done = [assemble_sample(samples[i], job) for i in batch.column("task").to_pylist()]
            yield pa.RecordBatch.from_pylist(done, schema=ASSEMBLY_SCHEMA)

    table = pa.table({"task": pa.array(range(len(samples)), pa.int64())})
    with spark_failures(f"{job.output}: estimate failed", "nothing was written"):
        rows = map_in_partitions(spark, table, TASKS_PER_SLOT * slots, assemble, ASSEMBLY_SCHEMA)
    results = pa.Table.from_pylist([r.asDict() for r in rows], schema=ASSEMBLY_SCHEMA)
    return results, time.perf_counter() - started


def _overhead(stage_s: float, task_s: np.ndarray, slots: int) -> float:
    """A stage's fixed seconds: its wall time less its tasks' run on `slots` (never below 0)."""
    partitions = TASKS_PER_SLOT * slots
    return max(0.0, stage_s - makespan(tasks_of(task_s, partitions), slots))


def _assembly_samples(
    job: Job,
    sample: pa.Table,
    results: pa.Table,
    staging: tuple[str, ...],
    scratch: str,
    slots: int,
) -> list[AssemblySample]:
    """What the sample's assembly makes: for up to a stage's tasks' worth of the sampled
    rasters, the COGs of up to `ASSEMBLED_PER_RASTER` of their written chunks and the tile
    index of those chunks."""
    failed = {
        (r["raster_index"], r["chunk_row"], r["chunk_col"])
        for r in results.filter(pc.is_valid(results["error"])).to_pylist()
    }
    by_raster: dict[int, list[ChunkSpec]] = {}
    for row in sample.to_pylist():
        index = row["raster_index"]
        if (index, row["chunk_row"], row["chunk_col"]) in failed:
            continue
        by_raster.setdefault(index, []).append(
            ChunkSpec(
                staging[index],
                row["chunk_row"],
                row["chunk_col"],
                row["row_off"],
                row["col_off"],
                row["height"],
                row["width"],
            )
        )
    return [
        AssemblySample(
            job.rasters[index],
            tuple(chunks),
            tuple(chunks[:ASSEMBLED_PER_RASTER]),
            storage.join(scratch, "assembled", str(index)),
        )
        for index, chunks in list(by_raster.items())[: TASKS_PER_SLOT * slots]
    ]


@dataclass(frozen=True)
class Measured:
    """What the sample run found: the rates, and the sample's own figures for the record."""

    rates: Rates
    sample: dict
    bytes_per_pixel: float  # output files: COGs (and scores)
    staging_bytes_per_pixel: float  # chunk files
    index_bytes_per_tile: float
    item_bytes: float  # STAC Item per raster


def _measure(spark, job: Job, table: pa.Table, scratch: str, started: float) -> Measured:
    """Run the stages on a spread sample of the plan's chunks (`plan_table` of every raster)."""
    slots = task_slots(spark)
    size = sample_size(len(table), job.config.estimate_sample, slots)
    picks = pa.array(
        spread_sample(
            table["raster_index"].to_numpy(),
            table["chunk_row"].to_numpy(),
            table["chunk_col"].to_numpy(),
            size,
        )
    )
    sample = table.take(picks)
    staging = tuple(storage.join(scratch, storage.name(r.staging)) for r in job.rasters)
    for folder in staging:
        storage.make_folders(folder)
    spec = replace(stage_spec(job, list(job.rasters), task_gpu_share(spark)), staging=staging)
    setup_s = time.perf_counter() - started

    results, stage_s = _sample_stage(spark, job, sample, spec, slots)
    tasks = (
        results.group_by("task")
        .aggregate([("task_s", "max"), ("calls_s", "max"), ("first_call_s", "max")])
        .sort_by("task")
    )
    task_s, calls_s = tasks["task_s_max"].to_numpy(), tasks["calls_s_max"].to_numpy()
    pixels = pc.sum(
        pc.multiply(sample["height"].cast(pa.int64()), sample["width"].cast(pa.int64()))
    ).as_py()

    samples = _assembly_samples(job, sample, results, staging, scratch, slots)
    assembled, assembly_s = _assembly_stage(spark, job, samples, slots)
    total = {name: pc.sum(assembled[name]).as_py() for name in ASSEMBLY_SCHEMA.names}
    rates = Rates(
        setup_s=setup_s,
        stage_overhead_s=_overhead(stage_s, task_s + calls_s, slots),
        first_call_s=float(tasks["first_call_s_max"].to_numpy().max()),
        slot_s_per_px=float(task_s.sum()) / pixels,
        assemble_overhead_s=_overhead(assembly_s, assembled["task_s"].to_numpy(), slots),
        cog_s_per_px=total["cog_s"] / total["pixels"],
        index_s_per_tile=total["index_s"] / total["tiles"],
        item_s=total["item_s"] / len(assembled),
    )
    errors = results.filter(pc.is_valid(results["error"]))["error"].to_pylist()
    figures = {
        "chunks": size,
        "of_chunks": len(table),
        "pixels": pixels,
        "tasks": len(tasks),
        "tiles_inferred": pc.sum(results["inferred"]).as_py(),
        "tiles_skipped_nodata": pc.sum(results["skipped"]).as_py(),
        "failed": sorted(set(errors)),
        "stage_s": round(stage_s, 3),
        "assembled": {
            "rasters": len(assembled),
            "cogs": sum(len(s.cogs) for s in samples),
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


def _estimate(spark, job: Job, scratch: str, started: float) -> dict:
    """`_estimate.json`'s content: the plan's figures, what the sample measured, and the
    predictions."""
    rasters = list(job.rasters)
    plans = [r.plan.chunks() for r in rasters]
    table = plan_table(plans)
    measured = _measure(spark, job, table, scratch, started)
    rates, slots = measured.rates, task_slots(spark)
    workload = Workload(
        pc.multiply(table["height"].cast(pa.int64()), table["width"].cast(pa.int64())).to_numpy(),
        tuple(r.info.width * r.info.height for r in rasters),
        tuple(r.plan.tile_count for r in rasters),
    )
    pixels, tiles = sum(workload.raster_pixels), sum(workload.raster_tiles)
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
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
        "cluster": application(spark) | {"task_slots": slots, "cpus_per_slot": cpus},
        "plan": {
            "rasters": len(rasters),
            "pixels": pixels,
            "tiles": tiles,
            "windows": sum(pc.sum(c["windows"]).as_py() for c in plans),
            "chunks": len(table),
        }
        | tiling_report(job),
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
