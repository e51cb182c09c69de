"""`--confidence`: how sure the model is of each pixel, from its scores (`sparkinfer.confidence`):
exact values on hand-made scores, then whole rasters written by the job against numpy."""

import json
import math

import numpy as np
import pytest
import rasterio
from builders import whole_image_outputs, write_raster
from conftest import ROOT

from sparkinfer.confidence import as_bytes, confidence
from sparkinfer.errors import ConfigError
from sparkinfer.flags import config_from_args
from sparkinfer.runtimes.base import agreed, voted_for

NAN = float("nan")


@pytest.mark.parametrize(
    "scores, expected",
    [
        # maxprob, margin, entropy; each x 255, rounded (half to even), held at 254 at most.
        ([0.5, 0.25, 0.25], {"maxprob": 128, "margin": 64, "entropy": 14}),
        ([1.0, 0.0, 0.0], {"maxprob": 254, "margin": 254, "entropy": 254}),
        ([1 / 3, 1 / 3, 1 / 3], {"maxprob": 85, "margin": 0, "entropy": 0}),
        ([0.1, 0.6, 0.3], {"maxprob": 153, "margin": 76, "entropy": 47}),
        # One sigmoid channel p: the classes (1 - p, p).
        ([0.75], {"maxprob": 191, "margin": 128, "entropy": 48}),
        ([0.5], {"maxprob": 128, "margin": 0, "entropy": 0}),
        # No scores: the class map's nodata.
        ([NAN, NAN, NAN], {"maxprob": 255, "margin": 255, "entropy": 255}),
        ([NAN], {"maxprob": 255, "margin": 255, "entropy": 255}),
    ],
)
def test_each_measure_of_hand_made_scores(scores, expected):
    pixel = np.array(scores, np.float32).reshape(1, 1, -1)
    assert {name: int(confidence(pixel, name)[0, 0]) for name in expected} == expected


def test_the_entropy_of_three_classes_by_hand():
    p = np.array([0.1, 0.6, 0.3])
    entropy = -(p * np.log(p)).sum() / math.log(3)
    assert round((1 - entropy) * 255) == 47  # the table's value above


def test_a_whole_array_is_each_pixel_alone():
    rng = np.random.default_rng(28)
    logits = rng.normal(size=(37, 41, 5)).astype(np.float32)
    scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    scores[3:7, 10:20] = np.nan
    for name in ("maxprob", "margin", "entropy"):
        whole = confidence(scores, name)
        assert whole.dtype == np.uint8 and whole.shape == (37, 41)
        assert (whole[3:7, 10:20] == 255).all() and (whole[~np.isnan(scores[..., 0])] < 255).all()
        alone = np.array(
            [
                [confidence(scores[r : r + 1, c : c + 1], name)[0, 0] for c in range(41)]
                for r in range(37)
            ]
        )
        np.testing.assert_array_equal(whole, alone)
    top = np.sort(scores, axis=-1)[..., ::-1]
    valid = ~np.isnan(scores[..., 0])
    np.testing.assert_array_equal(
        confidence(scores, "maxprob")[valid], np.minimum(np.rint(top[..., 0] * 255), 254)[valid]
    )


def test_agreement_is_the_share_of_members_with_the_final_class():
    members = [
        np.array([[0.6, 0.4], [0.1, 0.9]], np.float32).reshape(1, 2, 1, 2),
        np.array([[0.3, 0.7], [0.2, 0.8]], np.float32).reshape(1, 2, 1, 2),
        np.array([[0.8, 0.2], [0.4, 0.6]], np.float32).reshape(1, 2, 1, 2),
    ]
    classes, scores, votes = agreed([members], with_scores=True)
    agreement = voted_for(votes, classes)
    # Pixel 0: mean (0.567, 0.433), class 0, chosen by members 1 and 3; pixel 1: all say 1.
    assert classes.ravel().tolist() == [0, 1] and scores.shape == (1, 2, 1, 2)
    np.testing.assert_allclose(agreement.ravel(), [2 / 3, 1.0])
    assert as_bytes(agreement).ravel().tolist() == [170, 254]
    # One sigmoid channel: a member's class is score >= 0.5.
    sigmoid = [np.full((1, 1, 1, 1), p, np.float32) for p in (0.9, 0.4, 0.7, 0.2)]
    classes, _, votes = agreed([sigmoid], with_scores=False)
    agreement = voted_for(votes, classes)
    assert votes.ravel().tolist() == [0.5, 0.5]  # of classes 0 and 1
    assert classes.item() == 1 and agreement.item() == 0.5  # mean 0.55


def test_agreement_in_groups_weighs_groups_alike_and_counts_every_member():
    """Groups are an ensemble's models under one transform: the class is that of the mean of
    the groups' means, as the class map's, and every member counts once."""
    a, b, c = (
        np.array(p, np.float32).reshape(1, 1, 1, 2) for p in ([0.9, 0.1], [0.9, 0.1], [0, 1])
    )
    classes, scores, votes = agreed([[a, b], [c]], with_scores=True)
    agreement = voted_for(votes, classes)
    # Means: (0.9, 0.1) and (0, 1), so (0.45, 0.55) and class 1, which c alone chose; the flat
    # mean (0.6, 0.4) would have given class 0.
    np.testing.assert_allclose(scores.ravel(), [0.45, 0.55])
    assert classes.item() == 1 and agreement.item() == pytest.approx(1 / 3)


def test_agreement_without_members_is_refused():
    from sparkinfer.config_sources import load_config

    config = dict(input=["in.tif"], model=["m.keras"], output="out", confidence="agreement")
    with pytest.raises(ConfigError, match="confidence 'agreement' needs tta or several models"):
        load_config(config, ROOT / "conf" / "default.yaml")


@pytest.mark.parametrize(
    "flags, measure",
    [
        ([], None),
        (["--confidence"], "maxprob"),
        (["--confidence-measure", "margin"], "margin"),
        (["--confidence", "--confidence-measure", "entropy"], "entropy"),
        (["--confidence-measure", "entropy", "--confidence"], "entropy"),
        (["--tta", "flips", "--confidence-measure", "agreement"], "agreement"),
    ],
)
def test_the_flags_name_the_measure(flags, measure):
    argv = ["--input", "in.tif", "--model", "m.keras", "--output", "out", *flags]
    assert config_from_args(argv, ROOT / "conf" / "default.yaml").confidence == measure


@pytest.mark.parametrize(
    "flags, measure",
    [
        (["--confidence"], "entropy"),
        (["--confidence-measure", "margin"], "margin"),
        (["--confidence", "--confidence-measure", "margin"], "margin"),
    ],
)
def test_the_switch_keeps_a_measure_from_the_config_file(tmp_path, flags, measure):
    config = tmp_path / "job.yaml"
    config.write_text("confidence: entropy\n")
    argv = ["--input", "in.tif", "--model", "m.keras", "--output", "out", "--config", str(config)]
    assert config_from_args([*argv, *flags], ROOT / "conf" / "default.yaml").confidence == measure


@pytest.fixture(scope="class")
def scene(tmp_path_factory):
    mask = np.zeros((150, 170), bool)
    mask[:, :30] = True  # nodata: a band of whole tiles and parts of others
    mask[90:101, 120:133] = True
    folder = tmp_path_factory.mktemp("confidence-in")
    return write_raster(folder / "scene.tif", 150, 170, seed=28, nodata=0, nodata_mask=mask), mask


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.descriptions


class TestWrittenByTheJob:
    """The job's NAME.confidence.tif: the measure of its own NAME.scores.tif to the byte, on the
    class map's grid and nodata; and the whole image's within rounding."""

    @pytest.mark.parametrize(
        "measure, options",
        [
            ("margin", dict(tile_size=64)),  # cropped windows, the model's halo
            ("entropy", dict(tile_size=64, merge="blend", halo="auto")),  # blended windows
        ],
    )
    def test_the_confidence_is_the_measure_of_the_scores(
        self, tmp_path, run, models, scene, measure, options
    ):
        raster, mask = scene
        output = tmp_path / "out"
        run(
            input=[str(raster)],
            model=str(models["conv"]),
            output=str(output),
            scores=True,
            confidence=measure,
            **options,
        )
        written, profile, descriptions = read(output / "scene.confidence.tif")
        scores, _, _ = read(output / "scene.scores.tif")
        classes, class_profile, _ = read(output / "scene.tif")
        assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and profile["count"] == 1
        assert (profile["transform"], profile["crs"]) == (
            class_profile["transform"],
            class_profile["crs"],
        )
        assert descriptions == (f"confidence ({measure}; 0 to 254 for 0 to 1)",)
        expected = confidence(np.moveaxis(scores, 0, -1), measure)
        np.testing.assert_array_equal(written[0], expected)
        np.testing.assert_array_equal(written[0] == 255, classes[0] == 255)
        if "merge" not in options:  # seam-free: the whole image's, up to float rounding
            _, whole, valid = whole_image_outputs(models["conv"], raster)
            np.testing.assert_array_equal(valid, ~mask)
            near = np.abs(written[0].astype(int) - confidence(whole, measure).astype(int))
            assert near.max() <= 1 and (near == 0).mean() > 0.999
        item = json.loads((output / "scene.stac.json").read_text())
        assert item["assets"]["confidence"]["href"] == "./scene.confidence.tif"
        assert item["assets"]["confidence"]["roles"] == ["data"]

    def test_a_run_resumes_its_confidence_and_another_measure_is_a_new_run(
        self, tmp_path, run, models, scene
    ):
        raster, _ = scene
        common = dict(input=[str(raster)], model=str(models["conv"]), output=str(tmp_path / "o"))
        first = run(**common, tile_size=64, confidence="maxprob")
        assert first["rasters"][0]["status"] == "written"
        again = run(**common, tile_size=64, confidence="maxprob")
        assert again["rasters"][0]["status"] == "complete" and again["tiles"]["inferred"] == 0
        other = run(**common, tile_size=64, confidence="margin")
        assert other["rasters"][0]["status"] == "written" and other["tiles"]["inferred"] > 0
        # Without --scores, the windows' scores are measured and dropped: the same values.
        written, _, descriptions = read(tmp_path / "o" / "scene.confidence.tif")
        assert descriptions == ("confidence (margin; 0 to 254 for 0 to 1)",)
        _, whole, valid = whole_image_outputs(models["conv"], raster)
        np.testing.assert_array_equal(written[0] == 255, ~valid)
        near = np.abs(written[0].astype(int) - confidence(whole, "margin").astype(int))
        assert near.max() <= 1 and (near == 0).mean() > 0.999
        assert not (tmp_path / "o" / "scene.scores.tif").exists()

    def test_agreement_of_flips_of_an_ensemble_and_of_both_is_the_whole_image_s(
        self, tmp_path, run, models, scene
    ):
        """Each member's class on the whole raster (each flip of it through the U-Net, mapped
        back; each model of the ensemble; each model under each flip), and the share that
        agrees with their mean's."""
        from test_averaging import REFERENCE

        raster, mask = scene
        ensemble = [str(models["conv"]), str(models["unet"])]
        cases = {  # options, the members' models, their transforms
            "flips": (dict(model=ensemble[1], tta="flips"), ["unet"], REFERENCE["flips"]),
            "ensemble": (dict(model=ensemble), ["conv", "unet"], [None]),
            "both": (dict(model=ensemble, tta="flips"), ["conv", "unet"], REFERENCE["flips"]),
        }
        # Shares of 4 flips; of 2 models (0 too: with 3 classes, the mean's class can be
        # neither model's); of 8.
        shares_of = {"flips": 4, "ensemble": 2, "both": 8}
        for name, (options, names, transforms) in cases.items():
            output = tmp_path / name
            run(
                input=[str(raster)],
                output=str(output),
                tile_size=32,
                confidence="agreement",
                **options,
            )
            written, profile, descriptions = read(output / "scene.confidence.tif")
            assert descriptions == ("confidence (agreement; 0 to 254 for 0 to 1)",)
            groups = [  # a group per transform, as the job averages them
                [
                    np.nan_to_num(
                        whole_image_outputs(
                            models[m], raster, stride=4, transforms=[t] if t else None
                        )[1]
                    )[None]
                    for m in names
                ]
                for t in transforms
            ]
            classes, _, votes = agreed(groups, with_scores=False)
            expected = as_bytes(voted_for(votes, classes)[0])
            expected[mask] = 255
            assert (written[0] == expected).mean() > 0.999
            values = {
                min(round(255 * i / shares_of[name]), 254) for i in range(shares_of[name] + 1)
            }
            assert set(np.unique(written[0][~mask])) <= values
            assert len(set(np.unique(written[0][~mask]))) > 1, "members disagree somewhere"
