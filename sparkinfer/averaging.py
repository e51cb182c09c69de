"""Runtimes that average scores: over transforms of each window (test-time augmentation) and
over several models (ensembles). Both are models like any other, so they stay seam-free.

Test-time augmentation runs the model on flipped and rotated copies of each window and maps each
output back before the mean. The transforms are those of the square's symmetry group (D4):
`flips` is its 4 flips (none, rows, columns, both); `d4` adds the transpose of each (8 in all,
the 4 rotations and their mirrors). The mean's receptive field is the model's, mirrored, so a
halo that covers one covers it; and windows start and end on the model's stride grid, so a
flipped window is sampled on the grid of the flipped whole image.

An ensemble's scores are the mean of its models' (after `--softmax`/`--sigmoid`, so of
probabilities); its receptive field is the widest of theirs, its stride the coarsest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparkinfer.runtimes.base import Agreed, Augmentation, Runtime, agreed, classes_of, mean


@dataclass(frozen=True)
class Transform:
    """A flip of rows and/or columns, after a transpose of the two: one element of D4, acting
    on axes 1 and 2 of (batch, height, width[, channels]) arrays."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def forward(self, array: np.ndarray) -> np.ndarray:
        if self.transpose:
            array = array.swapaxes(1, 2)
        return self._flipped(array)

    def on(self, pixels: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """A batch's pixels and valid mask (or None) transformed, contiguous for the model."""
        mask = None if valid is None else np.ascontiguousarray(self.forward(valid))
        return np.ascontiguousarray(self.forward(pixels)), mask

    def inverse(self, array: np.ndarray) -> np.ndarray:
        if array.ndim == 2:  # a chip classifier's (batch, classes): nothing to map back
            return array
        array = self._flipped(array)
        return array.swapaxes(1, 2) if self.transpose else array

    def _flipped(self, array: np.ndarray) -> np.ndarray:
        if self.flip_rows:
            array = array[:, ::-1]
        if self.flip_cols:
            array = array[:, :, ::-1]
        return array


FLIPS = tuple(Transform(False, rows, cols) for rows in (False, True) for cols in (False, True))
TRANSFORMS: dict[str, tuple[Transform, ...]] = {
    "flips": FLIPS,
    "d4": FLIPS + tuple(Transform(True, t.flip_rows, t.flip_cols) for t in FLIPS),
}


class Augmented(Runtime):
    """`runtime` called once per transform of `augmentation` on each batch; the scores are the
    mean of the calls' scores mapped back, the classes follow from the mean."""

    def __init__(self, runtime: Runtime, augmentation: Augmentation) -> None:
        super().__init__(runtime.bands, runtime.options, runtime.device)
        self.runtime = runtime
        self.format = runtime.format
        self.fixed_size = runtime.fixed_size
        self.transforms = TRANSFORMS[augmentation]

    def scores(self, batch: np.ndarray) -> np.ndarray:
        return self._mean(lambda t: self.runtime.scores(np.ascontiguousarray(t.forward(batch))))

    def auto_batch(self, height: int, width: int, dtype: np.dtype, gpu_share: float = 1) -> int:
        return self.runtime.auto_batch(height, width, dtype, gpu_share)

    def window_memory(self, height: int, width: int, dtype: np.dtype) -> tuple[int, int] | None:
        return self.runtime.window_memory(height, width, dtype)

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scores = self._mean(lambda t: self.runtime.classify(*t.on(pixels, valid), True)[1])
        return classes_of(scores), (scores if with_scores else None)

    def classify_with_agreement(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> Agreed:
        return agreed(self._groups(pixels, valid), with_scores)

    def members(self, pixels: np.ndarray, valid: np.ndarray | None) -> list[np.ndarray]:
        return [m for group in self._groups(pixels, valid) for m in group]

    def _groups(self, pixels: np.ndarray, valid: np.ndarray | None) -> list[list[np.ndarray]]:
        """Each transform's members' scores (an ensemble's models, or the model alone), mapped
        back."""
        return [
            [
                t.inverse(np.asarray(m, np.float32))
                for m in self.runtime.members(*t.on(pixels, valid))
            ]
            for t in self.transforms
        ]

    def _mean(self, call: Callable[[Transform], np.ndarray]) -> np.ndarray:
        return mean(t.inverse(np.asarray(call(t), np.float32)) for t in self.transforms)


class Ensemble(Runtime):
    """Several loaded models that take the same bands and give the same classes; the scores are
    the mean of theirs, the classes follow from the mean."""

    format = "ensemble"

    def __init__(self, runtimes: list[Runtime]) -> None:
        first = runtimes[0]
        super().__init__(first.bands, first.options, first.device)
        self.runtimes = runtimes
        self.fixed_size = first.fixed_size

    def scores(self, batch: np.ndarray) -> np.ndarray:
        return mean(np.asarray(r.scores(batch), np.float32) for r in self.runtimes)

    def auto_batch(self, height: int, width: int, dtype: np.dtype, gpu_share: float = 1) -> int:
        return min(r.auto_batch(height, width, dtype, gpu_share) for r in self.runtimes)

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scores = mean(r.classify(pixels, valid, True)[1] for r in self.runtimes)
        return classes_of(scores), (scores if with_scores else None)

    def classify_with_agreement(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> Agreed:
        return agreed([r.members(pixels, valid) for r in self.runtimes], with_scores)

    def members(self, pixels: np.ndarray, valid: np.ndarray | None) -> list[np.ndarray]:
        return [m for r in self.runtimes for m in r.members(pixels, valid)]
