"""Receptive field and stride traced from Keras graphs, and the model checks on the driver."""

import keras
import numpy as np
import pytest
from builders import conv_stack, dense_classifier, squeeze_excite, unet
from keras import layers

from sparkinfer.inspection import inspect_model
from sparkinfer.model import load_package, package_model
from sparkinfer.receptive_field import UntraceableLayer, probe, probe_shift, trace


def test_conv_stack_radius_is_one_pixel_per_3x3_layer(tmp_path):
    model = keras.models.load_model(conv_stack(tmp_path / "m.keras", depth=5))
    assert trace(model) == trace(model).__class__(halo=5, stride=1)


def test_unet_with_two_poolings_has_stride_4(tmp_path):
    field = trace(keras.models.load_model(unet(tmp_path / "u.keras")))
    assert field.stride == 4
    # Two 3x3 convs per level at jumps 1, 2, 4 down and 2, 1 up, plus the upsampling shifts.
    assert field.halo == 23


def test_dilation_strided_convs_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((None, None, 4)), layers.Conv2D(4, 3, padding="same", dilation_rate=3)]
    )
    inputs = keras.Input((None, None, 4))
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inner(inputs))
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = x + inner(inputs)  # a keras.ops merge, not a layer
    field = trace(keras.Model(inputs, layers.Conv2D(2, 1)(x)))
    assert field.stride == 2
    assert field.halo >= 3 + 2  # dilated 3x3 reaches 3; the strided pair adds at least 2


def test_lambda_layer_cannot_be_traced():
    inputs = keras.Input((None, None, 4))
    x = layers.Lambda(lambda t: t * 2)(inputs)
    with pytest.raises(UntraceableLayer, match="Lambda"):
        trace(keras.Model(inputs, layers.Conv2D(2, 3, padding="same")(x)))


def test_inspect_reports_bands_classes_stride_and_halo(tmp_path):
    info = inspect_model(unet(tmp_path / "u.keras", bands=5, classes=7))
    assert (info.bands, info.classes, info.stride, info.receptive_halo) == (5, 7, 4, 23)


def test_inspect_tells_a_classifier_of_any_size_from_its_output(tmp_path):
    """A Keras classifier by its output's rank; its SavedModel export by the output of a call."""
    path = dense_classifier(tmp_path / "d.keras")
    info = inspect_model(path)
    assert (info.task, info.input_size, info.channels, info.receptive_halo) == (
        "chips",
        None,
        3,
        None,
    )
    keras.models.load_model(path).export(tmp_path / "saved", verbose=False)
    saved = inspect_model(tmp_path / "saved")
    assert (saved.format, saved.task, saved.input_size, saved.channels) == (
        "savedmodel",
        "chips",
        None,
        3,
    )


def test_savedmodel_stride_and_halo_are_probed(tmp_path):
    model = keras.models.load_model(unet(tmp_path / "u.keras"))
    model.export(tmp_path / "saved", verbose=False)
    info = inspect_model(tmp_path / "saved")
    assert (info.format, info.halo_found_by) == ("savedmodel", "probe")
    assert (info.bands, info.classes, info.stride) == (4, 3, 4)
    assert 23 <= info.receptive_halo <= 23 + 3, "the traced halo, within the stride"


@pytest.mark.parametrize("build, stride", [(conv_stack, 1), (unet, 4)])
def test_the_probe_agrees_with_the_trace(tmp_path, build, stride):
    """Exact for a stride-1 model; from above within the stride otherwise (a block of
    `stride` pixels is perturbed, measured from its far side)."""
    model = keras.models.load_model(build(tmp_path / "m.keras"))
    field = trace(model)
    probed = probe(lambda x: np.asarray(model(x)), 4, field.stride)
    assert field.stride == stride
    assert field.halo <= probed <= field.halo + stride - 1
    # One window size, as fixed-size models take: the stride shows by shifting the window.
    reach = probe(lambda x: np.asarray(model(x)), 4, 1, smallest=64, largest=64)
    assert probe_shift(lambda x: np.asarray(model(x)), 4, 64, reach) == stride


def test_a_squeeze_and_excitation_model_has_no_exact_halo(tmp_path):
    path = squeeze_excite(tmp_path / "se.keras")
    model = keras.models.load_model(path)
    assert probe(lambda x: np.asarray(model(x)), 4, 1) is None
    info = inspect_model(path)
    assert (info.receptive_halo, info.halo_found_by) == (None, "probe")


def test_package_round_trip_gives_the_same_predictions(tmp_path):
    path = conv_stack(tmp_path / "m.keras")
    package = package_model(path)
    assert len(package.payload) < path.stat().st_size
    x = np.random.default_rng(0).uniform(0, 200, (2, 24, 40, 4)).astype(np.float32)
    expected = np.asarray(keras.models.load_model(path)(x))
    np.testing.assert_array_equal(load_package(package).scores(x), expected)
    assert load_package(package) is load_package(package), "cached per worker by digest"


def _farthest_change(model, size: int = 96, at: int = 48) -> int:
    """Farthest output pixel (along rows) that a change of input pixel `at` reaches."""
    x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 4)).astype(np.float32)
    changed = x.copy()
    changed[0, at, at] += 10.0
    difference = np.abs(np.asarray(model(changed)) - np.asarray(model(x))).max(axis=(0, 2, 3))
    rows = np.nonzero(difference > 1e-6)[0]
    return int(np.abs(rows - at).max())


@pytest.mark.parametrize(
    "interpolation", ["nearest", "bilinear", "bicubic", "lanczos3", "lanczos5"]
)
def test_upsampling_halo_covers_every_interpolation_kernel(interpolation):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 4))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = layers.UpSampling2D(2, interpolation=interpolation)(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1)(x))
    halo = trace(model).halo
    reach = _farthest_change(model)
    assert reach <= halo, f"a change reaches {reach} pixels, the halo is {halo}"
    assert halo - reach <= 3, "and the halo is not far larger than what the model reaches"


def test_an_unknown_interpolation_cannot_be_traced():
    inputs = keras.Input((None, None, 4))
    x = layers.UpSampling2D(2, interpolation="area")(layers.Conv2D(4, 3, strides=2)(inputs))
    with pytest.raises(UntraceableLayer, match="UpSampling2D"):
        trace(keras.Model(inputs, x))
