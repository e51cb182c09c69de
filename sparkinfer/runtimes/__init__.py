"""Model runtimes: one small interface (`Runtime`) over every model format the job takes.

| format | file | runs on |
|---|---|---|
| `keras` | a Keras 3 `.keras` file | Keras's TensorFlow backend (default) or its JAX backend |
| `savedmodel` | a TensorFlow SavedModel folder | TensorFlow |
| `onnx` | an `.onnx` file | onnxruntime (CPU, or CUDA with onnxruntime-gpu) |
"""

from __future__ import annotations

from pathlib import Path

from sparkinfer.runtimes.base import (
    CPU,
    Backend,
    Device,
    Precision,
    Runtime,
    RuntimeOptions,
    preprocess,
)
from sparkinfer.runtimes.quiet import framework_notices

__all__ = [
    "CPU",
    "Backend",
    "Device",
    "Precision",
    "Runtime",
    "RuntimeOptions",
    "open_runtime",
    "preprocess",
]


def open_runtime(
    path: Path,
    fmt: str,
    options: RuntimeOptions,
    *,
    gpu: int | None = None,
    threads: int | None = None,
    trusted: bool = False,
    worker: bool = True,
) -> Runtime:
    """Load the model at `path` (of format `fmt`) on GPU ordinal `gpu`, or on the CPU with
    `threads` threads. On the driver (`worker` False) a Keras model keeps the backend Keras
    already has in the process. The framework's start-up notices show with `options.verbose`."""
    with framework_notices(shown=options.verbose):
        return _opened(path, fmt, options, gpu, threads, trusted, worker)


def _opened(
    path: Path,
    fmt: str,
    options: RuntimeOptions,
    gpu: int | None,
    threads: int | None,
    trusted: bool,
    worker: bool,
) -> Runtime:
    if fmt == "onnx":
        from sparkinfer.runtimes.onnx_model import OnnxModel

        return OnnxModel(path.read_bytes(), str(path), options, gpu, threads)
    if fmt == "savedmodel":
        from sparkinfer.runtimes.saved_model import SavedModel
        from sparkinfer.runtimes.tensorflow_graph import configure_threads

        configure_threads(threads)
        return SavedModel(path, options, gpu)
    from sparkinfer.runtimes.keras_model import open_keras

    return open_keras(path, options, gpu, threads, trusted, worker)
