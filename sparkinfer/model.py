"""A model's files as the job ships them: packaged on the driver, loaded once per worker.

A model is a Keras 3 `.keras` file, a TensorFlow SavedModel folder or an `.onnx` file (see
`sparkinfer.runtimes`). Its bytes (an ONNX model's cut before its final ArgMax, with
`--cut-argmax`) are compressed with zstd into a `ModelPackage`, broadcast, and loaded by each
Python worker the first time it needs it (`load_for_task`); the loaded runtime stays cached in
the worker, keyed by the package's content hash, the runtime options and the GPU it runs on.
What the model is (its receptive field, stride, classes) is `sparkinfer.inspection`'s.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import zstandard

from sparkinfer.averaging import Augmented, Ensemble
from sparkinfer.devices import TaskResources, gpu_ordinal
from sparkinfer.errors import ModelError
from sparkinfer.runtimes import Runtime, RuntimeOptions, open_runtime

Format = Literal["keras", "savedmodel", "onnx"]
PackageFormat = Literal["keras", "savedmodel", "onnx", "ensemble"]


@dataclass(frozen=True)
class ModelPackage:
    """A model's files, compressed, with the digest that identifies them; or an ensemble's
    models, each in a package of its own."""

    format: PackageFormat  # a single file, a tar of the SavedModel folder, or `members`
    payload: bytes
    digest: str
    trusted: bool = False  # load with Keras safe_mode off (--trust-model)
    members: tuple[ModelPackage, ...] = ()


FORMAT_NAMES = {"keras": "a Keras file", "savedmodel": "a SavedModel", "onnx": "an ONNX model"}


def model_format(path: Path) -> Format:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelError(f"{path}: folder is not a TensorFlow SavedModel (no saved_model.pb)")
    if path.suffix not in (".keras", ".onnx"):
        raise ModelError(f"{path}: expected a .keras file, an .onnx file or a SavedModel folder")
    return path.suffix[1:]


def package_models(
    paths: list[str], trusted: bool = False, cut_argmax: bool = False
) -> ModelPackage:
    """The package of one model, or of an ensemble of several."""
    if len(paths) == 1:
        return package_model(paths[0], trusted, cut_argmax)
    members = tuple(package_model(path, trusted, cut_argmax) for path in paths)
    digest = hashlib.sha256("+".join(m.digest for m in members).encode()).hexdigest()
    return ModelPackage("ensemble", b"", digest, trusted, members)


def package_model(
    path: str | Path, trusted: bool = False, cut_argmax: bool = False
) -> ModelPackage:
    """Read a model's files into a compressed package; with `cut_argmax`, an ONNX model's
    graph cut before its final ArgMax (`onnx_model.cut_at_argmax`). The cut is made here, once:
    the package holds the cut model, which the driver's inspection and every worker load, and
    its digest is the cut model's, so neither a worker's cache nor a run's outputs mix it up
    with the model as it ships."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model not found")
    fmt = model_format(path)
    if cut_argmax and fmt != "onnx":
        raise ModelError(
            f"{path}: --cut-argmax rewrites ONNX graphs, and this is {FORMAT_NAMES[fmt]}; "
            "leave it out"
        )
    if fmt != "savedmodel":
        raw = path.read_bytes()
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for file in _saved_model_files(path):
                info = tar.gettarinfo(str(file), arcname=str(file.relative_to(path)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with file.open("rb") as fh:
                    tar.addfile(info, fh)
        raw = buffer.getvalue()
    if cut_argmax:
        from sparkinfer.runtimes.onnx_model import cut_at_argmax

        raw = cut_at_argmax(raw, str(path))
    digest = hashlib.sha256(raw).hexdigest()
    return ModelPackage(fmt, zstandard.ZstdCompressor(level=10).compress(raw), digest, trusted)


# What TensorFlow loads from a SavedModel folder; anything else in it (a converter's .tflite
# files, notes) never travels with the model.
SAVED_MODEL_PARTS = ("saved_model.pb", "variables", "assets")


def _saved_model_files(folder: Path) -> list[Path]:
    files = []
    for part in SAVED_MODEL_PARTS:
        path = folder / part
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sorted(files)


def load_model(
    path: str | Path, options: RuntimeOptions | None = None, trusted: bool = False
) -> Runtime:
    """The model at `path` as a runtime in this process, on the CPU; a Keras model on the backend
    Keras already has here, if it is imported."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model not found")
    return open_runtime(
        path, model_format(path), options or RuntimeOptions(), trusted=trusted, worker=False
    )


@contextmanager
def unpacked(package: ModelPackage) -> Iterator[Path]:
    """The package's model files in a temporary folder, removed on exit."""
    raw = zstandard.ZstdDecompressor().decompress(package.payload)
    folder = Path(tempfile.mkdtemp(prefix="sparkinfer-model-"))
    try:
        if package.format == "savedmodel":
            path = folder / "savedmodel"
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                tar.extractall(path, filter="data")
        else:
            path = folder / f"model.{package.format}"
            path.write_bytes(raw)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Per-worker cache: Spark reuses Python workers (spark.python.worker.reuse), so a model loaded
# by one task serves every later task of the worker; one per GPU where a worker serves several,
# one per model of an ensemble (an ensemble of more models than this reloads them every task).
_WORKER_CACHE: dict[tuple, Runtime] = {}
_WORKER_CACHE_SIZE = 8


def load_package(
    package: ModelPackage,
    options: RuntimeOptions | None = None,
    gpu: int | None = None,
    threads: int | None = None,
) -> Runtime:
    """The model of `package` as a runtime, loaded once per Python worker and GPU (each model
    of an ensemble on its own), with the test-time augmentation of `options` around it."""
    options = options or RuntimeOptions()
    runtime = _cached(package, options, gpu, threads)
    return runtime if options.tta == "none" else Augmented(runtime, options.tta)


def load_for_task(
    package: ModelPackage, options: RuntimeOptions, resources: TaskResources
) -> Runtime:
    """`load_package` for a task given `resources`: on its GPU where it has one, else on its
    cores."""
    return load_package(package, options, gpu_ordinal(resources.gpu), resources.cpus)


def _cached(
    package: ModelPackage, options: RuntimeOptions, gpu: int | None, threads: int | None
) -> Runtime:
    """The package's model from the worker's cache, loaded there the first time; an
    ensemble's models each on their own."""
    if package.members:
        return Ensemble([_cached(m, options, gpu, threads) for m in package.members])
    key = (package.digest, options.key, gpu)  # the key leaves out `tta`: it is not loaded
    runtime = _WORKER_CACHE.get(key)
    if runtime is None:
        # Loading restores every variable, so the files are no longer needed after it.
        with unpacked(package) as path:
            runtime = open_runtime(
                path, package.format, options, gpu=gpu, threads=threads, trusted=package.trusted
            )
        while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = runtime
    return runtime
