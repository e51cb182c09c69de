"""What a chunk's prediction is, made of its windows' predictions, apart from how it is written
(`executor.commit`): its class map, its scores and, of a chip classifier, its chips.

The windows' outputs merge in one of three ways (`sparkinfer.plan`): cropped to their cores,
which tile the chunk (`CropChunk`); blended where they overlap (`BlendChunk`); or a chip
classifier's one cell each, which also makes a row of the chunk's chip table (`ChipChunk`).
A chunk holds its class map (a byte per pixel) and, when scores are written or blended, its
float32 scores, until it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sparkinfer.blend import BlendedChunk
from sparkinfer.chips import ChipResult
from sparkinfer.confidence import AGREEMENT, as_bytes
from sparkinfer.confidence import confidence as confidence_of
from sparkinfer.executor.predict import Prediction
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow, Tile
from sparkinfer.runtimes.base import voted_for


@dataclass(frozen=True)
class PredictedChunk:
    """A chunk's prediction, complete."""

    classes: np.ndarray  # uint8 (height, width) of its core, CLASS_NODATA where nothing valid
    scores: np.ndarray | None  # float32 (height, width, channels), NaN there; when asked for
    chips: tuple[ChipResult, ...] = ()  # a chip classifier's, in the order they were added
    confidence: np.ndarray | None = None  # uint8 (height, width), CLASS_NODATA there; if asked


class ChunkPrediction(Protocol):
    """A chunk's prediction in the making: its windows' predictions are added one by one."""

    def add(self, window: Tile, prediction: Prediction | None) -> None:
        """Add the prediction of `window`, one of the chunk's; None: the window was not
        inferred, as no pixel of its kept part is valid."""

    def result(self) -> PredictedChunk:
        """The chunk's prediction, once every window of it was added."""


class CropChunk:
    """Windows cropped to their cores, which tile the chunk's core."""

    def __init__(
        self, core: PixelWindow, channels: int, scores: bool, confidence: bool = False
    ) -> None:
        self.core = core
        self.classes = np.full((core.height, core.width), CLASS_NODATA, np.uint8)
        self.confidence = np.full_like(self.classes, CLASS_NODATA) if confidence else None
        # Scores are (height, width, channels) but held band by band, as the chunk's file is
        # written: each window's are transposed once, here, and written without a copy.
        self.scores = (
            np.moveaxis(np.full((channels, core.height, core.width), np.nan, np.float32), 0, -1)
            if scores
            else None
        )

    def add(self, window: Tile, prediction: Prediction | None) -> None:
        if prediction is None:  # its core stays nodata
            return
        here = window.core.slices(self.core)
        self.classes[here] = prediction.classes
        if self.scores is not None:
            self.scores[here] = prediction.scores
        if self.confidence is not None:
            self.confidence[here] = prediction.confidence

    def result(self) -> PredictedChunk:
        return PredictedChunk(self.classes, self.scores, confidence=self.confidence)


class ChipChunk(CropChunk):
    """A chip classifier's chips: each a cell of the chunk's class map (on the output grid) and
    a row of its chip table."""

    def __init__(
        self, core: PixelWindow, channels: int, scores: bool, confidence: bool = False
    ) -> None:
        super().__init__(core, channels, scores, confidence)
        self.chips: list[ChipResult] = []

    def add(self, window: Tile, prediction: Prediction | None) -> None:
        super().add(window, prediction)
        if prediction is None:
            self.chips.append(ChipResult(window.row, window.col, None, None, 0.0))
            return
        self.chips.append(
            ChipResult(
                window.row,
                window.col,
                int(prediction.classes[0, 0]),
                prediction.scores[0, 0],
                prediction.valid_share,
            )
        )

    def result(self) -> PredictedChunk:
        return PredictedChunk(self.classes, self.scores, tuple(self.chips), self.confidence)


class BlendChunk:
    """Windows' scores blended where they overlap (`sparkinfer.blend`); the classes are the
    blended scores'. Windows must be added in the plan's row-major order (each pixel's sum is
    then the same, to the bit, whichever chunk holds it). A confidence is the measure of the
    blended scores, or with `agreement` the blended members' votes for the blended class."""

    def __init__(
        self,
        core: PixelWindow,
        channels: int,
        scores: bool,
        overlap: int,
        confidence: str | None = None,
    ) -> None:
        self.blended = BlendedChunk(core, channels, overlap)
        self.keep_scores = scores
        self.measure = confidence
        # A vote per class; one sigmoid channel stands for 2 classes.
        agreement = confidence == AGREEMENT
        self.votes = BlendedChunk(core, max(channels, 2), overlap) if agreement else None

    def add(self, window: Tile, prediction: Prediction | None) -> None:
        if prediction is None:  # a window whose part here is all nodata adds nothing
            return
        self.blended.add(window, prediction.scores)
        if self.votes is not None:
            self.votes.add(window, prediction.votes)

    def result(self) -> PredictedChunk:
        classes, scores = self.blended.result()
        if self.votes is not None:
            confidence = as_bytes(voted_for(self.votes.mean(), classes))
        elif self.measure is not None:
            confidence = confidence_of(scores, self.measure)
        else:
            confidence = None
        return PredictedChunk(classes, scores if self.keep_scores else None, confidence=confidence)
