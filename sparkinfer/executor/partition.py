"""What each task runs over its chunk rows: read, predict, merge each chunk, commit it; one
`ChunkResult` row per chunk. No Spark here: what the task's context says (its cores, GPU and
attempt number) comes in as arguments."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from sparkinfer import storage
from sparkinfer.confidence import AGREEMENT, SCORE_MEASURES
from sparkinfer.devices import TaskResources
from sparkinfer.executor.commit import (
    ChipTable,
    Polygons,
    Sink,
    TileCounts,
    UncertainCandidates,
    commit_chunk,
)
from sparkinfer.executor.merge import BlendChunk, ChipChunk, ChunkPrediction, CropChunk
from sparkinfer.executor.predict import (
    PredictedWindow,
    PredictionOf,
    chip_prediction,
    core_prediction,
    predict_windows,
)
from sparkinfer.executor.read import (
    KeptPart,
    WindowReader,
    planned_chunks,
    prefetched,
    whole_window,
    window_core,
)
from sparkinfer.executor.result import ChunkResult, executor_name, result_batch
from sparkinfer.executor.spec import StageSpec
from sparkinfer.inspection import class_count
from sparkinfer.model import ModelPackage, load_for_task
from sparkinfer.plan import Chunk
from sparkinfer.writers import is_committed


@dataclass(frozen=True)
class Parts:
    """The parts a task is made of, chosen once from the stage's options: which part of each
    window is kept, what its prediction is, what its chunk's prediction is, where that flows."""

    kept_part: KeptPart
    prediction_of: PredictionOf
    chunk: Callable[[Chunk], ChunkPrediction]
    sinks: tuple[Sink, ...]
    with_scores: bool  # whether the model gives scores: written, blended or a chip's

    @classmethod
    def of(cls, spec: StageSpec) -> Parts:
        channels, scores, measure = spec.channels, spec.scores, spec.confidence
        confidence = measure is not None
        unsure: tuple[Sink, ...] = ()
        if spec.uncertain is not None:
            grids = tuple(spec.grid(i) for i in range(len(spec.rasters)))
            unsure = (UncertainCandidates(grids, *spec.uncertain, class_count(channels)),)
        if spec.chips:
            return cls(
                kept_part=whole_window,
                prediction_of=partial(chip_prediction, confidence=measure),
                chunk=lambda chunk: ChipChunk(chunk.core, channels, scores, confidence),
                sinks=(ChipTable(channels), *unsure),
                with_scores=True,
            )
        sinks: tuple[Sink, ...] = (TileCounts(spec.plans, class_count(channels)), *unsure)
        if spec.polygons:
            sinks += (Polygons(spec.rasters),)
        if spec.blend:
            overlap = spec.plans[0].tiling.overlap
            return cls(
                kept_part=window_core,
                prediction_of=core_prediction,
                chunk=lambda chunk: BlendChunk(chunk.core, channels, scores, overlap, measure),
                sinks=sinks,
                with_scores=True,
            )
        return cls(
            kept_part=window_core,
            prediction_of=partial(core_prediction, confidence=measure, keep_scores=scores),
            chunk=lambda chunk: CropChunk(chunk.core, channels, scores, confidence),
            sinks=sinks,
            with_scores=scores or measure in SCORE_MEASURES,
        )


@dataclass
class _OpenChunk:
    """A chunk whose windows are coming in, and the figures of its result so far."""

    prediction: ChunkPrediction | None  # None once a window failed: nothing of it is kept
    received: int = 0
    inferred: int = 0
    skipped: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    error: str | None = None


class _OpenChunks:
    """The chunks a task is merging: each window's prediction goes into its chunk's, and a
    chunk is committed once its last window is in. Used from one thread at a time."""

    def __init__(
        self, spec: StageSpec, parts: Parts, gpu: str | None, device: str, task_started: float
    ) -> None:
        self.spec = spec
        self.parts = parts
        self.gpu = gpu  # the address Spark assigned the task
        self.device = device  # what runs the model
        self.task_started = task_started
        self.open: dict[tuple[int, int, int], _OpenChunk] = {}

    def add(self, predicted: PredictedWindow) -> ChunkResult | None:
        """Add one window's prediction; its chunk's result when it was the chunk's last."""
        place = predicted.place
        index, chunk = place.raster_index, place.chunk
        key = (index, chunk.row, chunk.col)
        state = self.open.get(key)
        if state is None:
            state = self.open[key] = _OpenChunk(
                None if predicted.error else self.parts.chunk(chunk)
            )
        started = time.perf_counter()
        if predicted.error is not None:
            state.error = state.error or predicted.error
            state.prediction = None
        else:
            if predicted.prediction is None:
                state.skipped += 1
            else:
                state.inferred += 1
            if state.prediction is not None:
                state.prediction.add(place.window, predicted.prediction)
        state.read_s += predicted.read_s
        state.infer_s += predicted.infer_s
        state.received += 1
        complete = state.received == chunk.windows
        if complete:
            if state.prediction is not None:
                commit_chunk(self.spec, index, chunk, state.prediction.result(), self.parts.sinks)
            del self.open[key]
        state.write_s += time.perf_counter() - started
        if not complete:
            return None
        return ChunkResult(
            raster_index=index,
            chunk_row=chunk.row,
            chunk_col=chunk.col,
            tiles=chunk.tiles,
            inferred=state.inferred,
            skipped=state.skipped,
            read_s=state.read_s,
            infer_s=state.infer_s,
            write_s=state.write_s,
            error=state.error,
            reused=False,
            gpu=self.gpu,
            device=self.device,
            executor=executor_name(),
            task_started=self.task_started,
            finished=time.time(),
        )


def _reused(raster_index: int, chunk: Chunk, task_started: float) -> ChunkResult:
    """The result of a chunk found committed."""
    return ChunkResult(
        raster_index=raster_index,
        chunk_row=chunk.row,
        chunk_col=chunk.col,
        tiles=chunk.tiles,
        inferred=0,
        skipped=0,
        read_s=0.0,
        infer_s=0.0,
        write_s=0.0,
        error=None,
        reused=True,
        gpu=None,
        device=None,
        executor=executor_name(),
        task_started=task_started,
        finished=time.time(),
    )


def _committed(
    predicted: Iterator[PredictedWindow], chunks: _OpenChunks, waiting: int
) -> Iterator[ChunkResult]:
    """Each chunk's result, once the windows' predictions are merged and the chunk committed.

    That is done on a thread of its own while the model runs on the next batch; at most
    `waiting` predictions wait for it."""
    queued: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="sparkinfer-write") as pool:
        try:
            for window in predicted:
                queued.append(pool.submit(chunks.add, window))
                while queued and (queued[0].done() or len(queued) > waiting):
                    if (result := queued.popleft().result()) is not None:
                        yield result
            while queued:
                if (result := queued.popleft().result()) is not None:
                    yield result
            if chunks.open:
                raise RuntimeError(f"chunks left incomplete: {sorted(chunks.open)}")
        finally:
            for future in queued:
                future.cancel()
            pool.shutdown(wait=True)


def _skip_committed(
    batches: Iterable[pa.RecordBatch],
    spec: StageSpec,
    attempt: int,
    reused: list[ChunkResult],
    started: float,
) -> Iterator[pa.RecordBatch]:
    """The chunk rows whose files are not committed yet; a result in `reused` for the others.

    Only a task's retry (or speculative copy), `attempt` > 0, can find chunks of its own
    committed since the driver listed the staging folders: the chunks its failed attempt
    committed (same names, same identity folder, whole files), which it keeps instead of
    inferring them again. (The stage reads a local relation, no shuffle: it is never
    re-attempted as a whole, only its tasks are.) Each staging folder is listed once per task
    (one request on S3, not one per chunk)."""
    if attempt == 0:
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
                listed[index],
                chunk.row,
                chunk.col,
                spec.scores,
                confidence=spec.confidence is not None,
                polygons=spec.polygons,
            )
            todo.append(not done)
            if done:
                reused.append(_reused(index, chunk, started))
        if any(todo):
            yield batch if all(todo) else batch.filter(pa.array(todo, pa.bool_()))


def infer_partition(
    batches: Iterable[pa.RecordBatch],
    spec: StageSpec,
    package: ModelPackage,
    resources: TaskResources | None = None,
    attempt: int = 0,
) -> Iterator[pa.RecordBatch]:
    """The chunk rows of `batches` (the stage's plan table) read, inferred and written, with
    `resources` (default: one core, no GPU), as attempt `attempt` of the task; one
    `CHUNK_RESULT_SCHEMA` row per chunk. Runs in any process: Spark's tasks run it in
    `mapInArrow`, `benchmarks/device.py` on a GPU machine without Spark."""
    started = time.time()
    resources = resources or TaskResources()
    reused: list[ChunkResult] = []
    todo = _skip_committed(batches, spec, attempt, reused, started)
    runtime = load_for_task(package, spec.runtime, resources)
    parts = Parts.of(spec)
    reader = WindowReader(spec.rasters, spec.bands, spec.mosaics)
    windows = prefetched(
        planned_chunks(todo, spec.plans), reader, spec.readers or resources.cpus, parts.kept_part
    )
    predicted = predict_windows(
        windows,
        runtime,
        parts.prediction_of,
        with_scores=parts.with_scores,
        batch_size=spec.batch_size,
        gpu_share=spec.gpu_share,
        agreement=spec.confidence == AGREEMENT,
    )
    chunks = _OpenChunks(spec, parts, resources.gpu, str(runtime.device), started)
    waiting = spec.plans[0].tiling.chunk_tiles ** 2 if spec.plans else 1
    for result in _committed(predicted, chunks, waiting):
        yield result_batch([result])
    if reused:
        yield result_batch(reused)
