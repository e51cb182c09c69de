"""The assembly stage: Spark tasks make each raster's outputs from its chunks
(`assembly.assemble_raster`), a few rasters each, so the driver never touches pixels; with
`--verify`, with the model the workers hold.

A DataFrame stage, like inference, so it runs in the Python workers already started (an RDD
job would start others). Its tasks carry an `AssemblySpec` and the rasters' plans, not the
model's bytes: with `--verify` those are shipped once (`session.shipped`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from sparkinfer.assembly import (
    ASSEMBLY_RESULT_SCHEMA,
    AssemblyResult,
    AssemblySpec,
    assemble_raster,
)
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.devices import task_resources
from sparkinfer.model import load_for_task
from sparkinfer.prepare import Job, runtime_options
from sparkinfer.provenance import describe
from sparkinfer.raster_job import RasterJob
from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.session import Shipment, run_stage, task_slots


def assembly_spec(job: Job) -> AssemblySpec:
    """What the assembly tasks of `job` need."""
    config = job.config
    return AssemblySpec(
        cog=config.cog,
        model=job.model,
        model_sha256=job.package.digest,
        tiling=job.tiling,
        min_area=config.min_area,
        bands=job.bands,
        verify=config.verify,
        confidence=config.confidence,
        uncertain=config.uncertain,
        uncertain_size=config.uncertain_size,
        provenance=describe(config, job.model, job.package, job.tiling, job.model_item),
    )


def assembly_partition(
    rasters: list[RasterJob],
    spec: AssemblySpec,
    options: RuntimeOptions,
    shipment: Shipment | None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """What each task runs: the rasters its rows name, assembled; with a `shipment`, verified
    with its model, loaded on the task's device when first needed."""

    def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def runtime():
            return load_for_task(shipment.package(), options, task_resources())

        verifying = None if shipment is None else runtime
        for batch in batches:
            done = [
                assemble_raster(rasters[i], spec, verifying)
                for i in batch.column("raster").to_pylist()
            ]
            rows = [vars(result) for result in done]
            yield pa.RecordBatch.from_pylist(rows, schema=ASSEMBLY_RESULT_SCHEMA)

    return assemble


def assemble_on_executors(
    spark, rasters: list[RasterJob], job: Job, failed: str, hint: str
) -> list[AssemblyResult]:
    """Assemble `rasters` in Spark tasks (a task costs about 0.1 s: a few rasters each); a
    failed Spark job raises `failed` in one line, with `hint`."""
    table = pa.table({"raster": list(range(len(rasters)))})
    partitions = min(len(rasters), TASKS_PER_SLOT * task_slots(spark))
    spec = assembly_spec(job)
    rows = run_stage(
        spark,
        table,
        partitions,
        lambda shipment: assembly_partition(rasters, spec, runtime_options(job.config), shipment),
        ASSEMBLY_RESULT_SCHEMA,
        failed=failed,
        hint=hint,
        package=job.package if spec.verify else None,
    )
    return [AssemblyResult(**row) for row in rows.to_pylist()]
