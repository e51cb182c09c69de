"""spark-submit.sh end to end, and the distributed path under local-cluster."""

import numpy as np
import rasterio
from builders import write_raster
from processes import local_cluster_work, submit


def test_local_cluster_gives_byte_identical_class_maps_to_local(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", 300, 260, seed=5)
    write_raster(tmp_path / "in" / "b.tif", 140, 333, crs="EPSG:4326", seed=6)
    common = dict(model=str(models["unet"]), tile_size=64, chunk_tiles=2)
    run(input=[str(tmp_path / "in")], output=str(tmp_path / "local"), **common)

    with local_cluster_work():
        done = submit(["--input", tmp_path / "in", "--model", common["model"],
                       "--output", tmp_path / "cluster", "--tile-size", 64,
                       "--chunk-tiles", 2], "local-cluster[2,1,1024]")  # fmt: skip
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
