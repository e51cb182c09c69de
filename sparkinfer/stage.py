"""The Spark stage: the plan as a DataFrame of chunks, inference and writing on executors.

Spark is only at the edges of this module. `plan_dataframe` turns the plan (an Arrow table, one
row per chunk with its tiles) into a DataFrame whose partitions are runs of spatially adjacent
chunks. `predict_tiles` and `write_chunks` are the per-partition functions given to
`mapInArrow`: the first reads read windows with rasterio, runs the model on batches of tiles and
yields each tile's cropped prediction as Arrow binary columns; the second streams those into the
chunk GeoTIFFs and yields one small row per chunk. Both run in the same Python worker, one after
the other on the same iterator, so predictions never leave the executor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import rasterio

from sparkinfer.config import Normalization
from sparkinfer.model import ModelPackage, load_package
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo, normalize, read_window
from sparkinfer.writers import CLASS_NODATA, ChunkSpec, ChunkWriter


@dataclass(frozen=True)
class StageSpec:
    """What executors need to infer and write every chunk (sent with the task closure)."""

    rasters: tuple[RasterInfo, ...]
    staging: tuple[str, ...]  # one chunk folder per raster
    bands: tuple[int, ...]
    normalization: Normalization
    batch_size: int
    classes: int
    scores: bool


CHUNK_KEY = ("raster_index", "chunk_row", "chunk_col")

PREDICTION_SCHEMA = pa.schema(
    [
        ("raster_index", pa.int32()),
        ("chunk_row", pa.int32()),
        ("chunk_col", pa.int32()),
        ("chunk_row_off", pa.int32()),
        ("chunk_col_off", pa.int32()),
        ("chunk_height", pa.int32()),
        ("chunk_width", pa.int32()),
        ("chunk_tiles", pa.int32()),
        ("tile_row", pa.int32()),
        ("tile_col", pa.int32()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("inferred", pa.bool_()),
        ("classes", pa.binary()),  # uint8 (height, width), CLASS_NODATA where invalid
        ("scores", pa.binary()),  # float32 (height, width, classes), NaN where invalid; or null
        ("read_s", pa.float64()),
        ("infer_s", pa.float64()),
    ]
)

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
    ]
)


def plan_dataframe(spark, chunk_tables: list[pa.Table], partitions: int):
    """A DataFrame of chunks with `partitions` partitions of consecutive chunks.

    `createDataFrame` makes one partition per record batch of the Arrow table, so the table is
    built from exactly one batch per partition.
    """
    table = pa.concat_tables(
        t.add_column(0, "raster_index", pa.array(np.full(len(t), i, np.int32)))
        for i, t in enumerate(chunk_tables)
    ).combine_chunks()
    bounds = np.linspace(0, len(table), min(partitions, len(table)) + 1).astype(int)
    batches = [table.slice(a, b - a).to_batches()[0] for a, b in pairwise(bounds)]
    return spark.createDataFrame(pa.Table.from_batches(batches))


@dataclass
class _PendingTile:
    row: dict
    pixels: np.ndarray
    valid: np.ndarray  # of the core only
    read_s: float


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.cpus() if context is not None else 1


def predict_tiles(
    batches: Iterator[pa.RecordBatch], spec: StageSpec, package: ModelPackage
) -> Iterator[pa.RecordBatch]:
    """Per partition of chunk rows: each tile's cropped prediction, one record batch per model call.

    Tiles whose core is all nodata are not sent to the model; they come back with
    `inferred=False` and a class map of CLASS_NODATA.
    """
    predictor = None
    datasets: dict[int, rasterio.DatasetReader] = {}
    pending: list[_PendingTile] = []
    bands = list(spec.bands)

    def run_batch() -> pa.RecordBatch:
        nonlocal predictor
        if predictor is None:
            predictor = load_package(package, threads=_task_cpus())
        started = time.perf_counter()
        output = predictor(np.stack([p.pixels for p in pending]))
        share = (time.perf_counter() - started) / len(pending)
        rows = []
        for tile, out in zip(pending, output, strict=True):
            r = tile.row
            top, left = r["core_row_off"] - r["read_row_off"], r["core_col_off"] - r["read_col_off"]
            core = out[top : top + r["core_height"], left : left + r["core_width"]]
            rows.append(_prediction_row(r, core, tile.valid, spec.scores, tile.read_s, share))
        pending.clear()
        return _to_batch(rows)

    with rasterio.Env(**GDAL_READ_OPTIONS):
        try:
            for batch in batches:
                for chunk in batch.to_pylist():
                    index = chunk["raster_index"]
                    info = spec.rasters[index]
                    if index not in datasets:
                        datasets[index] = rasterio.open(info.path)
                    src = datasets[index]
                    chunk_fields = {
                        "raster_index": index,
                        "chunk_row": chunk["chunk_row"],
                        "chunk_col": chunk["chunk_col"],
                        "chunk_row_off": chunk["row_off"],
                        "chunk_col_off": chunk["col_off"],
                        "chunk_height": chunk["height"],
                        "chunk_width": chunk["width"],
                        "chunk_tiles": len(chunk["tiles"]),
                    }
                    for tile in chunk["tiles"]:
                        row = chunk_fields | tile
                        started = time.perf_counter()
                        pixels, valid = read_window(
                            src, bands, tile["read_row_off"], tile["read_col_off"],
                            tile["read_height"], tile["read_width"], check_mask=info.has_mask,
                        )  # fmt: skip
                        top = tile["core_row_off"] - tile["read_row_off"]
                        left = tile["core_col_off"] - tile["read_col_off"]
                        core_valid = valid[
                            top : top + tile["core_height"], left : left + tile["core_width"]
                        ]
                        if not core_valid.any():
                            read_s = time.perf_counter() - started
                            yield _to_batch([_skipped_row(row, read_s)])
                            continue
                        normalize(pixels, valid, spec.normalization)
                        read_s = time.perf_counter() - started
                        if pending and pending[0].pixels.shape != pixels.shape:
                            yield run_batch()
                        pending.append(_PendingTile(row, pixels, core_valid.copy(), read_s))
                        if len(pending) >= spec.batch_size:
                            yield run_batch()
            if pending:
                yield run_batch()
        finally:
            for src in datasets.values():
                src.close()


def _prediction_row(row, core, valid, with_scores, read_s, infer_s) -> dict:
    if core.shape[-1] == 1:  # one sigmoid channel: binary segmentation
        classes = (core[..., 0] >= 0.5).astype(np.uint8)
    else:
        classes = core.argmax(axis=-1).astype(np.uint8)
    classes[~valid] = CLASS_NODATA
    scores = None
    if with_scores:
        scores = core.astype(np.float32, copy=True)
        scores[~valid] = np.nan
        scores = scores.tobytes()
    return _output_row(row, True, classes.tobytes(), scores, read_s, infer_s)


def _skipped_row(row, read_s) -> dict:
    return _output_row(row, False, None, None, read_s, 0.0)


def _output_row(row, inferred, classes, scores, read_s, infer_s) -> dict:
    return {
        **{k: row[k] for k in PREDICTION_SCHEMA.names[:8]},
        "tile_row": row["tile_row"],
        "tile_col": row["tile_col"],
        "row_off": row["core_row_off"],
        "col_off": row["core_col_off"],
        "height": row["core_height"],
        "width": row["core_width"],
        "inferred": inferred,
        "classes": classes,
        "scores": scores,
        "read_s": read_s,
        "infer_s": infer_s,
    }


def _to_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=PREDICTION_SCHEMA)


def write_chunks(
    predictions: Iterator[pa.RecordBatch], spec: StageSpec
) -> Iterator[pa.RecordBatch]:
    """Stream tile predictions into chunk files; one result row per chunk once it is complete."""
    open_chunks: dict[tuple, tuple[ChunkWriter, dict]] = {}
    try:
        for batch in predictions:
            for row in batch.to_pylist():
                key = tuple(row[k] for k in CHUNK_KEY)
                if key not in open_chunks:
                    open_chunks[key] = (_open_chunk(row, spec), _new_result(row))
                writer, result = open_chunks[key]
                started = time.perf_counter()
                height, width = row["height"], row["width"]
                if row["inferred"]:
                    classes = np.frombuffer(row["classes"], np.uint8).reshape(height, width)
                    scores = None
                    if row["scores"] is not None:
                        scores = np.frombuffer(row["scores"], np.float32).reshape(
                            height, width, spec.classes
                        )
                    result["inferred"] += 1
                else:
                    classes = np.full((height, width), CLASS_NODATA, np.uint8)
                    scores = (
                        np.full((height, width, spec.classes), np.nan, np.float32)
                        if spec.scores
                        else None
                    )
                    result["skipped"] += 1
                writer.write(row["row_off"], row["col_off"], classes, scores)
                result["read_s"] += row["read_s"]
                result["infer_s"] += row["infer_s"]
                result["write_s"] += time.perf_counter() - started
                if result["inferred"] + result["skipped"] == result["tiles"]:
                    started = time.perf_counter()
                    writer.commit()
                    result["write_s"] += time.perf_counter() - started
                    del open_chunks[key]
                    yield pa.RecordBatch.from_pylist([result], schema=CHUNK_RESULT_SCHEMA)
        if open_chunks:
            raise RuntimeError(f"chunks left incomplete: {sorted(open_chunks)}")
    finally:
        for writer, _ in open_chunks.values():
            writer.abort()


def _open_chunk(row: dict, spec: StageSpec) -> ChunkWriter:
    chunk = ChunkSpec(
        folder=Path(spec.staging[row["raster_index"]]),
        chunk_row=row["chunk_row"],
        chunk_col=row["chunk_col"],
        row_off=row["chunk_row_off"],
        col_off=row["chunk_col_off"],
        height=row["chunk_height"],
        width=row["chunk_width"],
    )
    return ChunkWriter(chunk, spec.rasters[row["raster_index"]], spec.classes, spec.scores)


def _new_result(row: dict) -> dict:
    return {
        "raster_index": row["raster_index"],
        "chunk_row": row["chunk_row"],
        "chunk_col": row["chunk_col"],
        "tiles": row["chunk_tiles"],
        "inferred": 0,
        "skipped": 0,
        "read_s": 0.0,
        "infer_s": 0.0,
        "write_s": 0.0,
    }


def infer_and_write(spark, plan_df, spec: StageSpec, package: ModelPackage) -> pa.Table:
    """Run inference and chunk writing on the executors; the per-chunk results, on the driver."""
    model = spark.sparkContext.broadcast(package)

    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from write_chunks(predict_tiles(batches, spec, model.value), spec)

    try:
        rows = plan_df.mapInArrow(partition, _spark_schema(CHUNK_RESULT_SCHEMA)).collect()
    finally:
        model.unpersist()
    return pa.Table.from_pylist([r.asDict() for r in rows], schema=CHUNK_RESULT_SCHEMA)


def prediction_dataframe(spark, plan_df, spec: StageSpec, package: ModelPackage):
    """Tile predictions as a DataFrame (PREDICTION_SCHEMA), for callers that write elsewhere."""
    model = spark.sparkContext.broadcast(package)
    return plan_df.mapInArrow(
        lambda batches: predict_tiles(batches, spec, model.value),
        _spark_schema(PREDICTION_SCHEMA),
    )


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)

