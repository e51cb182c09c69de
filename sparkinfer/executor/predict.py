"""Predicting: windows batched by shape through a loaded model (`Runtime`), each window's output
kept as its prediction: a pixel model's cropped to the window's core, a chip classifier's one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from sparkinfer.confidence import AGREEMENT, as_bytes
from sparkinfer.confidence import confidence as confidence_of
from sparkinfer.executor.read import PlacedWindow, ReadWindow, window_core
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.runtimes import Runtime
from sparkinfer.runtimes.base import voted_for


@dataclass(frozen=True)
class Prediction:
    """What the model gave for the kept part of one window (its core; a chip's cell)."""

    classes: np.ndarray  # uint8 (height, width), CLASS_NODATA where pixels are invalid
    scores: np.ndarray | None  # float32 (height, width, channels), NaN there; when asked for
    valid_share: float | None = None  # of a chip: the share of its pixels that are valid
    confidence: np.ndarray | None = None  # uint8 (height, width), CLASS_NODATA there; if asked
    votes: np.ndarray | None = None  # float32 (height, width, classes), NaN there; to be blended


@dataclass(frozen=True)
class PredictedWindow:
    """One window's prediction on its way to its chunk, with what it took."""

    place: PlacedWindow
    prediction: Prediction | None  # None: not inferred (no valid pixel, or chunk unread)
    read_s: float
    infer_s: float = 0.0  # its share of its batch's model call
    error: str | None = None  # its chunk could not be read


# A window's prediction from the model's classes, scores (or None) and members' votes (or None)
# for the whole window.
PredictionOf = Callable[[ReadWindow, np.ndarray, np.ndarray | None, np.ndarray | None], Prediction]


def core_prediction(
    read: ReadWindow,
    classes: np.ndarray,
    scores: np.ndarray | None,
    votes: np.ndarray | None,
    *,
    confidence: str | None = None,
    keep_scores: bool = True,
) -> Prediction:
    """A pixel model's output over the window's core, nodata where its pixels are invalid;
    with its `confidence` by that measure (`sparkinfer.confidence`), its scores where they
    are kept (`keep_scores`: not where they are asked for the confidence alone), and the
    members' `votes` where given (to be blended)."""
    core = window_core(read.place.window)
    core_classes = classes[core].copy()
    core_scores = None if scores is None else scores[core].astype(np.float32, copy=keep_scores)
    measured = measured_confidence(confidence, core_scores, votes, core_classes, core)
    core_votes = None if votes is None or confidence else votes[core].copy()
    if not keep_scores:
        core_scores = None
    if not read.kept_valid.all():  # a boolean index scans every pixel: only where it must
        invalid = ~read.kept_valid
        core_classes[invalid] = CLASS_NODATA
        for values in (core_scores, core_votes):
            if values is not None:
                values[invalid] = np.nan
        if measured is not None:
            measured[invalid] = CLASS_NODATA
    return Prediction(core_classes, core_scores, confidence=measured, votes=core_votes)


def chip_prediction(
    read: ReadWindow,
    classes: np.ndarray,
    scores: np.ndarray | None,
    votes: np.ndarray | None,
    *,
    confidence: str | None = None,
) -> Prediction:
    """A chip classifier's output: the chip's one cell, and the share of its pixels that are
    valid; with its `confidence` by that measure."""
    cell, label = scores.astype(np.float32).reshape(1, 1, -1), classes.reshape(1, 1)
    shares = None if votes is None else votes.reshape(1, 1, -1)
    return Prediction(
        label,
        cell,
        float(read.kept_valid.mean()),
        measured_confidence(confidence, cell, shares, label, (slice(None), slice(None))),
    )


def measured_confidence(
    measure: str | None,
    scores: np.ndarray | None,
    votes: np.ndarray | None,
    classes: np.ndarray,
    part,
) -> np.ndarray | None:
    """The confidence by `measure`: of `scores` (already cut to the kept part), or the share of
    the part `part` of the window's `votes` that went to `classes` (the part's)."""
    if measure is None:
        return None
    if measure == AGREEMENT:
        return as_bytes(voted_for(votes[part], classes))
    return confidence_of(scores, measure)


def predict_windows(
    windows: Iterable[ReadWindow],
    runtime: Runtime,
    prediction_of: PredictionOf,
    *,
    with_scores: bool,
    batch_size: int | None,
    gpu_share: float = 1,
    agreement: bool = False,
) -> Iterator[PredictedWindow]:
    """Each window's prediction: windows of one shape batched, `batch_size` a call (None: the
    runtime's `auto_batch`, for a task given `gpu_share` of its GPU), the model's scores
    asked for `with_scores`, the members' votes for `agreement`. A window that is not to
    be inferred passes at once, without the model; the others keep their order."""
    pending: list[ReadWindow] = []
    auto: dict[tuple, int] = {}  # per window shape and type

    def size_of(read: ReadWindow) -> int:
        if batch_size:
            return batch_size
        key = (read.pixels.shape, read.pixels.dtype)
        if key not in auto:
            height, width = read.pixels.shape[:2]
            auto[key] = runtime.auto_batch(height, width, read.pixels.dtype, gpu_share)
        return auto[key]

    def run() -> Iterator[PredictedWindow]:
        started = time.perf_counter()
        valid = None
        if any(p.valid is not None for p in pending):
            valid = np.stack(
                [np.ones(p.pixels.shape[:2], bool) if p.valid is None else p.valid for p in pending]
            )
        pixels = np.stack([p.pixels for p in pending])
        if agreement:
            classes, scores, votes = runtime.classify_with_agreement(pixels, valid, with_scores)
        else:
            (classes, scores), votes = runtime.classify(pixels, valid, with_scores), None
        share = (time.perf_counter() - started) / len(pending)
        for i, read in enumerate(pending):
            prediction = prediction_of(
                read,
                classes[i],
                None if scores is None else scores[i],
                None if votes is None else votes[i],
            )
            yield PredictedWindow(read.place, prediction, read.read_s, share)
        pending.clear()

    for read in windows:
        if read.pixels is None:
            yield PredictedWindow(read.place, None, read.read_s, error=read.error)
            continue
        if pending and pending[0].pixels.shape != read.pixels.shape:
            yield from run()
        pending.append(read)
        if len(pending) >= size_of(read):
            yield from run()
    if pending:
        yield from run()
