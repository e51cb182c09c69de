"""STAC Items as inputs: assets at two resolutions stacked on the first's grid, outputs named
after the Item and linked to it, and one line for an Item the job cannot use."""

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from builders import write_raster
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from sparkinfer import storage
from sparkinfer.cli import main
from sparkinfer.config_sources import load_config
from sparkinfer.errors import InputError
from sparkinfer.prepare import check_job

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"
# Sentinel-2's keys and common names: three 10 m bands and a 20 m one.
BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B8A": "nir08"}
ASSETS = "B02,green,red,nir08"  # by key and by common name


def identity_model(path: Path, bands: int = 4) -> Path:
    """A 1 x 1 convolution whose output is its input: the scores the job writes are the pixels
    the model was given."""
    import keras

    model = keras.Sequential(
        [keras.Input((None, None, bands)), keras.layers.Conv2D(bands, 1, use_bias=False)]
    )
    model.layers[0].set_weights([np.eye(bands, dtype=np.float32)[None, None]])
    model.save(path)
    return path


def band_files(
    folder: Path, origin: tuple[float, float], height: int, width: int, seed: int
) -> dict[str, Path]:
    """One single-band uint16 GeoTIFF per band over the same extent: 10 m, and 20 m for B8A."""
    folder.mkdir(parents=True)
    files = {}
    for i, key in enumerate(BANDS):
        step = 20 if key == "B8A" else 10
        files[key] = write_raster(
            folder / f"{key}.tif",
            height * 10 // step,
            width * 10 // step,
            bands=1,
            dtype="uint16",
            seed=seed + i,
            transform=from_origin(*origin, step, step),
        )
    return files


def stac_item(id_: str, hrefs: dict[str, str], self_href: str | None = None) -> pystac.Item:
    item = pystac.Item(
        id_, geometry=None, bbox=None, datetime=datetime(2024, 5, 1, 10, tzinfo=UTC), properties={}
    )
    for key, href in hrefs.items():
        item.add_asset(
            key,
            pystac.Asset(
                href,
                media_type=pystac.MediaType.COG,
                roles=["data"],
                extra_fields={"eo:bands": [{"name": key, "common_name": BANDS[key]}]},
            ),
        )
    item.add_asset("thumbnail", pystac.Asset("./preview.png", media_type=pystac.MediaType.PNG))
    if self_href:
        item.set_self_href(self_href)
    return item


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def stacked_by_hand(files: dict[str, Path], resampling: Resampling) -> np.ndarray:
    """The bands in model order on the 10 m grid, the 20 m one read at 10 m with `resampling`."""
    with rasterio.open(files["B02"]) as grid:
        shape = grid.shape
    bands = []
    for key in BANDS:
        with rasterio.open(files[key]) as src:
            bands.append(src.read(1, out_shape=shape, resampling=resampling))
    return np.stack(bands)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """An Item file whose assets are relative paths (and a self link), and an ItemCollection of
    two Items whose assets are absolute paths and file:// URIs."""
    folder = tmp_path_factory.mktemp("stac")
    a = band_files(folder / "a", (500_000, 5_300_000), 150, 170, seed=1)
    b = band_files(folder / "b", (510_000, 5_290_000), 100, 60, seed=11)
    item = stac_item(
        "S2B_33UXP_20240501",
        {k: f"./a/{k}.tif" for k in BANDS},
        self_href="https://stac.example/items/S2B_33UXP_20240501.json",
    )
    scene = write_json(folder / "scene.json", item.to_dict())
    pair = pystac.ItemCollection(
        [
            stac_item("pair-a", {k: str(a[k]) for k in BANDS}),
            stac_item("pair-b", {k: b[k].as_uri() for k in BANDS}),
        ]
    )
    items = write_json(folder / "items.json", pair.to_dict())
    return {
        "folder": folder,
        "scene": scene,
        "items": items,
        "a": a,
        "b": b,
        "model": identity_model(folder / "identity.keras"),
    }


def infer(spark, *args) -> int:
    return main([str(a) for a in args], spark, defaults_file=DEFAULTS)


@pytest.fixture(scope="module")
def written(scenes, spark):
    out = scenes["folder"] / "out"
    args = [
        "--input",
        scenes["scene"],
        scenes["items"],
        "--assets",
        ASSETS,
        "--model",
        scenes["model"],
        "--output",
        out,
        "--tile-size",
        64,
        "--chunk-tiles",
        1,
        "--scores",
    ]
    assert infer(spark, *args) == 0
    return out, args, json.loads((out / "_run.json").read_text())


def test_the_model_sees_the_assets_stacked_at_the_first_one_s_resolution(scenes, written):
    out, _, report = written
    assert report["failed"] == []
    for stem, files in [
        ("S2B_33UXP_20240501", scenes["a"]),
        ("pair-a", scenes["a"]),
        ("pair-b", scenes["b"]),
    ]:
        expected = stacked_by_hand(files, Resampling.bilinear)
        with (
            rasterio.open(out / f"{stem}.scores.tif") as scores,
            rasterio.open(out / f"{stem}.tif") as classes,
            rasterio.open(files["B02"]) as grid,
        ):
            assert (classes.crs, classes.transform, classes.shape) == (
                grid.crs,
                grid.transform,
                grid.shape,
            )
            assert np.array_equal(scores.read(), expected.astype(np.float32))
            assert np.array_equal(classes.read(1), expected.argmax(axis=0))


def test_outputs_are_named_after_each_item_and_link_to_it(scenes, written):
    out, _, report = written
    inputs = [str(scenes["scene"]), f"{scenes['items']}#pair-a", f"{scenes['items']}#pair-b"]
    assert [r["input"] for r in report["rasters"]] == inputs
    outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("_"))
    assert outputs == sorted(
        f"{stem}{suffix}"
        for stem in ("S2B_33UXP_20240501", "pair-a", "pair-b")
        for suffix in (".tif", ".scores.tif", ".tiles.parquet", ".stac.json")
    )
    links = {}
    for stem in ("S2B_33UXP_20240501", "pair-a", "pair-b"):
        (link,) = pystac.Item.from_file(str(out / f"{stem}.stac.json")).get_links("derived_from")
        links[stem] = (link.href, link.media_type)
    assert links == {
        "S2B_33UXP_20240501": (
            "https://stac.example/items/S2B_33UXP_20240501.json",
            "application/geo+json",
        ),
        "pair-a": (scenes["items"].as_uri(), "application/geo+json"),
        "pair-b": (scenes["items"].as_uri(), "application/geo+json"),
    }


def test_the_same_run_is_complete_and_another_resampling_redoes_the_item(scenes, written, spark):
    out, args, _ = written
    assert infer(spark, *args) == 0
    report = json.loads((out / "_run.json").read_text())
    assert [r["status"] for r in report["rasters"]] == ["complete"] * 3
    assert args[1:4] == [scenes["scene"], scenes["items"], "--assets"]
    assert infer(spark, "--input", scenes["scene"], *args[3:], "--resampling", "nearest") == 0
    report = json.loads((out / "_run.json").read_text())
    assert [r["status"] for r in report["rasters"]] == ["written"]
    with rasterio.open(out / "S2B_33UXP_20240501.scores.tif") as scores:
        nearest = stacked_by_hand(scenes["a"], Resampling.nearest).astype(np.float32)
        assert np.array_equal(scores.read(), nearest)
        assert not np.array_equal(nearest, stacked_by_hand(scenes["a"], Resampling.bilinear))


@pytest.mark.parametrize(
    ("assets", "error"),
    [
        (
            "B02,green,red,swir16",
            "{scene}: no asset or band common name 'swir16' (assets: B02, "
            "B03, B04, B8A, thumbnail; common names: blue, green, nir08, red)",
        ),
        (
            None,
            "{scene}: the bands of a STAC Item are its assets: name them in the model's "
            "order with --assets (its assets: B02, B03, B04, B8A, thumbnail)",
        ),
        ("B02,B03,B04,thumbnail", "{scene}: asset thumbnail ({folder}/preview.png): not found"),
    ],
)
def test_an_item_the_job_cannot_stack_is_one_line(scenes, spark, capsys, assets, error):
    args = [
        "--input",
        scenes["scene"],
        "--model",
        scenes["model"],
        "--output",
        scenes["folder"] / "refused",
    ]
    code = infer(spark, *args, *(["--assets", assets] if assets else []))
    printed = capsys.readouterr().err
    assert code == 2
    line = error.format(scene=scenes["scene"], folder=scenes["folder"])
    assert printed == f"sparkinfer: error: {line}\n"


def checked(tmp_path: Path, inputs: list, model: Path, assets: str = ASSETS):
    config = load_config(
        dict(
            input=[str(i) for i in inputs],
            model=str(model),
            assets=assets.split(","),
            output=str(tmp_path / "out"),
        ),
        defaults_file=DEFAULTS,
    )
    return check_job(config)


def test_an_asset_of_several_bands_gives_them_all_in_one_type(scenes, tmp_path):
    four = write_raster(
        tmp_path / "four.tif",
        40,
        30,
        bands=4,
        dtype="uint16",
        seed=5,
        transform=from_origin(500_000, 5_300_000, 10, 10),
    )
    mask = write_raster(
        tmp_path / "mask.tif",
        20,
        15,
        bands=1,
        dtype="uint8",
        nodata=0,
        seed=6,
        transform=from_origin(500_000, 5_300_000, 20, 20),
    )
    item = pystac.Item("several", None, None, datetime(2024, 5, 1, tzinfo=UTC), {})
    item.add_asset("four", pystac.Asset("./four.tif"))
    item.add_asset("mask", pystac.Asset("./mask.tif"))
    path = write_json(tmp_path / "several.json", item.to_dict())
    (info,) = checked(tmp_path, [path], scenes["model"], "four,mask").infos
    assert (info.count, info.dtype, info.masking) == (5, "uint16", "mask")
    with (
        rasterio.open(info.dataset) as stack,
        rasterio.open(four) as src,
        rasterio.open(mask) as coarse,
    ):
        assert stack.nodatavals == (None, None, None, None, 0)
        assert np.array_equal(stack.read([1, 2, 3, 4]), src.read())
        assert np.array_equal(
            stack.read(5), coarse.read(1, out_shape=(40, 30), resampling=Resampling.bilinear)
        )


def test_an_item_the_job_cannot_use_is_refused_and_the_others_go_on(scenes, tmp_path):
    good = {k: str(scenes["a"][k]) for k in BANDS}
    utm34 = write_raster(
        tmp_path / "B8A.tif",
        75,
        85,
        bands=1,
        dtype="uint16",
        crs="EPSG:32634",
        transform=from_origin(500_000, 5_300_000, 20, 20),
    )
    visual = stac_item("visual", good)
    visual.add_asset(
        "visual",
        pystac.Asset(
            good["B02"],
            extra_fields={
                "eo:bands": [
                    {"common_name": "red"},
                    {"common_name": "green"},
                    {"common_name": "blue"},
                ]
            },
        ),
    )
    items = pystac.ItemCollection(
        [
            stac_item("good", good),
            stac_item("utm34", good | {"B8A": str(utm34)}),
            stac_item("remote", good | {"B02": "ftp://x.example/B02.tif"}),
            visual,
        ]
    )
    collection = write_json(tmp_path / "items.json", items.to_dict())
    not_stac = write_json(tmp_path / "labels.json", {"classes": ["water", "forest"]})
    job = checked(tmp_path, [collection, not_stac], scenes["model"])
    assert [info.path for info in job.infos] == [f"{collection}#good"]
    assert {f.input: f.error for f in job.failed} == {
        str(not_stac): f"{not_stac}: not a STAC Item or ItemCollection (a GeoJSON Feature or "
        "FeatureCollection)",
        f"{collection}#utm34": f"{collection}#utm34: asset B8A is in EPSG:32634 but B02 in "
        "EPSG:32633; the assets stacked must share a CRS",
        f"{collection}#remote": f"{collection}#remote: asset B02 is at ftp://x.example/B02.tif: "
        "assets are read from local paths, s3:// or http(s)://",
        f"{collection}#visual": f"{collection}#visual: 'green' is the common name of bands of "
        "assets B03, visual; name the asset instead",
    }


def test_an_item_on_s3_stacks_its_assets_next_to_it(scenes, s3, tmp_path):
    for key, path in scenes["a"].items():
        with storage.staged(f"s3://scenes/stac/a/{key}.tif") as staged:
            staged.write_bytes(path.read_bytes())
    storage.write_text("s3://scenes/stac/scene.json", scenes["scene"].read_text())
    (info,) = checked(tmp_path, ["s3://scenes/stac/scene.json"], scenes["model"]).infos
    assert info.path == "s3://scenes/stac/scene.json" and info.stem == "S2B_33UXP_20240501"
    assert "/vsis3/scenes/stac/a/B8A.tif" in info.dataset
    with storage.gdal_env(), rasterio.open(info.dataset) as stack:
        assert np.array_equal(stack.read(), stacked_by_hand(scenes["a"], Resampling.bilinear))


def test_assets_at_http_urls_are_read_through_vsicurl(scenes, s3, spark, tmp_path):
    """Public catalogues (Earth Search, say) give https hrefs to public objects in a bucket:
    here the S3 server's plain HTTP, read without credentials, Range requests and all."""
    import boto3

    url = f"{s3['AWS_ENDPOINT_URL']}/scenes/http"
    bucket = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    for key, path in scenes["a"].items():
        bucket.put_object(
            Bucket="scenes", Key=f"http/a/{key}.tif", Body=path.read_bytes(), ACL="public-read"
        )
    item = write_json(
        tmp_path / "item.json",
        stac_item("over-http", {k: f"{url}/a/{k}.tif" for k in BANDS}).to_dict(),
    )
    out = tmp_path / "out"
    assert (
        infer(
            spark,
            "--input",
            item,
            "--assets",
            ASSETS,
            "--model",
            scenes["model"],
            "--output",
            out,
            "--tile-size",
            64,
            "--scores",
        )
        == 0
    )
    with rasterio.open(out / "over-http.scores.tif") as scores:
        expected = stacked_by_hand(scenes["a"], Resampling.bilinear)
        assert np.array_equal(scores.read(), expected.astype(np.float32))
    (info,) = checked(tmp_path, [item], scenes["model"]).infos
    assert f"/vsicurl/{url}/a/B8A.tif" in info.dataset
    missing = write_json(
        tmp_path / "missing.json",
        stac_item(
            "missing", {k: f"{url}/a/{k}.tif" for k in BANDS} | {"B02": f"{url}/B02.tif"}
        ).to_dict(),
    )
    with pytest.raises(InputError) as refused:
        checked(tmp_path, [missing], scenes["model"])
    assert str(refused.value) == f"{missing}: asset B02 ({url}/B02.tif): not found"


def test_a_model_item_chooses_the_assets_by_its_band_names(scenes, tmp_path):
    """An MLM Item's band names choose a STAC input's assets, as --assets does with them."""
    names = ["blue", "B03", "red", "nir08"]
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.5.2/schema.json"],
        "id": "identity",
        "geometry": None,
        "properties": {
            "datetime": None,
            "mlm:name": "identity",
            "mlm:architecture": "1x1 convolution",
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:input": [
                {
                    "name": "bands",
                    "bands": names,
                    "input": {
                        "shape": [-1, -1, -1, 4],
                        "dim_order": ["batch", "height", "width", "bands"],
                        "data_type": "float32",
                    },
                }
            ],
            "mlm:output": [{"name": "x", "tasks": ["semantic-segmentation"], "result": {}}],
        },
        "assets": {
            "model": {
                "href": scenes["model"].name,
                "roles": ["mlm:model"],
                "mlm:artifact_type": "tf.keras.Model.save",
            }
        },
        "links": [],
    }
    path = write_json(scenes["folder"] / "identity.mlm.json", item)
    config = load_config(
        dict(input=[str(scenes["scene"])], model_item=str(path), output=str(tmp_path / "out")),
        defaults_file=DEFAULTS,
    )
    by_item = check_job(config)
    by_flags = checked(tmp_path, [scenes["scene"]], scenes["model"], ",".join(names))
    assert by_item.config.assets == names
    assert by_item.infos[0].item.vrt == by_flags.infos[0].item.vrt
