"""What a model is, found by inspecting it: a per-pixel model's bands, classes, stride and
receptive field, or a chip classifier's window.

A model is loaded once to check that it maps (batch, height, width, bands) to (batch, height,
width, classes) at input resolution, and to derive its receptive field and total stride; or,
for a chip classifier, windows of its input size to (batch, classes). A model of one input size
is probed within windows of that size. A model that ends in an argmax and outputs class indices
is inspected by the scores its argmax takes. It is inspected where it runs: in a Python worker
that loads it (`session.warm_workers`), or on the driver from the same package.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sparkinfer.averaging import Ensemble
from sparkinfer.errors import ModelError
from sparkinfer.model import ModelPackage, load_model, unpacked
from sparkinfer.runtimes import Backend, Runtime, RuntimeOptions
from sparkinfer.runtimes.base import Output

# How the receptive field was found: traced through the layer graph, probed by perturbing
# input pixels, or none (a chip classifier's output is its whole window's).
HaloFoundBy = Literal["trace", "probe", "none"]


@dataclass(frozen=True)
class ModelInfo:
    """What the driver learned about a model before Spark starts."""

    path: str  # as the user gave it; an ensemble's: its models' joined by " + "
    format: str  # a `model.Format`; an ensemble's: its models' joined by "+"
    bands: int
    channels: int  # output channels: a score per class, or one sigmoid score (of class 1)
    stride: int
    receptive_halo: int | None  # None: the output depends on the whole input window
    halo_found_by: HaloFoundBy
    input_size: int | None = None  # the side of the only window the model takes, if fixed
    # "segmentation": scores per pixel (batch, height, width, channels); "chips": one per
    # window (batch, channels), from a model of one input size
    task: Literal["segmentation", "chips"] = "segmentation"
    class_names: tuple[str, ...] = ()  # from the model's sparkinfer.json, when it has one
    class_colors: tuple[str, ...] = ()  # "#rrggbb", one per class
    # "scores": the model outputs scores (`channels` of them); "classes": it ends in an argmax
    # and outputs class indices, one of the `channels` its argmax takes
    output: Output = "scores"

    @property
    def classes(self) -> int:
        return class_count(self.channels)

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats of the model, or of an ensemble's models."""
        return tuple(self.format.split("+"))


def class_count(channels: int) -> int:
    """Classes of the class map of a model with `channels` outputs: one sigmoid channel makes
    two, 0 below 0.5 and 1 from it."""
    return 2 if channels == 1 else channels


# What to do, per format, with a model that ends in an argmax where scores are needed.
WITHOUT_ARGMAX = {
    "onnx": "pass --cut-argmax to run it up to its final ArgMax",
    "keras": "save it without its final argmax",
    "savedmodel": "export it without its final argmax",
}


def inspect_model(
    path: str | Path,
    trusted: bool = False,
    backend: Backend = "tensorflow",
    runtime: Runtime | None = None,
) -> ModelInfo:
    """Check a model can be used for tiled per-pixel inference: `runtime` when it is already
    loaded, else the model at `path`, loaded here (a Keras model on `backend` unless Keras
    already runs here on another).

    A model of one input size is probed within windows of that size, its stride found by
    shifting the window, as an ONNX or SavedModel file; a Keras model's trace holds at its one
    size too, which lies on its stride's grid (else the output, checked at that size, would not
    be at input resolution). A model that outputs classes is inspected by the scores its argmax
    takes (`Runtime.scores`): the same receptive field and stride."""
    from sparkinfer.receptive_field import UntraceableLayer, probe, probe_shift, trace

    path = Path(path)
    runtime = runtime or load_model(path, RuntimeOptions(backend=backend), trusted)
    fixed = runtime.fixed_size
    field = None
    if runtime.format == "keras":
        model = runtime.scores_model
        in_shape, shape = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
        if len(model.outputs) != 1 or len(shape) not in (2, 4):
            raise ModelError(
                f"{path}: model output has shape {shape}; a per-pixel model outputs "
                "(batch, height, width, classes), a chip classifier (batch, classes)"
            )
        if len(shape) == 2:
            return _chip_classifier(path, runtime, in_shape[1:3], shape[-1])
        try:
            field = trace(model)
        except UntraceableLayer:
            pass  # a layer of unknown reach: probed below
        except ValueError as exc:
            raise ModelError(f"{path}: not a per-pixel model: {exc}") from None
    else:  # a chip classifier shows by its output's rank, at its one size or at any
        size = fixed or (CHIP_PROBE, CHIP_PROBE)
        shape = runtime.output_shape(*size)
        if shape is not None and len(shape) == 2:
            return _chip_classifier(path, runtime, fixed or (None, None), shape[-1])
    if fixed is not None and fixed[0] != fixed[1]:
        raise ModelError(
            f"{path}: model input is fixed at {fixed[0]}x{fixed[1]} pixels; the job reads "
            "square windows"
        )
    size = None if fixed is None else fixed[0]
    if field is not None:
        halo, stride, found_by = field.halo, field.stride, "trace"
    elif size is not None:  # one input size: the stride shows only by shifting the window
        found_by, reach = (
            "probe",
            probe(runtime.scores, runtime.bands, 1, smallest=size, largest=size),
        )
        stride = 1 if reach is None else probe_shift(runtime.scores, runtime.bands, size, reach)
        halo = (
            reach
            if stride == 1
            else probe(runtime.scores, runtime.bands, stride, smallest=size, largest=size)
        )
    else:
        stride = _probe_stride(runtime, path)
        halo, found_by = probe(runtime.scores, runtime.bands, stride), "probe"
    channels = _probe_channels(runtime, path, stride, size)
    names, colors = read_class_table(path, class_count(channels), runtime)
    return ModelInfo(
        path=str(path),
        format=runtime.format,
        bands=runtime.bands,
        channels=channels,
        stride=stride,
        receptive_halo=halo,
        halo_found_by=found_by,
        input_size=size,
        class_names=names,
        class_colors=colors,
        output=runtime.output,
    )


def _chip_classifier(path: Path, runtime: Runtime, size: tuple, channels: int) -> ModelInfo:
    """A model that gives one score vector of `channels` per window: of one square size, or of
    any (`input_size` None: the job's `chip_size` decides)."""
    if runtime.output == "classes":
        raise ModelError(
            f"{path}: a chip classifier that outputs class indices, not scores; the job "
            f"needs each chip's scores: {WITHOUT_ARGMAX[runtime.format]}"
        )
    if size[0] != size[1]:
        raise ModelError(
            f"{path}: a chip classifier (output (batch, classes)) must take square windows, "
            f"not {size[0] or 'any'}x{size[1] or 'any'}; save it with input shape "
            f"(SIZE, SIZE, {runtime.bands}) or (None, None, {runtime.bands})"
        )
    channels = int(channels)
    if not 1 <= channels <= 255:
        raise ModelError(f"{path}: model outputs {channels} classes; 1 to 255 are supported")
    names, colors = read_class_table(path, class_count(channels), runtime)
    return ModelInfo(
        path=str(path),
        format=runtime.format,
        bands=runtime.bands,
        channels=channels,
        stride=1,
        receptive_halo=None,
        halo_found_by="none",
        input_size=None if size[0] is None else int(size[0]),
        class_names=names,
        class_colors=colors,
        task="chips",
    )


CHIP_PROBE = 64  # the window a model of any input size is tried on, to tell a chip classifier


CLASS_TABLE = "sparkinfer.json"


def combined(infos: list[ModelInfo]) -> ModelInfo:
    """What an ensemble of the models of `infos` is: their bands and classes, which must be the
    same; the widest receptive field; the coarsest stride. One model: its own."""
    if len(infos) == 1:
        return infos[0]
    for info in infos:
        if info.output == "classes":
            raise ModelError(
                f"{info.path}: outputs class indices, not scores, and an ensemble averages its "
                f"models' scores; {WITHOUT_ARGMAX[info.format]}"
            )
    first = infos[0]
    for info in infos[1:]:
        if (info.bands, info.channels) != (first.bands, first.channels):
            raise ModelError(
                f"{info.path}: takes {info.bands} bands and gives {info.channels} score "
                f"channels, but {first.path} takes {first.bands} and gives {first.channels}; "
                "an ensemble's models must take the same bands and give the same classes"
            )
        if info.task != first.task:
            raise ModelError(
                f"{info.path}: a {info.task} model, but {first.path} is a "
                f"{first.task} model; an ensemble's models must be of one kind"
            )
        if info.input_size != first.input_size:
            raise ModelError(
                f"{info.path}: takes windows of {info.input_size or 'any size'}, but "
                f"{first.path} of {first.input_size or 'any size'}; an ensemble's models must "
                "take the same windows"
            )
        if info.class_names and first.class_names and info.class_names != first.class_names:
            raise ModelError(
                f"{info.path}: its classes {list(info.class_names)} are not {first.path}'s "
                f"{list(first.class_names)}; an ensemble's models must give the same classes"
            )
    halos = [i.receptive_halo for i in infos]
    named = next((i for i in infos if i.class_names), first)
    return ModelInfo(
        path=" + ".join(i.path for i in infos),
        format="+".join(dict.fromkeys(i.format for i in infos)),
        bands=first.bands,
        channels=first.channels,
        stride=math.lcm(*(i.stride for i in infos)),
        receptive_halo=None if None in halos else max(halos),
        halo_found_by="trace" if all(i.halo_found_by == "trace" for i in infos) else "probe",
        input_size=first.input_size,
        class_names=named.class_names,
        class_colors=named.class_colors,
        task=first.task,
    )


def read_class_table(
    path: Path, classes: int, runtime: Runtime
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Class names and colours stored with the model: `sparkinfer.json` inside the .keras
    archive, in a SavedModel's assets/ folder or in an ONNX model's metadata, as
    {"classes": [{"name", "color"}, ...]}."""
    try:
        if runtime.format == "onnx":
            text = runtime.metadata.get(CLASS_TABLE)
        elif path.is_dir():
            table = path / "assets" / CLASS_TABLE
            text = table.read_text(encoding="utf-8") if table.is_file() else None
        else:
            with zipfile.ZipFile(path) as zf:
                has_table = CLASS_TABLE in zf.namelist()
                text = zf.read(CLASS_TABLE).decode("utf-8") if has_table else None
        if text is None:
            return (), ()
        entries = json.loads(text)["classes"]
        names = tuple(str(e["name"]) for e in entries)
        colors = tuple(str(e["color"]) for e in entries)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: unreadable {CLASS_TABLE} ({exc})") from None
    if len(names) != classes:
        raise ModelError(f"{path}: {CLASS_TABLE} names {len(names)} classes, model has {classes}")
    if not all(len(c) == 7 and c.startswith("#") for c in colors):
        raise ModelError(f"{path}: {CLASS_TABLE} colours must be '#rrggbb'")
    return names, colors


def _probe_channels(runtime: Runtime, path: Path, stride: int, size: int | None) -> int:
    """Check the model's output is at input resolution on a small input (or the one size it
    takes); its channels."""
    height, width = (size, size) if size else (2 * stride * 8, 3 * stride * 8)
    shape = runtime.output_shape(height, width)
    if shape is None or len(shape) != 4 or shape[1:3] != (height, width):
        got = "an error" if shape is None else f"shape {shape}"
        raise ModelError(
            f"{path}: an input of {height}x{width} pixels gave {got}; a per-pixel model must "
            "output (batch, height, width, classes) -- it is not fully convolutional"
        )
    channels = int(shape[-1])
    if runtime.output == "classes" and not 2 <= channels <= 255:
        raise ModelError(
            f"{path}: the model's argmax picks one of {channels} classes; 2 to 255 are supported"
        )
    if not 1 <= channels <= 255:
        raise ModelError(f"{path}: model outputs {channels} classes; at most 255 are supported")
    return channels


def _probe_stride(runtime: Runtime, path: Path) -> int:
    """Smallest power of two s for which inputs of odd multiples of s come back the same size."""
    for stride in (1, 2, 4, 8, 16, 32, 64):
        shape = runtime.output_shape(3 * stride, 5 * stride)
        if shape is not None and len(shape) == 4 and shape[1:3] == (3 * stride, 5 * stride):
            return stride
    raise ModelError(f"{path}: model gives no output at input resolution for any stride <= 64")


def inspect_package(
    package: ModelPackage, names: list[str], backend: Backend, runtime: Runtime | None = None
) -> ModelInfo:
    """`inspect_model` on a package's files (and its `runtime`, where the worker has loaded
    it), in a Python worker, so that the driver need not start a framework; messages and the
    result name the models by the `names` the user gave. An ensemble's models are inspected
    one by one, then `combined`."""
    if package.members:
        runtimes = runtime.runtimes if isinstance(runtime, Ensemble) else [None] * len(names)
        return combined(
            [
                inspect_package(m, [n], backend, r)
                for m, n, r in zip(package.members, names, runtimes, strict=True)
            ]
        )
    (name,) = names
    with unpacked(package) as path:
        try:
            info = inspect_model(path, package.trusted, backend, runtime)
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(path), name)) from None
    return replace(info, path=name)
