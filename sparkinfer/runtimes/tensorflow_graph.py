"""Models that run as TensorFlow graphs: Keras 3 on its TensorFlow backend, and SavedModels.

The cast, the normalisation, the model and the class rule are one `tf.function`, placed on the
runtime's device: integers cross to a GPU, and only uint8 classes leave it unless scores are
asked for. On a CPU the float32 operations are those of `base.preprocess`, in the same order,
so outputs are the same bit for bit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

from sparkinfer.runtimes.base import (
    CPU,
    Device,
    Output,
    Runtime,
    RuntimeOptions,
    activated,
    normalized,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_threads(threads: int | None) -> None:
    """Limit TensorFlow to the cores Spark gave this task; a no-op once TF has started."""
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


def tensorflow_device(gpu: int | None) -> tuple[Device, str]:
    """The device to run on and its TensorFlow name: GPU `gpu` where TensorFlow sees it, else
    the CPU."""
    import tensorflow as tf

    if gpu is not None and gpu < len(tf.config.list_physical_devices("GPU")):
        return Device("gpu", gpu), f"/GPU:{gpu}"
    return CPU, "/CPU:0"


class TensorFlowGraph(Runtime):
    """A model callable on float32 tensors, compiled with its pre- and post-processing. Of a
    model that outputs classes (`output`), `scores_call`, where given, is the model up to its
    argmax: what `scores` runs."""

    def __init__(
        self,
        call: Callable,
        bands: int,
        options: RuntimeOptions,
        device: Device,
        tf_device: str,
        output: Output = "scores",
        scores_call: Callable | None = None,
    ) -> None:
        import tensorflow as tf

        super().__init__(bands, options, device)
        self.output = output
        self._tf_device = tf_device
        norm = options.normalization

        def model_input(pixels, valid):
            x = normalized(tf.cast(pixels, tf.float32), norm)
            if valid is not None:
                x = tf.where(valid[..., None], x, tf.zeros_like(x))
            return x

        def scores_of(pixels, valid):
            scores = tf.cast(call(model_input(pixels, valid)), tf.float32)
            return activated(scores, options.activation, tf.nn)

        def classes_of(scores):
            if scores.shape[-1] == 1:  # one sigmoid channel: binary segmentation
                return tf.cast(scores[..., 0] >= 0.5, tf.uint8)
            return tf.cast(tf.argmax(scores, axis=-1), tf.uint8)

        def classify(pixels, valid):
            if output == "classes":  # (batch, height, width), or with the class axis kept
                return tf.cast(
                    tf.reshape(call(model_input(pixels, valid)), tf.shape(pixels)[:3]), tf.uint8
                )
            return classes_of(scores_of(pixels, valid))

        def classify_with_scores(pixels, valid):
            scores = scores_of(pixels, valid)
            return classes_of(scores), scores

        # Without autograph, as Keras's own predict: these functions hold no tensor-dependent
        # Python control flow, and autograph leaves a generated source file in the temp folder
        # per worker that Spark ends with os._exit, before atexit could remove it.
        graph = functools.partial(tf.function, reduce_retracing=True, autograph=False)
        self._raw = graph(scores_call or call)
        self._classify = graph(classify)
        self._classify_with_scores = graph(classify_with_scores)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with tf.device(self._tf_device):
            return np.asarray(self._raw(batch))

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        import tensorflow as tf

        if valid is not None and valid.all():
            valid = None
        with tf.device(self._tf_device):
            if not with_scores:
                return np.asarray(self._classify(pixels, valid)), None
            classes, scores = self._classify_with_scores(pixels, valid)
        return np.asarray(classes), np.asarray(scores)
