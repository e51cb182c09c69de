"""How sure the model is of each pixel's class: a byte per pixel, 0 (least sure) to 254, with the
class map's nodata (255) where the scores are NaN.

From the scores, taken as probabilities (a model's softmax or sigmoid, or `--softmax`/`--sigmoid`;
one sigmoid channel p stands for the two classes 1 - p and p):

- `maxprob`: the top probability;
- `margin`: the top probability minus the second's;
- `entropy`: 1 minus the entropy of the probabilities over its largest, log(classes).

From the members of a test-time augmentation or an ensemble (`Runtime.classify_with_agreement`):

- `agreement`: the share of the transforms or models whose own class is the final class; with
  both, of every model under every transform. Blended (`--merge blend`), the members' votes
  are blended as the scores are, and their share for the blended class taken.

Each is in [0, 1] and scaled by 255, rounded, then held below 255, which is nodata: 254 stands
for 254/255 and above. A function of one pixel's scores, it is seam-free where they are.
"""

from __future__ import annotations

import functools

import numpy as np

from sparkinfer.outputs import CLASS_NODATA

SCORE_MEASURES = ("maxprob", "margin", "entropy")
AGREEMENT = "agreement"


def channels(scores: np.ndarray, clip: bool = True) -> list[np.ndarray]:
    """Each class's probability, (...) float32 planes, clipped to [0, 1] unless not `clip` (NaN
    stays): one sigmoid channel p as 1 - p and p, always clipped. Plane by plane: a reduction
    over a short last axis is several times slower in numpy than a loop over its planes."""
    if scores.shape[-1] == 1:
        p = np.clip(scores[..., 0], 0, 1)
        return [1 - p, p]
    planes = [scores[..., i] for i in range(scores.shape[-1])]
    return [np.clip(p, 0, 1) for p in planes] if clip else planes


def top_two(planes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second largest of the planes, pixel by pixel."""
    first, second = planes[0], np.full_like(planes[0], -np.inf)
    for plane in planes[1:]:
        second = np.maximum(second, np.minimum(first, plane))
        first = np.maximum(first, plane)
    return first, second


def measure(scores: np.ndarray, name: str) -> np.ndarray:
    """The measure `name` of (..., channels) scores in [0, 1], float32, NaN where they are."""
    scores = scores.astype(np.float32, copy=False)
    if name == "maxprob":  # clipping after the max is the same: it keeps the order
        return np.clip(functools.reduce(np.maximum, channels(scores, clip=False)), 0, 1)
    if name == "margin":
        first, second = top_two(channels(scores, clip=False))
        return np.clip(first, 0, 1) - np.clip(second, 0, 1)
    if name == "entropy":
        planes = channels(scores)
        entropy = np.zeros_like(planes[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            for p in planes:
                entropy -= np.where(p > 0, p * np.log(p), np.float32(0))
        entropy /= np.float32(np.log(len(planes)))
        result = np.float32(1) - np.clip(entropy, 0, 1)
        result[np.isnan(planes[0])] = np.nan  # p log p of NaN was taken for 0
        return result
    raise ValueError(f"unknown confidence measure {name!r}; one of {', '.join(SCORE_MEASURES)}")


def confidence(scores: np.ndarray, name: str) -> np.ndarray:
    """uint8 (...) confidence of (..., channels) scores by the measure `name`."""
    return as_bytes(measure(scores, name))


def as_bytes(value: np.ndarray) -> np.ndarray:
    """uint8 bytes of values in [0, 1]: times 255, rounded, at most 254; CLASS_NODATA where a
    value is NaN."""
    nodata = np.isnan(value)
    byte = np.minimum(np.rint(np.nan_to_num(value) * 255), 254).astype(np.uint8)
    byte[nodata] = CLASS_NODATA
    return byte
