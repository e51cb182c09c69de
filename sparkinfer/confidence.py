"""How sure the model is of each pixel's class: a byte per pixel, 0 (least sure) to 254, with the
class map's nodata (255) where the scores are NaN.

From the scores, taken as probabilities (a model's softmax or sigmoid, or `--softmax`/`--sigmoid`;
one sigmoid channel p stands for the two classes 1 - p and p):

- `maxprob`: the top probability;
- `margin`: the top probability minus the second's;
- `entropy`: 1 minus the entropy of the probabilities over its largest, log(classes).

From the members of a test-time augmentation or an ensemble (`Runtime.classify_with_agreement`):

- `agreement`: the share of the transforms or models whose own class is the final class.

Each is in [0, 1] and scaled by 255, rounded, then held below 255, which is nodata: 254 stands
for 254/255 and above. A function of one pixel's scores, it is seam-free where they are.
"""

from __future__ import annotations

import numpy as np

from sparkinfer.outputs import CLASS_NODATA

SCORE_MEASURES = ("maxprob", "margin", "entropy")
AGREEMENT = "agreement"


def probabilities(scores: np.ndarray) -> np.ndarray:
    """(..., classes) probabilities from (..., channels) scores: one sigmoid channel p as
    (1 - p, p); every value clipped to [0, 1]."""
    scores = np.clip(scores, 0.0, 1.0)
    if scores.shape[-1] == 1:
        return np.concatenate([1.0 - scores, scores], axis=-1)
    return scores


def measure(scores: np.ndarray, name: str) -> np.ndarray:
    """The measure `name` of (..., channels) scores in [0, 1], float32, NaN where they are."""
    p = probabilities(scores.astype(np.float32, copy=False))
    if name == "maxprob":
        return p.max(axis=-1)
    if name == "margin":
        top_two = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
        return top_two[..., 1] - top_two[..., 0]
    if name == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p), np.float32(0))
        entropy = -terms.sum(axis=-1) / np.float32(np.log(p.shape[-1]))
        result = np.float32(1) - np.clip(entropy, 0, 1)
        return np.where(np.isnan(p).any(axis=-1), np.float32(np.nan), result)
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
