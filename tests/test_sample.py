"""The real sample in data/: Landsat 7 scenes and the land-cover model trained on NC labels."""

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import whole_image_outputs
from PIL import Image
from rio_cogeo.cogeo import cog_validate

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "data" / "nc_landsat7_2000.tif"
OLINDA = ROOT / "data" / "L7_ETMs.tif"
MODEL = ROOT / "data" / "landcover.keras"


def model_classes():
    with zipfile.ZipFile(MODEL) as zf:
        return json.loads(zf.read("sparkinfer.json"))["classes"]


# sha256 (first 16 hex digits) of the NC scene's class map (tile 128, the sample model), as the
# job wrote it before model runtimes: a CPU's class map must stay these bytes.
CLASSES_SHA256 = "4bc27060e1e72425"
# The scores' mean per class over the scene's valid pixels. Scores are floats: TensorFlow's
# oneDNN picks its kernels by the CPU's instruction set, which changes the order of float32
# sums and so their last bits, not their value to 1e-6 (their bytes differ between CPUs).
SCORES_MEAN = (0.27302751, 0.01803074, 0.18120407, 0.11934009, 0.37250681, 0.03588583, 0.00000494)
SCORES_TOLERANCE = 1e-6


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def test_job_over_the_real_scene_equals_whole_raster_inference(tmp_path, run):
    report = run(
        input=[str(SCENE)],
        model=str(MODEL),
        output=str(tmp_path / "out"),
        tile_size=128,
        scores=True,
    )
    assert report["tiling"]["halo"] == 7 and report["tiles"]["planned"] == 16
    expected, expected_scores, valid = whole_image_outputs(MODEL, SCENE)
    with rasterio.open(tmp_path / "out" / SCENE.name) as out:
        classes = out.read(1)
    with rasterio.open(tmp_path / "out" / "nc_landsat7_2000.scores.tif") as out:
        scores = np.moveaxis(out.read(), 0, -1)
    assert (classes == expected).mean() >= 0.9999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    assert (classes[~valid] == 255).all() and (~valid).sum() > 10_000, "the scene's nodata border"
    present = np.unique(classes[valid])
    assert len(present) >= 5, "a real land-cover map, not a constant"
    assert _sha256(classes) == CLASSES_SHA256
    np.testing.assert_allclose(
        scores[valid].mean(axis=0, dtype=np.float64), SCORES_MEAN, rtol=0, atol=SCORES_TOLERANCE
    )


def test_output_carries_the_models_class_names_and_colours(tmp_path, run):
    run(input=[str(OLINDA)], model=str(MODEL), output=str(tmp_path / "out"), tile_size=128)
    classes = model_classes()
    with rasterio.open(tmp_path / "out" / OLINDA.name) as out:
        names = ", ".join(f"{i} {c['name']}" for i, c in enumerate(classes))
        assert out.descriptions == (f"class ({names})",)
        assert json.loads(out.tags()["CLASS_NAMES"]) == [c["name"] for c in classes]
        colormap = out.colormap(1)
        for index, entry in enumerate(classes):
            rgb = tuple(int(entry["color"][i : i + 2], 16) for i in (1, 3, 5))
            assert colormap[index][:3] == rgb
        water = [c["name"] for c in classes].index("water")
        # Olinda's scene is one third Atlantic Ocean: its right-hand edge must be water.
        assert (out.read(1)[:, -20:] == water).mean() > 0.8


@pytest.mark.slow
def test_make_run_writes_cogs_and_quicklooks_of_the_sample(tmp_path):
    out, temp = tmp_path / "sample", tmp_path / "temp"
    temp.mkdir()
    venv = Path(sys.executable).parent.parent
    job = subprocess.Popen(
        ["make", "run", f"SAMPLE_OUTPUT={out}", f"VENV={venv}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, SPARKINFER_VENV=str(venv), TMPDIR=str(temp)),
    )
    first = job.stderr.readline()
    first_at = time.monotonic()
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stdout[-2000:] + first + stderr[-2000:]
    # spark-submit.sh passes the driver's lines on as they come, not when the job ends: the
    # session's line, then the workers load the model and the job runs.
    assert first.startswith("sparkinfer: Spark UI at ") and time.monotonic() - first_at > 2
    # Only the job's own lines: neither the JVM's notices nor, from the Python workers that load
    # the model, TensorFlow's start-up lines.
    lines = (first + stderr).splitlines()
    assert [line for line in lines if not line.startswith("sparkinfer: ")] == []
    assert lines[-1].startswith("sparkinfer: 25/25 tiles (100.0%)")
    # Python workers end by os._exit, with no atexit cleanup: what they leave stays.
    assert not list(temp.iterdir()), "the run leaves nothing in the temp folder"
    for name in ("nc_landsat7_2000", "L7_ETMs"):
        assert f"-> {out / name}.tif" in stdout
        assert cog_validate(str(out / f"{name}.tif"))[0]
        with rasterio.open(ROOT / "data" / f"{name}.tif") as src:
            shape = src.shape
        with Image.open(out / f"{name}.png") as png:
            assert png.height >= shape[0] and png.width > shape[1], "map plus legend"
    report = json.loads((out / "_run.json").read_text())
    assert report["model"]["class_names"][0] == "developed"
