"""The Spark stage: the plan as a DataFrame of chunks, inference and writing on executors.

Spark is only at the edges of this module (`sparkinfer.session`): `map_in_partitions` runs the
plan (an Arrow table, one small row per chunk) in partitions that are runs of spatially
adjacent chunks. `predict_tiles` and `write_chunks` run, chained, in each partition's
`mapInArrow`: the first reads read windows with rasterio on a background thread (ahead of the
model), runs the model on batches of tiles and yields each tile's prediction cropped to its
core; the second streams those into the chunk GeoTIFFs and yields one small row per chunk. A
retried task keeps the chunks its failed attempt committed. Predictions stay numpy
arrays inside the Python worker: they never leave the executor.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import rasterio
from rasterio.errors import RasterioError

from sparkinfer import storage
from sparkinfer.blend import BlendedChunk
from sparkinfer.catalog import TILE_COUNTS_TAG, tile_counts
from sparkinfer.chips import ChipResult, chunk_chip_table, output_grid
from sparkinfer.devices import TaskResources, gpu_ordinal, task_resources
from sparkinfer.errors import ModelError, first_line
from sparkinfer.model import (
    ModelInfo,
    ModelPackage,
    class_count,
    inspect_package,
    load_package,
)
from sparkinfer.plan import ChipGrid, Chunk, RasterPlan, Tile
from sparkinfer.polygons import chunk_polygons, write_chunk_polygons
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo, read_window
from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.session import (
    map_in_partitions,
    shipped,
    spark_schema,
    task_slots,
    worker_environment,
)
from sparkinfer.writers import CLASS_NODATA, ChunkSpec, ChunkWriter, is_committed


@dataclass(frozen=True)
class StageSpec:
    """What executors need to infer and write every chunk (sent with the task closure)."""

    rasters: tuple[RasterInfo, ...]
    plans: tuple[RasterPlan, ...]  # each raster's, to expand a chunk row into its tiles
    staging: tuple[str, ...]  # one chunk folder per raster
    bands: tuple[int, ...]
    runtime: RuntimeOptions  # how the model runs, the pixels' normalisation included
    batch_size: int | None  # tiles per model call; None: the runtime's auto_batch
    readers: int | None  # reader threads per task; None: one per core of the task
    gpu_share: float  # of its GPU, a GPU task's (`spark.task.resource.gpu.amount`): auto batch
    channels: int  # the model's output channels: the scores' bands
    scores: bool
    polygons: bool  # each chunk's polygons are written beside it (`sparkinfer.polygons`)

    @property
    def blend(self) -> bool:
        """Whether windows' scores are blended (`merge: blend`) instead of cropped."""
        return self.plans[0].tiling.merge == "blend"

    @property
    def chips(self) -> bool:
        """Whether the model is a chip classifier: one class per window."""
        return isinstance(self.plans[0].tiling, ChipGrid)

    def grid(self, index: int) -> RasterInfo:
        """The grid raster `index`'s outputs are written on: its own, or its chips' cells."""
        return output_grid(self.rasters[index], self.plans[index].tiling)


INSPECTED_SCHEMA = pa.schema([("inspected", pa.binary())])  # a pickled ModelInfo or error line


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


def executor_name() -> str:
    """The executor this Python worker serves, as host:pid of its parent: the executor's Python
    daemon, or the executor itself where Spark starts workers without one. (PySpark does not
    tell a task its executor's id.)"""
    return f"{socket.gethostname()}:{os.getppid()}"


def plan_table(chunk_tables: list[pa.Table]) -> pa.Table:
    """The chunks of every raster in one table, each row with its raster's index."""
    return pa.concat_tables(
        t.add_column(0, "raster_index", pa.array(np.full(len(t), i, np.int32)))
        for i, t in enumerate(chunk_tables)
    )


@dataclass(frozen=True)
class PlacedTile:
    """A window of the stage's plan: which raster (its index in the stage), chunk and tile."""

    raster_index: int
    chunk: Chunk
    tile: Tile


@dataclass
class TileResult:
    """One tile's prediction, cropped to its core, on its way from the model to a chunk file."""

    placed: PlacedTile
    classes: np.ndarray | None  # uint8, the core's shape; None: core all nodata, skipped
    scores: np.ndarray | None  # float32 (core_height, core_width, classes), when asked for
    read_s: float
    infer_s: float = 0.0
    placement: dict | None = None  # "gpu": the address Spark assigned, "device": what ran it
    error: str | None = None  # the tile's chunk could not be read
    valid_share: float = 0.0  # of a chip: the share of its pixels that are valid


@dataclass
class _ReadTile:
    placed: PlacedTile
    pixels: np.ndarray | None  # read window (h, w, bands), the raster's type; None: core nodata
    valid: np.ndarray | None  # of the window; None when every pixel is valid
    core_valid: np.ndarray | None
    read_s: float
    error: str | None = None


@dataclass
class _ReadChunk:
    """A chunk of the stage's plan with the windows it infers and, once read, its read window:
    pixels (bands, height, width) in the raster's own type and their validity."""

    raster_index: int
    chunk: Chunk
    windows: list[Tile]
    data: np.ndarray | None = None
    valid: np.ndarray | None = None
    read_s: float = 0.0
    error: str | None = None  # why the window could not be read


def _plan_chunks(batches: Iterator[pa.RecordBatch], spec: StageSpec) -> Iterator[_ReadChunk]:
    """The chunk rows, each with the windows it infers, from its raster's plan."""
    for batch in batches:
        for row in batch.to_pylist():
            chunk = Chunk.of_row(row)
            windows = spec.plans[row["raster_index"]].chunk_windows(chunk.row, chunk.col)
            yield _ReadChunk(row["raster_index"], chunk, windows)


class _WindowReader:
    """Reads chunks' windows, each in one piece, with a dataset handle per raster and thread.

    A chunk's tiles are cut from its window: tiles' windows overlap by the halo and cross
    GeoTIFF blocks, so reading them one by one would decode most blocks several times. GDAL
    handles must not be shared between threads: each reader thread opens its own."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.local = threading.local()
        self.opened: list[rasterio.DatasetReader] = []
        self.lock = threading.Lock()

    def _dataset(self, index: int) -> rasterio.DatasetReader:
        datasets = self.local.__dict__.setdefault("datasets", {})
        if index not in datasets:
            datasets[index] = rasterio.open(self.spec.rasters[index].dataset)
            with self.lock:
                self.opened.append(datasets[index])
        return datasets[index]

    def read(self, chunk: _ReadChunk) -> _ReadChunk:
        started = time.perf_counter()
        info, read = self.spec.rasters[chunk.raster_index], chunk.chunk.read
        try:
            with storage.gdal_env(**GDAL_READ_OPTIONS):
                chunk.data, chunk.valid = read_window(
                    self._dataset(chunk.raster_index),
                    list(self.spec.bands),
                    read.row_off,
                    read.col_off,
                    read.height,
                    read.width,
                    info.masking,
                )
        except (RasterioError, OSError) as exc:  # a broken file fails its raster, not the job
            chunk.error = f"{info.path}: cannot read pixels ({first_line(exc, 300)})"
        chunk.read_s = time.perf_counter() - started
        return chunk

    def close(self) -> None:
        for src in self.opened:
            src.close()


def _cut(chunk: _ReadChunk, chips: bool) -> Iterator[_ReadTile]:
    """The windows of a read chunk: views of its window, with their validity. A chip's output
    is its whole window's."""
    for i, tile in enumerate(chunk.windows):
        placed = PlacedTile(chunk.raster_index, chunk.chunk, tile)
        read_s = chunk.read_s if i == 0 else 0.0  # the chunk's read, counted once
        if chunk.data is None:
            yield _ReadTile(placed, None, None, None, read_s, chunk.error)
            continue
        rows, cols = tile.read.slices(chunk.chunk.read)
        window_valid = chunk.valid[rows, cols]
        core_valid = window_valid if chips else window_valid[tile.core.slices(tile.read)]
        if not core_valid.any():
            yield _ReadTile(placed, None, None, None, read_s)
            continue
        # A view: the batch is stacked from the chunk's array, in its own type.
        pixels = np.moveaxis(chunk.data[:, rows, cols], 0, -1)
        valid = None if window_valid.all() else window_valid
        yield _ReadTile(placed, pixels, valid, core_valid, read_s)


def _prefetched(chunks: Iterator[_ReadChunk], spec: StageSpec, readers: int) -> Iterator[_ReadTile]:
    """The chunks' tiles, their windows read by `readers` threads up to `readers` chunks ahead
    of the model.

    GDAL reads and the model's call both release the GIL, so the next chunks are read and
    decoded while the model runs on this batch. The plan rows are consumed on the calling
    thread; memory holds at most `readers` + 1 chunk windows, in the raster's own type."""
    reader = _WindowReader(spec)
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(readers, thread_name_prefix="sparkinfer-read") as pool:
        try:
            for chunk in chunks:
                ahead.append(pool.submit(reader.read, chunk))
                if len(ahead) > readers:
                    yield from _cut(ahead.popleft().result(), spec.chips)
            while ahead:
                yield from _cut(ahead.popleft().result(), spec.chips)
        finally:
            for future in ahead:
                future.cancel()
            pool.shutdown(wait=True)
            reader.close()


def predict_tiles(
    batches: Iterator[pa.RecordBatch],
    spec: StageSpec,
    package: ModelPackage,
    resources: TaskResources,
) -> Iterator[TileResult]:
    """Per partition of chunk rows: each tile's prediction cropped to its core.

    Tiles whose core is all nodata are not sent to the model. The model runs on the task's GPU,
    if it has one.
    """
    runtime = load_package(package, spec.runtime, gpu_ordinal(resources.gpu), resources.cpus)
    placement = {"gpu": resources.gpu, "device": str(runtime.device)}
    pending: list[_ReadTile] = []

    def run_batch() -> Iterator[TileResult]:
        started = time.perf_counter()
        valid = None
        if any(p.valid is not None for p in pending):
            valid = np.stack(
                [np.ones(p.pixels.shape[:2], bool) if p.valid is None else p.valid for p in pending]
            )
        pixels = np.stack([p.pixels for p in pending])
        classes, scores = runtime.classify(pixels, valid, spec.scores or spec.blend or spec.chips)
        share = (time.perf_counter() - started) / len(pending)
        for i, read in enumerate(pending):
            if spec.chips:  # the window's one cell
                yield TileResult(
                    read.placed,
                    classes[i].reshape(1, 1),
                    scores[i].astype(np.float32).reshape(1, 1, -1),
                    read.read_s,
                    share,
                    placement,
                    valid_share=float(read.core_valid.mean()),
                )
                continue
            tile = read.placed.tile
            core = (i, *tile.core.slices(tile.read))
            core_classes = classes[core].copy()
            core_classes[~read.core_valid] = CLASS_NODATA
            core_scores = None
            if scores is not None:
                core_scores = scores[core].astype(np.float32, copy=True)
                core_scores[~read.core_valid] = np.nan
            yield TileResult(read.placed, core_classes, core_scores, read.read_s, share, placement)
        pending.clear()

    batch_sizes: dict[tuple, int] = {}  # per window shape and type, for batch_size auto

    def batch_size(read: _ReadTile) -> int:
        if spec.batch_size:
            return spec.batch_size
        key = (read.pixels.shape, read.pixels.dtype)
        if key not in batch_sizes:
            height, width = read.pixels.shape[:2]
            batch_sizes[key] = runtime.auto_batch(height, width, read.pixels.dtype, spec.gpu_share)
        return batch_sizes[key]

    readers = spec.readers or resources.cpus
    for read in _prefetched(_plan_chunks(batches, spec), spec, readers):
        if read.pixels is None:
            yield TileResult(
                read.placed, None, None, read.read_s, placement=placement, error=read.error
            )
            continue
        if pending and pending[0].pixels.shape != read.pixels.shape:
            yield from run_batch()
        pending.append(read)
        if len(pending) >= batch_size(read):
            yield from run_batch()
    if pending:
        yield from run_batch()


@dataclass
class _OpenChunk:
    writer: ChunkWriter | None  # None once the chunk failed: nothing of it is kept
    summary: dict  # its CHUNK_RESULT_SCHEMA row, filled as its windows arrive
    blended: BlendedChunk | None  # with `blend`: the windows' weighted scores, written at the end
    received: int = 0
    chips: list[ChipResult] = field(default_factory=list)  # a chip classifier's, as they come


class _ChunkFiles:
    """The chunks a task is writing: each window's prediction goes into its chunk's files (with
    `crop`) or its chunk's blend (with `blend`), and a chunk is committed once its last window
    is in. Used from one thread at a time."""

    def __init__(self, spec: StageSpec, started: float) -> None:
        self.spec = spec
        self.started = started
        self.open: dict[tuple, _OpenChunk] = {}

    def add(self, result: TileResult) -> dict | None:
        """Add one window's prediction; the chunk's result row when it was the chunk's last."""
        placed, spec = result.placed, self.spec
        index, where, tile = placed.raster_index, placed.chunk, placed.tile
        key = (index, where.row, where.col)
        chunk = self.open.get(key)
        if chunk is None:
            writer = None if result.error else _open_chunk(index, where, spec)
            blended = None
            if spec.blend:
                blended = BlendedChunk(where.core, spec.channels, spec.plans[index].tiling.overlap)
            chunk = self.open[key] = _OpenChunk(
                writer, _new_summary(index, where, self.started), blended
            )
        summary = chunk.summary
        started = time.perf_counter()
        if result.error is not None:
            summary["error"] = summary["error"] or result.error
            if chunk.writer is not None:
                chunk.writer.abort()
                chunk.writer = None
            chunk.blended = None
        else:
            summary["skipped" if result.classes is None else "inferred"] += 1
            if chunk.blended is not None:
                if result.scores is not None:  # a window whose part here is all nodata adds none
                    chunk.blended.add(tile, result.scores)
            elif chunk.writer is not None:
                classes, scores = result.classes, result.scores
                if spec.chips:
                    chunk.chips.append(_chip(tile, result))
                if classes is None:  # a core all nodata is written as such
                    shape = (tile.core.height, tile.core.width)
                    classes = np.full(shape, CLASS_NODATA, np.uint8)
                    if spec.scores:
                        scores = np.full((*shape, spec.channels), np.nan, np.float32)
                chunk.writer.write(tile.core.row_off, tile.core.col_off, classes, scores)
        summary["read_s"] += result.read_s
        summary["infer_s"] += result.infer_s
        chunk.received += 1
        complete = chunk.received == where.windows
        if complete:
            if chunk.writer is not None:
                if chunk.blended is not None:
                    classes, scores = chunk.blended.result()
                    chunk.writer.write(
                        where.core.row_off,
                        where.core.col_off,
                        classes,
                        scores if spec.scores else None,
                    )
                if spec.chips:
                    chunk.writer.commit(chips=chunk_chip_table(chunk.chips, spec.channels))
                else:
                    tiles = spec.plans[index].chunk_tiles(where.row, where.col)
                    if spec.polygons:
                        info = spec.rasters[index]
                        write_chunk_polygons(
                            chunk.writer.staged_file(chunk.writer.spec.polygons_path),
                            chunk_polygons(
                                chunk.writer.class_map, where.core, info.height, info.width
                            ),
                            info.transform,
                        )
                    chunk.writer.commit(
                        {
                            TILE_COUNTS_TAG: tile_counts(
                                chunk.writer.class_map,
                                where.core,
                                tiles,
                                class_count(spec.channels),
                            )
                        }
                    )
            del self.open[key]
        summary["write_s"] += time.perf_counter() - started
        if not complete:
            return None
        return summary | (result.placement or {}) | {"finished": time.time()}

    def abort(self) -> None:
        """Drop the files of every chunk not committed."""
        for chunk in self.open.values():
            if chunk.writer is not None:
                chunk.writer.abort()


def write_chunks(
    results: Iterator[TileResult], spec: StageSpec, started: float
) -> Iterator[pa.RecordBatch]:
    """Stream tile predictions into chunk files; one result row per chunk once it is complete.

    Writing (GDAL compresses with the GIL released) runs on a thread of its own while the model
    runs on the next batch; at most one chunk of tile predictions waits for it. A chunk whose
    pixels could not be read is not written: its row carries the error."""
    files = _ChunkFiles(spec, started)
    waiting = spec.plans[0].tiling.chunk_tiles ** 2 if spec.plans else 1
    queued: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="sparkinfer-write") as pool:
        try:
            for result in results:
                queued.append(pool.submit(files.add, result))
                while queued and (queued[0].done() or len(queued) > waiting):
                    yield from _result_row(queued.popleft())
            while queued:
                yield from _result_row(queued.popleft())
            if files.open:
                raise RuntimeError(f"chunks left incomplete: {sorted(files.open)}")
        finally:
            for future in queued:
                future.cancel()
            pool.shutdown(wait=True)
            files.abort()


def _result_row(written: Future) -> Iterator[pa.RecordBatch]:
    row = written.result()
    if row is not None:
        yield pa.RecordBatch.from_pylist([row], schema=CHUNK_RESULT_SCHEMA)


def _open_chunk(raster_index: int, chunk: Chunk, spec: StageSpec) -> ChunkWriter:
    files = ChunkSpec(
        spec.staging[raster_index],
        chunk.row,
        chunk.col,
        chunk.core.row_off,
        chunk.core.col_off,
        chunk.core.height,
        chunk.core.width,
    )
    return ChunkWriter(files, spec.grid(raster_index), spec.channels, spec.scores)


def _chip(tile: Tile, result: TileResult) -> ChipResult:
    """A chip's row of its chunk's chip table."""
    if result.classes is None:  # no valid pixel: not inferred
        return ChipResult(tile.row, tile.col, None, None, 0.0)
    return ChipResult(
        tile.row, tile.col, int(result.classes[0, 0]), result.scores[0, 0], result.valid_share
    )


def _new_summary(raster_index: int, chunk: Chunk, task_started: float) -> dict:
    """The chunk's `CHUNK_RESULT_SCHEMA` row, before any of its windows."""
    return {
        "raster_index": raster_index,
        "chunk_row": chunk.row,
        "chunk_col": chunk.col,
        "tiles": chunk.tiles,
        "inferred": 0,
        "skipped": 0,
        "read_s": 0.0,
        "infer_s": 0.0,
        "write_s": 0.0,
        "error": None,
        "reused": False,
        "gpu": None,
        "device": None,
        "executor": executor_name(),
        "task_started": task_started,
        "finished": None,
    }


def _retried_attempt() -> bool:
    """Whether this task ran before (a retry, or a speculative copy): only then can chunks of
    its own have been committed since the driver listed the staging folders. (The stage reads a
    local relation, no shuffle: it is never re-attempted as a whole, only its tasks are.)"""
    try:
        from pyspark import TaskContext
    except ImportError:  # run without Spark
        return False
    context = TaskContext.get()
    return context is not None and context.attemptNumber() > 0


def _skip_committed(
    batches: Iterator[pa.RecordBatch], spec: StageSpec, reused: list[dict], started: float
) -> Iterator[pa.RecordBatch]:
    """The chunk rows whose files are not committed yet; a result row in `reused` for the others.

    A retried task finds the chunks its failed attempt committed (same names, same identity
    folder, whole files): it keeps them instead of inferring them again. Each staging folder is
    listed once per task (one request on S3, not one per chunk)."""
    if not _retried_attempt():
        yield from batches
        return
    listed: dict[int, set[str]] = {}
    for batch in batches:
        todo = []
        for row in batch.to_pylist():
            index, chunk = row["raster_index"], Chunk.of_row(row)
            if index not in listed:
                listed[index] = storage.list_names(spec.staging[index])
            done = is_committed(
                listed[index], chunk.row, chunk.col, spec.scores, polygons=spec.polygons
            )
            todo.append(not done)
            if done:
                reused.append(
                    _new_summary(index, chunk, started) | {"reused": True, "finished": time.time()}
                )
        if any(todo):
            yield batch if all(todo) else batch.filter(pa.array(todo, pa.bool_()))


def infer_partition(
    batches: Iterator[pa.RecordBatch],
    spec: StageSpec,
    package: ModelPackage,
    resources: TaskResources | None = None,
) -> Iterator[pa.RecordBatch]:
    """What each task runs, in `mapInArrow`: the chunk rows of `batches` (of `plan_table`) read,
    inferred and written; one `CHUNK_RESULT_SCHEMA` row per chunk.

    `resources` default to the running Spark task's cores and GPU. No Spark session is needed:
    given `resources`, it runs in any process (`benchmarks/device.py` runs it so on a GPU)."""
    started = time.time()
    reused: list[dict] = []
    todo = _skip_committed(batches, spec, reused, started)
    resources = resources or task_resources()
    yield from write_chunks(predict_tiles(todo, spec, package, resources), spec, started)
    if reused:
        yield pa.RecordBatch.from_pylist(reused, schema=CHUNK_RESULT_SCHEMA)


def infer_and_write(
    spark,
    plan: pa.Table,
    partitions: int,
    spec: StageSpec,
    package: ModelPackage,
    tapered: bool = False,
) -> pa.Table:
    """Run inference and chunk writing on the executors, over `plan` (`plan_table`) cut into
    `partitions` tasks, `tapered` or even (`plan.task_bounds`); the per-chunk results, on the
    driver."""
    with shipped(spark, package) as model:

        def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return infer_partition(batches, spec, model.package())

        rows = map_in_partitions(spark, plan, partitions, partition, CHUNK_RESULT_SCHEMA, tapered)
    return pa.Table.from_pylist([r.asDict() for r in rows], schema=CHUNK_RESULT_SCHEMA)


def warm_workers(
    spark, package: ModelPackage, options: RuntimeOptions, names: list[str]
) -> ModelInfo | None:
    """Start a Python worker per core and load the model in each, with a job of one task per
    core, so that the stage's tasks find it loaded in the workers Spark reuses. The first task
    also inspects the model (`inspect_package`): the driver then never starts a framework.

    Returns what the inspection found; raises its ModelError; None when the job itself failed
    (the caller inspects on the driver, and the stage reports what keeps workers from running).
    """
    from py4j.protocol import Py4JJavaError
    from pyspark import TaskContext
    from pyspark.errors import PySparkException

    def load(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        resources = task_resources()
        package = model.package()
        # First, so that the runtime sets the task's thread limits before anything starts
        # the framework. The model itself, not its test-time augmentation: that is what is
        # inspected (augmentation mirrors its receptive field, the halo stays the same).
        runtime = None
        with suppress(Exception):  # the inspection below loads it again and says why it fails
            runtime = load_package(
                package, replace(options, tta="none"), gpu_ordinal(resources.gpu), resources.cpus
            )
        found = None
        if TaskContext.get().partitionId() == 0:
            try:
                found = pickle.dumps(inspect_package(package, names, options.backend, runtime))
            except ModelError as exc:
                found = pickle.dumps(str(exc))
            except Exception as exc:  # noqa: BLE001 -- whatever fails, the model is unusable
                found = pickle.dumps(f"{' + '.join(names)}: cannot load model ({first_line(exc)})")
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"inspected": [found]}, schema=INSPECTED_SCHEMA)

    cores = task_slots(spark)
    with shipped(spark, package) as model:
        with worker_environment(spark, "KERAS_BACKEND", options.backend):
            frame = spark.range(cores, numPartitions=cores).mapInArrow(
                load, spark_schema(INSPECTED_SCHEMA)
            )
        try:
            rows = frame.collect()
        except (Py4JJavaError, PySparkException):
            return None
    found = next((pickle.loads(r.inspected) for r in rows if r.inspected is not None), None)
    if isinstance(found, str):
        raise ModelError(found)
    return found
