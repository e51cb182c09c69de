"""Prepare a run on the driver, from metadata only: check the options, the model, the output
folder and every input, then plan each raster.

`prepare_job` does all the checks that need no Spark. A problem of the whole run (config, model,
output folder, no usable input) raises a `UserError` with one clear line, before anything is
written. A problem of one raster is recorded as a `Failure` and the others go on (unless
`fail_fast`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from sparkinfer import __version__, storage
from sparkinfer.config import CHUNK_PIXELS, JobConfig
from sparkinfer.errors import ConfigError, InputError, ModelError, OutputError, first_line
from sparkinfer.lock import OutputLock
from sparkinfer.model import (
    FORMAT_NAMES,
    WITHOUT_ARGMAX,
    ModelInfo,
    ModelPackage,
    inspect_package,
    package_models,
)
from sparkinfer.plan import ChipGrid, RasterPlan, Tiling, round_up
from sparkinfer.raster import RasterInfo, read_info, resolve_inputs
from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.stac import ItemInput, is_stac, read_items, stack_item
from sparkinfer.stages.infer import warm_workers

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
STAGING_FOLDER = "_staging"
IDENTITY_TAG = "SPARKINFER_IDENTITY"


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
    polygons_path: str | None
    staging: str

    @property
    def chips(self) -> bool:
        """Whether the model is a chip classifier: its class map has a cell per chip, and a
        chip table stands for the tile index."""
        return isinstance(self.plan.tiling, ChipGrid)

    @property
    def tile_index_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".tiles.parquet"

    @property
    def chips_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".chips.parquet"

    @property
    def stac_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".stac.json"

    @property
    def outputs(self) -> list[str]:
        table = self.chips_path if self.chips else self.tile_index_path
        paths = (
            self.classes_path,
            self.scores_path,
            self.quicklook_path,
            table,
            self.polygons_path,
            self.stac_path,
        )
        return [p for p in paths if p]


@dataclass(frozen=True)
class Job:
    """A checked, planned run: everything `run_job` needs."""

    config: JobConfig
    model: ModelInfo
    package: ModelPackage
    tiling: Tiling | ChipGrid
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
            roots.append(
                (
                    pattern,
                    storage.absolute(pattern)
                    if storage.is_s3(pattern)
                    else str(Path(pattern).resolve()),
                )
            )
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
        raise OutputError(f"{output}: cannot create the output folder ({existing} is not a folder)")
    try:
        storage.probe_write(str(existing))
    except OSError as exc:
        where = "output folder" if existing == resolved else f"folder {existing}"
        raise OutputError(
            f"{output}: cannot write in the {where} ({exc.strerror}); choose another --output"
        ) from None


def runtime_options(config: JobConfig) -> RuntimeOptions:
    """How the executors run the model for `config`."""
    return RuntimeOptions(
        config.backend,
        config.precision,
        config.normalization,
        config.activation,
        config.tta,
        config.verbose,
    )


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


def _chip_grid(config: JobConfig, model: ModelInfo) -> ChipGrid:
    """Chips of the classifier's input size every `chip_stride` pixels; the options of
    per-pixel models are refused, as they would change nothing."""
    given = [
        flag
        for flag, used in (
            ("--merge blend", config.merge == "blend"),
            ("--halo", config.halo != "auto"),
            ("--verify", config.verify),
            ("--polygons", config.polygons),
        )
        if used
    ]
    if given:
        raise ConfigError(
            f"{model.path}: a chip classifier gives one class per window, so {given[0]} does "
            "not apply; chips are placed with --chip-stride"
        )
    if config.estimate:
        raise ConfigError(
            f"{model.path}: --estimate covers per-pixel models; run a chip "
            "classifier on a part of the input to time it"
        )
    size = model.input_size or config.chip_size
    if size is None:
        raise ConfigError(
            f"{model.path}: the chip classifier takes any input size; give the "
            "chips' side with --chip-size PIXELS"
        )
    if config.chip_size not in (None, size):
        raise ConfigError(
            f"{model.path}: the chip classifier takes {size}-pixel chips only; "
            f"--chip-size {config.chip_size} does not fit it"
        )
    stride = config.chip_stride or size
    if stride > size:
        raise ConfigError(
            f"--chip-stride {stride} is larger than the chips ({size} pixels, the "
            "model's input); chips would leave gaps"
        )
    chunk_tiles = config.chunk_tiles
    if chunk_tiles == "auto":  # about CHUNK_PIXELS of input per chunk side
        chunk_tiles = max(1, CHUNK_PIXELS // stride)
    return ChipGrid(size, stride, chunk_tiles)


def _check_scores_needed(config: JobConfig, model: ModelInfo) -> None:
    """A model that outputs class indices has no scores: the options that use them are
    refused, each in a line that says what to do. (An ensemble of it is refused when the
    models are `combined`.)"""
    if model.output == "scores":
        return
    for flag, need, used in (
        ("--scores", "write", config.scores),
        (f"--tta {config.tta}", "average", config.tta != "none"),
        ("--merge blend", "blend", config.merge == "blend"),
        (f"--{config.activation}", "turn into probabilities", config.activation != "none"),
    ):
        if used:
            raise ConfigError(
                f"{model.path}: the model outputs class indices (it ends in an argmax), so "
                f"{flag} has no scores to {need}; {WITHOUT_ARGMAX[model.format]}"
            )


def _tiling(config: JobConfig, model: ModelInfo) -> Tiling | ChipGrid:
    """How the model's rasters are cut: the halo (`crop`) or half the overlap (`blend`) around
    tiles of `tile_size`, whose windows are the model's input where its size is fixed; a chip
    classifier's chips."""
    if model.task == "chips":
        return _chip_grid(config, model)
    for flag, value in (("--chip-size", config.chip_size), ("--chip-stride", config.chip_stride)):
        if value is not None:
            raise ConfigError(
                f"{model.path}: {flag} applies to chip classifiers (an output of "
                "(batch, classes)); this model gives a class per pixel"
            )
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
        return Tiling(
            tile_size,
            halo,
            model.stride,
            chunk_tiles,
            fixed_window=model.input_size is not None,
            merge=config.merge,
        )
    except ValueError as exc:
        raise ConfigError(f"tile_size/halo do not fit the model: {exc}") from None


def seam_free(model: ModelInfo, tiling: Tiling | ChipGrid) -> bool:
    """Whether the stitched output equals whole-image inference: windows are cropped to their
    cores, and the halo covers the model's receptive field. (A chip classifier's output is
    per chip: there is no whole-image inference to equal.)"""
    return (
        isinstance(tiling, Tiling)
        and tiling.merge == "crop"
        and model.receptive_halo is not None
        and tiling.halo >= model.receptive_halo
    )


def halo_notes(job: Job) -> list[str]:
    """What a user should know about the context the job gives each tile: a tile size, halo or
    overlap that differs from the one given, and whether the result is seam-free."""
    model, tiling, config = job.model, job.tiling, job.config
    if isinstance(tiling, ChipGrid):
        return []
    blend = tiling.merge == "blend"
    notes = []
    if model.input_size is not None and tiling.tile_size != config.tile_size:
        context = (
            f"overlapping by {tiling.overlap}" if blend else f"{tiling.halo} of halo on each side"
        )
        notes.append(
            f"tile size {tiling.tile_size}: the model takes windows of exactly "
            f"{model.input_size} pixels, {context}"
        )
    if blend:
        if config.overlap != "auto" and config.overlap != tiling.overlap:
            notes.append(
                f"overlap {config.overlap} rounded up to {tiling.overlap}, a multiple "
                f"of twice the model's stride {model.stride}"
            )
        if model.receptive_halo is not None:
            notes.append(
                f"the model's receptive field is local ({model.receptive_halo} pixels): "
                "--merge crop gives whole-image inference exactly"
            )
        notes.append(
            f"windows of {tiling.window_size} pixels overlap by {tiling.overlap} and "
            "their scores are blended: smooth across tiles, not seam-free"
        )
        return notes
    halo, given = tiling.halo, config.halo
    if given != "auto" and given != halo:
        notes.append(
            f"halo {given} rounded up to {halo}, a multiple of the model's stride {model.stride}"
        )
    if model.receptive_halo is None:
        notes.append(
            f"{model.path}: each output pixel depends on the whole input window: "
            "tiles are not seam-free; --merge blend smooths their borders"
        )
    elif halo < model.receptive_halo:
        notes.append(
            f"halo {halo} is less than the model's receptive field "
            f"({model.receptive_halo} pixels, by {model.halo_found_by}): tiles differ "
            "from whole-image inference near their borders"
        )
    return notes


def _identity(
    info: RasterInfo, package: ModelPackage, config: JobConfig, tiling: Tiling | ChipGrid
) -> str:
    """Hash of everything that decides a raster's outputs, their bytes included (the COG's
    layout, the code that wrote them): chunks of another run never mix."""
    # An Item's digest covers its JSON, its assets' files, those chosen and their resampling.
    version = [info.item.digest] if info.item else [info.size, info.mtime_ns]
    parts = {
        "input": [info.path, *version],
        "model": package.digest,
        "tiling": asdict(tiling),
        "pixels": config.model_dump(
            include={
                "bands",
                "normalization",
                "activation",
                "tta",
                "scores",
                "backend",
                "precision",
                "cog",
                "polygons",
                "min_area",
            }
        ),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def output_names(stems: list[str], paths: list[str]) -> list[str]:
    """Output file stems: the inputs' `stems` made safe (ASCII letters, digits, '.', '_', '-';
    never starting with '.' or '_', so never a hidden or reserved name), and distinct: stems
    that clash get a suffix from a hash of their input's full `paths`."""
    safe_stems = []
    for stem in stems:
        ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem.decode()).strip("._-")
        safe_stems.append(safe or "raster")
    counts = Counter(stem.casefold() for stem in safe_stems)  # case-insensitive file systems too
    return [
        stem
        if counts[stem.casefold()] == 1
        else f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        for stem, path in zip(safe_stems, paths, strict=True)
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


def _no_usable_input(failed: list[Failure]) -> InputError:
    first = failed[0].error if failed else "no inputs"
    more = f" (and {len(failed) - 1} more inputs failed)" if len(failed) > 1 else ""
    return InputError(first + more)


def _checked_info(path: str, config: JobConfig, item: ItemInput | None = None) -> RasterInfo:
    """The raster's metadata, if the job can read it (what the model has no say in): a raster
    file's, or a STAC Item's, its `--assets` stacked."""
    stacked = None if item is None else stack_item(item, config.assets, config.resampling)
    info = read_info(path, stacked)
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
    return info


def _check_bands(info: RasterInfo, config: JobConfig, model: ModelInfo) -> None:
    selected = len(config.bands) if config.bands else info.count
    if selected != model.bands:
        raise InputError(
            f"{info.path}: {selected} bands selected but the model takes {model.bands}; "
            "choose them with --bands"
        )


@dataclass(frozen=True)
class Checked:
    """A run checked without loading its model or starting Spark: inputs found and readable,
    output folder usable and free, model files packaged."""

    config: JobConfig
    output: str  # absolute local path or s3:// URI
    infos: tuple[RasterInfo, ...]
    failed: tuple[Failure, ...]  # input patterns that found nothing, rasters that cannot be read
    package: ModelPackage


def check_job(config: JobConfig) -> Checked:
    """The checks that need neither the model loaded nor Spark (the rasters' metadata is read
    here); a UserError stops the run, a raster that cannot be used becomes a `Failure`."""
    output = storage.absolute(config.output)
    inputs, failed = _resolve(config)
    _check_output_folder(output, config.input, inputs)
    OutputLock(output).check()
    package = package_models(config.model, config.trust_model, config.cut_argmax)

    def refused(source: str, exc: InputError) -> None:
        if config.fail_fast:
            raise exc
        failed.append(Failure(source, "plan", str(exc)))

    infos = []
    for path in inputs:
        try:  # a STAC file: each of its Items is a raster
            items = read_items(path) if is_stac(path) else [None]
        except InputError as exc:
            refused(path, exc)
            continue
        for item in items:
            source = path if item is None else item.path
            try:
                infos.append(_checked_info(source, config, item))
            except InputError as exc:
                refused(source, exc)
    if not infos:
        raise _no_usable_input(failed)
    return Checked(config, output, tuple(infos), tuple(failed), package)


def prepare_job(config: JobConfig, spark=None) -> Job:
    """Check model, output and inputs, then plan every raster (`check_job`, then `plan_job`)."""
    return plan_job(check_job(config), spark)


def plan_job(checked: Checked, spark=None) -> Job:
    """Check the model, check the inputs, then plan every raster.

    With a session, its Python workers start, load the model and inspect it (`warm_workers`),
    so the driver never starts a framework and the stage finds the model loaded; without one,
    or if that job fails, the model is inspected here, from the package the workers load.

    Raises a UserError for what stops the whole run; a raster that cannot be used becomes a
    `Failure` in `Job.failed` (or raises, with `fail_fast`).
    """
    config, output, package = checked.config, checked.output, checked.package
    failed = list(checked.failed)
    model = None
    if spark is not None:
        model = warm_workers(spark, package, runtime_options(config), config.model)
    if model is None:
        model = inspect_package(package, config.model, config.backend)
    others = [f for f in model.formats if f != "keras"]
    if config.precision != "float32" and others:
        raise ConfigError(
            f"{model.path}: --precision {config.precision} applies to .keras models; run "
            f"{' and '.join(FORMAT_NAMES[f] for f in others)} in float32"
        )
    count = config.normalization.band_count
    if count is not None and count != model.bands:
        raise ConfigError(
            f"normalization has statistics for {count} bands but the model takes {model.bands}"
        )
    _check_scores_needed(config, model)
    tiling = _tiling(config, model)

    infos = []
    for info in checked.infos:
        try:
            _check_bands(info, config, model)
            infos.append(info)
        except InputError as exc:
            if config.fail_fast:
                raise
            failed.append(Failure(info.path, "plan", str(exc)))
    if not infos:
        raise _no_usable_input(failed)

    rasters = []
    names = output_names([i.stem for i in infos], [i.path for i in infos])
    for info, name in zip(infos, names, strict=True):
        identity = _identity(info, package, config, tiling)
        rasters.append(
            RasterJob(
                info=info,
                plan=RasterPlan(info.height, info.width, tiling),
                identity=identity,
                classes_path=storage.join(output, f"{name}.tif"),
                scores_path=storage.join(output, f"{name}.scores.tif") if config.scores else None,
                quicklook_path=storage.join(output, f"{name}.png") if config.quicklook else None,
                polygons_path=(
                    storage.join(output, f"{name}.polygons.parquet") if config.polygons else None
                ),
                staging=storage.join(output, STAGING_FOLDER, f"{name}-{identity}"),
            )
        )
    bands = tuple(config.bands or range(1, model.bands + 1))
    return Job(config, model, package, tiling, bands, output, tuple(rasters), tuple(failed))
