"""Models described by STAC MLM Items (`--model-item`): what an Item sets, what it refuses, and
that a run from it equals the run its options stand for, byte for byte."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import onnx_as_shipped, write_raster

from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError, InputError
from sparkinfer.flags import config_from_args
from sparkinfer.model_item import band_positions, read_model_item, scaling

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"
SAMPLE_ITEM = ROOT / "data" / "landcover.mlm.json"
SAMPLE = ROOT / "data" / "nc_landsat7_2000.tif"
CLASSES = ("cloud", "shadow", "clear")
# The fixed-size model's item names its bands in another order than the raster's.
RASTER_BANDS = ("blue", "green", "red", "nir")
MODEL_BANDS = ("red", "green", "blue", "nir")
MEANS, STDS = (10.0, 20.0, 30.0, 0.0), (2.0, 4.0, 8.0, 255.0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_item(model: Path) -> dict:
    """An MLM Item for the 64 x 64 channels-first ONNX conv stack beside it."""
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.5.2/schema.json"],
        "id": "conv64",
        "geometry": None,
        "properties": {
            "datetime": "2026-12-05T00:00:00Z",
            "mlm:name": "conv64",
            "mlm:architecture": "CNN",
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:framework": "PyTorch",
            "mlm:input": [
                {
                    "name": "pixels",
                    "bands": list(MODEL_BANDS),
                    "input": {
                        "shape": [-1, 4, 64, 64],
                        "dim_order": ["batch", "bands", "height", "width"],
                        "data_type": "float32",
                    },
                    "value_scaling": [
                        {"type": "z-score", "mean": 10, "stddev": 2},
                        {"type": "z-score", "mean": 20, "stddev": 4},
                        {"type": "min-max", "minimum": 30, "maximum": 38},
                        {"type": "scale", "value": 255},
                    ],
                }
            ],
            "mlm:output": [
                {
                    "name": "scores",
                    "tasks": ["semantic-segmentation"],
                    "result": {
                        "shape": [-1, 3, 64, 64],
                        "dim_order": ["batch", "class", "height", "width"],
                        "data_type": "float32",
                    },
                    "classification:classes": [
                        {"value": i, "name": name, "description": name}
                        for i, name in enumerate(CLASSES)
                    ],
                }
            ],
        },
        "assets": {
            "model": {
                "href": f"./{model.name}",
                "roles": ["mlm:model"],
                "mlm:artifact_type": "torch.onnx.export",
                "eo:bands": [{"name": n} for n in MODEL_BANDS],
            }
        },
        "links": [],
    }


@pytest.fixture(scope="module")
def fixed(onnx_models, tmp_path_factory):
    """The conv stack fixed at 64 x 64, channels first, as ONNX; its MLM Item beside it; a
    scene whose bands are described."""
    folder = tmp_path_factory.mktemp("model-item")
    model = onnx_as_shipped(onnx_models["conv"], folder / "conv64.onnx", 64, logits=False)
    item = folder / "conv64.mlm.json"
    item.write_text(json.dumps(onnx_item(model)))
    scene = write_raster(folder / "scene.tif", 150, 170, seed=5)
    with rasterio.open(scene, "r+") as dst:
        for band, name in enumerate(RASTER_BANDS, 1):
            dst.set_band_description(band, f"{name} reflectance")
    return {"model": model, "item": item, "scene": scene, "folder": folder}


def test_the_sample_item_says_the_model_its_bands_and_classes():
    item = read_model_item(str(SAMPLE_ITEM))
    assert item.model == str(ROOT / "data" / "landcover.keras")
    assert item.bands == ("B1", "B2", "B3", "B4", "B5", "B7")
    assert (item.channels, item.size, item.mean, item.std) == (6, None, None, None)
    assert item.class_names[:2] == ("developed", "agriculture") and len(item.class_names) == 7
    assert item.class_colors[:2] == ("#d7191c", "#fdae61")
    assert item.config_layer() == {"model": [str(ROOT / "data" / "landcover.keras")]}


@pytest.mark.parametrize(
    "value_scaling, expected",
    [
        ([{"type": "min-max", "minimum": 0, "maximum": 255}], ((0.0,) * 3, (255.0,) * 3)),
        (
            [
                {"type": "z-score", "mean": 1, "stddev": 2},
                {"type": "offset", "value": 5},
                {"type": "scale", "value": 4},
            ],
            ((1.0, 5.0, 0.0), (2.0, 1.0, 4.0)),
        ),
        (
            [None, {"type": None}, {"type": "min-max", "minimum": -1, "maximum": 1}],
            ((0, 0, -1), (1, 1, 2)),
        ),
        (None, (None, None)),
        ([{"type": None}], (None, None)),
    ],
)
def test_value_scalings_become_a_per_band_mean_and_std(value_scaling, expected):
    assert scaling(value_scaling, 3) == expected


def test_a_scaling_the_job_cannot_apply_is_refused_in_one_line(fixed, tmp_path):
    data = onnx_item(fixed["model"])
    data["properties"]["mlm:input"][0]["value_scaling"] = [
        {"type": "clip", "minimum": 0, "maximum": 1}
    ]
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as refused:
        read_model_item(str(path))
    assert str(refused.value) == (
        f"{path}: not a usable STAC MLM Item (value scaling 'clip' is not one the job applies "
        "(min-max, z-score, offset, scale))"
    )


def test_band_names_are_found_in_band_descriptions():
    item = read_model_item(str(SAMPLE_ITEM))
    described = ("B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2")
    assert band_positions(item, "x.tif", described) == [1, 2, 3, 4, 5, 6]
    assert band_positions(item, "x.tif", ("b7", "b5", "b4", "b3", "b2", "b1")) == [6, 5, 4, 3, 2, 1]
    with pytest.raises(InputError, match=r"^x.tif: no band is described as 'B1', a band the model"):
        band_positions(item, "x.tif", ("",) * 6)
    with pytest.raises(InputError, match=r"^x.tif: bands \[1, 2\] are all described as 'B1'"):
        band_positions(item, "x.tif", ("B1", "B1 again", "B3", "B4", "B5", "B7"))


def test_the_item_is_a_layer_under_the_config_file_and_the_flags(fixed, tmp_path):
    given = dict(input=["x.tif"], output=str(tmp_path), model_item=str(fixed["item"]))
    config = load_config(given, defaults_file=DEFAULTS)
    assert config.model == [str(fixed["model"])]
    assert config.normalization.mean == [10.0, 20.0, 30.0, 0.0]
    assert config.normalization.std == [2.0, 4.0, 8.0, 255.0]
    yaml = tmp_path / "job.yaml"
    yaml.write_text("normalization: {mean: [0, 0, 0, 0], std: [1, 1, 1, 1]}\n")
    config = load_config(given, config_file=yaml, defaults_file=DEFAULTS)
    assert (config.normalization.mean, config.normalization.std) == ([0] * 4, [1] * 4)
    flags = given | {"normalization": {"mean": [5.0] * 4}}
    assert (
        load_config(flags, config_file=yaml, defaults_file=DEFAULTS).normalization.mean == [5.0] * 4
    )


def test_a_model_and_a_model_item_both_given_are_refused(fixed, tmp_path):
    with pytest.raises(ConfigError) as refused:
        config_from_args(
            ["--input", "x.tif", "--output", str(tmp_path), "--model", str(fixed["model"])]
            + ["--model-item", str(fixed["item"])],
            DEFAULTS,
        )
    assert str(refused.value) == (
        f"command line: a model and a model item ({fixed['item']}) both given; give one"
    )


def _set(data: dict, key: str, value) -> None:
    """Set `key` ('a.b.0.c') of a JSON document to `value`."""
    *parents, last = key.split(".")
    for part in parents:
        data = data[int(part)] if part.isdigit() else data[part]
    data[int(last) if last.isdigit() else last] = value


@pytest.mark.parametrize(
    "key, value, says",
    [
        (
            "properties.mlm:input.0.input.shape",
            [-1, 4, 32, 32],
            "inputs of 32 pixels but conv64.onnx takes 64",
        ),
        (
            "properties.mlm:framework",
            "scikit-learn",
            "framework scikit-learn but conv64.onnx is an ONNX model",
        ),
        (
            "properties.mlm:output.0.classification:classes",
            [{"value": 0, "description": "land"}, {"value": 1, "description": "sea"}],
            "2 classes but conv64.onnx gives 3",
        ),
        (
            "properties.mlm:tasks",
            ["scene-classification"],
            "tasks scene-classification but conv64.onnx gives a class per pixel",
        ),
    ],
)
def test_what_the_model_file_contradicts_is_refused_in_one_line(fixed, tmp_path, key, value, says):
    from sparkinfer.job import prepare_job

    data = onnx_item(fixed["model"])
    _set(data, key, value)
    item = fixed["folder"] / f"changed-{tmp_path.name}.json"
    item.write_text(json.dumps(data))
    config = load_config(
        dict(input=[str(fixed["scene"])], output=str(tmp_path / "out"), model_item=str(item)),
        defaults_file=DEFAULTS,
    )
    with pytest.raises(ConfigError) as refused:
        prepare_job(config)
    assert str(refused.value) == f"{item}: the model item says {says}; correct the item"


def test_four_bands_named_for_three_channels_are_refused(fixed, tmp_path):
    data = onnx_item(fixed["model"])
    data["properties"]["mlm:input"][0]["input"]["shape"] = [-1, 3, 64, 64]
    path = tmp_path / "three.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"\(4 bands named for an input of 3 channels\)$"):
        read_model_item(str(path))


def test_the_sample_item_runs_as_the_flags_it_stands_for(run, tmp_path):
    """The sample's Item gives the model and its bands by name, which the sample's band
    descriptions carry: the same map, byte for byte, as the model with --bands 1,...,6."""
    options = dict(input=[str(SAMPLE)], tile_size=128)
    run(**options, model_item=str(SAMPLE_ITEM), output=str(tmp_path / "item"))
    run(
        **options,
        model=str(ROOT / "data" / "landcover.keras"),
        bands=[1, 2, 3, 4, 5, 6],
        output=str(tmp_path / "flags"),
    )
    name = "nc_landsat7_2000.tif"
    assert _sha256(tmp_path / "item" / name) == _sha256(tmp_path / "flags" / name)


def test_a_fixed_size_onnx_item_sets_bands_scaling_and_classes(run, fixed, tmp_path):
    """The ONNX model's Item reorders the raster's bands by name, scales them and names the
    classes: the same class map and scores as the flags that say so, and its classes named."""
    common = dict(input=[str(fixed["scene"])], scores=True)
    run(**common, model_item=str(fixed["item"]), output=str(tmp_path / "item"))
    run(
        **common,
        model=str(fixed["model"]),
        bands=[3, 2, 1, 4],
        normalization=dict(mean=list(MEANS), std=list(STDS)),
        output=str(tmp_path / "flags"),
    )
    for name in ("scene.tif", "scene.scores.tif"):  # the item names the classes: pixels alike
        with (
            rasterio.open(tmp_path / "item" / name) as a,
            rasterio.open(tmp_path / "flags" / name) as b,
        ):
            assert np.array_equal(a.read(), b.read(), equal_nan=True)
    with rasterio.open(tmp_path / "item" / "scene.tif") as cog:
        assert cog.descriptions == ("class (0 cloud, 1 shadow, 2 clear)",)
    item = json.loads((tmp_path / "item" / "scene.stac.json").read_text())
    classes = item["assets"]["classes"]["classification:classes"]
    assert [c["description"] for c in classes[:3]] == list(CLASSES)
