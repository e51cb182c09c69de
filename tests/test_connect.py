"""The job as a Spark Connect client: spark-submit.sh with SPARK_REMOTE, and the Databricks
notebook, against a real Connect server (the installed pyspark's, on a local cluster of two
executor JVMs) write the bytes a classic run writes, and faults end as the classic ones do: a
killed Python worker or executor is retried, a killed client is resumed by the same command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import fault_model, write_raster
from processes import (
    committed_chunks,
    descendants,
    local_cluster_work,
    python_workers,
    start,
    submit,
    wait_until,
)

from sparkinfer.config_sources import load_config
from sparkinfer.job import prepare_job, run_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TILE = 64  # one tile per chunk and per model call: 96 chunks, each committed on its own


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One Connect server for the module, on local-cluster[2,1,1024]."""
    from servers import connect_server

    folder = tmp_path_factory.mktemp("connect")
    with local_cluster_work(), connect_server(folder, "local-cluster[2,1,1024]") as (url, process):
        yield SimpleNamespace(url=url, process=process)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, spark):
    """A raster, a model slow enough to give a window for the faults, and the classic run's
    output (the in-process local[2] session)."""
    folder = tmp_path_factory.mktemp("connect-scene")
    (folder / "in").mkdir()
    raster = write_raster(folder / "in" / "scene.tif", 768, 512, seed=12)
    model = fault_model(folder)
    clean = folder / "classic"
    options = dict(
        input=[str(raster)],
        model=str(model),
        tile_size=TILE,
        chunk_tiles=1,
        batch_size=1,
        output=str(clean),
    )
    report = run_job(
        spark, prepare_job(load_config(options, ROOT / "conf" / "default.yaml"))
    ).report
    assert report["rasters"][0]["chunks"]["planned"] == 96
    return SimpleNamespace(raster=raster, model=model, expected=(clean / "scene.tif").read_bytes())


def _args(scene, output: Path) -> list:
    return [
        "--input",
        scene.raster,
        "--model",
        scene.model,
        "--output",
        output,
        "--tile-size",
        TILE,
        "--chunk-tiles",
        1,
        "--batch-size",
        1,
    ]


@pytest.fixture
def remote(server, monkeypatch):
    """spark-submit.sh and its children talk to the server."""
    monkeypatch.setenv("SPARK_REMOTE", server.url)


def _clean_result(scene, output: Path) -> dict:
    """The output equals the classic run's byte for byte, and nothing else is left."""
    assert (output / "scene.tif").read_bytes() == scene.expected
    assert sorted(p.name for p in output.iterdir()) == [
        "_run.json",
        "scene.stac.json",
        "scene.tif",
        "scene.tiles.parquet",
    ]
    report = json.loads((output / "_run.json").read_text())
    assert report["spark"]["connect"] is True
    assert report["spark"]["master"] == "local-cluster[2,1,1024]"
    return report


def test_a_python_worker_killed_over_connect_is_retried(tmp_path, scene, server, remote):
    out = tmp_path / "out"
    job = start(_args(scene, out), None, tmp_path / "job.log")
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    workers = python_workers(server.process.pid)
    assert workers, "no Python worker found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    report = _clean_result(scene, out)
    kept = report["rasters"][0]["chunks"]["kept_on_retry"]
    assert report["tiles"]["inferred"] + kept == 96


def test_a_killed_client_is_resumed_by_the_same_command(tmp_path, scene, remote):
    """The client dies; its query goes on in the server until it ends. The same command then
    keeps every chunk committed and infers only the others."""
    out = tmp_path / "out"
    job = start(_args(scene, out), None, tmp_path / "job.log")
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert 0 < len(committed_chunks(out)) < 96

    def settled() -> bool:  # the orphaned query has finished: no chunk came for 3 s
        before = len(committed_chunks(out))
        time.sleep(3)
        return len(committed_chunks(out)) == before

    wait_until(settled, 300, "the orphaned query to end")
    committed = len(committed_chunks(out))
    again = submit(_args(scene, out), None)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.startswith("sparkinfer: Spark Connect at sc://127.0.0.1:")
    assert f"-> {out / 'scene.tif'}" in again.stdout
    report = _clean_result(scene, out)
    assert report["rasters"][0]["chunks"]["resumed"] == committed
    assert report["tiles"]["inferred"] == 96 - committed


def test_the_notebook_runs_over_connect(tmp_path, server, run):
    """The notebook as a plain Python program with SPARK_REMOTE: a Connect client, its
    widgets' defaults, the classic run's bytes."""
    output = ROOT / "out" / "notebook"
    shutil.rmtree(output, ignore_errors=True)
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / "databricks_infer_tiles.py")],
            env=dict(os.environ, SPARK_REMOTE=server.url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "1 raster(s) written" in done.stdout
        report = json.loads((output / "_run.json").read_text())
        assert report["spark"]["connect"] is True and report["config"]["tile_size"] == 128
        sample = ROOT / "data" / "nc_landsat7_2000.tif"
        run(
            input=[str(sample)],
            model=str(ROOT / "data" / "landcover.keras"),
            output=str(tmp_path / "classic"),
            tile_size=128,
        )
        name = "nc_landsat7_2000.tif"
        assert (output / name).read_bytes() == (tmp_path / "classic" / name).read_bytes()
    finally:
        shutil.rmtree(output, ignore_errors=True)


# Last in the module: the server's cluster is one executor short until Spark replaces it.
def test_a_killed_executor_over_connect_is_replaced(tmp_path, scene, server, remote):
    out = tmp_path / "out"
    job = start(_args(scene, out), None, tmp_path / "job.log")
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    executors = [
        pid
        for pid, cmd in descendants(server.process.pid).items()
        if "CoarseGrainedExecutorBackend" in cmd
    ]
    assert len(executors) == 2, "two executor JVMs expected"
    os.kill(executors[0], signal.SIGKILL)
    assert job.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    _clean_result(scene, out)
