"""One run of the job: check everything on the driver, then plan, infer, write and report.

`prepare_job` does all the checks that need no Spark (config, inputs, model, output folder) and
raises a `UserError` with one clear line for anything wrong; nothing is written before it passes.
`run_job` then runs the Spark stages and writes `_run.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sparkinfer import __version__
from sparkinfer.config import CHUNK_PIXELS, JobConfig
from sparkinfer.errors import ConfigError, InputError, ModelError, OutputError
from sparkinfer.model import ModelInfo, ModelPackage, inspect_model, package_model
from sparkinfer.plan import RasterPlan, Tiling, round_up
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster import RasterInfo, read_info, resolve_inputs
from sparkinfer.stage import (
    StageSpec,
    infer_and_write,
    ordered_dataframe,
    plan_dataframe,
    spark_schema,
)
from sparkinfer.writers import ChunkSpec, assemble_cog

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
STAGING_FOLDER = "_staging"
RUN_REPORT = "_run.json"


@dataclass(frozen=True)
class RasterJob:
    """One input raster, its plan and where its outputs go."""

    info: RasterInfo
    plan: RasterPlan
    classes_path: Path
    scores_path: Path | None
    quicklook_path: Path | None
    staging: Path


@dataclass(frozen=True)
class Job:
    """A checked, planned run: everything `run_job` needs."""

    config: JobConfig
    model: ModelInfo
    package: ModelPackage
    tiling: Tiling
    bands: tuple[int, ...]
    output: Path
    rasters: tuple[RasterJob, ...]


def _check_output_folder(output: Path, inputs: list[Path]) -> None:
    resolved = output.resolve()
    for path in inputs:
        if resolved == path.parent or path.parent in resolved.parents:
            raise OutputError(
                f"{output}: output folder is the folder of input {path} or inside it; "
                "choose a separate folder"
            )
    existing = next((p for p in [resolved, *resolved.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(
            f"{output}: cannot create the output folder ({existing} is not a folder)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: output folder is not writable")


def _resolve_halo(config: JobConfig, model: ModelInfo) -> int:
    if config.halo != "auto":
        return round_up(config.halo, model.stride)
    if model.receptive_halo is None:
        raise ModelError(
            f"{model.path}: cannot derive the halo automatically ({model.untraceable}); "
            "give it with --halo PIXELS"
        )
    return round_up(model.receptive_halo, model.stride)


def _identity(info: RasterInfo, package: ModelPackage, config: JobConfig, tiling: Tiling) -> str:
    """Hash of everything that decides a raster's output pixels: chunks of another run never mix."""
    stat = Path(info.path).stat()
    parts = {
        "input": [info.path, stat.st_size, stat.st_mtime_ns],
        "model": package.digest,
        "tiling": asdict(tiling),
        "pixels": config.model_dump(include={"bands", "normalization", "scores"}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def prepare_job(config: JobConfig) -> Job:
    """Check inputs, model and output, then plan every raster; a UserError if anything is off."""
    output = Path(config.output).absolute()
    inputs = resolve_inputs(config.input)
    _check_output_folder(output, inputs)
    infos = [read_info(path) for path in inputs]
    for info in infos:
        if info.dtype not in SUPPORTED_DTYPES:
            raise InputError(
                f"{info.path}: pixel type {info.dtype} is not supported "
                f"(use one of {', '.join(sorted(SUPPORTED_DTYPES))})"
            )

    model = inspect_model(config.model)
    package = package_model(config.model)
    for info in infos:
        bands = config.bands or list(range(1, info.count + 1))
        if max(bands) > info.count:
            raise InputError(
                f"{info.path}: band {max(bands)} requested but the raster has {info.count} bands"
            )
        if len(bands) != model.bands:
            raise InputError(
                f"{info.path}: {len(bands)} bands selected but the model takes {model.bands}; "
                "choose them with --bands"
            )
    count = config.normalization.band_count
    if count is not None and count != model.bands:
        raise ConfigError(
            f"normalization has statistics for {count} bands but the model takes {model.bands}"
        )

    halo = _resolve_halo(config, model)
    try:
        chunk_tiles = config.chunk_tiles
        if chunk_tiles == "auto":
            chunk_tiles = max(1, CHUNK_PIXELS // config.tile_size)
        tiling = Tiling(config.tile_size, halo, model.stride, chunk_tiles)
    except ValueError as exc:
        raise ConfigError(f"tile_size/halo do not fit the model: {exc}") from None

    names: dict[str, str] = {}
    rasters = []
    for info in infos:
        if info.name in names:
            raise InputError(
                f"{info.path}: has the same name as {names[info.name]}; both would write "
                f"{info.name}.tif -- run them into separate output folders"
            )
        names[info.name] = info.path
        identity = _identity(info, package, config, tiling)
        rasters.append(
            RasterJob(
                info=info,
                plan=RasterPlan(info.height, info.width, tiling),
                classes_path=output / f"{info.name}.tif",
                scores_path=output / f"{info.name}.scores.tif" if config.scores else None,
                quicklook_path=output / f"{info.name}.png" if config.quicklook else None,
                staging=output / STAGING_FOLDER / f"{info.name}-{identity}",
            )
        )
    bands = tuple(config.bands or range(1, infos[0].count + 1))
    return Job(config, model, package, tiling, bands, output, tuple(rasters))


def _chunk_specs(raster: RasterJob) -> list[ChunkSpec]:
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    chunks = raster.plan.chunks().select(fields).to_pylist()
    return [ChunkSpec(folder=raster.staging, **c) for c in chunks]


def _assemble(task: tuple) -> dict:
    """Executor side: mosaic one raster's chunks into its COG(s), then drop the chunks."""
    raster, options, model, metadata = task
    started = time.perf_counter()
    chunks = _chunk_specs(raster)
    common = dict(classes=model.classes, metadata=metadata, class_names=model.class_names,
                  class_colors=model.class_colors)  # fmt: skip
    assemble_cog(raster.info, chunks, raster.classes_path, options, scores=False, **common)
    if raster.scores_path is not None:
        assemble_cog(raster.info, chunks, raster.scores_path, options, scores=True, **common)
    if raster.quicklook_path is not None:
        write_quicklook(raster.classes_path, raster.quicklook_path, model.class_names,
                        model.class_colors)  # fmt: skip
    shutil.rmtree(raster.staging, ignore_errors=True)
    return {"input": raster.info.path, "assemble_s": time.perf_counter() - started}


ASSEMBLED_SCHEMA = pa.schema([("input", pa.string()), ("assemble_s", pa.float64())])


def assemble_on_executors(spark, tasks: list[tuple]) -> list[dict]:
    """One Spark task per raster assembles its COG, so the driver never touches pixels.

    A DataFrame stage, like inference, so it runs in the Python workers already started (an
    RDD job would start others).
    """

    def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            done = [_assemble(tasks[i]) for i in batch.column("task").to_pylist()]
            yield pa.RecordBatch.from_pylist(done, schema=ASSEMBLED_SCHEMA)

    frame = ordered_dataframe(spark, pa.table({"task": list(range(len(tasks)))}), len(tasks))
    rows = frame.mapInArrow(assemble, spark_schema(ASSEMBLED_SCHEMA)).collect()
    return [row.asDict() for row in rows]


def run_job(spark, job: Job) -> dict:
    """Run the Spark stages for a prepared job; write and return the run report."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    job.output.mkdir(parents=True, exist_ok=True)
    for raster in job.rasters:
        raster.staging.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    chunk_tables = [r.plan.chunks() for r in job.rasters]
    parallelism = spark.sparkContext.defaultParallelism
    total_chunks = sum(len(t) for t in chunk_tables)
    plan_df = plan_dataframe(spark, chunk_tables, partitions=max(1, 4 * parallelism))
    timings["plan_s"] = time.perf_counter() - t

    spec = StageSpec(
        rasters=tuple(r.info for r in job.rasters),
        staging=tuple(str(r.staging) for r in job.rasters),
        bands=job.bands,
        normalization=job.config.normalization,
        batch_size=job.config.batch_size,
        classes=job.model.classes,
        scores=job.config.scores,
    )
    t = time.perf_counter()
    results = infer_and_write(spark, plan_df, spec, job.package)
    timings["infer_write_s"] = time.perf_counter() - t
    if len(results) != total_chunks:
        raise RuntimeError(f"{len(results)} chunk results for {total_chunks} planned chunks")

    t = time.perf_counter()
    metadata = {
        "sparkinfer_version": __version__,
        "model_sha256": job.package.digest,
        "halo": str(job.tiling.halo),
        "tile_size": str(job.tiling.tile_size),
    }
    tasks = [
        (r, job.config.cog, job.model, metadata | {"source": r.info.path})
        for r in job.rasters
    ]
    assembled = assemble_on_executors(spark, tasks)
    timings["assemble_s"] = time.perf_counter() - t
    staging_root = job.output / STAGING_FOLDER
    if staging_root.is_dir() and not any(staging_root.iterdir()):
        staging_root.rmdir()
    timings["total_s"] = time.perf_counter() - started

    report = _report(job, results, assembled, timings, spark)
    _write_json_atomically(job.output / RUN_REPORT, report)
    return report


def _report(job: Job, results, assembled, timings, spark) -> dict:
    per_raster = []
    for index, raster in enumerate(job.rasters):
        mine = results.filter(pc.equal(results["raster_index"], index))
        per_raster.append(
            {
                "input": raster.info.path,
                "outputs": [str(p) for p in (raster.classes_path, raster.scores_path,
                                             raster.quicklook_path) if p],  # fmt: skip
                "width": raster.info.width,
                "height": raster.info.height,
                "tiles": {
                    "planned": raster.plan.tile_count,
                    "skipped_nodata": pc.sum(mine["skipped"]).as_py() or 0,
                    "inferred": pc.sum(mine["inferred"]).as_py() or 0,
                },
                "chunks": raster.plan.chunk_count,
                "assemble_s": next(a["assemble_s"] for a in assembled
                                   if a["input"] == raster.info.path),  # fmt: skip
            }
        )
    task_time = {k: pc.sum(results[k]).as_py() or 0.0 for k in ("read_s", "infer_s", "write_s")}
    return {
        "sparkinfer_version": __version__,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "spark": {"master": spark.sparkContext.master, "app_id": spark.sparkContext.applicationId},
        "model": {
            "path": job.model.path,
            "sha256": job.package.digest,
            "bands": job.model.bands,
            "classes": job.model.classes,
            "stride": job.model.stride,
            "receptive_halo": job.model.receptive_halo,
            "class_names": list(job.model.class_names),
        },
        "tiling": asdict(job.tiling) | {"halo_share": round(job.tiling.halo_share, 4)},
        "rasters": per_raster,
        "tiles": {
            key: sum(r["tiles"][key] for r in per_raster)
            for key in ("planned", "skipped_nodata", "inferred")
        },
        "timings": timings | {"task_" + k: v for k, v in task_time.items()},
        "config": job.config.model_dump(mode="json"),
    }


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
