"""Seam-free: tiled inference with the derived halo equals whole-raster inference."""

import json

import numpy as np
import pytest
import rasterio
from builders import whole_image_outputs, write_raster


def _read(path, band=None):
    with rasterio.open(path) as src:
        return src.read(band) if band else src.read()


@pytest.mark.parametrize(
    "model, size, stride",
    [("conv", (300, 270), 1), ("unet", (296, 212), 4)],
    ids=["conv-stack", "unet"],
)
def test_tiled_output_equals_whole_raster_inference(tmp_path, run, models, model, size, stride):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", *size, seed=3)
    expected_classes, expected_scores, _ = whole_image_outputs(models[model], raster, stride)
    assert len(np.unique(expected_classes)) >= 2, "the test model must not be constant"

    report = run(
        input=[str(raster)],
        model=str(models[model]),
        output=str(tmp_path / "out"),
        tile_size=64,
        scores=True,
    )
    assert report["tiles"]["inferred"] == report["tiles"]["planned"] > 9
    assert report["tiling"]["halo"] >= (4 if model == "conv" else 23)

    classes = _read(tmp_path / "out" / "scene.tif", 1)
    scores = np.moveaxis(_read(tmp_path / "out" / "scene.scores.tif"), 0, -1)
    assert (classes == expected_classes).mean() >= 0.9999
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_without_halo_the_seams_show(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 270, seed=3)
    expected, _, _ = whole_image_outputs(models["conv"], raster)
    run(
        input=[str(raster)],
        model=str(models["conv"]),
        output=str(tmp_path / "out"),
        tile_size=64,
        halo=0,
    )
    classes = _read(tmp_path / "out" / "scene.tif", 1)
    wrong = classes != expected
    assert wrong.mean() > 1e-3
    # The differences sit on tile borders (within the receptive radius of a multiple of 64).
    rows, cols = np.nonzero(wrong)
    distance = np.minimum(
        np.minimum(rows % 64, 63 - rows % 64), np.minimum(cols % 64, 63 - cols % 64)
    )
    assert distance.max() < 4
    report = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert report["tiling"]["halo"] == 0


def test_reader_threads_do_not_change_the_output(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 270, seed=6)
    common = dict(
        input=[str(raster)], model=str(models["unet"]), tile_size=64, chunk_tiles=1, scores=True
    )
    run(output=str(tmp_path / "one"), readers=1, **common)
    report = run(output=str(tmp_path / "four"), readers=4, **common)
    assert report["config"]["readers"] == 4 and report["tiles"]["inferred"] == 25
    for name in ("scene.tif", "scene.scores.tif"):
        assert (tmp_path / "four" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_a_model_with_global_context_is_never_called_seam_free(tmp_path, run):
    from builders import squeeze_excite

    from sparkinfer.config_sources import load_config
    from sparkinfer.errors import ModelError
    from sparkinfer.job import prepare_job
    from sparkinfer.tiling import halo_notes

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 96, 80, seed=3)
    model = squeeze_excite(tmp_path / "se.keras")
    common = dict(input=[str(raster)], model=str(model), output=str(tmp_path / "out"))
    with pytest.raises(ModelError, match="depends on the whole input window.*--halo PIXELS"):
        prepare_job(load_config(common))
    job = prepare_job(load_config(common | dict(halo=8, tile_size=32)))
    assert halo_notes(job.model, job.tiling, job.config) == [
        f"{model}: each output pixel depends on the whole input window: "
        "tiles are not seam-free; --merge blend smooths their "
        "borders"
    ]
    report = run(**common, halo=8, tile_size=32)
    assert report["tiling"]["seam_free"] is False and report["model"]["receptive_halo"] is None


def test_the_halo_used_is_said_when_it_differs_from_the_one_given(tmp_path, models):
    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job
    from sparkinfer.tiling import halo_notes

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 96, 80, seed=3)
    common = dict(input=[str(raster)], model=str(models["unet"]), output=str(tmp_path / "out"))
    job = prepare_job(load_config(common | dict(halo=5)))
    assert halo_notes(job.model, job.tiling, job.config) == [
        "halo 5 rounded up to 8, a multiple of the model's stride 4",
        "halo 8 is less than the model's receptive field (23 pixels, by trace): tiles differ "
        "from whole-image inference near their borders",
    ]
    job = prepare_job(load_config(common))
    assert halo_notes(job.model, job.tiling, job.config) == []


def test_verify_finds_the_tiles_equal_to_a_window_run_whole(tmp_path, run, models):
    from builders import squeeze_excite

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 270, seed=3)
    report = run(
        input=[str(raster)],
        model=str(models["unet"]),
        output=str(tmp_path / "local"),
        tile_size=64,
        verify=True,
    )
    checked = report["rasters"][0]["verify"]
    # 3 tiles and their halo (24 for the stride-4 U-Net), half a tile off the tile grid.
    assert checked["window"] == {"row_off": 60, "col_off": 28, "size": 240}
    assert checked["compared_pixels"] == (240 - 2 * 24) ** 2
    assert checked["agreement"] == 1.0, "a local model: seam-free"

    model = squeeze_excite(tmp_path / "se.keras")
    report = run(
        input=[str(raster)],
        model=str(model),
        output=str(tmp_path / "global"),
        tile_size=32,
        halo=4,
        scores=True,
        verify=True,
    )
    checked = report["rasters"][0]["verify"]
    print(json.dumps({"global_context_verify_agreement": checked["agreement"]}))
    assert checked["compared_pixels"] == (3 * 32) ** 2
    assert 0.5 < checked["agreement"] <= 1.0, "global context: reported, not guaranteed"
