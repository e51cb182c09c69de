"""spark-submit.sh end to end, and the distributed path under local-cluster."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyspark
import rasterio
from builders import write_raster

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(pyspark.__file__).parent / "work"  # local-cluster executors' folders land here


def submit(args, master, timeout=300):
    venv = Path(sys.executable).parent.parent
    env = dict(os.environ, SPARK_MASTER=master, SPARKINFER_VENV=str(venv))
    return subprocess.run([str(ROOT / "spark-submit.sh"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_local_cluster_gives_byte_identical_class_maps_to_local(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", 300, 260, seed=5)
    write_raster(tmp_path / "in" / "b.tif", 140, 333, crs="EPSG:4326", seed=6)
    common = dict(model=str(models["unet"]), tile_size=64, chunk_tiles=2)
    run(input=[str(tmp_path / "in")], output=str(tmp_path / "local"), **common)

    before = set(WORK.iterdir()) if WORK.exists() else set()
    try:
        done = submit(["--input", str(tmp_path / "in"), "--model", common["model"],
                       "--output", str(tmp_path / "cluster"), "--tile-size", "64",
                       "--chunk-tiles", "2"], "local-cluster[2,1,1024]")  # fmt: skip
    finally:
        for folder in (set(WORK.iterdir()) if WORK.exists() else set()) - before:
            shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "local-cluster" not in done.stdout  # the summary names outputs, not the master
    for name in ("a.tif", "b.tif"):
        assert f"-> {tmp_path / 'cluster' / name}" in done.stdout
        with rasterio.open(tmp_path / "local" / name) as a, \
                rasterio.open(tmp_path / "cluster" / name) as b:  # fmt: skip
            local, cluster = a.read(1), b.read(1)
            assert (a.crs, a.transform) == (b.crs, b.transform)
        assert local.tobytes() == cluster.tobytes()
        assert len(np.unique(local)) >= 2
