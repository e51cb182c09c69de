"""The inference stage's Spark shell: the plan as a DataFrame of chunks, run on the executors.

What a task does (read, predict, merge, commit: `sparkinfer.executor`) never touches Spark. This
module is its edge with Spark: what the driver makes for the stage (`stage_spec`, and
`plan_table`, one small row per chunk), and the `mapInArrow` that runs `infer_partition` over
runs of spatially adjacent chunks with each task's cores, GPU and attempt number
(`infer_and_write`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from sparkinfer.devices import task_resources
from sparkinfer.executor import CHUNK_RESULT_SCHEMA, StageSpec, infer_partition
from sparkinfer.model import ModelPackage
from sparkinfer.prepare import Job, runtime_options
from sparkinfer.raster_job import RasterJob
from sparkinfer.session import Shipment, run_stage

INSPECTED_SCHEMA = pa.schema([("inspected", pa.binary())])  # a pickled ModelInfo or error line


def stage_spec(job: Job, rasters: list[RasterJob], gpu_share: float = 1) -> StageSpec:
    """What the executors need to infer and write `rasters` (in this order) for `job`, on tasks
    given `gpu_share` of a GPU each (`session.task_gpu_share`)."""
    return StageSpec(
        rasters=tuple(r.info for r in rasters),
        plans=tuple(r.plan for r in rasters),
        staging=tuple(str(r.staging) for r in rasters),
        bands=job.bands,
        runtime=runtime_options(job.config),
        batch_size=None if job.config.batch_size == "auto" else job.config.batch_size,
        readers=None if job.config.readers == "auto" else job.config.readers,
        gpu_share=gpu_share,
        channels=job.model.channels,
        scores=job.config.scores,
        confidence=job.config.confidence,
        uncertain=(job.config.uncertain, job.config.uncertain_size)
        if job.config.uncertain
        else None,
        polygons=job.config.polygons,
        mosaics=tuple(r.mosaic for r in rasters),
    )


def plan_table(chunk_tables: list[pa.Table]) -> pa.Table:
    """The stage's input: the chunks of every raster in one table, each row with its raster's
    index."""
    return pa.concat_tables(
        t.add_column(0, "raster_index", pa.array(np.full(len(t), i, np.int32)))
        for i, t in enumerate(chunk_tables)
    )


def inference(spec: StageSpec, shipment: Shipment):
    """The stage's mapInArrow function: each task's chunks read, inferred and written, with its
    cores, GPU and attempt number (a retry finds what its failed attempt committed)."""

    def infer(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        attempt = TaskContext.get().attemptNumber()
        return infer_partition(batches, spec, shipment.package(), task_resources(), attempt)

    return infer


def infer_and_write(
    spark,
    plan: pa.Table,
    partitions: int,
    spec: StageSpec,
    package: ModelPackage,
    *,
    failed: str,
    hint: str,
    tapered: bool = False,
) -> pa.Table:
    """Run inference and chunk writing on the executors, over `plan` (`plan_table`) cut into
    `partitions` tasks, `tapered` or even (`plan.task_bounds`); the per-chunk results, on the
    driver. A failed Spark job raises `failed` in one line, with `hint`."""
    return run_stage(
        spark,
        plan,
        partitions,
        lambda shipment: inference(spec, shipment),
        CHUNK_RESULT_SCHEMA,
        failed=failed,
        hint=hint,
        package=package,
        tapered=tapered,
    )
