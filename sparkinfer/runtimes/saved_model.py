"""TensorFlow SavedModel folders, run through their `serving_default` signature."""

from __future__ import annotations

from pathlib import Path

from sparkinfer.errors import ModelError, first_line
from sparkinfer.runtimes.base import RuntimeOptions
from sparkinfer.runtimes.tensorflow_graph import TensorFlowGraph, tensorflow_device


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

        def call(x):
            return signature(x)[output_key]

        super().__init__(call, int(input_spec.shape[-1]), options, device, name)
