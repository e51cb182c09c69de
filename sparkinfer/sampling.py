"""The tasks of `--estimate`'s stages, in any process: a sample of the chunks inferred and
written as a run's tasks do (`infer_partition`), with a worker's first model call measured;
then a few of those chunks made into COGs with a tile index and a STAC Item, timed. The stages
that run them are `stages.estimate`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from affine import Affine

from sparkinfer import __version__, storage
from sparkinfer.assembly import AssemblySpec
from sparkinfer.catalog import write_stac_item, write_tile_index
from sparkinfer.cogs import assemble_cog
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.devices import TaskResources
from sparkinfer.executor import CHUNK_RESULT_SCHEMA, StageSpec, infer_partition
from sparkinfer.model import ModelPackage, load_for_task
from sparkinfer.prepare import Job
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster_job import RasterJob
from sparkinfer.writers import ChunkSpec

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


def _first_call(
    spec: StageSpec, package: ModelPackage, resources: TaskResources, row: dict
) -> tuple[float, float]:
    """Two model calls on a batch of the stage's windows (zeros): by how much the first exceeds
    the second, which is the tracing or compiling a worker does once (nothing in a worker that
    did it before), and both calls' seconds."""
    index = row["raster_index"]
    window = spec.plans[index].chunk_windows(row["chunk_row"], row["chunk_col"])[0].read
    runtime = load_for_task(package, spec.runtime, resources)
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
    resources: TaskResources,
    task: int,
    attempt: int = 0,
) -> Iterator[pa.RecordBatch]:
    """Task `task` of the sample stage (its `attempt`, given `resources`): the first call
    measured, then `infer_partition` on its chunks, timed; its chunks' result rows with the
    task's figures."""
    batches = list(batches)  # a few numbers per chunk
    rows = [row for batch in batches for row in batch.to_pylist()]
    if not rows:
        return
    first_call_s, calls_s = _first_call(spec, package, resources, rows[0])
    started = time.perf_counter()
    results = list(infer_partition(iter(batches), spec, package, resources, attempt))
    figures = {
        "task": task,
        "task_s": time.perf_counter() - started,
        "calls_s": calls_s,
        "first_call_s": first_call_s,
    }
    for batch in results:
        yield pa.RecordBatch.from_pylist([r | figures for r in batch.to_pylist()], SAMPLE_SCHEMA)


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


def assemble_sample(sample: AssemblySample, spec: AssemblySpec) -> dict:
    """What `assembly.assemble_raster` does for a raster, on the sample: its seconds and bytes
    (an `ASSEMBLY_SCHEMA` row)."""
    started = time.perf_counter()
    raster, model, options = sample.raster, spec.model, spec.cog
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


def assembly_samples(
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
