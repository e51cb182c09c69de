"""The run report, `_run.json`: what each raster got, what failed, the model, the tiling, the
devices and the timings."""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

from sparkinfer import __version__
from sparkinfer.assembly import AssemblyResult
from sparkinfer.cuts import ChipGrid
from sparkinfer.plan import RasterPlan
from sparkinfer.prepare import Failure, Job
from sparkinfer.raster_job import RasterJob
from sparkinfer.tiling import tiling_report


def _chunks_by_gpu(results: pa.Table) -> dict:
    """{"by_gpu": {address: [[chunk_row, chunk_col], ...]}} for the chunks that tasks with a
    GPU assigned by Spark inferred; {} without GPUs."""
    with_gpu = results.filter(pc.is_valid(results["gpu"])).to_pylist()
    if not with_gpu:
        return {}
    by_gpu: dict[str, list] = {}
    for row in sorted(with_gpu, key=lambda r: (r["chunk_row"], r["chunk_col"])):
        by_gpu.setdefault(row["gpu"], []).append([row["chunk_row"], row["chunk_col"]])
    return {"by_gpu": dict(sorted(by_gpu.items()))}


def _executors(results: pa.Table) -> dict:
    """Per executor (`executor.executor_name`): the chunks and tiles it inferred, when its first
    task started (seconds after the stage's first), the span from then to its last chunk, and
    its rate over that span: how the work spread."""
    spread = results.group_by("executor").aggregate(
        [("chunk_row", "count"), ("inferred", "sum"), ("task_started", "min"), ("finished", "max")]
    )
    first = pc.min(results["task_started"]).as_py()
    found = {}
    for row in sorted(spread.to_pylist(), key=lambda r: r["executor"]):
        chunks, span = row["chunk_row_count"], row["finished_max"] - row["task_started_min"]
        found[row["executor"]] = {
            "chunks": chunks,
            "tiles": row["inferred_sum"],
            "started_s": round(row["task_started_min"] - first, 3),
            "span_s": round(span, 3),
            "chunks_per_s": round(chunks / max(span, 1e-9), 3),
        }
    return found


def decoded_per_useful(plans: list[RasterPlan]) -> float | None:
    """Pixels decoded (the chunks' read windows, halos included) per pixel kept (their cores),
    over `plans`; None for chip classifiers, whose cores are cells, not pixels."""
    if not plans or any(isinstance(plan.tiling, ChipGrid) for plan in plans):
        return None
    decoded = kept = 0
    for plan in plans:
        chunks = plan.chunks()
        area = [
            pc.sum(pc.multiply(chunks[h].cast(pa.int64()), chunks[w].cast(pa.int64()))).as_py()
            for h, w in (("read_height", "read_width"), ("height", "width"))
        ]
        decoded, kept = decoded + area[0], kept + area[1]
    return round(decoded / kept, 4)


def written_rasters(
    inferred: Sequence[RasterJob], assembled: Sequence[AssemblyResult], failed: Sequence[Failure]
) -> list[RasterJob]:
    """Of the rasters `inferred`, those whose outputs were written: assembled, and not failed."""
    done = {a.input for a in assembled} - {f.input for f in failed}
    return [r for r in inferred if r.info.path in done]


@dataclass(frozen=True)
class RunOutcome:
    """What one run did, as the driver learned it; its `report` is `_run.json`."""

    job: Job
    inferred: tuple[RasterJob, ...]  # the rasters the stages ran, in the plan table's order
    chunks: pa.Table  # a row per chunk inferred (`executor.CHUNK_RESULT_SCHEMA`)
    assembled: tuple[AssemblyResult, ...]
    complete: tuple[RasterJob, ...]  # outputs of the same input, model and config: kept
    failed: tuple[Failure, ...]
    resumed: dict[str, int]  # per input: chunks committed by an earlier run
    timings: dict[str, float]
    application: dict  # the Spark application that ran it (`session.application`)
    estimate: dict | None = None  # the figures an `_estimate.json` predicted, and the run's
    map_files: tuple[str, ...] = ()  # with a grid: the map's VRTs and STAC Collection

    @property
    def written(self) -> list[RasterJob]:
        """The rasters whose outputs this run wrote."""
        return written_rasters(self.inferred, self.assembled, self.failed)

    @property
    def tiles(self) -> dict[str, int]:
        """Tiles inferred, and skipped as all nodata, by this run."""
        return {k: pc.sum(self.chunks[k]).as_py() or 0 for k in ("inferred", "skipped")}

    @cached_property
    def report(self) -> dict:
        return run_report(self)


def run_report(outcome: RunOutcome) -> dict:
    """The run report of `outcome`: what each raster got, what failed, the model, the tiling,
    the devices, the executors and the timings."""
    job, todo, results = outcome.job, outcome.inferred, outcome.chunks
    assembled, failed, timings = outcome.assembled, outcome.failed, outcome.timings
    failed_inputs = {f.input for f in failed}
    written_inputs = {r.info.path for r in outcome.written}
    assembled_s = {a.input: a.assemble_s for a in assembled}
    verified = {a.input: json.loads(a.verify) for a in assembled if a.verify}
    per_raster = []
    for index, raster in enumerate(todo):
        if raster.info.path in failed_inputs:
            continue
        mine = results.filter(pc.equal(results["raster_index"], index))
        written = raster.info.path in written_inputs  # or stopped by --fail-fast
        per_raster.append(
            {
                "input": raster.info.path,
                "status": "written" if written else "stopped",
                "outputs": raster.outputs if written else [],
                "width": raster.info.width,
                "height": raster.info.height,
                "tiles": {
                    "planned": raster.plan.tile_count,
                    "skipped_nodata": pc.sum(mine["skipped"]).as_py() or 0,
                    "inferred": pc.sum(mine["inferred"]).as_py() or 0,
                },
                "chunks": {
                    "planned": raster.plan.chunk_count,
                    "resumed": outcome.resumed[raster.info.path],  # committed by an earlier run
                    "kept_on_retry": pc.sum(mine["reused"].cast(pa.int32())).as_py() or 0,
                }
                | _chunks_by_gpu(mine),
                "assemble_s": assembled_s.get(raster.info.path),
                "decoded_per_useful_pixel": decoded_per_useful([raster.plan]),
            }
            | ({"verify": verified[raster.info.path]} if raster.info.path in verified else {})
        )
    for raster in outcome.complete:
        per_raster.append(
            {
                "input": raster.info.path,
                "status": "complete",  # outputs of the same input, model and config: kept
                "outputs": raster.outputs,
                "width": raster.info.width,
                "height": raster.info.height,
                "tiles": {"planned": raster.plan.tile_count, "skipped_nodata": 0, "inferred": 0},
            }
        )
    task_time = {k: pc.sum(results[k]).as_py() or 0.0 for k in ("read_s", "infer_s", "write_s")}
    inferred = results.filter(pc.is_valid(results["device"]))
    devices = inferred.group_by("device").aggregate([("tiles", "count"), ("inferred", "sum")])
    return {
        "sparkinfer_version": __version__,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),  # the driver's
        "spark": outcome.application,
        "model": {
            "path": job.model.path,
            "sha256": job.package.digest,
            "bands": job.model.bands,
            "classes": job.model.classes,
            "channels": job.model.channels,
            "stride": job.model.stride,
            "receptive_halo": job.model.receptive_halo,
            "halo_found_by": job.model.halo_found_by,
            "class_names": list(job.model.class_names),
            "task": job.model.task,
            "output": job.model.output,
            "input_size": job.model.input_size,
        },
        "tiling": tiling_report(job.model, job.tiling),
        "rasters": per_raster,
        "map": list(outcome.map_files),
        "failed": [asdict(f) for f in failed],
        "tiles": {
            key: sum(r["tiles"][key] for r in per_raster)
            for key in ("planned", "skipped_nodata", "inferred")
        },
        # What the rasters inferred here read, halos included, per pixel they keep.
        "decoded_per_useful_pixel": decoded_per_useful([r.plan for r in todo]),
        "timings": timings | {"task_" + k: v for k, v in task_time.items()},
        # What ran the model: "cpu", or "gpu:N" as the worker numbers its GPUs.
        "devices": {
            row["device"]: {"chunks": row["tiles_count"], "tiles": row["inferred_sum"]}
            for row in devices.to_pylist()
        },
        "executors": _executors(results),
        "config": job.config.model_dump(mode="json"),
    } | ({"estimate": outcome.estimate} if outcome.estimate is not None else {})
