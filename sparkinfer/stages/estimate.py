"""`--estimate`: the run's real stages on a spread sample of its chunks, timed, and what they
predict for the whole run written to `_estimate.json` (`estimate_report`; the arithmetic is
`sparkinfer.estimate`).

Under the output folder's lock, like a run: the sampled chunks go through the inference stage
(`sampling.sample_partition`, as a run's tasks) into a scratch folder, then a small assembly
stage makes a COG of a few of them, the tile index of each sampled raster's chunks and a STAC
Item (`sampling.assemble_sample`). The scratch folder is removed at the end: `_estimate.json`
is all the output folder keeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace

import pyarrow as pa

from sparkinfer import storage
from sparkinfer.assembly import AssemblySpec
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.devices import task_resources
from sparkinfer.estimate import ESTIMATE_FILE, sample_size, spread_sample
from sparkinfer.estimate_report import Measured, estimate_document, measured_from
from sparkinfer.executor import StageSpec
from sparkinfer.lock import OutputLock
from sparkinfer.prepare import Job
from sparkinfer.sampling import (
    ASSEMBLY_SCHEMA,
    SAMPLE_SCHEMA,
    AssemblySample,
    assemble_sample,
    assembly_samples,
    sample_partition,
)
from sparkinfer.session import (
    Shipment,
    application,
    run_stage,
    task_gpu_share,
    task_slots,
    worker_environment,
)
from sparkinfer.stages.assemble import assembly_spec
from sparkinfer.stages.infer import plan_table, stage_spec

SCRATCH_FOLDER = "_estimate-scratch"
NOTHING_WRITTEN = "nothing was written"


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
        plans = [r.plan.chunks() for r in job.rasters]
        try:
            measured = _measure(spark, job, plan_table(plans), scratch, started)
        finally:
            storage.remove_tree(scratch)
        cpus = int(spark.conf.get("spark.task.cpus", "1"))
        cluster = application(spark)
        estimate = estimate_document(job, plans, measured, cluster, task_slots(spark), cpus)
        estimate["estimate_s"] = round(time.perf_counter() - started, 2)
        storage.write_text(
            storage.join(job.output, ESTIMATE_FILE), json.dumps(estimate, indent=2) + "\n"
        )
    return estimate


def sample_inference(spec: StageSpec, shipment: Shipment):
    """The sample stage's mapInArrow function: each task's chunks inferred and timed."""

    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        return sample_partition(
            batches,
            spec,
            shipment.package(),
            task_resources(),
            context.partitionId(),
            context.attemptNumber(),
        )

    return partition


def sample_assembly(samples: list[AssemblySample], spec: AssemblySpec):
    """The sample's assembly stage's mapInArrow function: the samples its rows name, assembled
    and timed."""

    def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            done = [assemble_sample(samples[i], spec) for i in batch.column(0).to_pylist()]
            yield pa.RecordBatch.from_pylist(done, schema=ASSEMBLY_SCHEMA)

    return assemble


def _measure(spark, job: Job, table: pa.Table, scratch: str, started: float) -> Measured:
    """Run the stages on a spread sample of the plan's chunks (`plan_table` of every raster)."""
    slots = task_slots(spark)
    partitions = TASKS_PER_SLOT * slots
    size = sample_size(len(table), job.config.estimate_sample, slots)
    picks = spread_sample(
        table["raster_index"].to_numpy(),
        table["chunk_row"].to_numpy(),
        table["chunk_col"].to_numpy(),
        size,
    )
    sample = table.take(pa.array(picks))
    staging = tuple(storage.join(scratch, storage.name(r.staging)) for r in job.rasters)
    for folder in staging:
        storage.make_folders(folder)
    spec = replace(stage_spec(job, list(job.rasters), task_gpu_share(spark)), staging=staging)
    seconds = {"setup_s": time.perf_counter() - started}

    failed = f"{job.output}: estimate failed"
    t = time.perf_counter()
    results = run_stage(
        spark,
        sample,
        partitions,
        lambda shipment: sample_inference(spec, shipment),
        SAMPLE_SCHEMA,
        failed=failed,
        hint=NOTHING_WRITTEN,
        package=job.package,
    )
    seconds["stage_s"] = time.perf_counter() - t

    samples = assembly_samples(job, sample, results, staging, scratch, slots)
    for each in samples:
        storage.make_folders(each.folder)
    assembling = sample_assembly(samples, assembly_spec(job))
    t = time.perf_counter()
    assembled = run_stage(
        spark,
        pa.table({"sample": pa.array(range(len(samples)), pa.int64())}),
        partitions,
        lambda _: assembling,
        ASSEMBLY_SCHEMA,
        failed=failed,
        hint=NOTHING_WRITTEN,
    )
    seconds["assembly_s"] = time.perf_counter() - t
    cogs = sum(len(s.cogs) for s in samples)
    return measured_from(len(table), sample, results, assembled, cogs, seconds, slots)
