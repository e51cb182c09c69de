"""Prepare a run on the driver, from metadata only: check the options, the output folder and
every input, package the model's files (`check_job`); then, given what the model is (its
inspection, `job.inspected`), plan each raster (`plan_job`).

A problem of the whole run (config, model, output folder, no usable input) raises a
`UserError` with one clear line, before anything is written. A problem of one raster is
recorded as a `Failure` and the others go on (unless `fail_fast`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sparkinfer import storage
from sparkinfer.config import JobConfig
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.errors import ConfigError, InputError
from sparkinfer.grid import GridPlan
from sparkinfer.grid_rasters import check_grid_run, grid_rasters, plan_map
from sparkinfer.inspection import WITHOUT_ARGMAX, ModelInfo
from sparkinfer.lock import OutputLock
from sparkinfer.model import FORMAT_NAMES, ModelPackage, package_models
from sparkinfer.model_item import ModelItem, band_positions, check_model, read_model_item
from sparkinfer.outputs import STAGING_FOLDER, check_output_folder, output_names
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import RasterInfo, read_info, resolve_inputs
from sparkinfer.raster_job import RasterJob, identity, input_version
from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.stac import ItemInput, is_stac, read_items, stack_item
from sparkinfer.tiling import tiling_for

SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


@dataclass(frozen=True)
class Failure:
    """A raster that could not be processed: which, at what stage, and why (one line)."""

    input: str
    stage: Literal["input", "plan", "infer", "assemble"]
    error: str


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
    model_item: ModelItem | None = None  # the STAC MLM Item that described the model


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


def _check_scores_needed(config: JobConfig, model: ModelInfo) -> None:
    """A model that outputs class indices has no scores: the options that use them are
    refused, each in a line that says what to do. (An ensemble of it is refused when the
    models are `combined`.)"""
    if model.output == "scores":
        return
    for flag, need, used in (
        ("--scores", "write", config.scores),
        ("--confidence", "measure", config.confidence is not None),
        (f"--tta {config.tta}", "average", config.tta != "none"),
        ("--merge blend", "blend", config.merge == "blend"),
        (f"--{config.activation}", "turn into probabilities", config.activation != "none"),
    ):
        if used:
            raise ConfigError(
                f"{model.path}: the model outputs class indices (it ends in an argmax), so "
                f"{flag} has no scores to {need}; {WITHOUT_ARGMAX[model.format]}"
            )


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
    grid: GridPlan | None = None  # with --grid: the map's grid tiles and which inputs meet them
    model_item: ModelItem | None = None  # --model-item's


def check_job(config: JobConfig) -> Checked:
    """The checks that need neither the model loaded nor Spark (the rasters' metadata is read
    here); a UserError stops the run, a raster that cannot be used becomes a `Failure`."""
    output = storage.absolute(config.output)
    model_item = None if config.model_item is None else read_model_item(config.model_item)
    inputs, failed = _resolve(config)
    named = model_item is not None and model_item.bands and not (config.bands or config.assets)
    if named and any(is_stac(p) for p in inputs):  # Items' bands are chosen by their names
        config = config.model_copy(update={"assets": list(model_item.bands)})
    check_output_folder(output, config.input, inputs)
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
    if named and not config.assets:
        config, infos = _bands_by_name(config, model_item, infos, refused)
    if not infos:
        raise _no_usable_input(failed)
    grid = None if config.grid is None else plan_map(config.grid, tuple(infos))
    return Checked(config, output, tuple(infos), tuple(failed), package, grid, model_item)


def _bands_by_name(
    config: JobConfig, item: ModelItem, infos: list[RasterInfo], refused
) -> tuple[JobConfig, list[RasterInfo]]:
    """`config` with the bands that carry the model item's band names (`band_positions`) in
    the first raster, and the rasters whose bands carry them there too; the others are
    `refused`, each in one line."""
    chosen, kept = None, []
    for info in infos:
        try:
            positions = band_positions(item, info.path, info.descriptions)
            if chosen is not None and positions != chosen:
                raise InputError(
                    f"{info.path}: the model item's bands are its bands {positions}, but "
                    f"{kept[0].path}'s {chosen}; run them apart or choose with --bands"
                )
            chosen = positions
            kept.append(info)
        except InputError as exc:
            refused(info.path, exc)
    return config.model_copy(update={"bands": chosen}), kept


def plan_job(checked: Checked, model: ModelInfo) -> Job:
    """Check the options and the inputs against what the `model` is (`job.inspected`), then
    plan every raster.

    Raises a UserError for what stops the whole run; a raster that cannot be used becomes a
    `Failure` in `Job.failed` (or raises, with `fail_fast`).
    """
    config, output, package = checked.config, checked.output, checked.package
    failed = list(checked.failed)
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
    labels = None  # class names and colours that a model item adds: not in the model's digest
    if checked.model_item is not None:
        described = check_model(checked.model_item, model)
        if (described.class_names, described.class_colors) != (
            model.class_names,
            model.class_colors,
        ):
            labels = (described.class_names, described.class_colors)
        model = described
    _check_scores_needed(config, model)
    tiling = tiling_for(config, model)

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

    if checked.grid is not None:
        check_grid_run(config.grid, config, tiling)
        rasters = grid_rasters(checked.grid, config, tiling, package, output, labels)
    else:
        rasters = _raster_jobs(config, infos, tiling, package, output, labels)
    bands = tuple(config.bands or range(1, model.bands + 1))
    failed = tuple(failed)
    return Job(config, model, package, tiling, bands, output, rasters, failed, checked.model_item)


def _raster_jobs(
    config: JobConfig,
    infos: list[RasterInfo],
    tiling: Tiling | ChipGrid,
    package: ModelPackage,
    output: str,
    labels: tuple | None,
) -> tuple[RasterJob, ...]:
    """One raster of the run per input, its outputs named after it in `output`; `labels` as
    `identity` takes them."""
    rasters = []
    names = output_names([i.stem for i in infos], [i.path for i in infos])
    for info, name in zip(infos, names, strict=True):
        made_from = identity(input_version(info), package, config, tiling, labels)
        rasters.append(
            RasterJob(
                info=info,
                plan=RasterPlan(info.height, info.width, tiling),
                identity=made_from,
                classes_path=storage.join(output, f"{name}.tif"),
                scores_path=storage.join(output, f"{name}.scores.tif") if config.scores else None,
                confidence_path=(
                    storage.join(output, f"{name}.confidence.tif") if config.confidence else None
                ),
                uncertain_path=(
                    storage.join(output, f"{name}.uncertain.parquet") if config.uncertain else None
                ),
                quicklook_path=storage.join(output, f"{name}.png") if config.quicklook else None,
                polygons_path=(
                    storage.join(output, f"{name}.polygons.parquet") if config.polygons else None
                ),
                staging=storage.join(output, STAGING_FOLDER, f"{name}-{made_from}"),
            )
        )
    return tuple(rasters)
