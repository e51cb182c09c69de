"""A real Spark standalone cluster on 127.0.0.1 (a master and one worker from the installed
pyspark): spark-submit.sh with SPARK_MASTER=spark://... gives the local[2] output."""

import json

import pytest
from builders import write_raster
from processes import submit

pytestmark = pytest.mark.slow


def test_a_standalone_cluster_gives_the_local_output(tmp_path, run, models, standalone):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 260, seed=8)
    common = dict(model=str(models["unet"]), tile_size=64, chunk_tiles=2)
    run(input=[str(raster)], output=str(tmp_path / "local"), **common)
    done = submit(["--input", raster, "--model", common["model"], "--output",
                   tmp_path / "cluster", "--tile-size", 64, "--chunk-tiles", 2],
                  standalone)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((tmp_path / "cluster" / "_run.json").read_text())
    assert report["spark"]["master"] == standalone
    local = (tmp_path / "local" / "scene.tif").read_bytes()
    assert (tmp_path / "cluster" / "scene.tif").read_bytes() == local
