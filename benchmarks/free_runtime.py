"""A runtime that costs (almost) nothing, for benchmarks only: the argmax over the pixels' bands
with numpy, behind the `Runtime` interface. With it, what the executor itself costs (reading,
cutting, merging, writing) is measured without any framework (`benchmarks/feed.py`)."""

from __future__ import annotations

import numpy as np

from sparkinfer.runtimes import RuntimeOptions
from sparkinfer.runtimes.base import CPU, Runtime


class FreeRuntime(Runtime):
    """Each band is a class's score: the class is the band of the largest value. Its scores
    are the bands, repeated to the `channels` of the model it stands in for (default: one per
    band)."""

    format = "free"

    def __init__(
        self, bands: int, options: RuntimeOptions | None = None, channels: int | None = None
    ) -> None:
        super().__init__(bands, options or RuntimeOptions(), CPU)
        self.channels = channels or bands

    def scores(self, batch: np.ndarray) -> np.ndarray:
        if self.channels == batch.shape[-1]:
            return batch.astype(np.float32, copy=False)
        repeated = np.arange(self.channels) % batch.shape[-1]
        return batch.take(repeated, axis=-1).astype(np.float32, copy=False)

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        classes = np.argmax(pixels, axis=-1).astype(np.uint8)
        return classes, self.scores(pixels) if with_scores else None


def free_loader(bands: int, channels: int | None = None):
    """A stand-in for `model.load_for_task` that loads the free runtime."""

    def load(package, options, resources):
        return FreeRuntime(bands, options, channels)

    return load
