"""What a task tells the driver: one small row per chunk (`ChunkResult`), never its pixels, which
stay on the executor. The driver's report, progress and estimate read these columns."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass

import pyarrow as pa

CHUNK_RESULT_SCHEMA = pa.schema(
    [
        ("raster_index", pa.int32()),
        ("chunk_row", pa.int32()),
        ("chunk_col", pa.int32()),
        ("tiles", pa.int32()),
        ("inferred", pa.int32()),
        ("skipped", pa.int32()),
        ("read_s", pa.float64()),
        ("infer_s", pa.float64()),
        ("write_s", pa.float64()),
        ("error", pa.string()),  # why the chunk could not be read; null when it was written
        ("reused", pa.bool_()),  # already committed by a failed attempt of the same task
        ("gpu", pa.string()),  # the GPU address Spark assigned the task; null without GPUs
        ("device", pa.string()),  # what ran the model: "cpu" or "gpu:N" in the worker
        ("executor", pa.string()),  # which executor ran the task (`executor_name`)
        ("task_started", pa.float64()),  # when the chunk's task started, Unix seconds
        ("finished", pa.float64()),  # when the chunk was committed (or found committed)
    ]
)


@dataclass(frozen=True)
class ChunkResult:
    """One chunk's row of `CHUNK_RESULT_SCHEMA`, made once the chunk is done with: committed,
    found committed (`reused`), or failed (`error`). Windows, with `merge: blend`, count as
    the chunk's inferred and skipped tiles."""

    raster_index: int
    chunk_row: int
    chunk_col: int
    tiles: int
    inferred: int  # windows the model ran on
    skipped: int  # windows with no valid pixel to keep
    read_s: float
    infer_s: float
    write_s: float
    error: str | None
    reused: bool
    gpu: str | None
    device: str | None
    executor: str
    task_started: float
    finished: float


def result_batch(results: list[ChunkResult]) -> pa.RecordBatch:
    """`results` as rows of `CHUNK_RESULT_SCHEMA`."""
    return pa.RecordBatch.from_pylist([asdict(r) for r in results], schema=CHUNK_RESULT_SCHEMA)


def executor_name() -> str:
    """The executor this Python worker serves, as host:pid of its parent: the executor's Python
    daemon, or the executor itself where Spark starts workers without one. (PySpark does not
    tell a task its executor's id.)"""
    return f"{socket.gethostname()}:{os.getppid()}"
