"""`--merge blend`: for a model with global context, overlapping windows' scores averaged with a
tapered cosine weight; each chunk infers the windows that reach into it, so chunks stay
independent and the output does not depend on how the raster is cut into chunks."""

import json

import numpy as np
import pytest
import rasterio
from builders import squeeze_excite, tile_counts_of_index_and_cog, write_raster

from sparkinfer.blend import taper
from sparkinfer.cuts import Tiling
from sparkinfer.plan import RasterPlan

TILE, OVERLAP = 48, 16  # windows of 64 pixels
BLENDED = dict(merge="blend", tile_size=TILE, overlap=OVERLAP, chunk_tiles=2, scores=True)


def test_the_taper_sums_to_one_where_neighbours_overlap_and_is_never_zero():
    weights = taper(64, 16)
    assert weights.min() > 0 and (weights[16:48] == 1).all()
    np.testing.assert_allclose(weights, weights[::-1])
    # Neighbours 48 pixels apart overlap by 16: their weights sum to 1 there.
    np.testing.assert_allclose(weights[48:] + weights[:16], 1.0)
    assert (taper(10, 16)[:5] < 1).all(), "at most half the window rises"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 300 x 270 raster with a nodata corner, and a model whose squeeze-and-excitation gate
    pools over the whole window."""
    folder = tmp_path_factory.mktemp("blend")
    (folder / "in").mkdir()
    mask = np.zeros((300, 270), bool)
    mask[:40, :50] = True
    raster = write_raster(folder / "in" / "scene.tif", 300, 270, nodata=0, nodata_mask=mask, seed=3)
    return raster, squeeze_excite(folder / "se.keras")


def blended_by_hand(model_path, raster_path, plan: RasterPlan, transforms=None):
    """The reference: the model on every window of the plan's grid, each window's scores
    weighted by 0.5 - 0.5 cos over `overlap` pixels at its edges, summed over the whole
    raster at once and divided by the weights' sum. With `transforms` ((forward, inverse)
    pairs), each window's scores are the mean of theirs, and its votes (each transform's
    class, one-hot) are blended too: also returns the share of them for each pixel's class."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    with rasterio.open(raster_path) as src:
        pixels = np.moveaxis(src.read(out_dtype=np.float32), 0, -1)
        valid = src.read_masks().all(axis=0)
    pixels[~valid] = 0
    ramp = plan.tiling.overlap

    def weight(length):
        w = np.ones(length)
        i = np.arange(ramp)
        w[:ramp] = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / ramp)
        w[length - ramp :] = w[:ramp][::-1]
        return w

    sums = np.zeros(pixels.shape[:2] + (3,))
    votes = np.zeros(pixels.shape[:2] + (3,))
    weights = np.zeros(pixels.shape[:2])
    rows, cols = plan.rows, plan.cols
    pairs = transforms or [(lambda x: x, lambda y: y)]
    for top, bottom in zip(rows.read_start, rows.read_stop, strict=True):
        for left, right in zip(cols.read_start, cols.read_stop, strict=True):
            window = pixels[None, top:bottom, left:right]
            members = [inverse(np.array(model(forward(window))))[0] for forward, inverse in pairs]
            scores = np.mean(members, axis=0)
            voted = np.mean([np.eye(3)[m.argmax(-1)] for m in members], axis=0)
            w = np.outer(weight(bottom - top), weight(right - left))
            sums[top:bottom, left:right] += scores * w[..., None]
            votes[top:bottom, left:right] += voted * w[..., None]
            weights[top:bottom, left:right] += w
    scores = sums / weights[..., None]
    classes = scores.argmax(-1).astype(np.uint8)
    agreement = np.take_along_axis(votes / weights[..., None], classes[..., None], -1)[..., 0]
    classes[~valid] = 255
    scores[~valid] = np.nan
    return (classes, scores, agreement) if transforms else (classes, scores)


def _outputs(folder):
    with rasterio.open(folder / "scene.tif") as src:
        classes = src.read(1)
    with rasterio.open(folder / "scene.scores.tif") as src:
        scores = np.moveaxis(src.read(), 0, -1)
    return classes, scores


def report_tiling(report):
    fields = ("tile_size", "halo", "stride", "chunk_tiles", "fixed_window", "merge")
    return Tiling(**{k: report["tiling"][k] for k in fields})


def test_blend_is_the_windows_scores_averaged(tmp_path, run, scene):
    raster, model = scene
    report = run(
        input=[str(raster)], model=str(model), output=str(tmp_path), verify=True, **BLENDED
    )
    tiling = report["tiling"]
    assert (tiling["merge"], tiling["tile_size"], tiling["halo"]) == ("blend", TILE, OVERLAP // 2)
    assert tiling["seam_free"] is False
    # 7 x 6 windows; each chunk of 2 x 2 tiles also infers the windows reaching into it.
    assert report["tiles"]["planned"] == 42
    assert report["tiles"]["inferred"] + report["tiles"]["skipped_nodata"] > 42

    classes, scores = _outputs(tmp_path)
    plan = RasterPlan(300, 270, report_tiling(report))
    expected_classes, expected_scores = blended_by_hand(model, raster, plan)
    assert (classes[:40, :50] == 255).all() and np.isnan(scores[:40, :50]).all()
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    top_two = np.sort(expected_scores, axis=-1)[..., -2:]
    decided = np.isnan(top_two[..., 0]) | (top_two[..., 1] - top_two[..., 0] > 1e-5)
    np.testing.assert_array_equal(classes[decided], expected_classes[decided])
    assert len(np.unique(classes[classes != 255])) >= 2

    checked = report["rasters"][0]["verify"]
    print(json.dumps({"blend_verify_agreement": checked["agreement"]}))
    assert checked["compared_pixels"] > 0 and 0.5 < checked["agreement"] <= 1.0


def test_blended_agreement_is_the_windows_votes_averaged(tmp_path, run, scene):
    """With `--tta flips`, each window's 4 transforms vote for their own classes; the votes are
    blended as the scores are, and the confidence is the blended votes' share for the blended
    class."""
    from test_averaging import REFERENCE

    raster, model = scene
    report = run(
        input=[str(raster)],
        model=str(model),
        output=str(tmp_path),
        tta="flips",
        confidence="agreement",
        **BLENDED,
    )
    plan = RasterPlan(300, 270, report_tiling(report))
    classes, expected_scores, shares = blended_by_hand(model, raster, plan, REFERENCE["flips"])
    written, scores = _outputs(tmp_path)
    with rasterio.open(tmp_path / "scene.confidence.tif") as src:
        confidence = src.read(1)
        assert src.descriptions == ("confidence (agreement; 0 to 254 for 0 to 1)",)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_array_equal(confidence == 255, written == 255)
    top_two = np.sort(expected_scores, axis=-1)[..., -2:]
    decided = (top_two[..., 1] - top_two[..., 0] > 1e-5) & (written != 255)
    expected = np.minimum(np.rint(shares * 255), 254)
    near = np.abs(confidence[decided].astype(int) - expected[decided])
    assert near.max() <= 1 and (near == 0).mean() > 0.999
    # Shares of 4 votes where one window decides, and between them where windows overlap.
    found = set(np.unique(confidence[decided]).tolist())
    assert {128, 191} <= found and found - {0, 64, 128, 191, 254}, found


def test_the_blend_does_not_depend_on_the_chunks(tmp_path, run, scene):
    """A pixel's windows are the same, added in the same order, whichever chunk holds it: the
    pixels are identical, to the bit, with chunks of 1 and of 3 tiles."""
    raster, model = scene
    common = dict(
        input=[str(raster)],
        model=str(model),
        merge="blend",
        tile_size=TILE,
        overlap=OVERLAP,
        batch_size=1,
        scores=True,
    )
    run(output=str(tmp_path / "one"), chunk_tiles=1, **common)
    report = run(output=str(tmp_path / "three"), chunk_tiles=3, **common)
    assert report["tiling"]["chunk_tiles"] == 3
    for one, three in zip(_outputs(tmp_path / "one"), _outputs(tmp_path / "three"), strict=True):
        np.testing.assert_array_equal(three, one)
    for chunks in ("one", "three"):  # the blend's tile counts, made from each chunk's map
        indexed, counted = tile_counts_of_index_and_cog(tmp_path / chunks, "scene")
        assert indexed == counted


def test_blend_options_are_checked_and_said(tmp_path, scene):
    from sparkinfer.config_sources import load_config
    from sparkinfer.errors import ConfigError
    from sparkinfer.job import prepare_job
    from sparkinfer.tiling import halo_notes

    raster, model = scene
    common = dict(input=[str(raster)], model=str(model), output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="halo applies to merge 'crop'"):
        load_config(common | dict(merge="blend", halo=8))
    with pytest.raises(ConfigError, match="overlap applies to merge 'blend'"):
        load_config(common | dict(overlap=8))
    job = prepare_job(load_config(common | dict(merge="blend", tile_size=64)))
    assert (job.tiling.tile_size, job.tiling.overlap) == (64, 16), "auto: a fifth of the window"
    assert halo_notes(job.model, job.tiling, job.config) == [
        "windows of 80 pixels overlap by 16 and their scores are "
        "blended: smooth across tiles, not seam-free"
    ]
