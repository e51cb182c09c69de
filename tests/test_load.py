"""Load: one run over 200 small rasters, and the plan of a raster of over 100,000 tiles.

`python -m benchmarks.load` reports the times and memory of both; these tests check that the
results are right and that the plan stays small.
"""

import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import rasterio
from builders import write_raster
from rasterio.transform import from_origin

from sparkinfer.config_sources import load_config
from sparkinfer.job import chunks_to_do, prepare_job, prepare_staging
from sparkinfer.session import map_in_partitions
from sparkinfer.stages.infer import plan_table

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_one_run_over_200_small_rasters(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    rasters = []
    for i in range(200):
        transform = from_origin(500_000 + 1000 * (i % 20), 5_300_000 - 1000 * (i // 20), 10, 10)
        rasters.append(
            write_raster(
                tmp_path / "in" / f"r{i:03d}.tif",
                24 + i % 17,
                40 - i % 13,
                transform=transform,
                seed=i,
            )
        )
    report = run(
        input=[str(tmp_path / "in" / "*.tif")],
        model=str(models["conv"]),
        output=str(tmp_path / "out"),
        tile_size=32,
    )
    assert [r["status"] for r in report["rasters"]] == ["written"] * 200
    assert report["failed"] == []
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    catalog = [f"{p.stem}{suffix}" for p in rasters for suffix in (".stac.json", ".tiles.parquet")]
    assert outputs == sorted(["_run.json", *(p.name for p in rasters), *catalog])
    for raster in rasters[::23]:
        with rasterio.open(raster) as src, rasterio.open(tmp_path / "out" / raster.name) as out:
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    tiles = sum(-(-(24 + i % 17) // 32) * -(-(40 - i % 13) // 32) for i in range(200))
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["tiles"]["inferred"] == tiles


def test_a_plan_of_over_100000_tiles_stays_small(tmp_path, spark, models):
    (tmp_path / "in").mkdir()
    side = 512 * 512  # 512 x 512 tiles of 512 px: 262,144 tiles
    big = tmp_path / "in" / "big.tif"
    with rasterio.open(
        big,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        nodata=0,
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        sparse_ok=True,
        bigtiff="yes",
        transform=from_origin(500_000, 5_300_000, 10, 10),
    ):
        pass
    job = prepare_job(
        load_config(
            dict(input=[str(big)], model=str(models["conv"]), output=str(tmp_path / "out")),
            defaults_file=ROOT / "conf" / "default.yaml",
        )
    )
    (raster,) = job.rasters
    prepare_staging(raster, overwrite=False)
    tracemalloc.start()
    chunks = chunks_to_do(raster)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert raster.plan.tile_count == 262_144 and len(chunks) == 16_384
    assert pc.sum(chunks["tiles"]).as_py() == 262_144
    assert peak < 48 * 2**20, f"the chunk table took {peak / 2**20:.0f} MiB"
    table = plan_table([chunks])

    def chunks_per_task(batches):
        yield pa.RecordBatch.from_pylist([{"chunks": sum(b.num_rows for b in batches)}])

    schema = pa.schema([("chunks", pa.int64())])
    counted = map_in_partitions(spark, table, 8, chunks_per_task, schema)
    assert [row.chunks for row in counted] == [2048] * 8
    # Tapered, as the inference stage cuts them: weights 8 down to 1, of 36.
    tapered = map_in_partitions(spark, table, 8, chunks_per_task, schema, tapered=True)
    assert [row.chunks for row in tapered] == [3640, 3186, 2731, 2275, 1821, 1365, 910, 456]
