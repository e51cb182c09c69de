"""A published Earth-observation model on real data, as a new user would run it: ukis-csmask's
cloud and cloud-shadow U-Net (its wheel's ONNX file: a PyTorch export, channels first, a fixed
256 x 256 input, 3 logits, an EfficientNet-b4 encoder whose squeeze-and-excitation blocks pool
globally) on the Landsat 7 scene in data/, against onnxruntime on the job's own windows and
against ukis-csmask's own tiling and blending."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import ukis_csmask

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "data" / "L7_ETMs.tif"  # ETM+ bands 1, 2, 3, 4, 5, 7
BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
HALO = 32  # no halo is exact for this model: a quarter of its window is context


@pytest.fixture(scope="module")
def published():
    """The 6-band L1C model file inside the installed wheel, and its own band statistics."""
    folder = Path(ukis_csmask.__file__).parent
    stats = json.loads((folder / "model_6b_l1c.json").read_text())["data"]["dataset_statistics"]
    assert stats["band_names"] == BANDS
    return folder / "model_6b_l1c.onnx", stats["img"][0], stats["img"][1]


def _run_job(spark, folder, model, mean, std, **options):
    """The job on the scene: DN / 255 for reflectance, then the model's mean and std."""
    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job, run_job
    from sparkinfer.tiling import halo_notes

    config = load_config(
        dict(
            input=[str(SCENE)],
            model=str(model),
            output=str(folder),
            normalization=dict(scale=1 / 255, mean=mean, std=std),
            activation="softmax",
            scores=True,
            **options,
        ),
        defaults_file=ROOT / "conf" / "default.yaml",
    )
    started = time.perf_counter()
    job = prepare_job(config)
    report = run_job(spark, job).report
    seconds = time.perf_counter() - started
    with rasterio.open(folder / "L7_ETMs.tif") as src:
        classes = src.read(1)
    with rasterio.open(job.rasters[0].scores_path) as src:
        probabilities = np.moveaxis(src.read(), 0, -1)
    return (
        job,
        report,
        classes,
        probabilities,
        seconds,
        halo_notes(job.model, job.tiling, job.config),
    )


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, spark, published):
    """With `crop`: a 32-pixel halo around each tile."""
    return _run_job(spark, tmp_path_factory.mktemp("csmask"), *published, halo=HALO)


@pytest.fixture(scope="module")
def blend_run(tmp_path_factory, spark, published):
    """With `blend`: whole windows, overlapping by a fifth (`--overlap auto`), blended."""
    return _run_job(
        spark, tmp_path_factory.mktemp("csmask-blend"), *published, merge="blend", verify=True
    )


@pytest.fixture(scope="module")
def ukis_own():
    """ukis-csmask's own `CSmask` on the scene, and its wall time."""
    from ukis_csmask.mask import CSmask

    with rasterio.open(SCENE) as src:
        reflectance = np.moveaxis(src.read().astype(np.float32) / np.float32(255), 0, -1)
    started = time.perf_counter()
    own = CSmask(reflectance, band_order=BANDS, product_level="l1c").csm[..., 0]
    return own, time.perf_counter() - started


def window_logits(session, src, row_off, col_off, mean, std):
    """onnxruntime's session run by hand on one 256 x 256 window, normalised with numpy, padded
    past the scene's edges with zeros: its (3, 256, 256) logits."""
    window = np.zeros((6, 256, 256), np.float32)
    data = src.read(
        window=rasterio.windows.Window(col_off, row_off, 256, 256), boundless=True, fill_value=0
    ).astype(np.float32)
    valid = np.ones(data.shape[1:], bool)
    valid[max(0, src.height - row_off) :, :] = False
    valid[:, max(0, src.width - col_off) :] = False
    x = (data / np.float32(255) - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]
    x[:, ~valid] = 0
    window[:, : x.shape[1], : x.shape[2]] = x
    return session.run(None, {session.get_inputs()[0].name: window[None]})[0][0]


def softmax(logits, axis=0):
    exp = np.exp(logits - logits.max(axis, keepdims=True))
    return exp / exp.sum(axis, keepdims=True)


def test_the_job_takes_the_model_as_it_ships(job_run):
    job, report, classes, _, _, notes = job_run
    assert (job.model.format, job.model.bands, job.model.classes) == ("onnx", 6, 3)
    assert (job.model.input_size, job.model.receptive_halo) == (256, None), "global context"
    assert report["tiling"]["tile_size"] == 256 - 2 * HALO and report["tiling"]["halo"] == HALO
    assert report["tiling"]["seam_free"] is False
    assert any("depends on the whole input window" in note for note in notes)
    assert set(np.unique(classes)) <= {0, 1, 2}


def test_the_class_map_is_onnxruntime_on_the_same_windows(job_run, published):
    """The reference: onnxruntime on each window the job planned, its argmax cropped to the
    tile's core."""
    import onnxruntime as ort

    from sparkinfer.plan import PixelWindow

    job, _, classes, probabilities, _, _ = job_run
    model, mean, std = published
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    plan = job.rasters[0].plan
    expected = np.full(classes.shape, 255, np.uint8)
    expected_probabilities = np.zeros(probabilities.shape, np.float32)
    with rasterio.open(SCENE) as src:
        for chunk in plan.chunks().to_pylist():
            for t in plan.tiles_of_chunk(chunk["chunk_row"], chunk["chunk_col"]):
                logits = window_logits(session, src, t.read.row_off, t.read.col_off, mean, std)
                core = logits[:, *t.core.slices(t.read)]
                rows, cols = t.core.slices(PixelWindow(0, 0, *classes.shape))
                expected[rows, cols] = core.argmax(0)
                expected_probabilities[rows, cols] = np.moveaxis(softmax(core), 0, -1)
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    assert probabilities[..., 1:].max() > 0.01, "the probabilities are not all one class's"


def test_the_blend_is_onnxruntime_windows_averaged(blend_run, published):
    """The reference: onnxruntime's probabilities on each window of the plan's grid, weighted by
    0.5 - 0.5 cos over the overlap at the window's edges, averaged over the scene at once."""
    import onnxruntime as ort

    job, report, classes, probabilities, _, notes = blend_run
    model, mean, std = published
    tiling = job.tiling
    assert (tiling.merge, tiling.overlap, tiling.tile_size) == ("blend", 52, 256 - 52)
    assert report["tiling"]["seam_free"] is False and any("blended" in n for n in notes)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ramp = np.arange(tiling.overlap)
    weight = np.ones(256)
    weight[: tiling.overlap] = 0.5 - 0.5 * np.cos(np.pi * (ramp + 0.5) / tiling.overlap)
    weight[256 - tiling.overlap :] = weight[: tiling.overlap][::-1]
    plan = job.rasters[0].plan
    height, width = classes.shape
    sums, weights = np.zeros((3, height + 256, width + 256)), np.zeros((height + 256, width + 256))
    with rasterio.open(SCENE) as src:
        for top in plan.rows.read_start:
            for left in plan.cols.read_start:
                w = np.outer(weight, weight)
                window = softmax(window_logits(session, src, top, left, mean, std))
                sums[:, top : top + 256, left : left + 256] += window * w
                weights[top : top + 256, left : left + 256] += w
    expected = np.moveaxis(sums[:, :height, :width] / weights[:height, :width], 0, -1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    top_two = np.sort(expected, axis=-1)[..., -2:]
    decided = top_two[..., 1] - top_two[..., 0] > 1e-5
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(classes[decided], expected.argmax(-1)[decided])
    checked = report["rasters"][0]["verify"]
    print(json.dumps({"blend_verify": checked}))
    assert checked["compared_pixels"] == (256 - 52) ** 2 and checked["agreement"] > 0.99


@pytest.mark.parametrize("merge", ["crop", "blend"])
def test_the_class_map_agrees_with_ukis_csmask_own(merge, job_run, blend_run, ukis_own):
    """ukis-csmask tiles at 256 with 20% overlap and blends tiles with a Tukey window. The job,
    cropping a 32-pixel halo or blending, agrees with it on at least 99.5% of the scene's
    pixels."""
    _, report, classes, _, job_seconds, _ = job_run if merge == "crop" else blend_run
    own, own_seconds = ukis_own
    agreement = float((classes == own).mean())
    print(
        json.dumps(
            {
                "merge": merge,
                "agreement_with_ukis_csmask": round(agreement, 5),
                "job_s": round(job_seconds, 2),
                "ukis_csmask_s": round(own_seconds, 2),
                "tiles_inferred": report["tiles"]["inferred"],
                "classes_job": np.bincount(classes.ravel(), minlength=3).tolist(),
                "classes_ukis": np.bincount(own.ravel(), minlength=3).tolist(),
            }
        )
    )
    assert agreement >= 0.995
