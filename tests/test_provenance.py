"""Provenance in every output STAC Item: the model in the terms of the MLM extension, the
software in those of the processing extension, the job's tiling, options and identity. The
Items validate offline against the extensions' schemas, and a run made again from an Item's
fields (`--rerun`) gives the same bytes."""

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import pystac
import pytest
import rasterio
from builders import write_raster
from pystac.validation import JsonSchemaSTACValidator
from stac_schemas import validate_extensions

from sparkinfer.flags import config_from_args
from sparkinfer.model import package_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
NORMALIZATION = dict(scale=0.5, offset=-3.0, mean=[1.0, 2.0, 3.0, 4.0], std=[2.0, 2.0, 4.0, 4.0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(spark, **options):
    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job, run_job

    rerun = options.pop("rerun", None)
    config = load_config(options, defaults_file=DEFAULTS, rerun=rerun)
    return run_job(spark, prepare_job(config)).report


@pytest.fixture(scope="module")
def made(spark, onnx_models, tmp_path_factory):
    """An ensemble of the ONNX conv stack run twice over a scene, with scores, normalisation
    and flips; and the sample run from its model item."""
    folder = tmp_path_factory.mktemp("provenance")
    scene = write_raster(folder / "scene.tif", 150, 170, seed=6)
    model = onnx_models["conv"]
    _run(
        spark,
        input=[str(scene)],
        model=[str(model), str(model)],
        output=str(folder / "first"),
        tile_size=64,
        scores=True,
        tta="flips",
        normalization=NORMALIZATION,
    )
    _run(
        spark,
        input=[str(ROOT / "data" / "nc_landsat7_2000.tif")],
        model_item=str(ROOT / "data" / "landcover.mlm.json"),
        output=str(folder / "sample"),
        tile_size=128,
    )
    return {"folder": folder, "scene": scene, "model": model}


def _item(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.stac.json").read_text())


def test_the_item_records_the_model_the_software_and_the_tiling(made):
    item = _item(made["folder"] / "first", "scene")
    assert JsonSchemaSTACValidator().validate_core(item, pystac.STACObjectType.ITEM, "1.1.0")
    assert validate_extensions(item) == [MLM, PROCESSING]
    properties = item["properties"]
    with rasterio.open(made["folder"] / "first" / "scene.tif") as cog:
        assert properties["sparkinfer:identity"] == cog.tags()["SPARKINFER_IDENTITY"]
    digest = package_model(made["model"]).digest
    for key in ("model", "model-2"):  # an ensemble's members, each an mlm:model asset
        asset = item["assets"][key]
        assert asset["href"] == made["model"].as_uri() and asset["sparkinfer:sha256"] == digest
        assert asset["roles"] == ["mlm:model"] and asset["mlm:artifact_type"] == "onnx"
    assert properties["mlm:framework"] == "ONNX"
    assert properties["mlm:tasks"] == ["semantic-segmentation"]
    (pixels,) = properties["mlm:input"]
    assert pixels["input"] == {
        "shape": [-1, -1, -1, 4],
        "dim_order": ["batch", "height", "width", "channel"],
        "data_type": "float32",
    }
    # x * 0.5 - 3, then (x - m) / s: (x - (m + 3) / 0.5) / (s / 0.5)
    assert pixels["value_scaling"] == [
        {"type": "z-score", "mean": mean, "stddev": stddev}
        for mean, stddev in [(8.0, 4.0), (10.0, 4.0), (12.0, 8.0), (14.0, 8.0)]
    ]
    (output,) = properties["mlm:output"]
    assert output["result"]["shape"] == [-1, -1, -1, 3]
    assert [c["value"] for c in output["classification:classes"]] == [0, 1, 2]
    assert properties["sparkinfer:tiling"] == {
        "tile_size": 64,
        "halo": 4,
        "stride": 1,
        "chunk_tiles": properties["sparkinfer:tiling"]["chunk_tiles"],
        "merge": "crop",
    }
    assert properties["sparkinfer:seam_free"] is True
    assert properties["sparkinfer:options"]["tta"] == "flips"
    assert properties["sparkinfer:options"]["normalization"] == NORMALIZATION
    software = properties["processing:software"]
    assert {"sparkinfer", "pyspark", "rasterio", "GDAL", "onnxruntime"} <= set(software)
    assert properties["mlm:framework_version"] == software["onnxruntime"]
    assert properties["processing:lineage"].endswith(
        "tiles of 64 pixels read with a halo of 4, cropped, test-time augmentation flips; "
        "equal to whole-image inference"
    )


def test_an_item_from_a_model_item_names_the_input_bands(made):
    item = _item(made["folder"] / "sample", "nc_landsat7_2000")
    assert validate_extensions(item) == [MLM, PROCESSING, EO]
    properties = item["properties"]
    names = ["B1", "B2", "B3", "B4", "B5", "B7"]
    assert properties["mlm:input"][0]["bands"] == names
    assert item["assets"]["model"]["eo:bands"] == [{"name": n} for n in names]
    assert properties["mlm:name"] == "sparkinfer landcover sample"
    assert properties["sparkinfer:options"]["bands"] == [1, 2, 3, 4, 5, 6]
    assert properties["sparkinfer:options"]["model_item"] == str(
        ROOT / "data" / "landcover.mlm.json"
    )


@pytest.mark.parametrize(
    "remove",
    [
        ("assets", "model", "mlm:artifact_type"),
        ("properties", "mlm:input"),
        ("assets", "model", "eo:bands"),
    ],
)
def test_the_schemas_refuse_an_item_without_what_they_require(made, remove):
    item = copy.deepcopy(_item(made["folder"] / "sample", "nc_landsat7_2000"))
    *parents, last = remove
    node = item
    for key in parents:
        node = node[key]
    del node[last]
    with pytest.raises(jsonschema.ValidationError):
        validate_extensions(item)


@pytest.mark.parametrize(
    "output, name, files",
    [
        ("first", "scene", ("scene.tif", "scene.scores.tif")),
        ("sample", "nc_landsat7_2000", ("nc_landsat7_2000.tif",)),
    ],
)
def test_a_run_made_again_from_an_item_gives_the_same_bytes(spark, made, output, name, files):
    item = made["folder"] / output / f"{name}.stac.json"
    again = made["folder"] / f"{output}-again"
    _run(spark, rerun=str(item), output=str(again))
    for file in files:
        assert _sha256(again / file) == _sha256(made["folder"] / output / file)
    assert (
        _item(again, name)["properties"]["sparkinfer:identity"]
        == (_item(made["folder"] / output, name)["properties"]["sparkinfer:identity"])
    )


def test_rerun_is_a_flag_whose_options_the_others_override(made, tmp_path):
    item = made["folder"] / "first" / "scene.stac.json"
    config = config_from_args(
        ["--rerun", str(item), "--output", str(tmp_path), "--tta", "d4"], DEFAULTS
    )
    assert config.input == [str(made["scene"])]
    assert config.model == [str(made["model"])] * 2
    assert (config.tile_size, config.scores, config.tta) == (64, True, "d4")
