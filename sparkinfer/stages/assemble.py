"""The assembly stage: Spark tasks mosaic each raster's chunks into its COG, write its tile
index, STAC Item and quicklook, and with `--verify` compare a sample window run whole."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa

from sparkinfer import storage
from sparkinfer.catalog import write_stac_item, write_tile_index
from sparkinfer.chips import output_grid, write_chip_table
from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.devices import gpu_ordinal, task_resources
from sparkinfer.errors import first_line
from sparkinfer.model import (
    ModelPackage,
    load_package,
)
from sparkinfer.polygons import write_polygons
from sparkinfer.prepare import Job, RasterJob, runtime_options
from sparkinfer.quicklook import write_quicklook
from sparkinfer.session import (
    map_in_partitions,
    shipped,
    task_slots,
)
from sparkinfer.verify import sample_window, verify
from sparkinfer.writers import ChunkSpec, assemble_cog


def chunk_specs(raster: RasterJob) -> list[ChunkSpec]:
    """Where each chunk of the raster's plan is written."""
    chunks = raster.plan.chunks()
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    return [ChunkSpec(folder=raster.staging, **c) for c in chunks.select(fields).to_pylist()]


def _verified(raster: RasterJob, classes_path: Path, job: Job, package: ModelPackage) -> str | None:
    """`--verify` on the raster's local class map: what `verify.verify` found, as JSON."""
    window = sample_window(raster.info.height, raster.info.width, job.tiling, job.model.input_size)
    if window is None:
        return None
    resources = task_resources()
    runtime = load_package(
        package, runtime_options(job.config), gpu_ordinal(resources.gpu), resources.cpus
    )
    return json.dumps(verify(raster.info, job.bands, str(classes_path), runtime, window))


def _assemble(task: tuple, min_area: float, verifying: tuple | None) -> dict:
    """Executor side: mosaic one raster's chunks into its COG(s) (and merge their polygons,
    leaving out regions under `min_area`), then drop the chunks; with `verifying` (the job and
    its model package), verify the class map.

    A failure is returned, not raised: the other rasters' assembly goes on."""
    raster, options, model, metadata = task
    started = time.perf_counter()
    verified = None
    # A chip classifier's outputs lie on its chips' grid, a cell per chip.
    grid = output_grid(raster.info, raster.plan.tiling)
    names = model.class_names or tuple(str(i) for i in range(model.classes))
    try:
        chunks = chunk_specs(raster)
        common = dict(
            classes=model.classes,
            channels=model.channels,
            metadata=metadata,
            class_names=model.class_names,
            class_colors=model.class_colors,
        )
        # Each output appears whole (written locally, then renamed or uploaded); the chunks go
        # only once all are there, so a run that dies here redoes this raster from its chunks.
        if raster.scores_path is not None:
            with storage.staged(raster.scores_path) as scores:
                assemble_cog(grid, chunks, scores, options, scores=True, **common)
        with storage.staged(raster.classes_path) as classes:
            assemble_cog(grid, chunks, classes, options, scores=False, **common)
            # From the local COG, before its commit: on S3 no download of what was just made.
            if raster.quicklook_path is not None:
                write_quicklook(
                    str(classes), raster.quicklook_path, model.class_names, model.class_colors
                )
            if raster.chips:
                write_chip_table(raster.info, raster.plan, chunks, raster.chips_path, names)
            else:
                write_tile_index(
                    raster.info, raster.plan, chunks, raster.tile_index_path, model.classes
                )
            if raster.polygons_path is not None:
                write_polygons(raster.info, chunks, raster.polygons_path, names, min_area)
            if verifying is not None:
                verified = _verified(raster, classes, *verifying)
        assets = {
            "classes": raster.classes_path,
            "scores": raster.scores_path,
            "quicklook": raster.quicklook_path,
            "polygons": raster.polygons_path,
        }
        properties = {
            "sparkinfer:version": metadata["sparkinfer_version"],
            "sparkinfer:model_sha256": metadata["model_sha256"],
        }
        if raster.chips:
            assets["chips"] = raster.chips_path
            properties |= {
                "sparkinfer:chip_size": raster.plan.tiling.size,
                "sparkinfer:chip_stride": raster.plan.tiling.stride,
            }
        else:
            assets["tiles"] = raster.tile_index_path
            properties["sparkinfer:halo"] = int(metadata["halo"])
        # Last: a STAC Item is there only when everything it lists is.
        write_stac_item(
            grid,
            raster.stac_path,
            {key: path for key, path in assets.items() if path},
            model.class_names,
            model.class_colors,
            model.classes,
            properties,
        )
    except Exception as exc:  # noqa: BLE001 -- recorded per raster, reported at the end
        return {
            "input": raster.info.path,
            "assemble_s": time.perf_counter() - started,
            "error": f"{raster.info.path}: {first_line(exc, 300)}",
        }
    storage.remove_tree(raster.staging)
    return {
        "input": raster.info.path,
        "assemble_s": time.perf_counter() - started,
        "error": None,
        "verify": verified,
    }


ASSEMBLED_SCHEMA = pa.schema(
    [
        ("input", pa.string()),
        ("assemble_s", pa.float64()),
        ("error", pa.string()),
        ("verify", pa.string()),
    ]
)


def assemble_on_executors(spark, tasks: list[tuple], job: Job) -> list[dict]:
    """Spark tasks assemble the COGs, a few rasters each, so the driver never touches pixels;
    with `--verify`, they also verify them, with the model the workers hold.

    A DataFrame stage, like inference, so it runs in the Python workers already started (an
    RDD job would start others).
    """
    table = pa.table({"task": list(range(len(tasks)))})
    partitions = min(len(tasks), TASKS_PER_SLOT * task_slots(spark))  # tasks cost ~0.1 s
    min_area = job.config.min_area
    with ExitStack() as stack:
        model = stack.enter_context(shipped(spark, job.package)) if job.config.verify else None

        def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            verifying = None if model is None else (job, model.package())
            for batch in batches:
                done = [
                    _assemble(tasks[i], min_area, verifying)
                    for i in batch.column("task").to_pylist()
                ]
                yield pa.RecordBatch.from_pylist(done, schema=ASSEMBLED_SCHEMA)

        rows = map_in_partitions(spark, table, partitions, assemble, ASSEMBLED_SCHEMA)
    return [row.asDict() for row in rows]
