"""Where an output came from, written in its STAC Item: the model in the terms of the STAC
Machine Learning Model extension (MLM), the software in those of the processing extension, and
the job's own options and identity (`sparkinfer:`), enough to make the same map again
(`rerun_layer`, `--rerun`).

The Item's fields are made on the driver (`describe`, JSON only); the assembly adds what only
it knows (`stamped`): the raster's identity and the versions of the software that ran there.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sparkinfer import __version__, storage
from sparkinfer.config import JobConfig
from sparkinfer.config_groups import Normalization
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.errors import ConfigError, first_line
from sparkinfer.inspection import ModelInfo
from sparkinfer.model import ModelPackage, model_format
from sparkinfer.model_item import MLM_SCHEMA, ModelItem
from sparkinfer.tiling import seam_free

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"

FRAMEWORKS = {"keras": "Keras", "savedmodel": "TensorFlow", "onnx": "ONNX"}
ARTIFACT_TYPES = {
    "keras": "tf.keras.Model.save",
    "savedmodel": "tf.keras.Model.export",
    "onnx": "onnx",
}
# The packages whose versions decide the pixels: the job's, the reader's and each framework's.
SOFTWARE = {
    "keras": ("keras", "tensorflow", "tensorflow-cpu", "jax"),
    "savedmodel": ("tensorflow", "tensorflow-cpu"),
    "onnx": ("onnxruntime", "onnxruntime-gpu"),
}

# The options that decide an output's bytes or how its raster was cut, recorded to make it again.
# Left out: where the inputs and outputs are (the Item's links and place say it), the model (its
# assets) and what sets only speed, logging or the run's behaviour on failure.
RERUN_OPTIONS = {
    "model_item",
    "backend",
    "precision",
    "tile_size",
    "halo",
    "merge",
    "overlap",
    "chip_size",
    "chip_stride",
    "bands",
    "assets",
    "resampling",
    "normalization",
    "activation",
    "tta",
    "scores",
    "confidence",
    "uncertain",
    "uncertain_size",
    "quicklook",
    "polygons",
    "min_area",
    "chunk_tiles",
    "cog",
    "grid",
    "trust_model",
    "cut_argmax",
}


def describe(
    config: JobConfig,
    model: ModelInfo,
    package: ModelPackage,
    tiling: Tiling | ChipGrid,
    item: ModelItem | None,
) -> dict:
    """The provenance fields of every output Item of a run, as JSON: `stac_extensions`,
    `properties` and `assets` (the model's, one per ensemble member)."""
    exact = seam_free(model, tiling)
    options = config.model_dump(mode="json", include=RERUN_OPTIONS)
    if config.model_item:  # found again from anywhere
        options["model_item"] = storage.absolute(config.model_item)
    kind = "scene-classification" if model.task == "chips" else "semantic-segmentation"
    tasks = list(item.tasks) if item and item.tasks else [kind]
    names = item.bands if item else ()
    properties = {
        "mlm:name": item.name if item else model_name(model.path.split(" + ")),
        "mlm:architecture": item.architecture if item else "unknown",
        "mlm:tasks": tasks,
        "mlm:framework": " + ".join(dict.fromkeys(FRAMEWORKS[f] for f in model.formats)),
        "mlm:input": [_model_input(model, config.normalization, names)],
        "mlm:output": [_model_output(model, tasks)],
        "processing:lineage": lineage(config, tiling, exact),
        "sparkinfer:seam_free": exact,
        "sparkinfer:tiling": _tiling_fields(tiling),
        "sparkinfer:options": options,
    }
    extensions = [MLM_SCHEMA, PROCESSING_SCHEMA, *([EO_SCHEMA] if names else [])]
    assets = _model_assets(model, package, names)
    return {"stac_extensions": extensions, "properties": properties, "assets": assets}


def _model_input(model: ModelInfo, normalization: Normalization, names: tuple[str, ...]) -> dict:
    """MLM's input object: channels last, the side where the model fixes it."""
    side = model.input_size or -1
    return {
        "name": "pixels",
        "bands": list(names),
        "input": {
            "shape": [-1, side, side, model.bands],
            "dim_order": ["batch", "height", "width", "bands" if names else "channel"],
            "data_type": "float32",
        },
        "value_scaling": value_scaling(normalization, model.bands),
    }


def _model_output(model: ModelInfo, tasks: list[str]) -> dict:
    """MLM's output object: scores per pixel or per chip, or class indices (an argmax)."""
    side = model.input_size or -1
    chips, scores = model.task == "chips", model.output == "scores"
    shape, order = [-1], ["batch"]
    if not chips:
        shape, order = shape + [side, side], order + ["height", "width"]
    if scores:
        shape, order = shape + [model.channels], order + ["class"]
    return {
        "name": "scores" if scores else "classes",
        "tasks": tasks,
        "result": {
            "shape": shape,
            "dim_order": order,
            "data_type": "float32" if scores else "int64",
        },
        "classification:classes": classification_classes(model),
    }


def _model_assets(model: ModelInfo, package: ModelPackage, names: tuple[str, ...]) -> dict:
    """An `mlm:model` asset per model (`model`, `model-2`, ... for an ensemble's members),
    each with the digest of its files as the job packaged them."""
    assets = {}
    members = package.members or (package,)
    for i, (path, member) in enumerate(zip(model.path.split(" + "), members, strict=True)):
        asset = {
            "href": storage.uri(path),
            "title": f"model {Path(path).name}",
            "roles": ["mlm:model"],
            "mlm:artifact_type": ARTIFACT_TYPES[model_format(Path(path))],
            "sparkinfer:sha256": member.digest,
        }
        if names:  # MLM finds the input's band names described on the model asset
            asset["eo:bands"] = [{"name": n} for n in names]
        assets["model" if i == 0 else f"model-{i + 1}"] = asset
    return assets


def stamped(provenance: dict, identity: str, formats: tuple[str, ...]) -> dict:
    """`provenance` with a raster's identity and the versions of the software here, where the
    raster was assembled (as it was inferred: the executors run one environment)."""
    packages = ["sparkinfer", "pyspark", "numpy", "rasterio"]
    packages += [p for f in dict.fromkeys(formats) for p in SOFTWARE[f]]
    software = {}
    for package in dict.fromkeys(packages):
        try:
            software[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    import rasterio

    software["GDAL"] = rasterio.__gdal_version__
    properties = provenance["properties"] | {
        "processing:software": software,
        "sparkinfer:identity": identity,
    }
    framework = next((p for p in SOFTWARE[formats[0]] if p in software), None)
    if framework is not None:
        properties["mlm:framework_version"] = software[framework]
    return provenance | {"properties": properties}


def model_name(paths: list[str]) -> str:
    """An MLM name for models known by their files only: letters, digits, '_.-' and spaces,
    from a letter to a letter or digit."""
    stems = [Path(p).name.split(".")[0] for p in paths]
    name = stems[0] if len(stems) == 1 else "ensemble of " + " and ".join(stems)
    name = re.sub(r"[^A-Za-z0-9_.\-\s]", "_", name).rstrip("_.- ")
    return name if re.fullmatch(r"[A-Za-z].*[A-Za-z0-9]", name) else f"model {name}".strip()


def value_scaling(normalization: Normalization, bands: int) -> list[dict] | None:
    """The job's normalisation (`x * scale + offset`, then `(x - mean) / std` per band) as MLM
    value scalings: one z-score per band, or none."""
    scale = 1.0 if normalization.scale is None else normalization.scale
    offset = normalization.offset or 0.0
    means = normalization.mean or [0.0] * bands
    stds = normalization.std or [1.0] * bands
    if (scale, offset) == (1.0, 0.0) and normalization.mean is None:
        return None
    return [
        {"type": "z-score", "mean": (m - offset) / scale, "stddev": s / scale}
        for m, s in zip(means, stds, strict=True)
    ]


def classification_classes(model: ModelInfo) -> list[dict]:
    """The model's classes as the classification extension's class objects (the class map's
    asset lists its nodata value too; the model gives none)."""
    names = model.class_names or tuple(f"class {i}" for i in range(model.classes))
    classes = []
    for i, name in enumerate(names):
        entry = {
            "value": i,
            "name": re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{i}",
            "description": name,
        }
        if model.class_colors:
            entry["color_hint"] = model.class_colors[i].lstrip("#").upper()
        classes.append(entry)
    return classes


def lineage(config: JobConfig, tiling: Tiling | ChipGrid, seam_free: bool) -> str:
    """How the map was made, in a sentence."""
    if isinstance(tiling, ChipGrid):
        how = f"one class per chip of {tiling.size} pixels, every {tiling.stride}"
    elif tiling.merge == "blend":
        how = (
            f"tiles of {tiling.tile_size} pixels whose windows overlap by {tiling.overlap}, blended"
        )
    else:
        how = f"tiles of {tiling.tile_size} pixels read with a halo of {tiling.halo}, cropped"
    extra = "" if config.tta == "none" else f", test-time augmentation {config.tta}"
    exact = "equal to" if seam_free else "not exactly"
    return f"sparkinfer {__version__}: {how}{extra}; {exact} whole-image inference"


def _tiling_fields(tiling: Tiling | ChipGrid) -> dict:
    if isinstance(tiling, ChipGrid):
        return {"chip_size": tiling.size, "chip_stride": tiling.stride}
    return {
        "tile_size": tiling.tile_size,
        "halo": tiling.halo,
        "stride": tiling.stride,
        "chunk_tiles": tiling.chunk_tiles,
        "merge": tiling.merge,
    }


def rerun_layer(location: str) -> dict:
    """The options of the output whose STAC Item is at `location`: its inputs (the Item's
    `derived_from` links), its model (the assets with the `mlm:model` role, or its model item)
    and the options it recorded (`sparkinfer:options`)."""
    try:
        data = json.loads(storage.read_text(location))
        options = data["properties"]["sparkinfer:options"]
        inputs = [_local(link["href"]) for link in data["links"] if link["rel"] == "derived_from"]
        models = [
            _local(a["href"]) for a in data["assets"].values() if "mlm:model" in a.get("roles", [])
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise ConfigError(f"{location}: not an Item this job wrote ({detail})") from None
    layer = {k: v for k, v in options.items() if v is not None} | {"input": inputs}
    return layer if options.get("model_item") else layer | {"model": models}


def _local(href: str) -> str:
    """A file:// URI as its path; any other location as it is."""
    parts = urlsplit(href)
    return unquote(parts.path) if parts.scheme == "file" else href
