"""Models as they ship, run without re-saving them: of one fixed input size in every format, and
ending in an argmax (integer class indices out, no scores) or cut before it (--cut-argmax)."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import (
    export_savedmodel,
    fixed_size_copy,
    keras_ending_in_argmax,
    onnx_as_shipped,
    onnx_ending_in_argmax,
    whole_image_outputs,
    write_raster,
)

from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError, ModelError
from sparkinfer.flags import config_from_args
from sparkinfer.inspection import inspect_model
from sparkinfer.job import prepare_job
from sparkinfer.model import load_model, package_model, unpacked

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"
HALO = 4  # the conv stack's four 3x3 convolutions


@pytest.fixture(scope="module")
def shipped(models, onnx_models, tmp_path_factory):
    """The session's conv stack (any input size) as shipped elsewhere: fixed at 64 x 64 as a
    .keras file and as a SavedModel; channels first as ONNX, with scores out, and with an
    ArgMax over them appended (its class axis dropped, or kept as 1); ending in an argmax as a
    .keras file and as a SavedModel."""
    folder = tmp_path_factory.mktemp("shipped")
    fixed = fixed_size_copy(models["conv"], folder / "conv64.keras", 64)
    scores = onnx_as_shipped(onnx_models["conv"], folder / "scores.onnx", None, logits=False)
    argmax = keras_ending_in_argmax(models["conv"], folder / "argmax.keras")
    return {
        "fixed_keras": fixed,
        "fixed_savedmodel": export_savedmodel(fixed, folder / "conv64_saved"),
        "scores_onnx": scores,
        "argmax_onnx": onnx_ending_in_argmax(scores, folder / "argmax.onnx", False),
        "argmax_kept_onnx": onnx_ending_in_argmax(scores, folder / "argmax1.onnx", True),
        "argmax_keras": argmax,
        "argmax_savedmodel": export_savedmodel(argmax, folder / "argmax_saved"),
    }


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    return write_raster(folder / "scene.tif", 96, 160, seed=8)


def _pixels(shape=(2, 40, 56, 4)) -> np.ndarray:
    return np.random.default_rng(4).integers(1, 250, shape).astype(np.uint8)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# Item 6: one input size in every format.


@pytest.mark.parametrize("fmt, found_by", [("keras", "trace"), ("savedmodel", "probe")])
def test_a_model_of_one_input_size_is_inspected_within_windows_of_it(shipped, fmt, found_by):
    """A .keras file keeps its traced receptive field (64 lies on its stride-1 grid); a
    SavedModel, without a layer graph, is probed within 64 x 64 windows as ONNX is."""
    info = inspect_model(shipped[f"fixed_{fmt}"])
    assert (info.input_size, info.stride, info.receptive_halo, info.halo_found_by) == (
        64,
        1,
        HALO,
        found_by,
    )
    assert (info.channels, info.output) == (3, "scores")


def test_a_strided_model_of_one_input_size_is_traced_or_shifted(models, tmp_path):
    """The stride-4 U-Net fixed at 64: as a .keras file traced; as a SavedModel its stride
    shows by shifting the 64 x 64 window, and the probe bounds the traced halo 23 within the
    stride, as for ONNX."""
    keras_file = fixed_size_copy(models["unet"], tmp_path / "unet64.keras", 64)
    traced = inspect_model(keras_file)
    assert (traced.input_size, traced.stride, traced.receptive_halo) == (64, 4, 23)
    assert traced.halo_found_by == "trace"
    probed = inspect_model(export_savedmodel(keras_file, tmp_path / "unet64_saved"))
    assert (probed.input_size, probed.stride, probed.halo_found_by) == (64, 4, "probe")
    assert 23 <= probed.receptive_halo <= 23 + 3


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_a_model_of_one_input_size_tiles_into_whole_raster_inference(
    tmp_path, run, models, shipped, scene, fmt
):
    """The conv stack's weights fixed at 64 x 64 run in windows of exactly 64 (tiles of 64 - 2
    x 4) and stitch into what the same weights of any input size give on the whole raster:
    the class map exactly. The scores within 1e-5: the same float32 operations, but oneDNN
    splits a convolution's sums by the tensor's size, so the last bits of a 64 x 64 window's
    and of the 96 x 160 raster's may round apart."""
    report = run(
        input=[str(scene)], model=str(shipped[f"fixed_{fmt}"]), output=str(tmp_path), scores=True
    )
    tiling = report["tiling"]
    assert (tiling["tile_size"], tiling["halo"], tiling["seam_free"]) == (64 - 2 * HALO, HALO, True)
    assert (report["model"]["input_size"], report["model"]["output"]) == (64, "scores")
    expected_classes, expected_scores, _ = whole_image_outputs(models["conv"], scene)
    assert len(np.unique(expected_classes)) == 3, "the test model must not be constant"
    classes = _read(tmp_path / "scene.tif")[0]
    scores = np.moveaxis(_read(tmp_path / "scene.scores.tif"), 0, -1)
    np.testing.assert_array_equal(classes, expected_classes)
    difference = float(np.abs(scores - expected_scores).max())
    print(json.dumps({"fixed_size_format": fmt, "max_score_difference": difference}))
    assert difference <= 1e-5


# Item 7: models that end in an argmax.


@pytest.mark.parametrize(
    "name", ["argmax_onnx", "argmax_kept_onnx", "argmax_keras", "argmax_savedmodel"]
)
def test_a_model_ending_in_argmax_is_inspected_by_the_scores_it_takes(shipped, name):
    """Halo, stride and classes are those of the scores before the argmax; its class map is
    theirs, bit for bit, with no scores."""
    info = inspect_model(shipped[name])
    assert (info.output, info.channels, info.classes) == ("classes", 3, 3)
    assert (info.stride, info.receptive_halo, info.input_size, info.task) == (
        1,
        HALO,
        None,
        "segmentation",
    )
    pixels = _pixels()
    classes, scores = load_model(shipped[name]).classify(pixels, None)
    expected, _ = load_model(shipped["scores_onnx"]).classify(pixels, None)
    assert (classes.dtype, classes.shape, scores) == (np.uint8, (2, 40, 56), None)
    np.testing.assert_array_equal(classes, expected)


def test_integers_that_no_argmax_makes_are_refused_in_one_line(shipped, tmp_path):
    """Scores cast to int64: no ArgMax tells how many classes there are, nor their scores."""
    import onnx
    from onnx import helper

    model = onnx.load(shipped["scores_onnx"])
    (scores,) = model.graph.output
    model.graph.node.append(helper.make_node("Cast", [scores.name], ["rounded"], to=7))
    model.graph.output.remove(scores)
    model.graph.output.append(helper.make_tensor_value_info("rounded", 7, None))
    onnx.save(model, tmp_path / "rounded.onnx")
    with pytest.raises(ModelError) as refused:
        load_model(tmp_path / "rounded.onnx")
    assert str(refused.value) == (
        f"{tmp_path / 'rounded.onnx'}: the model outputs integers that no final ArgMax makes, "
        "so neither its classes nor its scores can be told; export it with its scores as output"
    )


def test_the_classes_are_named_by_the_model_s_class_table_or_numbered(shipped, tmp_path):
    import onnx

    numbered = inspect_model(shipped["argmax_onnx"])
    assert numbered.class_names == ()  # the class map's COG numbers them 0..2
    model = onnx.load(shipped["argmax_onnx"])
    entry = model.metadata_props.add()
    table = {"classes": [{"name": n, "color": "#102030"} for n in ("water", "field", "town")]}
    entry.key, entry.value = "sparkinfer.json", json.dumps(table)
    onnx.save(model, tmp_path / "named.onnx")
    assert inspect_model(tmp_path / "named.onnx").class_names == ("water", "field", "town")


def test_cut_argmax_packages_the_scores_the_argmax_took(shipped):
    """The package holds the graph cut before its ArgMax, the ArgMax gone: its digest is the
    cut model's, and it gives the scores model's scores exactly."""
    as_shipped = package_model(shipped["argmax_onnx"])
    cut = package_model(shipped["argmax_onnx"], cut_argmax=True)
    assert cut.digest != as_shipped.digest
    assert cut.digest == package_model(shipped["argmax_kept_onnx"], cut_argmax=True).digest
    with unpacked(cut) as path:
        import onnx

        assert "ArgMax" not in {node.op_type for node in onnx.load(path).graph.node}
        runtime = load_model(path)
        assert runtime.output == "scores"
        pixels = _pixels()
        classes, scores = runtime.classify(pixels, None, with_scores=True)
    expected_classes, expected_scores = load_model(shipped["scores_onnx"]).classify(
        pixels, None, with_scores=True
    )
    np.testing.assert_array_equal(classes, expected_classes)
    np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize(
    "name, message",
    [
        ("scores_onnx", "this model's output comes from no ArgMax; leave --cut-argmax out$"),
        ("argmax_keras", "--cut-argmax rewrites ONNX graphs, and this is a Keras file; leave"),
    ],
)
def test_cut_argmax_of_a_model_it_cannot_cut_is_one_line(shipped, name, message):
    with pytest.raises(ModelError, match=f"^{shipped[name]}: .*{message}") as refused:
        package_model(shipped[name], cut_argmax=True)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "options, refused",
    [
        (dict(scores=True), "--scores has no scores to write"),
        (dict(confidence="maxprob"), "--confidence has no scores to measure"),
        (dict(tta="flips"), "--tta flips has no scores to average"),
        (dict(merge="blend"), "--merge blend has no scores to blend"),
        (dict(activation="softmax"), "--softmax has no scores to turn into probabilities"),
    ],
)
def test_what_needs_scores_is_refused_in_one_line(shipped, scene, tmp_path, options, refused):
    common = dict(input=[str(scene)], model=str(shipped["argmax_onnx"]), output=str(tmp_path))
    with pytest.raises(ConfigError) as error:
        prepare_job(load_config(common | options, defaults_file=DEFAULTS))
    assert str(error.value) == (
        f"{shipped['argmax_onnx']}: the model outputs class indices (it ends in an argmax), so "
        f"{refused}; pass --cut-argmax to run it up to its final ArgMax"
    )
    cut = prepare_job(load_config(common | options | dict(cut_argmax=True), DEFAULTS))
    assert cut.model.output == "scores"


def test_an_ensemble_with_a_model_ending_in_argmax_is_refused_in_one_line(shipped, scene, tmp_path):
    models = [str(shipped["scores_onnx"]), str(shipped["argmax_keras"])]
    config = load_config(dict(input=[str(scene)], model=models, output=str(tmp_path)), DEFAULTS)
    with pytest.raises(ModelError) as error:
        prepare_job(config)
    assert str(error.value) == (
        f"{shipped['argmax_keras']}: outputs class indices, not scores, and an ensemble "
        "averages its models' scores; save it without its final argmax"
    )


def test_cut_argmax_is_a_flag_and_a_config_key():
    argv = ["--input", "a.tif", "--model", "m.onnx", "--output", "out", "--cut-argmax"]
    assert config_from_args(argv, DEFAULTS).cut_argmax is True
    assert config_from_args(argv[:-1], DEFAULTS).cut_argmax is False


def test_a_model_ending_in_argmax_runs_as_shipped_and_cut(tmp_path, run, shipped, scene):
    """As shipped, an ArgMax of (batch, height, width) or (batch, 1, height, width) int64 out
    gives the scores model's class map; cut (--cut-argmax) it gives its scores too, --scores
    and all: every map and score the same, bit for bit (the same onnxruntime graph)."""
    common = dict(input=[str(scene)], tile_size=32)
    run(model=str(shipped["scores_onnx"]), output=str(tmp_path / "scores"), scores=True, **common)
    for name in ("argmax_onnx", "argmax_kept_onnx"):
        report = run(model=str(shipped[name]), output=str(tmp_path / name), **common)
        model = report["model"]
        assert (model["classes"], model["output"], report["tiling"]["halo"]) == (3, "classes", HALO)
    run(
        model=str(shipped["argmax_onnx"]),
        output=str(tmp_path / "cut"),
        scores=True,
        cut_argmax=True,
        **common,
    )
    expected = _read(tmp_path / "scores" / "scene.tif")
    expected_scores = _read(tmp_path / "scores" / "scene.scores.tif")
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(expected[0], expected_scores.argmax(0))
    for name in ("argmax_onnx", "argmax_kept_onnx", "cut"):
        np.testing.assert_array_equal(_read(tmp_path / name / "scene.tif"), expected)
    assert not (tmp_path / "argmax_onnx" / "scene.scores.tif").exists()
    np.testing.assert_array_equal(_read(tmp_path / "cut" / "scene.scores.tif"), expected_scores)
