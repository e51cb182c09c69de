"""One run of the job, in the order of the data flow: prepare (`prepare`), lock the output
folder (`lock`), the inference stage (`stages.infer`), the assembly stage (`stages.assemble`),
the report (`report`).

`prepare_job` checks the run from metadata, has the model inspected where it will run (the
session's Python workers load and inspect it, `inspected`) and plans it. `run_job` takes the
output folder's lock, skips rasters already complete for the same input, model and config,
resumes unfinished ones from their chunks, runs the Spark stages and writes `_run.json`.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import rasterio

from sparkinfer import storage
from sparkinfer.cogs import BandLayout
from sparkinfer.config import JobConfig
from sparkinfer.estimate import ESTIMATE_FILE, compared, job_identity
from sparkinfer.executor import CHUNK_RESULT_SCHEMA
from sparkinfer.grid_rasters import map_extent
from sparkinfer.inspection import ModelInfo, inspect_package
from sparkinfer.lock import OutputLock, remove_leftovers
from sparkinfer.map_index import write_map_index
from sparkinfer.outputs import STAGING_FOLDER
from sparkinfer.prepare import (
    Checked,
    Failure,
    Job,
    check_job,
    plan_job,
    runtime_options,
)
from sparkinfer.progress import Progress, reported
from sparkinfer.raster_job import IDENTITY_TAG, RasterJob
from sparkinfer.report import RunOutcome, written_rasters
from sparkinfer.session import (
    application,
    task_gpu_share,
    task_slots,
    warm_workers,
    worker_environment,
)
from sparkinfer.stages.assemble import assemble_on_executors
from sparkinfer.stages.infer import infer_and_write, plan_table, stage_spec
from sparkinfer.writers import is_committed
from sparkinfer.zarr_map import create_map_store

RUN_REPORT = "_run.json"
RESUME_HINT = "the chunks written so far are kept: run the same command again to resume"


def inspected(checked: Checked, spark=None) -> ModelInfo:
    """What the checked run's model is. With a session, its Python workers start, load the
    model and inspect it (`warm_workers`): the driver never starts a framework, and the stage
    finds the model loaded. Without one, or if that job fails, it is inspected here, from the
    package the workers load."""
    config = checked.config
    model = None
    if spark is not None:
        model = warm_workers(spark, checked.package, runtime_options(config), config.model)
    return model or inspect_package(checked.package, config.model, config.backend)


def prepare_job(config: JobConfig, spark=None) -> Job:
    """`check_job`, the model `inspected` (on `spark`'s workers, if given), `plan_job`."""
    checked = check_job(config)
    return plan_job(checked, inspected(checked, spark))


def is_complete(raster: RasterJob) -> bool:
    """Whether the raster's outputs are all there and made from the same input, model, config."""
    if not all(storage.is_file(p) for p in raster.outputs):
        return False
    if raster.zarr is not None:  # its marker says what the tile in the store was made from
        return json.loads(storage.read_text(raster.marker_path))["identity"] == raster.identity
    try:
        with storage.open_own_raster(raster.classes_path) as done:
            return done.tags().get(IDENTITY_TAG) == raster.identity
    except rasterio.errors.RasterioError:
        return False


def remove_late_chunks(complete: list[RasterJob]) -> None:
    """Drop the staging folders of complete rasters: chunks that a lost speculative copy wrote
    after the assembly removed the folder. One listing per staging root."""
    by_root: dict[str, list[RasterJob]] = {}
    for raster in complete:
        by_root.setdefault(storage.parent(raster.staging), []).append(raster)
    for root, rasters in by_root.items():
        there = storage.list_names(root)
        for raster in rasters:
            if storage.name(raster.staging) in there:
                storage.remove_tree(raster.staging)


def prepare_staging(raster: RasterJob, overwrite: bool) -> None:
    """Keep this raster's chunks of the same identity (resume); drop any other run's."""
    mine = storage.name(raster.staging)
    name = mine.rsplit("-", 1)[0]
    root = storage.parent(raster.staging)
    for other in storage.list_names(root):
        if other.rsplit("-", 1)[0] == name and (other != mine or overwrite):
            storage.remove_tree(storage.join(root, other))
    storage.make_folders(raster.staging)


def chunks_to_do(raster: RasterJob) -> pa.Table:
    """The raster's chunks without committed files in its staging folder."""
    chunks = raster.plan.chunks()
    committed = storage.list_names(raster.staging)  # one listing, not a stat per chunk
    if not committed:
        return chunks
    scores = raster.scores_path is not None
    layers = dict(
        confidence=raster.confidence_path is not None, polygons=raster.polygons_path is not None
    )
    done = []
    for row, col in zip(
        chunks["chunk_row"].to_pylist(), chunks["chunk_col"].to_pylist(), strict=True
    ):
        done.append(is_committed(committed, row, col, scores, **layers))
    return chunks.filter(pa.array([not d for d in done], pa.bool_()))


def _estimate_of(job: Job) -> dict | None:
    """The output folder's `_estimate.json`, if it was made for the same rasters, model and
    config as `job`."""
    path = storage.join(job.output, ESTIMATE_FILE)
    if not storage.is_file(path):
        return None
    estimate = json.loads(storage.read_text(path))
    same = estimate.get("identity") == job_identity([r.identity for r in job.rasters])
    return estimate if same else None


def _create_store(job: Job, tile: RasterJob) -> None:
    """The map's Zarr store, made (or kept, to resume into) before any tile is written."""
    model = job.model
    names = None
    if job.config.scores:
        names = BandLayout.of(True, model.classes, model.channels, model.class_names).descriptions
    create_map_store(
        tile.zarr.store,
        map_extent(tile),
        job.config.grid.tile_size,
        None if names is None else tuple(names),
        model.class_names,
        job.config.overwrite,
        job.config.confidence,
    )


def run_job(spark, job: Job, started: float | None = None) -> RunOutcome:
    """Run the Spark stages for a prepared job under the output folder's lock; what it did,
    whose report (`RunOutcome.report`) is written as `_run.json`. Rasters already complete are
    skipped, unfinished ones resume. `started` (`time.perf_counter`): when the command started,
    for the report's `setup_s` and `wall_s`; by default when this run does."""
    folders = {job.output, *(storage.parent(r.classes_path) for r in job.rasters)}
    for folder in folders:
        storage.make_folders(folder)
    backend = worker_environment(spark, "KERAS_BACKEND", job.config.backend)
    with OutputLock(job.output).held(), backend:
        for folder in folders:  # what a killed run was writing: no other run writes here now
            remove_leftovers(folder)
        return _run(spark, job, started)


def _run(spark, job: Job, command_started: float | None) -> RunOutcome:
    started = time.perf_counter()
    command_started = started if command_started is None else command_started
    timings: dict[str, float] = {"infer_write_s": 0.0}
    failed = list(job.failed)
    complete = [r for r in job.rasters if not job.config.overwrite and is_complete(r)]
    todo = [r for r in job.rasters if r not in complete]
    remove_late_chunks(complete)
    for raster in todo:
        prepare_staging(raster, job.config.overwrite)
    if todo and todo[0].zarr is not None:
        _create_store(job, todo[0])

    t = time.perf_counter()
    chunk_tables = [chunks_to_do(r) for r in todo]
    resumed = {
        r.info.path: r.plan.chunk_count - len(c) for r, c in zip(todo, chunk_tables, strict=True)
    }
    total_chunks = sum(len(c) for c in chunk_tables)
    timings["plan_s"] = time.perf_counter() - t

    results = pa.Table.from_pylist([], schema=CHUNK_RESULT_SCHEMA)
    timings["setup_s"] = time.perf_counter() - command_started
    if total_chunks:
        tasks = job.config.tasks_per_slot * task_slots(spark)
        t = time.perf_counter()
        progress = Progress(
            [r.staging for r in todo],
            chunk_tables,
            job.config.scores,
            confidence=job.config.confidence is not None,
            polygons=job.config.polygons,
        )
        with reported(progress, job.config.progress_seconds):
            # A few tasks per slot: a faster executor takes more of them, and a lost task is a
            # small share of the work. Tapered, the stage ends on short tasks; one task per
            # slot stays even (each slot gets one).
            results = infer_and_write(
                spark,
                plan_table(chunk_tables),
                tasks,
                stage_spec(job, todo, task_gpu_share(spark)),
                job.package,
                failed=f"{job.output}: inference failed",
                hint=RESUME_HINT,
                tapered=job.config.tasks_per_slot > 1,
            )
        timings["infer_write_s"] = time.perf_counter() - t
        # From the first task's start to the last chunk: the stage less its start and finish.
        timings["tasks_s"] = (
            pc.max(results["finished"]).as_py() - pc.min(results["task_started"]).as_py()
        )
        if len(results) != total_chunks:
            raise RuntimeError(f"{len(results)} chunk results for {total_chunks} planned chunks")
    errors = results.filter(pc.is_valid(results["error"])).to_pylist()
    failed_indexes = {}
    for row in errors:
        failed_indexes.setdefault(row["raster_index"], row["error"])
    for index, error in failed_indexes.items():
        failed.append(Failure(todo[index].info.path, "infer", error))

    to_assemble = [r for i, r in enumerate(todo) if i not in failed_indexes]
    if job.config.fail_fast and failed:
        to_assemble = []
    t = time.perf_counter()
    assembled = []
    if to_assemble:
        failure = f"{job.output}: assembly failed"
        assembled = assemble_on_executors(spark, to_assemble, job, failure, RESUME_HINT)
    timings["assemble_s"] = time.perf_counter() - t
    for done in assembled:
        if done.error:
            failed.append(Failure(done.input, "assemble", done.error))
    staging_root = storage.join(job.output, STAGING_FOLDER)
    if not storage.list_names(staging_root):
        storage.remove_tree(staging_root)
    map_files: list[str] = []
    if job.config.grid is not None:
        tiles = [*complete, *written_rasters(todo, assembled, failed)]
        if tiles:
            tiles.sort(key=job.rasters.index)
            map_files = write_map_index(job.output, tiles, job.model, job.config.quicklook)
    timings["total_s"] = time.perf_counter() - started
    timings["wall_s"] = time.perf_counter() - command_started

    estimate = _estimate_of(job)
    outcome = RunOutcome(
        job=job,
        inferred=tuple(todo),
        chunks=results,
        assembled=tuple(assembled),
        complete=tuple(complete),
        failed=tuple(failed),
        resumed=resumed,
        timings=timings,
        application=application(spark),
        estimate=None if estimate is None else compared(estimate, timings),
        map_files=tuple(map_files),
    )
    text = json.dumps(outcome.report, indent=2) + "\n"
    storage.write_text(storage.join(job.output, RUN_REPORT), text)
    return outcome
