"""Every model runtime against the TensorFlow path: Keras on JAX, a SavedModel and ONNX give the
sample's class map (>= 99.99% of pixels) and scores (within 1e-4); integer pixels cast inside
the runtime's call give exactly what float32 pixels normalised by numpy give."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import (
    export_onnx,
    export_savedmodel,
    onnx_as_shipped,
    whole_image_outputs,
    write_raster,
)

from sparkinfer.config import Normalization
from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError, ModelError
from sparkinfer.inspection import inspect_model
from sparkinfer.job import prepare_job
from sparkinfer.model import load_model, load_package, package_model
from sparkinfer.runtimes import RuntimeOptions, preprocess
from sparkinfer.runtimes.base import GPU_DEFAULT_BATCH, GPU_MAX_BATCH, Device, Runtime
from sparkinfer.session import warm_workers

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "data" / "nc_landsat7_2000.tif"
MODEL = ROOT / "data" / "landcover.keras"
HALO = 7  # the sample model's receptive radius, traced from its graph


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The sample model as a SavedModel and as an ONNX file."""
    folder = tmp_path_factory.mktemp("exported")
    return {
        "savedmodel": export_savedmodel(MODEL, folder / "landcover_saved"),
        "onnx": export_onnx(MODEL, folder / "landcover.onnx"),
    }


def _outputs(folder):
    with rasterio.open(folder / "nc_landsat7_2000.tif") as out:
        classes = out.read(1)
    with rasterio.open(folder / "nc_landsat7_2000.scores.tif") as out:
        scores = out.read()
    return classes, scores


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spark):
    """The sample through the TensorFlow path: its class map and scores."""
    from sparkinfer.job import run_job

    folder = tmp_path_factory.mktemp("tensorflow")
    config = load_config(
        dict(
            input=[str(SCENE)],
            model=str(MODEL),
            output=str(folder),
            tile_size=128,
            scores=True,
            backend="tensorflow",
        )
    )
    report = run_job(spark, prepare_job(config)).report
    assert report["devices"] == {"cpu": {"chunks": 1, "tiles": 16}}
    return _outputs(folder)


@pytest.mark.parametrize("runtime", ["jax", "savedmodel", "onnx"])
def test_runtime_gives_the_tensorflow_class_map(tmp_path, run, reference, exported, runtime):
    model = MODEL if runtime == "jax" else exported[runtime]
    backend = "jax" if runtime == "jax" else "tensorflow"
    report = run(
        input=[str(SCENE)],
        model=str(model),
        output=str(tmp_path),
        tile_size=128,
        halo=HALO,
        scores=True,
        backend=backend,
    )
    assert report["tiling"]["halo"] == HALO
    assert report["model"]["class_names"][:2] == ["developed", "agriculture"]
    classes, scores = _outputs(tmp_path)
    expected_classes, expected_scores = reference
    agreement = (classes == expected_classes).mean()
    difference = np.nanmax(np.abs(scores - expected_scores))
    print(
        json.dumps(
            {
                "runtime": runtime,
                "class_agreement": float(agreement),
                "max_score_difference": float(difference),
            }
        )
    )
    assert agreement >= 0.9999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    assert len(np.unique(classes)) >= 5, "a real land-cover map"


@pytest.mark.parametrize("size, logits", [(None, False), (64, True)])
def test_an_onnx_model_as_pytorch_ships_it(tmp_path, run, reference, exported, size, logits):
    """Channels first in and out, a fixed 64 x 64 input, logits: the job reads the layout,
    cuts tiles of 64 - 2 x 7 pixels, softmaxes the logits, and gives TensorFlow's outputs."""
    model = onnx_as_shipped(exported["onnx"], tmp_path / "shipped.onnx", size, logits)
    options = dict(activation="softmax") if logits else {}
    report = run(
        input=[str(SCENE)],
        model=str(model),
        output=str(tmp_path / "out"),
        tile_size=128,
        scores=True,
        **options,
    )
    tiling = report["tiling"]
    assert (tiling["halo"], tiling["seam_free"]) == (HALO, True)
    assert tiling["tile_size"] == (64 - 2 * HALO if size else 128)
    classes, scores = _outputs(tmp_path / "out")
    expected_classes, expected_scores = reference
    assert (classes == expected_classes).mean() >= 0.9999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_a_fixed_size_model_s_stride_is_found_by_shifting_its_window(
    tmp_path, run, models, onnx_models
):
    """A stride-4 U-Net that takes only 64 x 64 windows, as PyTorch exports ship: sizes cannot
    show its stride, two windows 4 pixels apart can. Its tiles then lie on the stride grid and
    the stitched map equals the free-size model on the whole raster."""
    model = onnx_as_shipped(onnx_models["unet"], tmp_path / "unet64.onnx", 64, logits=False)
    info = inspect_model(model)
    assert (info.input_size, info.stride, info.halo_found_by) == (64, 4, "probe")
    assert 23 <= info.receptive_halo <= 23 + 3, "the traced halo, within the stride above it"
    mask = np.zeros((150, 134), bool)
    mask[:30, :40] = True
    (tmp_path / "in").mkdir()
    scene = write_raster(
        tmp_path / "in" / "scene.tif", 150, 134, nodata=0, nodata_mask=mask, seed=21
    )
    report = run(input=[str(scene)], model=str(model), output=str(tmp_path / "out"))
    halo = -(-info.receptive_halo // 4) * 4
    assert (report["tiling"]["tile_size"], report["tiling"]["seam_free"]) == (64 - 2 * halo, True)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        classes = out.read(1)
    expected, _, _ = whole_image_outputs(models["unet"], scene, stride=4)
    assert (classes == expected).mean() >= 0.9999


@pytest.mark.parametrize("dtype, scale", [("uint8", 1 / 255), ("uint16", 1 / 4096)])
def test_integer_pixels_are_cast_and_normalised_inside_the_call(dtype, scale, exported):
    """Classes and scores from integer pixels equal those from numpy-normalised float32 pixels:
    bit for bit on TensorFlow, within float32 rounding on ONNX. (Keras on JAX needs a process
    of its own: the job's run on JAX above takes the sample's uint8 pixels.)"""
    rng = np.random.default_rng(5)
    high = 255 if dtype == "uint8" else 4095
    pixels = rng.integers(0, high, (3, 40, 56, 6)).astype(dtype)
    valid = rng.random((3, 40, 56)) > 0.1
    norm = Normalization(scale=scale, offset=-0.25)
    options = RuntimeOptions(normalization=norm)
    x = preprocess(pixels, valid, norm)
    assert (x[~valid] == 0).all()
    for runtime in (
        load_package(package_model(MODEL), options),
        load_package(package_model(exported["onnx"]), options),
    ):
        classes, scores = runtime.classify(pixels, valid, with_scores=True)
        assert classes.dtype == np.uint8 and scores.dtype == np.float32
        expected = runtime.scores(x)
        if runtime.format == "keras":
            np.testing.assert_array_equal(scores, expected)
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert (classes == expected.argmax(-1)).mean() >= 0.999


def test_a_worker_keeps_one_model_per_options_and_gpu():
    package = package_model(MODEL)
    first = load_package(package)
    assert load_package(package) is first, "cached per worker by digest"
    assert load_package(package, RuntimeOptions(normalization=Normalization(scale=2))) is not first


def test_bfloat16_runs_the_model_in_bfloat16(tmp_path, run, reference):
    """Mixed precision is opt-in; its agreement with float32 is reported, not required."""
    report = run(
        input=[str(SCENE)],
        model=str(MODEL),
        output=str(tmp_path),
        tile_size=128,
        scores=True,
        backend="tensorflow",
        precision="bfloat16",
    )
    assert report["config"]["precision"] == "bfloat16"
    classes, scores = _outputs(tmp_path)
    expected_classes, expected_scores = reference
    valid = expected_classes != 255
    agreement = (classes[valid] == expected_classes[valid]).mean()
    difference = np.nanmax(np.abs(scores - expected_scores))
    print(
        json.dumps(
            {
                "bfloat16_class_agreement": float(agreement),
                "bfloat16_max_score_difference": float(difference),
            }
        )
    )
    assert difference > 1e-4, "bfloat16 arithmetic, not float32"
    assert agreement > 0.9


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx"])
def test_halo_auto_probes_a_model_without_a_layer_graph(tmp_path, exported, fmt):
    common = dict(input=[str(SCENE)], model=str(exported[fmt]), output=str(tmp_path))
    job = prepare_job(load_config(common))
    assert (job.model.receptive_halo, job.model.halo_found_by, job.tiling.halo) == (
        HALO,
        "probe",
        HALO,
    )


def test_a_fixed_window_blends_with_its_overlap_inside(tmp_path, exported):
    """With `blend`, a fixed 64 x 64 input is the window: tiles are 64 less the overlap, and an
    overlap that leaves no tile is refused in one line."""
    model = onnx_as_shipped(exported["onnx"], tmp_path / "shipped.onnx", 64, logits=True)
    common = dict(input=[str(SCENE)], model=str(model), output=str(tmp_path / "out"), merge="blend")
    job = prepare_job(load_config(common))
    assert (job.tiling.window_size, job.tiling.overlap, job.tiling.tile_size) == (64, 12, 52)
    with pytest.raises(
        ModelError,
        match="exactly 64 pixels, which leave no room for an "
        "overlap of 64; give a smaller --overlap",
    ):
        prepare_job(load_config(common | dict(overlap=64)))


def test_onnx_runs_in_float32(tmp_path, exported):
    common = dict(input=[str(SCENE)], model=str(exported["onnx"]), output=str(tmp_path))
    with pytest.raises(ConfigError, match="applies to .keras models"):
        prepare_job(load_config(common | dict(halo=HALO, precision="bfloat16")))


def test_an_onnx_file_that_is_not_a_model_is_one_line(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="broken.onnx: cannot load model"):
        load_model(broken)


def test_batch_size_auto_is_one_512_window_per_call_on_a_cpu():
    runtime = load_package(package_model(MODEL))
    assert runtime.auto_batch(516, 516, np.dtype("uint8")) == 1
    assert runtime.auto_batch(142, 142, np.dtype("uint8")) == 13  # 2^18 // 142^2
    assert runtime.auto_batch(4096, 4096, np.dtype("uint16")) == 1


class _GPU(Runtime):
    """A runtime on a GPU that reports `memory`, for the batch arithmetic (no GPU here)."""

    format = "keras"

    def __init__(self, memory):
        super().__init__(4, RuntimeOptions(), Device("gpu", 0))
        self.memory = memory

    def window_memory(self, height, width, dtype):
        return self.memory

    def scores(self, batch):
        raise NotImplementedError

    def classify(self, pixels, valid, with_scores=False):
        raise NotImplementedError


@pytest.mark.parametrize(
    "memory, batch",
    [
        ((80 << 30, 9 << 30), 4),  # half of 80 GiB free over 9 GiB a window
        ((80 << 30, 100 << 20), GPU_MAX_BATCH),
        ((4 << 30, 9 << 30), 1),
        (None, GPU_DEFAULT_BATCH),
    ],  # the framework does not tell
)
def test_batch_size_auto_on_a_gpu_fills_half_its_free_memory(memory, batch):
    assert _GPU(memory).auto_batch(2336, 2336, np.dtype("uint8")) == batch


@pytest.mark.parametrize("share, batch", [(1, 22), (0.5, 11), (0.25, 5), (1 / 16, 1)])
def test_tasks_that_share_a_gpu_split_its_memory(share, batch):
    """Tasks sharing a GPU (`spark.task.resource.gpu.amount` < 1) load at once, each seeing all
    its free memory: each takes its share of the half. 135 GiB free, 3 GiB a window: an H200
    with the U-Net's 2624-pixel window, where auto picked 22."""
    gpu = _GPU((135 << 30, 3 << 30))
    assert gpu.auto_batch(2624, 2624, np.dtype("uint8"), share) == batch


def test_the_workers_inspect_the_model_as_the_driver_does(spark, models, tmp_path):
    import keras
    from keras import layers

    options = RuntimeOptions(backend="tensorflow")
    found = warm_workers(spark, package_model(MODEL), options, [str(MODEL)])
    assert found == inspect_model(MODEL, backend="tensorflow")
    assert found.receptive_halo == HALO and found.classes == 7
    dense = str(models["dense"])  # a chip classifier of any input size
    found = warm_workers(spark, package_model(dense), options, [dense])
    assert found == inspect_model(dense, backend="tensorflow")
    assert (found.task, found.input_size) == ("chips", None)
    oblong = tmp_path / "oblong.keras"
    keras.Sequential(
        [keras.Input((8, 6, 4)), layers.GlobalAveragePooling2D(), layers.Dense(3)]
    ).save(oblong)
    with pytest.raises(ModelError, match=f"^{oblong}: a chip classifier .* square windows"):
        warm_workers(spark, package_model(oblong), options, [str(oblong)])


def test_a_saved_model_travels_without_the_other_files_of_its_folder(tmp_path, exported):
    import io
    import shutil
    import tarfile

    import zstandard

    folder = tmp_path / "converted"
    shutil.copytree(exported["savedmodel"], folder)
    (folder / "model_float32.tflite").write_bytes(b"\0" * 1_000_000)
    (folder / "notes").mkdir()
    (folder / "notes" / "README.txt").write_text("converted by hand")
    package = package_model(folder)
    raw = zstandard.ZstdDecompressor().decompress(package.payload)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
    assert "saved_model.pb" in names and any(n.startswith("variables/") for n in names)
    assert all(n == "saved_model.pb" or n.split("/")[0] in ("variables", "assets") for n in names)
    assert package.digest == package_model(exported["savedmodel"]).digest
