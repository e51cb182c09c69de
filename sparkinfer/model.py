"""Model packaging: inspect a model on the driver, ship it compressed, load it once per worker.

A model is a Keras 3 `.keras` file or a TensorFlow SavedModel folder. On the driver it is loaded
once to check that it maps (batch, height, width, bands) to (batch, height, width, classes) at
input resolution, and to derive its receptive field and total stride. Its bytes are compressed
with zstd into a `ModelPackage`, broadcast, and loaded by each Python worker the first time it
needs it; the loaded model stays cached in the worker, keyed by the package's content hash.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from sparkinfer.errors import ModelError, first_line

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class ModelPackage:
    """A model's files, compressed, with the digest that identifies them."""

    format: str  # "keras" (a single file) or "savedmodel" (a tar of the folder)
    payload: bytes
    digest: str
    trusted: bool = False  # load with Keras safe_mode off (--trust-model)


@dataclass(frozen=True)
class ModelInfo:
    """What the driver learned about a model before Spark starts."""

    path: str
    format: str
    bands: int
    classes: int
    stride: int
    receptive_halo: int | None  # None when the graph could not be traced
    untraceable: str | None  # why the halo could not be derived
    class_names: tuple[str, ...] = ()  # from the model's sparkinfer.json, when it has one
    class_colors: tuple[str, ...] = ()  # "#rrggbb", one per class


def model_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelError(f"{path}: folder is not a TensorFlow SavedModel (no saved_model.pb)")
    if path.suffix != ".keras":
        raise ModelError(f"{path}: expected a .keras file or a SavedModel folder")
    return "keras"


def package_model(path: str | Path, trusted: bool = False) -> ModelPackage:
    """Read a model's files into a compressed package."""
    path = Path(path)
    fmt = model_format(path)
    if fmt == "keras":
        raw = path.read_bytes()
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                info = tar.gettarinfo(str(file), arcname=str(file.relative_to(path)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with file.open("rb") as fh:
                    tar.addfile(info, fh)
        raw = buffer.getvalue()
    digest = hashlib.sha256(raw).hexdigest()
    return ModelPackage(fmt, zstandard.ZstdCompressor(level=10).compress(raw), digest, trusted)


class Predictor:
    """A loaded model as a function from float32 NHWC batches to NHWC outputs."""

    def __init__(self, model, fmt: str) -> None:
        import tensorflow as tf

        self.model = model
        self.format = fmt
        if fmt == "keras":
            call = model
        else:
            signature = model.signatures["serving_default"]
            output_key = sorted(signature.structured_outputs)[0]

            def call(x):
                return signature(x)[output_key]

            self.input_key = next(iter(signature.structured_input_signature[1]))

        def classes_of(scores):
            if scores.shape[-1] == 1:  # one sigmoid channel: binary segmentation
                return tf.cast(scores[..., 0] >= 0.5, tf.uint8)
            return tf.cast(tf.argmax(scores, axis=-1), tf.uint8)

        def classify(x):
            return classes_of(call(x))

        def classify_with_scores(x):
            scores = call(x)
            return classes_of(scores), scores

        # Without autograph, as Keras's own predict: these functions hold no tensor-dependent
        # Python control flow, and autograph leaves a generated source file in the temp folder
        # per worker that Spark ends with os._exit, before atexit could remove it.
        graph = functools.partial(tf.function, reduce_retracing=True, autograph=False)
        self._fn = graph(call)
        # Classes are taken in the graph: without scores, only uint8 class maps leave
        # TensorFlow, and both kinds of run classify alike.
        self._classify = graph(classify)
        self._classify_with_scores = graph(classify_with_scores)
        self.bands = self._input_bands()

    def _input_bands(self) -> int:
        if self.format == "keras":
            shape = self.model.inputs[0].shape
        else:
            signature = self.model.signatures["serving_default"]
            shape = signature.structured_input_signature[1][self.input_key].shape
        if len(shape) != 4:
            raise ModelError(
                f"model input has shape {tuple(shape)}; a per-pixel model takes "
                "(batch, height, width, bands)"
            )
        return int(shape[-1])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs (scores) for a batch."""
        return np.asarray(self._fn(batch))

    def classify(
        self, batch: np.ndarray, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class per pixel, uint8 (N, H, W): argmax of the scores, or score >= 0.5 for one
        channel; and the scores (N, H, W, classes) when asked for."""
        if not with_scores:
            return np.asarray(self._classify(batch)), None
        classes, scores = self._classify_with_scores(batch)
        return np.asarray(classes), np.asarray(scores)


def _load(path: Path, fmt: str, trusted: bool) -> Predictor:
    import keras
    import tensorflow as tf

    try:
        if fmt == "keras":
            # safe_mode refuses to deserialise code (Lambda layers and the like): a model file
            # runs nothing unless the user said it may.
            model = keras.models.load_model(path, compile=False, safe_mode=not trusted)
        else:
            model = tf.saved_model.load(str(path))
    except Exception as exc:  # Keras raises many types for a bad file
        if "safe_mode" in str(exc):
            raise ModelError(
                f"{path}: the model holds code (a Lambda layer or similar) that safe mode will "
                "not run; pass --trust-model only if you trust this file"
            ) from None
        raise ModelError(f"{path}: cannot load model ({first_line(exc)})") from None
    return Predictor(model, fmt)


def load_model(path: str | Path, trusted: bool = False) -> Predictor:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model not found")
    return _load(path, model_format(path), trusted)


def inspect_model(path: str | Path, trusted: bool = False) -> ModelInfo:
    """Load a model on the driver and check it can be used for tiled per-pixel inference."""
    from sparkinfer.receptive_field import UntraceableLayer, trace

    path = Path(path)
    predictor = load_model(path, trusted)
    stride = 1
    halo: int | None = None
    untraceable: str | None = None
    if predictor.format == "keras":
        in_shape = tuple(predictor.model.inputs[0].shape)
        if in_shape[1:3] != (None, None):
            raise ModelError(
                f"{path}: model input is fixed at {in_shape[1]}x{in_shape[2]} pixels; save it "
                f"with input shape (None, None, {in_shape[-1]}) so it takes any tile size"
            )
        shape = tuple(predictor.model.outputs[0].shape) if predictor.model.outputs else ()
        if len(predictor.model.outputs) != 1 or len(shape) != 4:
            raise ModelError(
                f"{path}: model output has shape {shape}; a per-pixel model must output "
                "(batch, height, width, classes) -- it is not fully convolutional"
            )
        try:
            field = trace(predictor.model)
            halo, stride = field.halo, field.stride
        except UntraceableLayer as exc:
            untraceable = f"{exc} has no known receptive field"
        except ValueError as exc:
            raise ModelError(f"{path}: not a per-pixel model: {exc}") from None
    if untraceable is not None or predictor.format != "keras":
        untraceable = untraceable or "a SavedModel has no layer graph to trace"
        stride = _probe_stride(predictor, path)
    classes = _probe_classes(predictor, path, stride)
    names, colors = read_class_table(path, classes)
    return ModelInfo(
        path=str(path),
        format=predictor.format,
        bands=predictor.bands,
        classes=classes,
        stride=stride,
        receptive_halo=halo,
        untraceable=untraceable,
        class_names=names,
        class_colors=colors,
    )


CLASS_TABLE = "sparkinfer.json"


def read_class_table(path: Path, classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Class names and colours stored with the model: `sparkinfer.json` inside the .keras
    archive or in a SavedModel's assets/ folder, as {"classes": [{"name", "color"}, ...]}."""
    try:
        if path.is_dir():
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


def _probe_shape(predictor: Predictor, height: int, width: int) -> tuple[int, ...] | None:
    """The output shape for a (1, height, width, bands) input; None where the model fails.

    A Keras model's shape is inferred symbolically (no tracing, no compute); a SavedModel runs.
    """
    shape = (1, height, width, predictor.bands)
    try:
        if predictor.format == "keras":
            import keras

            return tuple(predictor.model.compute_output_spec(keras.KerasTensor(shape)).shape)
        return predictor(np.zeros(shape, np.float32)).shape
    except Exception:  # a shape a strided model cannot take fails somewhere inside it
        return None


def _probe_classes(predictor: Predictor, path: Path, stride: int) -> int:
    """Check the model's output is at input resolution on a small input; its classes."""
    height, width = 2 * stride * 8, 3 * stride * 8
    shape = _probe_shape(predictor, height, width)
    if shape is None or len(shape) != 4 or shape[1:3] != (height, width):
        got = "an error" if shape is None else f"shape {shape}"
        raise ModelError(
            f"{path}: an input of {height}x{width} pixels gave {got}; a per-pixel model must "
            "output (batch, height, width, classes) -- it is not fully convolutional"
        )
    classes = int(shape[-1])
    if not 1 <= classes <= 255:
        raise ModelError(f"{path}: model outputs {classes} classes; at most 255 are supported")
    return classes


def _probe_stride(predictor: Predictor, path: Path) -> int:
    """Smallest power of two s for which inputs of odd multiples of s come back the same size."""
    for stride in (1, 2, 4, 8, 16, 32, 64):
        shape = _probe_shape(predictor, 3 * stride, 5 * stride)
        if shape is not None and len(shape) == 4 and shape[1:3] == (3 * stride, 5 * stride):
            return stride
    raise ModelError(f"{path}: model gives no output at input resolution for any stride <= 64")


# Per-worker cache: Spark reuses Python workers (spark.python.worker.reuse), so a model loaded
# by one task serves every later task of the worker.
_WORKER_CACHE: dict[str, Predictor] = {}
_WORKER_CACHE_SIZE = 2


def configure_tensorflow_threads(threads: int) -> None:
    """Limit TensorFlow to the cores Spark gave this task; a no-op once TF has started."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


def load_package(package: ModelPackage, threads: int | None = None) -> Predictor:
    """The model of `package`, loaded once per Python worker."""
    cached = _WORKER_CACHE.get(package.digest)
    if cached is not None:
        return cached
    if threads:
        configure_tensorflow_threads(threads)
    raw = zstandard.ZstdDecompressor().decompress(package.payload)
    folder = Path(tempfile.mkdtemp(prefix="sparkinfer-model-"))
    try:
        if package.format == "keras":
            path = folder / "model.keras"
            path.write_bytes(raw)
        else:
            path = folder / "savedmodel"
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                tar.extractall(path, filter="data")
        predictor = _load(path, package.format, package.trusted)
    finally:  # loading restores every variable, so the files are no longer needed
        shutil.rmtree(folder, ignore_errors=True)
    while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
        _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
    _WORKER_CACHE[package.digest] = predictor
    return predictor
