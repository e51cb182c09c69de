"""s3:// inputs and outputs against an S3 server on 127.0.0.1: reads through /vsis3/, files
uploaded whole (chunks, their polygons, the outputs), AWS settings handed to executors that do
not have them."""

import json
import shutil
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from builders import write_raster
from conftest import ROOT
from processes import submit
from pyarrow import fs
from servers import s3_client
from tcp_gate import TcpGate

from sparkinfer import storage
from sparkinfer.config_sources import load_config
from sparkinfer.errors import InputError, OutputError
from sparkinfer.job import prepare_job
from sparkinfer.raster import read_info, resolve_inputs
from sparkinfer.writers import ChunkSpec, ChunkWriter


@pytest.fixture(scope="module")
def client(s3):
    return s3_client(s3)


def keys(client, bucket: str) -> set[str]:
    """Every object in `bucket`, as bucket-relative keys."""
    infos = client.get_file_info(fs.FileSelector(bucket, recursive=True))
    return {i.path.removeprefix(f"{bucket}/") for i in infos if i.type == fs.FileType.File}


def upload(local, uri: str) -> str:
    with storage.staged(uri) as staged:
        shutil.copyfile(local, staged)
    return uri


@pytest.mark.slow
def test_s3_in_and_out_on_a_cluster_whose_executors_have_no_aws_settings(
    tmp_path, run, onnx_models, standalone, client
):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 260, seed=8)
    upload(raster, "s3://scenes/in/scene.tif")
    common = dict(
        model=str(onnx_models["unet"]), tile_size=64, chunk_tiles=2, quicklook=True, polygons=True
    )
    run(input=[str(raster)], output=str(tmp_path / "local"), **common)

    args = [
        "--input",
        "s3://scenes/in/",
        "--model",
        common["model"],
        "--output",
        "s3://predictions/run",
        "--tile-size",
        64,
        "--chunk-tiles",
        2,
        "--quicklook",
        "--polygons",
    ]
    done = submit(args, standalone)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    # Only the outputs: no chunks, lock, write probe or temporary object left behind.
    assert keys(client, "predictions") == {
        f"run/{name}"
        for name in (
            "scene.tif",
            "scene.png",
            "scene.tiles.parquet",
            "scene.polygons.parquet",
            "scene.stac.json",
            "_run.json",
        )
    }
    report = json.loads(storage.read_text("s3://predictions/run/_run.json"))
    assert report["spark"]["master"] == standalone
    assert report["rasters"][0]["input"] == "s3://scenes/in/scene.tif"
    assert report["rasters"][0]["chunks"]["planned"] == 9
    with (
        storage.gdal_env(),
        rasterio.open("/vsis3/predictions/run/scene.tif") as cog,
        rasterio.open(tmp_path / "local" / "scene.tif") as local,
    ):
        assert cog.profile == local.profile  # CRS, transform, nodata, layout
        assert np.array_equal(cog.read(), local.read())
        assert cog.tags()["source"] == "s3://scenes/in/scene.tif"
    # Each chunk's polygons, staged on S3 beside its class map, merged as the local run's were.
    with client.open_input_file("predictions/run/scene.polygons.parquet") as remote:
        polygons = pq.read_table(remote)
    local_polygons = pq.read_table(tmp_path / "local" / "scene.polygons.parquet")
    assert polygons.num_rows == local_polygons.num_rows > 1
    assert polygons.equals(local_polygons)
    item = json.loads(storage.read_text("s3://predictions/run/scene.stac.json"))
    assert item["assets"]["classes"]["href"] == "./scene.tif"
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [
        "s3://scenes/in/scene.tif"
    ]

    # The same job again: the outputs are complete, nothing is redone.
    before = client.get_file_info("predictions/run/scene.tif").mtime_ns
    report = run(input=["s3://scenes/in/"], output="s3://predictions/run", **common)
    assert report["rasters"][0]["status"] == "complete" and report["tiles"]["inferred"] == 0
    assert client.get_file_info("predictions/run/scene.tif").mtime_ns == before


def test_a_chunk_appears_on_s3_only_whole(tmp_path, client):
    info = read_info(
        upload(write_raster(tmp_path / "scene.tif", 64, 64, seed=1), "s3://scenes/chunk/scene.tif")
    )
    spec = ChunkSpec("s3://predictions/staging", 0, 0, 0, 0, 64, 64)
    writer = ChunkWriter(spec, info, channels=3, write_scores=True)
    writer.write(0, 0, np.ones((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32))
    staged = [k for k in keys(client, "predictions") if k.startswith("staging/")]
    assert staged == [], "nothing is visible before the commit"
    writer.commit()
    assert {k for k in keys(client, "predictions") if k.startswith("staging/")} == {
        "staging/chunk_r00000_c00000.tif",
        "staging/chunk_r00000_c00000.scores.tif",
    }
    with storage.open_own_raster(spec.classes_path) as chunk:
        assert chunk.crs.to_wkt() == info.crs and (chunk.read(1) == 1).all()
    storage.remove_tree("s3://predictions/staging")
    assert not any(k.startswith("staging/") for k in keys(client, "predictions"))


@pytest.mark.parametrize("size", [1 << 20, 12 << 20])  # one PUT; a multipart upload
def test_a_commit_that_fails_mid_copy_leaves_no_object(tmp_path, client, monkeypatch, size):
    staged, data = tmp_path / "cog.tif", np.random.default_rng(0).bytes(size)
    staged.write_bytes(data)
    copy = shutil.copyfileobj

    def fail_halfway(src, out, length=0):
        out.write(src.read(size // 2))
        raise OSError("the local disk failed mid-copy")

    monkeypatch.setattr(shutil, "copyfileobj", fail_halfway)
    with pytest.raises(OSError, match="mid-copy"):
        storage.commit(staged, "s3://predictions/failed/cog.tif")
    assert not any(k.startswith("failed/") for k in keys(client, "predictions"))
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    storage.commit(staged, "s3://predictions/failed/cog.tif")  # the same commit, retried
    with client.open_input_stream("predictions/failed/cog.tif") as stream:
        assert stream.read() == data


def test_an_s3_pattern_matches_files_not_prefixes(tmp_path, s3):
    raster = write_raster(tmp_path / "scene.tif", 16, 16, seed=1)
    for key in ("b.tif", "a.tif", "notes.txt", "sub.tif/c.tif"):
        upload(raster, f"s3://scenes/glob/{key}")
    assert resolve_inputs(["s3://scenes/glob/*.tif"]) == [
        "s3://scenes/glob/a.tif",
        "s3://scenes/glob/b.tif",
    ]


@pytest.mark.parametrize(
    ("options", "error", "line"),
    [
        (
            {"input": ["s3://scenes/nothing-here.tif"]},
            InputError,
            "s3://scenes/nothing-here.tif: input not found",
        ),
        (
            {"input": ["s3://no-such-bucket/*.tif"]},
            InputError,
            "s3://no-such-bucket/*.tif: cannot list inputs",
        ),
        (
            {"output": "s3://no-such-bucket/out"},
            OutputError,
            "s3://no-such-bucket/out: cannot write there",
        ),
    ],
)
def test_s3_problems_are_one_line_before_spark(tmp_path, models, s3, options, error, line):
    raster = upload(write_raster(tmp_path / "scene.tif", 64, 64, seed=1), "s3://scenes/ok.tif")
    config = {"input": [raster], "model": str(models["unet"]), "output": "s3://predictions/x"}
    with pytest.raises(error) as caught:
        prepare_job(load_config(config | options, defaults_file=ROOT / "conf" / "default.yaml"))
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_zarr_map_on_s3_equals_the_one_on_disk(tmp_path, run, onnx_models, standalone, client):
    """Executors that have no AWS settings write their grid tiles into the store on S3."""
    from sparkinfer.zarr_map import open_store

    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 260, seed=8)
    upload(raster, "s3://scenes/zarr/scene.tif")
    model = str(onnx_models["unet"])
    grid = dict(crs="EPSG:32633", resolution=10.0, tile_size=128, format="zarr")
    local = run(
        input=[str(raster)],
        output=str(tmp_path / "local"),
        model=model,
        tile_size=64,
        scores=True,
        grid=grid,
    )
    flags = ["--grid", "EPSG:32633", "--resolution", 10, "--grid-tile", 128, "--format", "zarr"]
    args = ["--input", "s3://scenes/zarr/scene.tif", "--model", model, "--output"]
    args += ["s3://predictions/zarr", "--tile-size", 64, "--scores", *flags]
    done = submit(args, standalone)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    remote = json.loads(storage.read_text("s3://predictions/zarr/_run.json"))
    assert remote["map"] == [
        "s3://predictions/zarr/map.zarr",
        "s3://predictions/zarr/collection.json",
    ]
    assert len(remote["rasters"]) == len(local["rasters"]) == 9  # 3 x 3 grid tiles
    # A grid tile is one object per array (and band), written whole.
    shards = {k for k in keys(client, "predictions") if k.startswith("zarr/map.zarr/classes/c/")}
    assert len(shards) == 9
    on_disk = zarr.open_group(open_store(str(tmp_path / "local" / "map.zarr")), mode="r")
    on_s3 = zarr.open_group(open_store("s3://predictions/zarr/map.zarr"), mode="r")
    for name in ("classes", "scores", "x", "y"):
        np.testing.assert_array_equal(on_s3[name][...], on_disk[name][...])
    assert dict(on_s3["spatial_ref"].attrs) == dict(on_disk["spatial_ref"].attrs)


def test_an_s3_endpoint_gone_for_seconds_is_ridden_out(tmp_path, s3, monkeypatch):
    """The endpoint refuses every connection for 3 s (tests/tcp_gate.py, in front of the
    server): a listing and an upload started then wait it out (pyarrow's retries,
    `s3.S3_ATTEMPTS`) instead of failing the task. (GDAL retries a reset connection or an HTTP
    error, not a refused connection: a read then fails its task, which Spark retries.)"""
    from sparkinfer import s3 as s3_clients

    port = int(s3["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    gate = TcpGate(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{gate.port}")
    s3_clients._client.cache_clear()  # a client of the gate's endpoint
    upload(write_raster(tmp_path / "scene.tif", 64, 64, seed=4), "s3://scenes/gate/a.tif")
    try:
        for attempt in ("list", "upload"):
            gate.close()
            threading.Timer(3.0, gate.open).start()
            started = time.monotonic()
            if attempt == "list":
                assert storage.list_names("s3://scenes/gate/") == {"a.tif"}
            else:
                storage.write_text("s3://scenes/gate/b.txt", "whole")
            assert time.monotonic() - started >= 2.5, f"the {attempt} met the outage"
        assert storage.read_text("s3://scenes/gate/b.txt") == "whole"
    finally:
        gate.close()
        s3_clients._client.cache_clear()
