"""Keras 3 `.keras` files, run on Keras's TensorFlow backend or on its JAX backend.

Keras picks its backend once per process, when it is first imported (`KERAS_BACKEND`), and
cannot load models after a switch (`keras.config.set_backend`). The job therefore starts its
Python workers with `KERAS_BACKEND` set (`session.worker_environment`): Spark keeps workers of
different environments apart, so a worker never meets a second backend. (Over Spark Connect
the executors' environment is the cluster's: a worker imports Keras on the job's backend, and
refuses a model for another one.)

On JAX the model runs as one jitted function of its variables (`stateless_call`), with the cast,
the normalisation and the class rule inside, on the runtime's device.

A model whose output is integer class indices, made by a final `keras.ops.argmax` over the last
axis, runs as it ships; its scores (`scores_model`) are the argmax's input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from sparkinfer.errors import ModelError, first_line
from sparkinfer.runtimes.base import (
    CPU,
    Backend,
    Device,
    Runtime,
    RuntimeOptions,
    activated,
    fixed_input_size,
    normalized,
)
from sparkinfer.runtimes.tensorflow_graph import (
    TensorFlowGraph,
    configure_threads,
    tensorflow_device,
)


def keras_module(backend: Backend, strict: bool):
    """Keras, imported for `backend` if it was not yet. Already imported on another backend, it
    is kept (enough to inspect a model), unless `strict`."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    if strict and keras.backend.backend() != backend:
        raise RuntimeError(
            f"this Python worker runs Keras on {keras.backend.backend()}, not {backend}: start "
            f"its Spark session's workers with KERAS_BACKEND={backend}"
        )
    return keras


def load_keras_model(path: Path, trusted: bool, keras):
    try:
        # safe_mode refuses to deserialise code (Lambda layers and the like): a model file
        # runs nothing unless the user said it may.
        return keras.models.load_model(path, compile=False, safe_mode=not trusted)
    except Exception as exc:  # Keras raises many types for a bad file
        if "safe_mode" in str(exc):
            raise ModelError(
                f"{path}: the model holds code (a Lambda layer or similar) that safe mode will "
                "not run; pass --trust-model only if you trust this file"
            ) from None
        raise ModelError(f"{path}: cannot load model ({first_line(exc)})") from None


def mixed_bfloat16(model, keras):
    """The model with every layer computing in bfloat16 (variables stay float32)."""

    def clone(layer):
        config = layer.get_config() | {"dtype": "mixed_bfloat16"}
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def scores_model(model, path: Path):
    """The model itself where it outputs scores; where it outputs class indices, the model up
    to the input of the final argmax that makes them (sharing its layers)."""
    import keras

    output = model.outputs[0]
    if "int" not in output.dtype:
        return model
    operation, node, _ = output._keras_history
    if type(operation).__name__ != "Argmax" or operation.axis not in (-1, 3):
        raise ModelError(
            f"{path}: the model outputs integers that no final argmax over its last axis "
            "makes, so neither its classes nor its scores can be told; save it with its "
            "scores as output"
        )
    (scores,) = operation._inbound_nodes[node].input_tensors
    return keras.Model(model.inputs, scores)


def model_bands(model) -> int:
    shape = model.inputs[0].shape
    if len(shape) != 4:
        raise ModelError(
            f"model input has shape {tuple(shape)}; a per-pixel model takes "
            "(batch, height, width, bands)"
        )
    return int(shape[-1])


class KerasOnTensorFlow(TensorFlowGraph):
    """A Keras model on TensorFlow: its call compiled as a TensorFlow graph."""

    format = "keras"

    def __init__(
        self, model, scores_model, options: RuntimeOptions, device: Device, tf_device: str
    ) -> None:
        output = "scores" if scores_model is model else "classes"
        bands = model_bands(model)
        super().__init__(model, bands, options, device, tf_device, output, scores_model)
        self.model, self.scores_model = model, scores_model
        self.fixed_size = fixed_input_size(model.inputs[0].shape[1:3])

    def output_shape(self, height: int, width: int) -> tuple[int, ...] | None:
        return symbolic_output_shape(self.scores_model, height, width, self.bands)


class KerasOnJax(Runtime):
    """A Keras model on JAX: one jitted function per kind of call, variables on the device."""

    format = "keras"

    def __init__(self, model, scores_model, options: RuntimeOptions, gpu: int | None) -> None:
        import jax
        import jax.numpy as jnp

        accelerators = [d for d in jax.devices() if d.platform != "cpu"]
        if gpu is not None and gpu < len(accelerators):
            device, self._jax_device = Device("gpu", gpu), accelerators[gpu]
        else:
            device, self._jax_device = CPU, jax.devices("cpu")[0]
        super().__init__(model_bands(model), options, device)
        self.model, self.scores_model = model, scores_model
        self.output = output = "scores" if scores_model is model else "classes"
        self.fixed_size = fixed_input_size(model.inputs[0].shape[1:3])
        self._variables = jax.device_put(
            (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
            ),
            self._jax_device,
        )
        norm = options.normalization

        def called(variables, x):
            trainable, non_trainable = variables
            y, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return y

        def model_input(pixels, valid):
            x = normalized(pixels.astype(jnp.float32), norm)
            return x if valid is None else jnp.where(valid[..., None], x, 0.0)

        def scores_of(variables, pixels, valid):
            y = called(variables, model_input(pixels, valid)).astype(jnp.float32)
            return activated(y, options.activation, jax.nn)

        def classes_of(scores):
            if scores.shape[-1] == 1:
                return (scores[..., 0] >= 0.5).astype(jnp.uint8)
            return jnp.argmax(scores, axis=-1).astype(jnp.uint8)

        def classify(variables, pixels, valid):
            if output == "classes":  # (batch, height, width), or with the class axis kept
                y = called(variables, model_input(pixels, valid))
                return y.reshape(pixels.shape[:3]).astype(jnp.uint8)
            return classes_of(scores_of(variables, pixels, valid))

        self._raw = jax.jit(lambda v, x: called(v, x).astype(jnp.float32))
        self._classify = jax.jit(classify)

        def with_scores(variables, pixels, valid):
            scores = scores_of(variables, pixels, valid)
            return classes_of(scores), scores

        self._classify_with_scores = jax.jit(with_scores)

    def _put(self, array: np.ndarray | None):
        import jax

        return None if array is None else jax.device_put(array, self._jax_device)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        if self.output == "classes":  # for the inspection alone: the argmax's input, eagerly
            return np.asarray(self.scores_model(batch, training=False), np.float32)
        return np.asarray(self._raw(self._variables, self._put(batch)))

    def output_shape(self, height: int, width: int) -> tuple[int, ...] | None:
        return symbolic_output_shape(self.scores_model, height, width, self.bands)

    def window_memory(self, height: int, width: int, dtype: np.dtype) -> tuple[int, int] | None:
        stats = self._jax_device.memory_stats()  # None on a CPU
        if not stats or "bytes_limit" not in stats:
            return None
        before = stats["bytes_in_use"]
        self.classify(np.zeros((1, height, width, self.bands), dtype), None)
        stats = self._jax_device.memory_stats()
        return stats["bytes_limit"] - stats["bytes_in_use"], stats["peak_bytes_in_use"] - before

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if valid is not None and valid.all():
            valid = None
        args = (self._variables, self._put(pixels), self._put(valid))
        if not with_scores:
            return np.asarray(self._classify(*args)), None
        classes, scores = self._classify_with_scores(*args)
        return np.asarray(classes), np.asarray(scores)


def symbolic_output_shape(model, height: int, width: int, bands: int) -> tuple[int, ...] | None:
    """A Keras model's output shape, inferred without compute; None where it cannot take it."""
    import keras

    try:
        return tuple(model.compute_output_spec(keras.KerasTensor((1, height, width, bands))).shape)
    except Exception:  # noqa: BLE001 -- a size a strided model cannot take fails inside it
        return None


def open_keras(
    path: Path,
    options: RuntimeOptions,
    gpu: int | None,
    threads: int | None,
    trusted: bool,
    worker: bool,
) -> Runtime:
    """A `.keras` file as a runtime on `options.backend`. On the driver (`worker` False) Keras
    keeps the backend it already has."""
    keras = keras_module(options.backend, strict=worker)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        configure_threads(threads)
        device, name = tensorflow_device(gpu)
        with tf.device(name):  # the variables are created on the device
            model = load_keras_model(path, trusted, keras)
            if options.precision == "bfloat16":
                model = mixed_bfloat16(model, keras)
        return KerasOnTensorFlow(model, scores_model(model, path), options, device, name)
    model = load_keras_model(path, trusted, keras)
    if options.precision == "bfloat16":
        model = mixed_bfloat16(model, keras)
    return KerasOnJax(model, scores_model(model, path), options, gpu)
