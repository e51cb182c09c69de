"""One run of the job: check everything on the driver, then plan, infer, write and report.

`prepare_job` does all the checks that need no Spark. A problem of the whole run (config, model,
output folder, no usable input) raises a `UserError` with one clear line, before anything is
written. A problem of one raster is recorded as a `Failure` and the others go on (unless
`fail_fast`). `run_job` then takes the output folder's lock, skips rasters already complete for
the same input, model and config, resumes unfinished ones from their chunks, runs the Spark
stages and writes `_run.json`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import rasterio

from sparkinfer import __version__, storage
from sparkinfer.catalog import write_stac_item, write_tile_index
from sparkinfer.config import CHUNK_PIXELS, JobConfig
from sparkinfer.devices import gpu_ordinal, task_resources
from sparkinfer.errors import ConfigError, InputError, ModelError, OutputError, first_line
from sparkinfer.model import (
    FORMAT_NAMES,
    ModelInfo,
    ModelPackage,
    inspect_model,
    load_package,
    package_model,
)
from sparkinfer.plan import RasterPlan, Tiling, round_up
from sparkinfer.progress import Progress, reported
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster import RasterInfo, read_info, resolve_inputs
from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.session import (
    application,
    map_in_partitions,
    shipped,
    spark_failures,
    task_slots,
    worker_environment,
)
from sparkinfer.stage import (
    CHUNK_RESULT_SCHEMA,
    StageSpec,
    infer_and_write,
    plan_table,
    warm_workers,
)
from sparkinfer.verify import sample_window, verify
from sparkinfer.writers import ChunkSpec, assemble_cog, is_committed

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
STAGING_FOLDER = "_staging"
RUN_REPORT = "_run.json"
LOCK_FILE = "_sparkinfer.lock"
IDENTITY_TAG = "SPARKINFER_IDENTITY"
RESUME_HINT = "the chunks written so far are kept: run the same command again to resume"


@dataclass(frozen=True)
class Failure:
    """A raster that could not be processed: which, at what stage, and why (one line)."""

    input: str
    stage: str  # "input", "plan", "infer" or "assemble"
    error: str


@dataclass(frozen=True)
class RasterJob:
    """One input raster, its plan and where its outputs go."""

    info: RasterInfo
    plan: RasterPlan
    identity: str  # hash of input, model and config: what the outputs were made from
    classes_path: str  # local path or s3:// URI, as every location below
    scores_path: str | None
    quicklook_path: str | None
    staging: str

    @property
    def tile_index_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".tiles.parquet"

    @property
    def stac_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".stac.json"

    @property
    def outputs(self) -> list[str]:
        paths = (self.classes_path, self.scores_path, self.quicklook_path, self.tile_index_path,
                 self.stac_path)  # fmt: skip
        return [p for p in paths if p]


@dataclass(frozen=True)
class Job:
    """A checked, planned run: everything `run_job` needs."""

    config: JobConfig
    model: ModelInfo
    package: ModelPackage
    tiling: Tiling
    bands: tuple[int, ...]
    output: str  # absolute local path or s3:// URI
    rasters: tuple[RasterJob, ...]
    failed: tuple[Failure, ...] = ()  # rasters refused before Spark


def _input_roots(patterns: list[str]) -> list[tuple[str, str]]:
    """(pattern, folder) for each input that names a folder or a glob pattern: the folder it
    lists, or the pattern's fixed part (up to its first wildcard)."""
    roots = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            if storage.is_s3(pattern):  # only the file name may hold wildcards
                roots.append((pattern, storage.parent(pattern)))
                continue
            parts = Path(pattern).absolute().parts
            fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            roots.append((pattern, str(Path(*parts[:fixed]).resolve())))
        elif storage.is_dir(pattern):
            roots.append((pattern, storage.absolute(pattern) if storage.is_s3(pattern)
                          else str(Path(pattern).resolve())))  # fmt: skip
    return roots


def _check_output_folder(output: str, patterns: list[str], inputs: list[str]) -> None:
    """The output is neither an input's own folder nor inside a folder or pattern given as
    input, so no later run takes outputs for inputs; next to an input file is fine."""
    resolved = None if storage.is_s3(output) else Path(output).resolve()
    target = output if resolved is None else str(resolved)
    for pattern, root in _input_roots(patterns):
        if target == root or target.startswith(root.rstrip("/") + "/"):
            raise OutputError(
                f"{output}: output folder is inside input {pattern}, where a later run would "
                "take the outputs for inputs; choose a folder outside it"
            )
    for path in inputs:
        if target == storage.parent(path):
            raise OutputError(
                f"{output}: output folder is the folder of input {path}; choose a separate folder"
            )
    if resolved is None:
        try:
            storage.probe_write(output)
        except OSError as exc:
            raise OutputError(
                f"{output}: cannot write there ({first_line(exc, 200)}); check the bucket name "
                "and the AWS_* credentials and endpoint"
            ) from None
        return
    existing = next((p for p in [resolved, *resolved.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(
            f"{output}: cannot create the output folder ({existing} is not a folder)"
        )
    try:
        storage.probe_write(str(existing))
    except OSError as exc:
        where = "output folder" if existing == resolved else f"folder {existing}"
        raise OutputError(
            f"{output}: cannot write in the {where} ({exc.strerror}); choose another --output"
        ) from None


def runtime_options(config: JobConfig) -> RuntimeOptions:
    """How the executors run the model for `config`."""
    return RuntimeOptions(config.backend, config.precision, config.normalization,
                          config.activation)  # fmt: skip


def _resolve_halo(config: JobConfig, model: ModelInfo) -> int:
    if config.halo != "auto":
        return round_up(config.halo, model.stride)
    if model.receptive_halo is None:
        raise ModelError(
            f"{model.path}: each output pixel depends on the whole input window (global "
            "pooling or attention), so no halo makes tiles equal whole-image inference; give "
            "the context to read around each tile with --halo PIXELS, or blend overlapping "
            "windows with --merge blend"
        )
    return round_up(model.receptive_halo, model.stride)


def _tiling(config: JobConfig, model: ModelInfo) -> Tiling:
    """How the model's rasters are cut: the halo (`crop`) or half the overlap (`blend`) around
    tiles of `tile_size`, whose windows are the model's input where its size is fixed."""
    if config.merge == "blend":
        margin = model.stride  # overlaps are even multiples of the stride: half is the halo
        window = model.input_size or config.tile_size * 5 // 4
        overlap = window // 5 if config.overlap == "auto" else config.overlap
        halo = round_up(overlap, 2 * margin) // 2
    else:
        halo = _resolve_halo(config, model)
    tile_size = config.tile_size
    if model.input_size is not None:  # the window is the model's input
        tile_size = model.input_size - 2 * halo
        if tile_size < 1:
            blend = config.merge == "blend"
            room = f"an overlap of {2 * halo}" if blend else f"a halo of {halo} on each side"
            raise ModelError(
                f"{model.path}: the model takes windows of exactly {model.input_size} pixels, "
                f"which leave no room for {room}; give a smaller --{'overlap' if blend else 'halo'}"
            )
    try:
        chunk_tiles = config.chunk_tiles
        if chunk_tiles == "auto":
            chunk_tiles = max(1, CHUNK_PIXELS // tile_size)
        return Tiling(tile_size, halo, model.stride, chunk_tiles,
                      fixed_window=model.input_size is not None, merge=config.merge)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"tile_size/halo do not fit the model: {exc}") from None


def seam_free(model: ModelInfo, tiling: Tiling) -> bool:
    """Whether the stitched output equals whole-image inference: windows are cropped to their
    cores, and the halo covers the model's receptive field."""
    return (tiling.merge == "crop" and model.receptive_halo is not None
            and tiling.halo >= model.receptive_halo)  # fmt: skip


def halo_notes(job: Job) -> list[str]:
    """What a user should know about the context the job gives each tile: a tile size, halo or
    overlap that differs from the one given, and whether the result is seam-free."""
    model, tiling, config = job.model, job.tiling, job.config
    blend = tiling.merge == "blend"
    notes = []
    if model.input_size is not None and tiling.tile_size != config.tile_size:
        context = (f"overlapping by {tiling.overlap}" if blend
                   else f"{tiling.halo} of halo on each side")  # fmt: skip
        notes.append(f"tile size {tiling.tile_size}: the model takes windows of exactly "
                     f"{model.input_size} pixels, {context}")  # fmt: skip
    if blend:
        if config.overlap != "auto" and config.overlap != tiling.overlap:
            notes.append(f"overlap {config.overlap} rounded up to {tiling.overlap}, a multiple "
                         f"of twice the model's stride {model.stride}")  # fmt: skip
        if model.receptive_halo is not None:
            notes.append(f"the model's receptive field is local ({model.receptive_halo} pixels): "
                         "--merge crop gives whole-image inference exactly")  # fmt: skip
        notes.append(f"windows of {tiling.window_size} pixels overlap by {tiling.overlap} and "
                     "their scores are blended: smooth across tiles, not seam-free")  # fmt: skip
        return notes
    halo, given = tiling.halo, config.halo
    if given != "auto" and given != halo:
        notes.append(f"halo {given} rounded up to {halo}, a multiple of the model's stride "
                     f"{model.stride}")  # fmt: skip
    if model.receptive_halo is None:
        notes.append(f"{model.path}: each output pixel depends on the whole input window: "
                     "tiles are not seam-free; --merge blend smooths their borders")  # fmt: skip
    elif halo < model.receptive_halo:
        notes.append(f"halo {halo} is less than the model's receptive field "
                     f"({model.receptive_halo} pixels, by {model.halo_found_by}): tiles differ "
                     "from whole-image inference near their borders")  # fmt: skip
    return notes


def _identity(info: RasterInfo, package: ModelPackage, config: JobConfig, tiling: Tiling) -> str:
    """Hash of everything that decides a raster's outputs, their bytes included (the COG's
    layout, the code that wrote them): chunks of another run never mix."""
    parts = {
        "input": [info.path, info.size, info.mtime_ns],
        "model": package.digest,
        "tiling": asdict(tiling),
        "pixels": config.model_dump(
            include={"bands", "normalization", "activation", "scores", "backend", "precision",
                     "cog"}
        ),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def output_names(paths: list[str]) -> list[str]:
    """Output file stems: input stems made safe (ASCII letters, digits, '.', '_', '-'; never
    starting with '.' or '_', so never a hidden or reserved name), and distinct: stems that
    clash get a suffix from a hash of their input's full path."""
    stems = []
    for path in paths:
        stem = storage.name(path).rsplit(".", 1)[0]
        ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem.decode()).strip("._-")
        stems.append(safe or "raster")
    counts = Counter(stem.casefold() for stem in stems)  # case-insensitive file systems too
    return [
        stem if counts[stem.casefold()] == 1
        else f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        for stem, path in zip(stems, paths, strict=True)
    ]


def _resolve(config: JobConfig) -> tuple[list[str], list[Failure]]:
    """Every input pattern's rasters, in order and once each; patterns that find none fail."""
    found: dict[str, None] = {}
    failed = []
    for pattern in config.input:
        try:
            for path in resolve_inputs([pattern]):
                found.setdefault(path, None)
        except InputError as exc:
            if config.fail_fast:
                raise
            failed.append(Failure(pattern, "input", str(exc)))
    return list(found), failed


def _checked_info(path: str, config: JobConfig, model: ModelInfo) -> RasterInfo:
    info = read_info(path)
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{info.path}: pixel type {info.dtype} is not supported "
            f"(use one of {', '.join(sorted(SUPPORTED_DTYPES))})"
        )
    if info.transform[1] != 0 or info.transform[3] != 0:
        raise InputError(
            f"{info.path}: the geotransform is rotated or sheared; warp the raster to a "
            "north-up grid first (gdalwarp)"
        )
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
    return info


@dataclass(frozen=True)
class Checked:
    """A run checked without loading its model: inputs found, output folder usable and free,
    model files packaged."""

    config: JobConfig
    output: str  # absolute local path or s3:// URI
    inputs: tuple[str, ...]
    failed: tuple[Failure, ...]  # input patterns that found nothing
    package: ModelPackage


def check_job(config: JobConfig) -> Checked:
    """The checks that need neither the model loaded nor Spark; a UserError stops the run."""
    output = storage.absolute(config.output)
    inputs, failed = _resolve(config)
    _check_output_folder(output, config.input, inputs)
    OutputLock(output).check()
    package = package_model(config.model, config.trust_model)
    return Checked(config, output, tuple(inputs), tuple(failed), package)


def prepare_job(config: JobConfig, spark=None) -> Job:
    """Check model, output and inputs, then plan every raster (`check_job`, then `plan_job`)."""
    return plan_job(check_job(config), spark)


def plan_job(checked: Checked, spark=None) -> Job:
    """Check the model, check the inputs, then plan every raster.

    With a session, its Python workers start, load the model and inspect it (`warm_workers`),
    so the driver never starts a framework and the stage finds the model loaded; without one,
    or if that job fails, the model is inspected here.

    Raises a UserError for what stops the whole run; a raster that cannot be used becomes a
    `Failure` in `Job.failed` (or raises, with `fail_fast`).
    """
    config, output, package = checked.config, checked.output, checked.package
    inputs, failed = list(checked.inputs), list(checked.failed)
    model = None
    if spark is not None:
        model = warm_workers(spark, package, runtime_options(config), config.model)
    if model is None:
        model = inspect_model(config.model, config.trust_model, config.backend)
    if config.precision != "float32" and model.format != "keras":
        raise ConfigError(
            f"{config.model}: --precision {config.precision} applies to .keras models; run "
            f"{FORMAT_NAMES[model.format]} in float32"
        )
    count = config.normalization.band_count
    if count is not None and count != model.bands:
        raise ConfigError(
            f"normalization has statistics for {count} bands but the model takes {model.bands}"
        )
    tiling = _tiling(config, model)

    infos = []
    for path in inputs:
        try:
            infos.append(_checked_info(path, config, model))
        except InputError as exc:
            if config.fail_fast:
                raise
            failed.append(Failure(path, "plan", str(exc)))
    if not infos:
        first = failed[0].error if failed else "no inputs"
        more = f" (and {len(failed) - 1} more inputs failed)" if len(failed) > 1 else ""
        raise InputError(first + more)

    rasters = []
    for info, name in zip(infos, output_names([i.path for i in infos]), strict=True):
        identity = _identity(info, package, config, tiling)
        rasters.append(
            RasterJob(
                info=info,
                plan=RasterPlan(info.height, info.width, tiling),
                identity=identity,
                classes_path=storage.join(output, f"{name}.tif"),
                scores_path=storage.join(output, f"{name}.scores.tif") if config.scores else None,
                quicklook_path=storage.join(output, f"{name}.png") if config.quicklook else None,
                staging=storage.join(output, STAGING_FOLDER, f"{name}-{identity}"),
            )
        )
    bands = tuple(config.bands or range(1, model.bands + 1))
    return Job(config, model, package, tiling, bands, output, tuple(rasters), tuple(failed))


class OutputLock:
    """One run at a time per output folder: a lock file naming its holder (host, pid, start).

    A lock left by a run that died on this host (its pid is gone) is taken over. On S3 the lock
    is advisory (see `storage.create_new`).
    """

    def __init__(self, output: str) -> None:
        self.path = storage.join(output, LOCK_FILE)

    def _live_holder(self) -> dict | None:
        try:
            holder = json.loads(storage.read_text(self.path))
        except (OSError, ValueError):
            return None
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return None  # that run is gone
            except PermissionError:
                pass  # alive, another user's
        return holder

    def check(self) -> None:
        """Raise OutputError if a live run holds the folder."""
        holder = self._live_holder() if storage.is_file(self.path) else None
        if holder is not None:
            raise OutputError(
                f"{storage.parent(self.path)}: in use by another run (pid {holder.get('pid')} "
                f"on {holder.get('host')}, since {holder.get('started')}); wait for it, or "
                f"delete {self.path} if that run is gone"
            )

    @contextmanager
    def held(self):
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": datetime.now(UTC).isoformat(timespec="seconds")})  # fmt: skip
        if not storage.create_new(self.path, me):
            # A stale lock is removed only by a run that holds the takeover, so no lock can be
            # removed between its check and its removal: of the runs that find it stale, one
            # creates the next lock and the others find that one live.
            with storage.exclusive(storage.parent(self.path)):
                self.check()
                storage.remove(self.path)  # stale: its run is gone
                if not storage.create_new(self.path, me):  # a run not taking over was first
                    self.check()
                    raise OutputError(f"{storage.parent(self.path)}: in use by another run")
        try:
            yield
        finally:
            storage.remove(self.path)


def chunk_specs(raster: RasterJob) -> list[ChunkSpec]:
    """Where each chunk of the raster's plan is written."""
    chunks = raster.plan.chunks()
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    return [ChunkSpec(folder=raster.staging, **c) for c in chunks.select(fields).to_pylist()]


def _verified(raster: RasterJob, classes_path: Path, job: Job, package: ModelPackage) -> str | None:
    """`--verify` on the raster's local class map: what `verify.verify` found, as JSON."""
    window = sample_window(raster.info.height, raster.info.width, job.tiling,
                           job.model.input_size)  # fmt: skip
    if window is None:
        return None
    resources = task_resources()
    runtime = load_package(package, runtime_options(job.config), gpu_ordinal(resources.gpu),
                           resources.cpus)  # fmt: skip
    return json.dumps(verify(raster.info, job.bands, str(classes_path), runtime, window))


def _assemble(task: tuple, verifying: tuple | None) -> dict:
    """Executor side: mosaic one raster's chunks into its COG(s), then drop the chunks; with
    `verifying` (the job and its model package), verify the class map.

    A failure is returned, not raised: the other rasters' assembly goes on."""
    raster, options, model, metadata = task
    started = time.perf_counter()
    verified = None
    try:
        chunks = chunk_specs(raster)
        common = dict(classes=model.classes, channels=model.channels, metadata=metadata,
                      class_names=model.class_names, class_colors=model.class_colors)  # fmt: skip
        # Each output appears whole (written locally, then renamed or uploaded); the chunks go
        # only once all are there, so a run that dies here redoes this raster from its chunks.
        if raster.scores_path is not None:
            with storage.staged(raster.scores_path) as scores:
                assemble_cog(raster.info, chunks, scores, options, scores=True, **common)
        with storage.staged(raster.classes_path) as classes:
            assemble_cog(raster.info, chunks, classes, options, scores=False, **common)
            # From the local COG, before its commit: on S3 no download of what was just made.
            if raster.quicklook_path is not None:
                write_quicklook(str(classes), raster.quicklook_path, model.class_names,
                                model.class_colors)  # fmt: skip
            write_tile_index(raster.info, raster.plan, str(classes), raster.tile_index_path,
                             model.classes)  # fmt: skip
            if verifying is not None:
                verified = _verified(raster, classes, *verifying)
        assets = {"classes": raster.classes_path, "scores": raster.scores_path,
                  "quicklook": raster.quicklook_path, "tiles": raster.tile_index_path}  # fmt: skip
        properties = {"sparkinfer:version": metadata["sparkinfer_version"],
                      "sparkinfer:model_sha256": metadata["model_sha256"],
                      "sparkinfer:halo": int(metadata["halo"])}  # fmt: skip
        # Last: a STAC Item is there only when everything it lists is.
        write_stac_item(raster.info, raster.stac_path,
                        {key: path for key, path in assets.items() if path}, model.class_names,
                        model.class_colors, model.classes, properties)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- recorded per raster, reported at the end
        return {"input": raster.info.path, "assemble_s": time.perf_counter() - started,
                "error": f"{raster.info.path}: {first_line(exc, 300)}"}  # fmt: skip
    storage.remove_tree(raster.staging)
    return {"input": raster.info.path, "assemble_s": time.perf_counter() - started, "error": None,
            "verify": verified}  # fmt: skip


ASSEMBLED_SCHEMA = pa.schema(
    [("input", pa.string()), ("assemble_s", pa.float64()), ("error", pa.string()),
     ("verify", pa.string())]  # fmt: skip
)


def assemble_on_executors(spark, tasks: list[tuple], job: Job) -> list[dict]:
    """Spark tasks assemble the COGs, a few rasters each, so the driver never touches pixels;
    with `--verify`, they also verify them, with the model the workers hold.

    A DataFrame stage, like inference, so it runs in the Python workers already started (an
    RDD job would start others).
    """
    table = pa.table({"task": list(range(len(tasks)))})
    partitions = min(len(tasks), 4 * task_slots(spark))  # tasks cost ~0.1 s
    with ExitStack() as stack:
        model = stack.enter_context(shipped(spark, job.package)) if job.config.verify else None

        def assemble(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            verifying = None if model is None else (job, model.package())
            for batch in batches:
                done = [_assemble(tasks[i], verifying) for i in batch.column("task").to_pylist()]
                yield pa.RecordBatch.from_pylist(done, schema=ASSEMBLED_SCHEMA)

        rows = map_in_partitions(spark, table, partitions, assemble, ASSEMBLED_SCHEMA)
    return [row.asDict() for row in rows]


def is_complete(raster: RasterJob) -> bool:
    """Whether the raster's outputs are all there and made from the same input, model, config."""
    if not all(storage.is_file(p) for p in raster.outputs):
        return False
    try:
        with storage.open_own_raster(raster.classes_path) as done:
            return done.tags().get(IDENTITY_TAG) == raster.identity
    except rasterio.errors.RasterioError:
        return False


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
    done = []
    for row, col in zip(chunks["chunk_row"].to_pylist(), chunks["chunk_col"].to_pylist(),
                        strict=True):  # fmt: skip
        done.append(is_committed(committed, row, col, scores))
    return chunks.filter(pa.array([not d for d in done], pa.bool_()))


def stage_spec(job: Job, rasters: list[RasterJob]) -> StageSpec:
    """What the executors need to infer and write `rasters` (in this order) for `job`."""
    return StageSpec(
        rasters=tuple(r.info for r in rasters),
        plans=tuple(r.plan for r in rasters),
        staging=tuple(str(r.staging) for r in rasters),
        bands=job.bands,
        runtime=runtime_options(job.config),
        batch_size=None if job.config.batch_size == "auto" else job.config.batch_size,
        readers=None if job.config.readers == "auto" else job.config.readers,
        channels=job.model.channels,
        scores=job.config.scores,
    )


def run_job(spark, job: Job) -> dict:
    """Run the Spark stages for a prepared job under the output folder's lock; write and return
    the run report. Rasters already complete are skipped, unfinished ones resume."""
    storage.make_folders(job.output)
    backend = worker_environment(spark, "KERAS_BACKEND", job.config.backend)
    with OutputLock(job.output).held(), backend:
        return _run(spark, job)


def _run(spark, job: Job) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {"infer_write_s": 0.0}
    failed = list(job.failed)
    complete = [r for r in job.rasters if not job.config.overwrite and is_complete(r)]
    todo = [r for r in job.rasters if r not in complete]
    for raster in todo:
        prepare_staging(raster, job.config.overwrite)

    t = time.perf_counter()
    chunk_tables = [chunks_to_do(r) for r in todo]
    resumed = {r.info.path: r.plan.chunk_count - len(c) for r, c in zip(todo, chunk_tables,
                                                                      strict=True)}  # fmt: skip
    total_chunks = sum(len(c) for c in chunk_tables)
    timings["plan_s"] = time.perf_counter() - t

    results = pa.Table.from_pylist([], schema=CHUNK_RESULT_SCHEMA)
    if total_chunks:
        parallelism = task_slots(spark)
        t = time.perf_counter()
        progress = Progress([r.staging for r in todo], chunk_tables, job.config.scores)
        with reported(progress, job.config.progress_seconds), \
                spark_failures(f"{job.output}: inference failed", RESUME_HINT):  # fmt: skip
            # A few tasks per core: even load, and a lost task is a small share of the work.
            results = infer_and_write(spark, plan_table(chunk_tables), 4 * parallelism,
                                      stage_spec(job, todo), job.package)  # fmt: skip
        timings["infer_write_s"] = time.perf_counter() - t
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
    metadata = {
        "sparkinfer_version": __version__,
        "model_sha256": job.package.digest,
        "halo": str(job.tiling.halo),
        "tile_size": str(job.tiling.tile_size),
        "merge": job.tiling.merge,
    }
    tasks = [
        (r, job.config.cog, job.model,
         metadata | {"source": r.info.path, IDENTITY_TAG: r.identity})
        for r in to_assemble
    ]  # fmt: skip
    assembled = []
    if tasks:
        with spark_failures(f"{job.output}: assembly failed", RESUME_HINT):
            assembled = assemble_on_executors(spark, tasks, job)
    timings["assemble_s"] = time.perf_counter() - t
    for done in assembled:
        if done["error"]:
            failed.append(Failure(done["input"], "assemble", done["error"]))
    staging_root = storage.join(job.output, STAGING_FOLDER)
    if not storage.list_names(staging_root):
        storage.remove_tree(staging_root)
    timings["total_s"] = time.perf_counter() - started

    report = _report(job, todo, results, assembled, complete, failed, resumed, timings, spark)
    storage.write_text(storage.join(job.output, RUN_REPORT), json.dumps(report, indent=2) + "\n")
    return report


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


def _report(job, todo, results, assembled, complete, failed, resumed, timings, spark) -> dict:
    failed_inputs = {f.input for f in failed}
    assembled_s = {a["input"]: a["assemble_s"] for a in assembled}
    verified = {a["input"]: json.loads(a["verify"]) for a in assembled if a.get("verify")}
    per_raster = []
    for index, raster in enumerate(todo):
        if raster.info.path in failed_inputs:
            continue
        mine = results.filter(pc.equal(results["raster_index"], index))
        written = raster.info.path in assembled_s  # or stopped by --fail-fast
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
                    "resumed": resumed[raster.info.path],  # committed by an earlier run
                    "kept_on_retry": pc.sum(mine["reused"].cast(pa.int32())).as_py() or 0,
                }
                | _chunks_by_gpu(mine),
                "assemble_s": assembled_s.get(raster.info.path),
            }
            | ({"verify": verified[raster.info.path]} if raster.info.path in verified else {})
        )
    for raster in complete:
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
        "spark": application(spark),
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
        },
        "tiling": asdict(job.tiling) | {"overlap": job.tiling.overlap,
                                        "halo_share": round(job.tiling.halo_share, 4),
                                        "seam_free": seam_free(job.model, job.tiling)},
        "rasters": per_raster,
        "failed": [asdict(f) for f in failed],
        "tiles": {
            key: sum(r["tiles"][key] for r in per_raster)
            for key in ("planned", "skipped_nodata", "inferred")
        },
        "timings": timings | {"task_" + k: v for k, v in task_time.items()},
        # What ran the model: "cpu", or "gpu:N" as the worker numbers its GPUs.
        "devices": {row["device"]: {"chunks": row["tiles_count"], "tiles": row["inferred_sum"]}
                    for row in devices.to_pylist()},  # fmt: skip
        "config": job.config.model_dump(mode="json"),
    }
