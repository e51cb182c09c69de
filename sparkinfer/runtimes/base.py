"""What every model runtime is: a model loaded in one process, on one device, classifying batches.

Pixels cross into `classify` as the raster holds them (uint8, uint16, ... in (batch, height,
width, bands)); the cast to float32 and the normalisation happen inside the call, on the device
where the framework allows, so integers, not floats, cross to an accelerator. Only uint8 class
maps come back, plus float32 scores when they are asked for.

A model may also end in an argmax and output class indices itself, (batch, height, width), or
with the class axis kept as 1: its `output` is "classes", its `classify` gives that map and no
scores, and its `scores` are those its argmax takes, for the driver's inspection alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from sparkinfer.config import Normalization
from sparkinfer.errors import ModelError

Backend = Literal["tensorflow", "jax"]
Precision = Literal["float32", "bfloat16"]
Activation = Literal["none", "softmax", "sigmoid"]
Augmentation = Literal["none", "flips", "d4"]
Output = Literal["scores", "classes"]  # what a model outputs: scores per class, or class indices
# classify_with_agreement's: classes, scores (if asked for), the members' votes
Agreed = tuple[np.ndarray, np.ndarray | None, np.ndarray]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs: the Keras backend, the compute precision and the pixels' scaling."""

    backend: Backend = "tensorflow"  # for .keras models; a SavedModel is TensorFlow, ONNX its own
    precision: Precision = "float32"
    normalization: Normalization = field(default_factory=Normalization)
    activation: Activation = "none"  # applied to the model's outputs: logits to probabilities
    tta: Augmentation = "none"  # test-time augmentation around the model (`sparkinfer.averaging`)
    verbose: bool = False  # let the framework's start-up notices through (`runtimes.quiet`)

    @property
    def key(self) -> str:
        """A text that tells apart the options that change the loaded model (for caches)."""
        return (
            f"{self.backend}/{self.precision}/{self.normalization.model_dump_json()}/"
            f"{self.activation}"
        )


@dataclass(frozen=True)
class Device:
    """Where a runtime runs: "cpu", or one GPU by its CUDA ordinal."""

    kind: Literal["cpu", "gpu"] = "cpu"
    ordinal: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.ordinal}"


CPU = Device()

# Pixels per model call on a CPU with `batch_size` auto. A batch is a loop over its windows on
# one core, so a bigger one only spills the activations out of the cache: the benchmark's
# 3-convolution model ran 37% faster per core on one 512 x 512 window per call than on 8
# (two processes side by side, benchmarks/results/2026-11-27-vm-batch.json).
CPU_CALL_PIXELS = 1 << 18
# On a GPU: the share of free device memory a batch may take, the largest batch, and the batch
# where the framework cannot say what one window takes.
GPU_MEMORY_SHARE = 0.5
GPU_MAX_BATCH = 64
GPU_DEFAULT_BATCH = 4


def gpu_batch(free: int, window: int, gpu_share: float) -> int:
    """Windows per call that fit in `GPU_MEMORY_SHARE` of a GPU's `free` bytes, `window` bytes
    each, for a task given `gpu_share` of the GPU (`spark.task.resource.gpu.amount`): tasks that
    share a GPU load at once, each seeing the same free memory, so each takes its share of it."""
    fits = int(GPU_MEMORY_SHARE * gpu_share * free // max(window, 1))
    return max(1, min(GPU_MAX_BATCH, fits))


class Runtime(ABC):
    """A loaded model. Subclasses run one model format."""

    format: ClassVar[str]
    fixed_size: tuple[int, int] | None = None  # (height, width) the model only takes
    output: Output = "scores"

    def __init__(self, bands: int, options: RuntimeOptions, device: Device) -> None:
        self.bands = bands
        self.options = options
        self.device = device

    @abstractmethod
    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output for a float32 (batch, height, width, bands) input; for a
        model that outputs classes, the scores its final argmax takes, classes last."""

    def output_shape(self, height: int, width: int) -> tuple[int, ...] | None:
        """The shape of `scores` for a (1, height, width, bands) input; None where the model
        fails (a size a strided model cannot take fails somewhere inside it). A ModelError,
        which says the model has no scores to give, passes."""
        try:
            return tuple(self.scores(np.zeros((1, height, width, self.bands), np.float32)).shape)
        except ModelError:
            raise
        except Exception:  # noqa: BLE001 -- any framework's error means "not this size"
            return None

    def auto_batch(self, height: int, width: int, dtype: np.dtype, gpu_share: float = 1) -> int:
        """Windows per call for `batch_size` auto. On a CPU, windows up to `CPU_CALL_PIXELS`
        pixels together. On a GPU, `gpu_batch` of its free memory and what one window took there
        (`window_memory`), for a task given `gpu_share` of the GPU."""
        if self.device.kind == "cpu":
            return max(1, CPU_CALL_PIXELS // (height * width))
        memory = self.window_memory(height, width, dtype)
        if memory is None:
            return GPU_DEFAULT_BATCH
        return gpu_batch(*memory, gpu_share)

    def window_memory(self, height: int, width: int, dtype: np.dtype) -> tuple[int, int] | None:
        """Free device memory and what a call on one window takes, in bytes; None where the
        framework does not tell."""
        return None

    def classify_with_agreement(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> Agreed:
        """`classify`, and per pixel and class the share of the runtime's members (a test-time
        augmentation's transforms, an ensemble's models, or each model's transforms in an
        ensemble of augmented models) whose own class it is: float32 (batch, height, width,
        classes), `voted_for` gives the final class's. One model alone is one member."""
        return agreed([self.members(pixels, valid)], with_scores)

    def members(self, pixels: np.ndarray, valid: np.ndarray | None) -> list[np.ndarray]:
        """Each member's own scores of the batch: for one model alone, its scores."""
        return [self.classify(pixels, valid, True)[1]]

    @abstractmethod
    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class per pixel, uint8 (batch, height, width), and the float32 scores (batch,
        height, width, classes) when asked for (never of a model that outputs classes).

        `pixels` (batch, height, width, bands) in any numeric type are cast to float32 and
        normalised; where `valid` (batch, height, width) is False they enter the model as 0.
        The class is the argmax of the scores, or score >= 0.5 for a single channel; or the
        model's own output, where it outputs classes."""


def fixed_input_size(spatial) -> tuple[int, int] | None:
    """(height, width) of a model input whose spatial dimensions are both fixed, else None."""
    height, width = spatial
    return (height, width) if isinstance(height, int) and isinstance(width, int) else None


def normalized(x, norm: Normalization):
    """`x * scale + offset`, then `(x - mean) / std`, in float32, on a float32 array of any
    framework (numpy, TensorFlow, JAX): the same operations in the same order everywhere."""
    if norm.scale is not None:
        x = x * np.float32(norm.scale)
    if norm.offset is not None:
        x = x + np.float32(norm.offset)
    if norm.mean is not None:
        x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    return x


def preprocess(pixels: np.ndarray, valid: np.ndarray | None, norm: Normalization) -> np.ndarray:
    """float32 model input with numpy: cast, `normalized`, invalid pixels 0."""
    x = normalized(pixels.astype(np.float32), norm)
    if valid is not None and not valid.all():
        x[~valid] = 0.0
    return x


def activated(scores, activation: Activation, ops=None):
    """The model's outputs through `activation` (softmax over classes, or sigmoid), with the
    `ops` of a framework (TensorFlow's tf.nn, jax.nn) or numpy's by default."""
    if activation == "none":
        return scores
    if ops is not None:
        return ops.softmax(scores, axis=-1) if activation == "softmax" else ops.sigmoid(scores)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def agreed(groups: list[list[np.ndarray]], with_scores: bool) -> Agreed:
    """What `classify_with_agreement` gives for the scores of a runtime's members, in `groups`
    (an ensemble's models, each with its transforms): the class of the mean of the groups'
    means (as `classify`, so each model weighs the same), that mean, and each class's share of
    all members' votes (one sigmoid channel votes for 2 classes)."""
    scores = mean(mean(group) for group in groups)
    classes = classes_of(scores)
    members = [m for group in groups for m in group]
    labels = np.arange(max(scores.shape[-1], 2), dtype=np.uint8)
    votes = mean((classes_of(m)[..., None] == labels).astype(np.float32) for m in members)
    return classes, (scores if with_scores else None), votes


def voted_for(votes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The share of the votes for each pixel's class: float32 (...) of (..., classes) votes
    and (...) classes, NaN where a class is CLASS_NODATA (255) or the votes are NaN."""
    known = classes < votes.shape[-1]
    index = np.where(known, classes, 0).astype(np.intp)[..., None]
    share = np.take_along_axis(votes, index, axis=-1)[..., 0]
    return np.where(known, share, np.float32(np.nan))


def mean(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """The float32 mean of same-shaped arrays, summed in their order."""
    total, count = None, 0
    for array in arrays:
        total = array.astype(np.float32, copy=True) if total is None else total + array
        count += 1
    return total / np.float32(count)


def classes_of(scores: np.ndarray) -> np.ndarray:
    """The class rule with numpy: argmax of the last axis, or score >= 0.5 for one channel."""
    if scores.shape[-1] == 1:
        return (scores[..., 0] >= 0.5).astype(np.uint8)
    return scores.argmax(axis=-1).astype(np.uint8)
