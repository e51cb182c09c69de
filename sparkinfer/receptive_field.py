"""The receptive field and total stride of a Keras model, traced layer by layer.

Following DeepThings' fused tile partitioning, each tensor of the graph carries, per spatial
axis, the interval of input pixels that its element `j` depends on:
`[j * jump + lo, j * jump + hi]`, where `jump` is the tensor's cumulative stride in input pixels.
A convolution, pooling, upsampling, padding or cropping layer widens or shifts the interval;
per-pixel layers (activations, normalisation, dense layers on the channel axis) keep it; merges
take the union. At the model's output (`jump` = 1) the halo that makes tiled inference equal to
whole-image inference is the largest distance `max(-lo, hi)`.

Only layers whose spatial behaviour is known are traced; anything else (a Lambda, a resize, a
reshape) raises `UntraceableLayer`. For those, and for formats without a layer graph, `probe`
finds the halo by perturbing input pixels and looking where the output changes; it also tells a
model whose output depends on the whole window (global pooling, attention), for which no halo
is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


class UntraceableLayer(Exception):
    """A layer whose effect on the receptive field is not known."""

    def __init__(self, layer) -> None:
        super().__init__(f"layer '{layer.name}' ({type(layer).__name__})")
        self.layer = layer


@dataclass(frozen=True)
class AxisExtent:
    """Element j of a tensor depends on input pixels [j*jump + lo, j*jump + hi] along one axis."""

    jump: Fraction
    lo: Fraction
    hi: Fraction


@dataclass(frozen=True)
class Extent:
    """The receptive field of a tensor's elements along rows and columns."""

    rows: AxisExtent
    cols: AxisExtent

    def map(self, fn) -> Extent:
        return Extent(fn(self.rows, 0), fn(self.cols, 1))


@dataclass(frozen=True)
class ReceptiveField:
    """Result of a trace: the halo needed and the model's total stride."""

    halo: int
    stride: int


IDENTITY = AxisExtent(Fraction(1), Fraction(0), Fraction(0))

# Layers that act on each pixel independently (along the channel axis only).
_PER_PIXEL = {
    "InputLayer",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    "BatchNormalization",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Rescaling",
    "Dense",
    "Identity",
    "ActivityRegularization",
    "Masking",
}
_CHANNEL_AXIS_LAYERS = {"LayerNormalization", "Normalization", "Softmax", "BatchNormalization"}
# Radius, in input pixels, of each resampling kernel that UpSampling2D interpolates with (the
# same in TensorFlow's and JAX's resize): its taps lie within it.
_KERNEL_RADIUS = {"bilinear": 1, "bicubic": 2, "lanczos3": 3, "lanczos5": 5}
_MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _windowed(kernel: int, stride: int, dilation: int, padding: str):
    """Extent of a sliding window (convolution or pooling) over aligned inputs."""
    effective = (kernel - 1) * dilation + 1
    # TensorFlow's 'same' padding for input sizes that are multiples of the stride.
    before = max(effective - stride, 0) // 2 if padding == "same" else 0

    def apply(ext: AxisExtent, _axis: int) -> AxisExtent:
        return AxisExtent(
            ext.jump * stride,
            ext.lo - before * ext.jump,
            ext.hi + (effective - 1 - before) * ext.jump,
        )

    return apply


def _channel_axis_only(layer) -> bool:
    axis = getattr(layer, "axis", -1)
    axes = axis if isinstance(axis, list | tuple) else [axis]
    return all(a in (-1, 3) for a in axes)


def _layer_transform(layer):
    """The function mapping a layer's input Extent to its output Extent."""
    kind = type(layer).__name__
    if kind in _CHANNEL_AXIS_LAYERS and not _channel_axis_only(layer):
        raise UntraceableLayer(layer)
    if kind in _PER_PIXEL or kind in _CHANNEL_AXIS_LAYERS:
        return lambda ext, axis: ext
    if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        kernels, strides = _pair(layer.kernel_size), _pair(layer.strides)
        dilations = _pair(layer.dilation_rate)
        fns = [_windowed(kernels[a], strides[a], dilations[a], layer.padding) for a in (0, 1)]
        return lambda ext, axis: fns[axis](ext, axis)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        pools, strides = _pair(layer.pool_size), _pair(layer.strides or layer.pool_size)
        fns = [_windowed(pools[a], strides[a], 1, layer.padding) for a in (0, 1)]
        return lambda ext, axis: fns[axis](ext, axis)
    if kind == "Conv2DTranspose":
        kernels, strides = _pair(layer.kernel_size), _pair(layer.strides)
        if layer.padding != "same" or _pair(layer.dilation_rate) != (1, 1):
            raise UntraceableLayer(layer)

        def transpose(ext: AxisExtent, axis: int) -> AxisExtent:
            k, s = kernels[axis], strides[axis]
            jump = ext.jump / s
            before = max(k - s, 0) // 2
            return AxisExtent(jump, ext.lo + (before - k + 1) * jump, ext.hi + before * jump)

        return transpose
    if kind == "UpSampling2D":
        sizes = _pair(layer.size)
        interpolation = layer.interpolation
        if interpolation != "nearest" and interpolation not in _KERNEL_RADIUS:
            raise UntraceableLayer(layer)

        def upsample(ext: AxisExtent, axis: int) -> AxisExtent:
            u = sizes[axis]
            jump = ext.jump / u
            if interpolation == "nearest":
                return AxisExtent(jump, ext.lo - (u - 1) * jump, ext.hi)
            # Output j samples the input at x = (j + 1/2) / u - 1/2, from the taps within the
            # kernel's radius r of x: inputs [x - r, x + r].
            r, half = _KERNEL_RADIUS[interpolation], Fraction(1, 2)
            return AxisExtent(
                jump,
                ext.lo + (half - half * u - r * u) * jump,
                ext.hi + (half - half * u + r * u) * jump,
            )

        return upsample
    if kind in ("ZeroPadding2D", "Cropping2D"):
        amounts = layer.padding if kind == "ZeroPadding2D" else layer.cropping
        sign = -1 if kind == "ZeroPadding2D" else 1

        def shift(ext: AxisExtent, axis: int) -> AxisExtent:
            before = amounts[axis][0]
            return AxisExtent(
                ext.jump, ext.lo + sign * before * ext.jump, ext.hi + sign * before * ext.jump
            )

        return shift
    raise UntraceableLayer(layer)


def _merge(layer, extents: list[Extent]) -> Extent:
    def union(axis: int) -> AxisExtent:
        parts = [e.rows if axis == 0 else e.cols for e in extents]
        jumps = {p.jump for p in parts}
        if len(jumps) != 1:
            raise UntraceableLayer(layer)
        return AxisExtent(parts[0].jump, min(p.lo for p in parts), max(p.hi for p in parts))

    return Extent(union(0), union(1))


def _extents_in(value):
    if isinstance(value, Extent):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _extents_in(item)


class _Tracer:
    """Runs a Keras graph on Extents instead of tensors, remembering every jump seen."""

    def __init__(self) -> None:
        self.jumps: set[Fraction] = set()

    def operation(self, op):
        from keras import Model, Sequential

        if isinstance(op, Sequential):

            def run_sequential(x, *args, **kwargs):
                for layer in op.layers:
                    x = self.operation(layer)(x)
                return x

            return run_sequential
        if isinstance(op, Model):
            return lambda *args, **kwargs: op._run_through_graph(args[0], self.operation)
        kind = type(op).__name__
        if kind in _MERGES:
            # Merge layers take a list; keras.ops merges (x + y) take positional tensors.
            return lambda *args, **kwargs: _merge(op, list(_extents_in(args)))
        transform = _layer_transform(op)

        def run_layer(x, *args, **kwargs):
            if not isinstance(x, Extent):
                raise UntraceableLayer(op)
            out = x.map(transform)
            self.jumps.update((out.rows.jump, out.cols.jump))
            return out

        return run_layer


def trace(model) -> ReceptiveField:
    """Halo and total stride of a Keras model with one 4-D input and one per-pixel output.

    Raises `UntraceableLayer` for a layer of unknown spatial behaviour, and `ValueError` when
    the output is not at input resolution.
    """
    tracer = _Tracer()
    start = Extent(IDENTITY, IDENTITY)
    out = tracer.operation(model)(start)
    if isinstance(out, list | tuple):
        out = out[0]
    if out.rows.jump != 1 or out.cols.jump != 1:
        raise ValueError(f"the output is at 1/{out.rows.jump} of the input resolution")
    reach = max(-out.rows.lo, out.rows.hi, -out.cols.lo, out.cols.hi, 0)
    stride = 1
    for jump in tracer.jumps:
        if jump.denominator == 1:
            stride = math.lcm(stride, jump.numerator)
    return ReceptiveField(halo=math.ceil(reach), stride=stride)


def probe(
    scores: Callable[[np.ndarray], np.ndarray],
    bands: int,
    stride: int,
    *,
    smallest: int = 64,
    largest: int = 1024,
    trials: int = 3,
    seed: int = 0,
) -> int | None:
    """The halo of a model known only by its `scores` ((1, h, w, bands) float32 in, (1, h, w, c)
    out), found by perturbing input pixels; None when its output depends on the whole window.

    A `stride` x `stride` block at the centre of a random window (every alignment to the
    model's grid) is changed at random, `trials` times; the farthest output pixel that changes,
    measured from the block's far side, bounds the halo from above by at most `stride` - 1. A
    window where the change reaches the border is doubled, up to `largest`: a change that still
    reaches it there reaches everything.
    """
    rng = np.random.default_rng(seed)
    size = max(smallest, 4 * stride)
    while size <= largest:
        start = (size // 2) // stride * stride
        block = slice(start, start + stride)
        reach = 0
        for trial in range(trials):
            x = rng.normal(0.0, 1.0, (1, size, size, bands)).astype(np.float32)
            changed = x.copy()
            changed[0, block, block] += rng.normal(0.0, 50.0, (stride, stride, bands))
            before, after = scores(x)[0], scores(changed)[0]
            if trial == 0:  # the same input again: what the framework itself varies by
                noise = float(np.abs(scores(x)[0] - before).max())
            # Any change beyond that counts: a global average moves far pixels only a little.
            rows, cols = np.nonzero(np.abs(after - before).max(axis=-1) > 4 * noise)
            if rows.size:
                far = np.maximum(np.abs(rows - start), np.abs(rows - (start + stride - 1)))
                far_cols = np.maximum(np.abs(cols - start), np.abs(cols - (start + stride - 1)))
                reach = max(reach, int(far.max()), int(far_cols.max()))
        if reach < start - stride:  # the border is out of reach: this is the halo
            return reach
        size *= 2
    return None


def probe_shift(
    scores: Callable[[np.ndarray], np.ndarray],
    bands: int,
    size: int,
    reach: int,
    *,
    largest: int = 64,
    seed: int = 0,
) -> int:
    """The total stride of a model that takes only `size` x `size` windows, where sizes cannot
    show it: the smallest power of two s such that two windows s pixels apart give the same
    output where they overlap, away from their borders; 1 when no shift up to `largest` leaves
    such an overlap.

    `reach` is what `probe` found at stride 1, from one alignment: with a stride of at most s
    the halo is less than `reach` + s, so that margin keeps both windows' padding out of the
    comparison of shift s. A shift off the model's grid moves its pooling cells, which changes
    the output everywhere; a shift on it only translates the output.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 1.0, (1, size + largest, size + largest, bands)).astype(np.float32)
    first = scores(image[:, :size, :size])[0]
    noise = float(np.abs(scores(image[:, :size, :size])[0] - first).max())
    shift = 1
    while shift <= largest and reach + 2 * shift < size - reach - shift:
        margin = reach + shift
        moved = scores(image[:, shift : shift + size, shift : shift + size])[0]
        inside = slice(margin + shift, size - margin)  # image pixels inside both, far from borders
        there = slice(margin, size - margin - shift)  # the same pixels in the moved window
        difference = np.abs(first[inside, inside] - moved[there, there]).max()
        if difference <= 4 * noise + 1e-5 * float(np.abs(first).max()):
            return shift
        shift *= 2
    return 1
