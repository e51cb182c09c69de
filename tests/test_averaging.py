"""Averaged scores, still seam-free. Test-time augmentation (`--tta flips|d4`): each window's
scores are the mean of the model's over the window's flips (and rotations), mapped back.
Ensembles (`--model A B`): the mean of the models' scores. Either way the stitched map equals
whole-image inference of the averaged model: the whole raster (flipped and rotated) through each
model, mapped back and averaged. Shown on a U-Net of stride 4 over a raster that is not a
multiple of it, with a nodata corner, so windows at every edge and the sampling grid are tried."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import conv_stack, whole_image_outputs, write_raster

from sparkinfer.averaging import TRANSFORMS
from sparkinfer.cli import main
from sparkinfer.errors import ModelError
from sparkinfer.flags import config_from_args
from sparkinfer.inspection import inspect_model

ROOT = Path(__file__).resolve().parent.parent


def _rotations(mirror: bool):
    """D4 from numpy's rot90 and flip: rotations by k quarter turns, after a mirror or not."""
    pairs = []
    for k in range(4):

        def forward(x, k=k):
            return np.rot90(x[:, :, ::-1] if mirror else x, k, axes=(1, 2))

        def inverse(y, k=k):
            y = np.rot90(y, -k, axes=(1, 2))
            return y[:, :, ::-1] if mirror else y

        pairs.append((forward, inverse))
    return pairs


REFERENCE = {
    "flips": [
        (lambda x, a=axes: np.flip(x, a) if a else x, lambda y, a=axes: np.flip(y, a) if a else y)
        for axes in [(), (1,), (2,), (1, 2)]
    ],
    "d4": _rotations(False) + _rotations(True),
}


@pytest.mark.parametrize("name", ["flips", "d4"])
def test_the_transforms_are_numpy_s_flips_and_rotations(name):
    x = np.random.default_rng(0).random((1, 5, 5, 2))
    ours = {t.forward(x).tobytes() for t in TRANSFORMS[name]}
    numpys = {np.ascontiguousarray(forward(x)).tobytes() for forward, _ in REFERENCE[name]}
    assert ours == numpys and len(ours) == {"flips": 4, "d4": 8}[name]
    for t in TRANSFORMS[name]:
        assert np.array_equal(t.inverse(t.forward(x)), x)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta")
    (folder / "in").mkdir()
    mask = np.zeros((150, 134), bool)
    mask[:30, :40] = True
    return write_raster(folder / "in" / "scene.tif", 150, 134, nodata=0, nodata_mask=mask, seed=21)


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_augmented_tiles_equal_the_averaged_model_on_the_whole_raster(
    tmp_path, run, models, scene, tta
):
    report = run(
        input=[str(scene)],
        model=str(models["unet"]),
        output=str(tmp_path / "out"),
        tile_size=32,
        chunk_tiles=2,
        tta=tta,
        scores=True,
    )
    assert report["tiling"]["stride"] == 4 and report["tiling"]["seam_free"]
    assert report["tiles"]["planned"] == 25 and report["config"]["tta"] == tta
    expected, expected_scores, valid = whole_image_outputs(
        models["unet"], scene, stride=4, transforms=REFERENCE[tta]
    )
    plain, _, _ = whole_image_outputs(models["unet"], scene, stride=4)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        classes = out.read(1)
    with rasterio.open(tmp_path / "out" / "scene.scores.tif") as out:
        scores = np.moveaxis(out.read(), 0, -1)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert (classes == expected).mean() >= 0.9999
    assert (classes[~valid] == 255).all()
    assert (classes[valid] != plain[valid]).sum() > 50, "the augmentation changes the map"


def test_augmentation_is_part_of_the_outputs_identity(tmp_path, run, models, scene):
    common = dict(
        input=[str(scene)], model=str(models["conv"]), output=str(tmp_path / "out"), tile_size=64
    )
    run(**common)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        plain = out.read(1)
    report = run(**common, tta="flips")  # not "already complete": redone with the flips
    assert report["rasters"][0]["status"] == "written"
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        assert not np.array_equal(out.read(1), plain)
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["config"]["tta"] == "flips"


def _averaged(outputs):
    """Whole-image outputs of several models (`whole_image_outputs`) averaged: classes, scores."""
    scores = np.mean([o[1] for o in outputs], axis=0, dtype=np.float32)
    classes = scores.argmax(-1).astype(np.uint8)
    classes[~outputs[0][2]] = 255
    return classes, scores


def test_an_ensemble_equals_its_models_averaged_on_the_whole_raster(
    tmp_path, spark, models, scene, capsys
):
    """The command line (in-process, on the shared session: the workers inspect both models):
    a stride-1 model with a U-Net of stride 4 runs on the U-Net's grid with the wider halo."""
    out = tmp_path / "out"
    code = main(
        [
            "--input",
            str(scene),
            "--model",
            str(models["conv"]),
            str(models["unet"]),
            "--output",
            str(out),
            "--tile-size",
            "32",
            "--scores",
        ],
        spark,
        defaults_file=ROOT / "conf" / "default.yaml",
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "_run.json").read_text())
    assert report["model"]["path"] == f"{models['conv']} + {models['unet']}"
    assert (report["model"]["stride"], report["tiling"]["seam_free"]) == (4, True)
    halos = [inspect_model(models[m]).receptive_halo for m in ("conv", "unet")]
    assert report["model"]["receptive_halo"] == max(halos) and len(set(halos)) == 2
    expected, expected_scores = _averaged(
        [whole_image_outputs(models[m], scene, stride=4) for m in ("conv", "unet")]
    )
    with rasterio.open(out / "scene.tif") as classes, rasterio.open(out / "scene.scores.tif") as s:
        np.testing.assert_allclose(np.moveaxis(s.read(), 0, -1), expected_scores, atol=1e-5)
        assert (classes.read(1) == expected).mean() >= 0.9999
    alone = whole_image_outputs(models["unet"], scene, stride=4)[0]
    assert (expected != alone).sum() > 50, "the ensemble is not its U-Net alone"


def test_an_ensemble_with_augmentation_averages_both(tmp_path, run, models, scene):
    report = run(
        input=[str(scene)],
        model=[str(models["conv"]), str(models["unet"])],
        output=str(tmp_path / "out"),
        tile_size=32,
        tta="flips",
        scores=True,
    )
    assert report["tiling"]["seam_free"]
    expected, expected_scores = _averaged(
        [
            whole_image_outputs(models[m], scene, stride=4, transforms=REFERENCE["flips"])
            for m in ("conv", "unet")
        ]
    )
    with rasterio.open(tmp_path / "out" / "scene.scores.tif") as s:
        np.testing.assert_allclose(np.moveaxis(s.read(), 0, -1), expected_scores, atol=1e-5)
    with rasterio.open(tmp_path / "out" / "scene.tif") as classes:
        assert (classes.read(1) == expected).mean() >= 0.9999


def test_an_ensemble_of_models_with_other_classes_is_refused(tmp_path, run, models, scene):
    two = conv_stack(tmp_path / "two.keras", classes=2)
    with pytest.raises(
        ModelError,
        match=r"^.*two\.keras: takes 4 bands and gives 2 score "
        r"channels, but .*conv\.keras takes 4 and gives 3; an ensemble's models "
        r"must take the same bands and give the same classes$",
    ):
        run(input=[str(scene)], model=[str(models["conv"]), str(two)], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_several_models_on_the_command_line_and_one_in_yaml():
    listed = config_from_args(
        [
            "--input",
            "a.tif",
            "--model",
            "a.keras",
            "b.onnx",
            "--model",
            "c.keras",
            "--output",
            "out",
        ]
    )
    assert listed.model == ["a.keras", "b.onnx", "c.keras"]
    one = config_from_args(["--input", "a.tif", "--model", "a.keras", "--output", "out"])
    assert one.model == ["a.keras"]
