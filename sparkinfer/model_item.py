"""A model described by a STAC Item with the Machine Learning Model extension (MLM), read for
`--model-item`: what the user would otherwise type comes from it.

- The model: the asset with the `mlm:model` role, its href relative to the Item's file.
- The input bands, by name: matched to `--assets` of STAC inputs (asset keys or common names)
  or to a raster file's band descriptions (`band_positions`).
- The normalisation: `mlm:input`'s `value_scaling`, as per-band mean and std
  (`Normalization`).
- The input size and the classes' names and colours (`mlm:output`'s classification classes).

What the Item says is a layer of the config under the `--config` file and the flags
(`config_sources`); what it says against the model file itself is refused in one line
(`check_model`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from sparkinfer import storage
from sparkinfer.errors import ConfigError, InputError, first_line
from sparkinfer.model import FORMAT_NAMES

if TYPE_CHECKING:  # what the model is: read by the config, which loads no model
    from sparkinfer.inspection import ModelInfo

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"

# The frameworks an Item may name for each model format the job runs (lowercase).
FRAMEWORKS = {
    "keras": {"keras", "tensorflow", "tf.keras"},
    "savedmodel": {"tensorflow", "keras", "tf.keras"},
    "onnx": {"onnx", "onnxruntime", "pytorch"},  # a PyTorch model exported to ONNX
}
_HEIGHT, _WIDTH = {"height", "h", "y"}, {"width", "w", "x"}
_CHANNELS = {"channel", "channels", "bands", "band", "c"}
_CHIP_TASKS = {"classification", "scene-classification"}


@dataclass(frozen=True)
class ModelItem:
    """What an MLM Item says about its model, as the job uses it."""

    path: str  # the Item's file
    model: str  # the model asset's local path
    name: str
    architecture: str
    tasks: tuple[str, ...]
    framework: str | None
    bands: tuple[str, ...]  # the input bands' names, in the model's order; () where unnamed
    channels: int | None  # the input's channels, where its shape fixes them
    size: int | None  # the input's side, where its shape fixes it
    mean: tuple[float, ...] | None  # the value scaling, as (x - mean) / std per band
    std: tuple[float, ...] | None
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...]  # "#rrggbb"; () where the Item gives none

    @property
    def chips(self) -> bool:
        """Whether the model gives one class per window (scene classification)."""
        segmentation = any("segmentation" in t for t in self.tasks)
        return bool(set(self.tasks) & _CHIP_TASKS) and not segmentation

    def config_layer(self) -> dict:
        """The job options the Item stands for, under the `--config` file and the flags."""
        layer: dict = {"model": [self.model]}
        if self.mean is not None:
            layer["normalization"] = {"mean": list(self.mean), "std": list(self.std)}
        if self.chips and self.size is not None:
            layer["chip_size"] = self.size
        return layer


def read_model_item(location: str) -> ModelItem:
    """The MLM Item at `location`; a `ConfigError` naming the file says what is missing."""
    try:
        data = json.loads(storage.read_text(location))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{location}: cannot read the model item ({first_line(exc)})") from None
    try:
        return _model_item(location, data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise ConfigError(f"{location}: not a usable STAC MLM Item ({detail})") from None


def _model_item(location: str, data: dict) -> ModelItem:
    properties = data["properties"]
    if not any("/mlm/" in e for e in data.get("stac_extensions", [])):
        raise ValueError("its stac_extensions name no MLM schema")
    inputs, outputs = properties["mlm:input"], properties["mlm:output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{len(inputs)} inputs and {len(outputs)} outputs; the job runs a model of one each"
        )
    model_input, output = inputs[0], outputs[0]
    bands = tuple(b if isinstance(b, str) else b["name"] for b in model_input.get("bands") or [])
    structure = model_input["input"]
    shape = dict(zip(structure["dim_order"], structure["shape"], strict=True))
    sides = [v for k, v in shape.items() if k in _HEIGHT | _WIDTH and v > 0]
    if len(set(sides)) > 1:
        raise ValueError(f"its input is {sides[0]} x {sides[1]} pixels; the job reads squares")
    channels = next((v for k, v in shape.items() if k in _CHANNELS and v > 0), None)
    if bands and channels is not None and len(bands) != channels:
        raise ValueError(f"{len(bands)} bands named for an input of {channels} channels")
    count = len(bands) or channels
    mean, std = scaling(model_input.get("value_scaling"), count)
    classes = output.get("classification:classes") or []
    classes = sorted((c for c in classes if not c.get("nodata")), key=lambda c: c["value"])
    if [c["value"] for c in classes] != list(range(len(classes))):
        raise ValueError("its classification classes are not numbered 0, 1, ...")
    colors = tuple(_color(c.get("color_hint")) for c in classes)
    return ModelItem(
        path=location,
        model=_model_location(location, data["assets"]),
        name=str(properties["mlm:name"]),
        architecture=str(properties.get("mlm:architecture") or "unknown"),
        tasks=tuple(properties.get("mlm:tasks") or output.get("tasks") or ()),
        framework=properties.get("mlm:framework"),
        bands=bands,
        channels=count,
        size=sides[0] if sides else None,
        mean=mean,
        std=std,
        class_names=tuple(str(c.get("description") or c["name"]) for c in classes),
        class_colors=colors if all(colors) else (),
    )


def scaling(
    value_scaling: list | None, count: int | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """MLM's `value_scaling` (one object for every band, or one per band) as the per-band mean
    and std of `(x - mean) / std`; (None, None) where it scales nothing."""
    if not value_scaling:
        return None, None
    if len(value_scaling) == 1 and count is not None:
        value_scaling = value_scaling * count
    elif count is not None and len(value_scaling) != count:
        raise ValueError(f"{len(value_scaling)} value scalings for {count} bands")
    steps = [_step(s or {"type": None}) for s in value_scaling]
    if all(step == (0.0, 1.0) for step in steps):
        return None, None
    return tuple(m for m, _ in steps), tuple(s for _, s in steps)


def _step(scaling: dict) -> tuple[float, float]:
    """One band's scaling as (mean, std) of `(x - mean) / std`."""
    kind = scaling["type"]
    if kind is None:
        return 0.0, 1.0
    if kind == "min-max":
        low, high = float(scaling["minimum"]), float(scaling["maximum"])
        if high <= low:
            raise ValueError(f"min-max scaling from {low} to {high}")
        return low, high - low
    if kind == "z-score":
        return float(scaling["mean"]), float(scaling["stddev"])
    if kind == "offset":
        return float(scaling["value"]), 1.0
    if kind == "scale":
        return 0.0, float(scaling["value"])
    raise ValueError(
        f"value scaling '{kind}' is not one the job applies (min-max, z-score, offset, scale)"
    )


def _color(hint) -> str | None:
    """A classification class's colour hint ('RRGGBB', or [r, g, b] in older Items) as
    '#rrggbb'."""
    if isinstance(hint, str) and re.fullmatch(r"[0-9A-Fa-f]{6}", hint):
        return "#" + hint.lower()
    if isinstance(hint, list) and len(hint) == 3:
        return "#" + "".join(f"{int(v):02x}" for v in hint)
    return None


def _model_location(location: str, assets: dict) -> str:
    """The local path of the asset with the `mlm:model` role, relative to the Item's file."""
    models = [a for a in assets.values() if "mlm:model" in a.get("roles", [])]
    if not models:
        raise ValueError("no asset has the mlm:model role")
    href = models[0]["href"]
    parts = urlsplit(href)
    if parts.scheme == "file":
        return unquote(parts.path)
    if parts.scheme:
        raise ValueError(f"its model asset {href} is not a local file; download it first")
    if storage.is_s3(location):
        raise ValueError("an Item on S3 names a model there; download both first")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(location)), href))


def check_model(item: ModelItem, model: ModelInfo) -> ModelInfo:
    """The inspected `model` with the Item's class names and colours; a `ConfigError` for what
    the Item says that the model file contradicts."""
    where = f"{item.path}: the model item says"

    def refuse(says: str, has: str) -> None:
        raise ConfigError(f"{where} {says} but {Path(model.path).name} {has}; correct the item")

    formats = dict.fromkeys(model.formats)
    if item.framework and not all(item.framework.lower() in FRAMEWORKS[f] for f in formats):
        refuse(
            f"framework {item.framework}", f"is {' and '.join(FORMAT_NAMES[f] for f in formats)}"
        )
    if item.channels is not None and item.channels != model.bands:
        refuse(f"{item.channels} input bands", f"takes {model.bands}")
    if item.size is not None and model.input_size is not None and item.size != model.input_size:
        refuse(f"inputs of {item.size} pixels", f"takes {model.input_size}")
    if item.tasks and item.chips != (model.task == "chips"):
        kind = "one class per window" if model.task == "chips" else "a class per pixel"
        refuse(f"tasks {', '.join(item.tasks)}", f"gives {kind}")
    if item.class_names:
        if len(item.class_names) != model.classes:
            refuse(f"{len(item.class_names)} classes", f"gives {model.classes}")
        if model.class_names and model.class_names != item.class_names:
            refuse(f"classes {list(item.class_names)}", f"names {list(model.class_names)}")
        colors = item.class_colors or model.class_colors
        return replace(model, class_names=item.class_names, class_colors=colors)
    return model


def band_positions(item: ModelItem, path: str, descriptions: tuple[str, ...]) -> list[int]:
    """The 1-based bands of a raster (`path`, its band `descriptions`) that carry the Item's
    band names, in the model's order: a band carries a name when its description is that name
    or has it as a word (case aside: 'B4 NIR' carries 'nir' and 'B4')."""
    words = [{d.lower(), *re.split(r"[\s,;:()_/-]+", d.lower())} for d in descriptions]
    positions = []
    for name in item.bands:
        found = [i + 1 for i, w in enumerate(words) if name.lower() in w]
        if len(found) != 1:
            how = "no band is" if not found else f"bands {found} are all"
            raise InputError(
                f"{path}: {how} described as '{name}', a band the model item "
                f"{Path(item.path).name} names; choose the bands with --bands"
            )
        positions.append(found[0])
    return positions
