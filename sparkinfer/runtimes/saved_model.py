"""TensorFlow SavedModel folders, run through their `serving_default` signature.

A signature whose output is integer class indices runs as it ships. Its scores, which only the
driver's inspection asks for, are the input of the ArgMax that makes them: the signature's
graph, its variables frozen into it, pruned to that tensor.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from sparkinfer.errors import ModelError, first_line
from sparkinfer.runtimes.base import RuntimeOptions, fixed_input_size
from sparkinfer.runtimes.tensorflow_graph import TensorFlowGraph, tensorflow_device

# TensorFlow operations that may follow the final ArgMax and keep its indices, in their order.
INDEX_PRESERVING = {"Identity", "Cast", "Squeeze", "ExpandDims", "Reshape"}


class SavedModel(TensorFlowGraph):
    format = "savedmodel"

    def __init__(self, path: Path, options: RuntimeOptions, gpu: int | None) -> None:
        import tensorflow as tf

        device, name = tensorflow_device(gpu)
        try:
            with tf.device(name):
                self.loaded = tf.saved_model.load(str(path))
            signature = self.loaded.signatures["serving_default"]
        except Exception as exc:  # TensorFlow raises many types for a bad folder
            raise ModelError(f"{path}: cannot load model ({first_line(exc)})") from None
        output_key = sorted(signature.structured_outputs)[0]
        input_spec = next(iter(signature.structured_input_signature[1].values()))
        if len(input_spec.shape) != 4:
            raise ModelError(
                f"{path}: model input has shape {tuple(input_spec.shape)}; a per-pixel model "
                "takes (batch, height, width, bands)"
            )

        self.fixed_size = fixed_input_size(input_spec.shape[1:3])
        output = (
            "classes" if signature.structured_outputs[output_key].dtype.is_integer else "scores"
        )
        self._path, self._signature = path, signature

        def call(x):
            return signature(x)[output_key]

        super().__init__(call, int(input_spec.shape[-1]), options, device, name, output)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        if self.output == "scores":
            return super().scores(batch)
        import tensorflow as tf

        with tf.device(self._tf_device):  # for the inspection alone: the argmax's input
            return np.asarray(self._argmax_input(tf.constant(batch)))

    @functools.cached_property
    def _argmax_input(self):
        """The signature up to the input of the ArgMax that makes its output, as a function;
        a ModelError where no ArgMax over the last axis makes it."""
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        frozen = convert_variables_to_constants_v2(self._signature)
        graph_def = frozen.graph.as_graph_def()
        imported = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
        )
        op = imported.graph.get_tensor_by_name(frozen.outputs[0].name).op
        while op.type in INDEX_PRESERVING:
            op = op.inputs[0].op
        axis = tf.get_static_value(op.inputs[1]) if op.type == "ArgMax" else None
        if axis is None or int(axis) % 4 != 3:
            raise ModelError(
                f"{self._path}: the model outputs integers that no final argmax over its last "
                "axis makes, so neither its classes nor its scores can be told; export it "
                "with its scores as output"
            )
        pixels = imported.graph.get_tensor_by_name(frozen.inputs[0].name)
        return imported.prune(pixels, op.inputs[0])
