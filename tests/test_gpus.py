"""GPU executors on Spark's resource scheduling, shown on CPUs: a real standalone cluster (a
master and a worker on 127.0.0.1 from the installed pyspark) writes a local[2] run's bytes.
Its worker offers two fake GPUs (conf/gpu-discovery.sh over a stand-in nvidia-smi), each task
gets one, and _run.json records which address served which chunks. With no GPU there, the
model runs on the CPU and the report says so."""

import json
import os
import subprocess

import numpy as np
import pytest
import rasterio
from builders import write_raster
from processes import submit
from servers import ROOT, fake_nvidia_smi

from sparkinfer.assembly import chunk_specs
from sparkinfer.config_sources import load_config
from sparkinfer.devices import TaskResources
from sparkinfer.executor import infer_partition
from sparkinfer.job import chunks_to_do, prepare_job, prepare_staging
from sparkinfer.stages.infer import plan_table, stage_spec

GPU_TASKS = (
    "--conf spark.executor.cores=2 --conf spark.executor.resource.gpu.amount=2 "
    "--conf spark.task.resource.gpu.amount=1"
)


def test_the_discovery_script_lists_nvidia_smi_s_gpus(tmp_path):
    env = dict(os.environ, PATH=f"{fake_nvidia_smi(tmp_path, 3)}:{os.environ['PATH']}")
    found = subprocess.run(
        [ROOT / "conf" / "gpu-discovery.sh"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(found.stdout) == {"name": "gpu", "addresses": ["0", "1", "2"]}


@pytest.mark.slow
def test_tasks_get_distinct_gpus_and_the_report_says_which_served_each_chunk(
    tmp_path, run, onnx_models, standalone, monkeypatch
):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 300, 260, seed=8)
    common = dict(model=str(onnx_models["conv"]), tile_size=64, chunk_tiles=1)
    run(input=[str(raster)], output=str(tmp_path / "local"), **common)
    monkeypatch.setenv("SPARK_SUBMIT_ARGS", GPU_TASKS)
    done = submit(
        [
            "--input",
            raster,
            "--model",
            common["model"],
            "--output",
            tmp_path / "gpus",
            "--tile-size",
            64,
            "--chunk-tiles",
            1,
        ],
        standalone,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((tmp_path / "gpus" / "_run.json").read_text())
    assert report["spark"]["master"] == standalone
    assert report["spark"]["task_gpu_share"] == 1.0  # spark.task.resource.gpu.amount, read
    by_gpu = report["rasters"][0]["chunks"]["by_gpu"]
    assert sorted(by_gpu) == ["0", "1"], "both GPUs served tasks"
    served = [tuple(chunk) for chunks in by_gpu.values() for chunk in chunks]
    assert sorted(served) == [(r, c) for r in range(5) for c in range(5)], "each chunk once"
    assert report["devices"] == {"cpu": {"chunks": 25, "tiles": 25}}, "no GPU here: the CPU ran"
    local = (tmp_path / "local" / "scene.tif").read_bytes()
    assert (tmp_path / "gpus" / "scene.tif").read_bytes() == local


def test_the_partition_function_runs_without_spark(tmp_path, run, models):
    """What mapInArrow calls in each task, called over the plan table in this process (as
    benchmarks/device.py does on GPU machines without Java) writes the job's chunks."""
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 200, 170, seed=4)
    common = dict(input=[str(raster)], model=str(models["unet"]), tile_size=64, chunk_tiles=2)
    run(output=str(tmp_path / "spark"), **common)
    job = prepare_job(load_config(common | dict(output=str(tmp_path / "alone"))))
    prepare_staging(job.rasters[0], overwrite=False)
    plan = plan_table([chunks_to_do(job.rasters[0])])
    rows = [
        row
        for batch in infer_partition(
            plan.to_batches(), stage_spec(job, job.rasters), job.package, TaskResources(cpus=2)
        )
        for row in batch.to_pylist()
    ]
    assert len(rows) == job.rasters[0].plan.chunk_count == 4
    assert {(r["device"], r["gpu"], r["error"]) for r in rows} == {("cpu", None, None)}
    assert sum(r["inferred"] for r in rows) == job.rasters[0].plan.tile_count
    expected = read_classes(tmp_path / "spark" / "scene.tif")
    for chunk in chunk_specs(job.rasters[0]):
        window = expected[
            chunk.row_off : chunk.row_off + chunk.height,
            chunk.col_off : chunk.col_off + chunk.width,
        ]
        np.testing.assert_array_equal(read_classes(chunk.classes_path), window)


def read_classes(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)
