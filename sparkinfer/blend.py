"""`merge: blend`: overlapping windows' scores averaged with a tapered cosine (Tukey) weight.

For a model whose every output pixel depends on its whole input window (global pooling,
attention), no halo makes tiles equal whole-image inference, and cropping leaves a visible
seam wherever two windows meet. Blending trades that step for a smooth transition, as
ukis-csmask and TerraTorch do: each window's scores are weighted by a window function that is 1
in its middle and falls towards its edges over `overlap` pixels, and each pixel takes the
weighted mean over the windows that cover it. Two neighbours that overlap by exactly `overlap`
have weights that sum to 1 there (sin² + cos²); where they overlap more (windows shifted inward
at the raster's edges), the mean is still normalised by the weights' sum.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow, Tile
from sparkinfer.runtimes.base import classes_of


@lru_cache(maxsize=16)  # windows have one or two lengths: made once, read-only
def taper(length: int, overlap: int) -> np.ndarray:
    """float64 weights along a window of `length` pixels: sin² rising over the first `overlap`
    pixels (at most half the window), 1 in between, falling symmetrically. Taken at pixel
    centres, so no weight is 0 and a pixel that only one window covers keeps its scores."""
    ramp = min(overlap, length // 2)
    weights = np.ones(length)
    if ramp:
        rising = np.sin(np.pi / 2 * (np.arange(ramp) + 0.5) / ramp) ** 2
        weights[:ramp] = rising
        weights[length - ramp :] = rising[::-1]
    weights.flags.writeable = False
    return weights


class BlendedChunk:
    """The weighted sums of one chunk's windows' scores, added window by window.

    A pixel's windows are added in the plan's row-major order whichever chunk holds it, so its
    value is the same, to the bit, whichever way the raster is cut into chunks."""

    def __init__(self, core: PixelWindow, channels: int, overlap: int) -> None:
        self.core = core  # the chunk's
        self.overlap = overlap
        self.sums = np.zeros((core.height, core.width, channels), np.float32)
        self.weights = np.zeros((core.height, core.width), np.float32)

    def add(self, window: Tile, scores: np.ndarray) -> None:
        """Add one window's scores over its core (the part inside this chunk), NaN where its
        pixels are nodata."""
        rows, cols = window.core.slices(window.read)
        weight = np.outer(
            taper(window.read.height, self.overlap)[rows],
            taper(window.read.width, self.overlap)[cols],
        )
        weight = weight.astype(np.float32)
        here = window.core.slices(self.core)
        self.sums[here] += scores * weight[..., None]
        self.weights[here] += weight

    def mean(self) -> np.ndarray:
        """The blended float32 scores, NaN where no valid window covers a pixel."""
        nodata = (self.weights == 0) | np.isnan(self.sums[..., 0])
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = self.sums / self.weights[..., None]
        scores[nodata] = np.nan
        return scores

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's classes (uint8, `CLASS_NODATA` where no valid window covers a pixel) and
        its blended float32 scores (NaN there)."""
        scores = self.mean()
        nodata = np.isnan(scores[..., 0])
        classes = classes_of(np.where(nodata[..., None], 0, scores))
        classes[nodata] = CLASS_NODATA
        return classes, scores
