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


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, spark, published):
    """The job on the scene: DN / 255 for reflectance, then the model's mean and std."""
    from sparkinfer.config import load_config
    from sparkinfer.job import halo_notes, prepare_job, run_job

    model, mean, std = published
    out = tmp_path_factory.mktemp("csmask")
    config = load_config(dict(input=[str(SCENE)], model=str(model), output=str(out), halo=HALO,
                              normalization=dict(scale=1 / 255, mean=mean, std=std),
                              activation="softmax", scores=True),
                         defaults_file=ROOT / "conf" / "default.yaml")  # fmt: skip
    started = time.perf_counter()
    job = prepare_job(config)
    report = run_job(spark, job)
    seconds = time.perf_counter() - started
    with rasterio.open(out / "L7_ETMs.tif") as src:
        classes = src.read(1)
    return job, report, classes, seconds, halo_notes(job)


def test_the_job_takes_the_model_as_it_ships(job_run):
    job, report, classes, _, notes = job_run
    assert (job.model.format, job.model.bands, job.model.classes) == ("onnx", 6, 3)
    assert (job.model.input_size, job.model.receptive_halo) == (256, None), "global context"
    assert report["tiling"]["tile_size"] == 256 - 2 * HALO and report["tiling"]["halo"] == HALO
    assert report["tiling"]["seam_free"] is False
    assert any("depends on the whole input window" in note for note in notes)
    assert set(np.unique(classes)) <= {0, 1, 2}


def test_the_class_map_is_onnxruntime_on_the_same_windows(job_run, published):
    """The reference: onnxruntime's session run by hand on each window the job planned,
    normalised with numpy, its argmax cropped to the tile's core."""
    import onnxruntime as ort

    job, _, classes, _, _ = job_run
    model, mean, std = published
    with rasterio.open(job.rasters[0].scores_path) as src:
        probabilities = np.moveaxis(src.read(), 0, -1)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    plan = job.rasters[0].plan
    expected = np.full(classes.shape, 255, np.uint8)
    expected_probabilities = np.zeros(probabilities.shape, np.float32)
    with rasterio.open(SCENE) as src:
        for chunk in plan.chunks().to_pylist():
            for t in plan.chunk_tiles(chunk["chunk_row"], chunk["chunk_col"]):
                window = np.zeros((6, 256, 256), np.float32)  # padded past the edges, as 0
                data = src.read(window=rasterio.windows.Window(
                    t["read_col_off"], t["read_row_off"], t["read_width"], t["read_height"]),
                    boundless=True, fill_value=0).astype(np.float32)
                valid = np.ones(data.shape[1:], bool)
                valid[max(0, src.height - t["read_row_off"]):, :] = False
                valid[:, max(0, src.width - t["read_col_off"]):] = False
                x = (data / np.float32(255) - np.float32(mean)[:, None, None]) / np.float32(
                    std)[:, None, None]
                x[:, ~valid] = 0
                window[:, : x.shape[1], : x.shape[2]] = x
                logits = session.run(None, {name: window[None]})[0][0]
                top = t["core_row_off"] - t["read_row_off"]
                left = t["core_col_off"] - t["read_col_off"]
                core = logits[:, top : top + t["core_height"], left : left + t["core_width"]]
                rows = slice(t["core_row_off"], t["core_row_off"] + t["core_height"])
                cols = slice(t["core_col_off"], t["core_col_off"] + t["core_width"])
                expected[rows, cols] = core.argmax(0)
                exp = np.exp(core - core.max(0))
                expected_probabilities[rows, cols] = np.moveaxis(exp / exp.sum(0), 0, -1)
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    assert probabilities[..., 1:].max() > 0.01, "the probabilities are not all one class's"


def test_the_class_map_agrees_with_ukis_csmask_own(job_run):
    """ukis-csmask tiles at 256 with 20% overlap and blends tiles with a smooth window; the job
    crops a 32-pixel halo. They agree on at least 99.5% of the scene's pixels."""
    from ukis_csmask.mask import CSmask

    _, _, classes, job_seconds, _ = job_run
    with rasterio.open(SCENE) as src:
        reflectance = np.moveaxis(src.read().astype(np.float32) / np.float32(255), 0, -1)
    started = time.perf_counter()
    own = CSmask(reflectance, band_order=BANDS, product_level="l1c").csm[..., 0]
    own_seconds = time.perf_counter() - started
    agreement = float((classes == own).mean())
    print(json.dumps({"agreement_with_ukis_csmask": round(agreement, 5),
                      "job_s": round(job_seconds, 2), "ukis_csmask_s": round(own_seconds, 2),
                      "classes_job": np.bincount(classes.ravel(), minlength=3).tolist(),
                      "classes_ukis": np.bincount(own.ravel(), minlength=3).tolist()}))
    assert agreement >= 0.995
