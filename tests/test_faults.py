"""Fault injection: a failed task, a lost executor and a killed driver each end with outputs
byte-identical to a clean local run (under local-cluster too: separate executor JVMs), and a
job that cannot finish keeps its chunks and says so.

The job runs as users run it (spark-submit.sh). The faults are real: the test kills Spark's
Python workers, an executor JVM or the whole driver with SIGKILL once the first chunk is
committed, while most of the 96 chunks are still to do.
"""

import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import fault_model, write_raster
from processes import (
    committed_chunks,
    descendants,
    kill_whole,
    local_cluster_work,
    python_workers,
    start,
    submit,
    wait_until,
)

from sparkinfer.config_sources import load_config
from sparkinfer.errors import JobFailed
from sparkinfer.job import prepare_job, run_job
from sparkinfer.lock import LOCK_FILE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# One tile per chunk and per model call: 96 chunks, each committed on its own. With batches of
# many tiles a task commits its whole partition at once, and a fault sent after the first commit
# can find it already done.
TILE = 64


@pytest.fixture(scope="module")
def scene(tmp_path_factory, spark):
    """A raster, a model slow enough to give a window for the fault, and a clean run's output."""
    folder = tmp_path_factory.mktemp("faults")
    (folder / "in").mkdir()
    raster = write_raster(folder / "in" / "scene.tif", 768, 512, seed=11)
    model = fault_model(folder)
    options = dict(
        input=[str(raster)], model=str(model), tile_size=TILE, chunk_tiles=1, batch_size=1
    )
    clean = folder / "clean"
    config = load_config(options | {"output": str(clean)}, ROOT / "conf" / "default.yaml")
    report = run_job(spark, prepare_job(config)).report
    assert report["rasters"][0]["chunks"]["planned"] == 96
    return SimpleNamespace(
        raster=raster, model=model, options=options, expected=(clean / "scene.tif").read_bytes()
    )


def job_args(scene, output: Path) -> list:
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


def assert_clean_result(scene, output: Path) -> dict:
    """The output equals the clean run's byte for byte, and nothing else is left."""
    assert (output / "scene.tif").read_bytes() == scene.expected
    assert sorted(p.name for p in output.iterdir()) == [
        "_run.json",
        "scene.stac.json",
        "scene.tif",
        "scene.tiles.parquet",
    ]
    return json.loads((output / "_run.json").read_text())


def test_a_task_whose_python_worker_dies_is_retried(tmp_path, scene):
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    job = start(job_args(scene, out), "local[2,2]", log)  # a task may fail once
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    workers = python_workers(job.pid)
    assert workers, "no Python worker found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "Lost task" in log.read_text(), "the fault did not reach a running task"
    report = assert_clean_result(scene, out)
    # The retries kept what the failed attempts had committed (one tile per chunk here).
    kept = report["rasters"][0]["chunks"]["kept_on_retry"]
    assert kept >= 1 and report["tiles"]["inferred"] == 96 - kept


def test_a_killed_executor_jvm_is_replaced(tmp_path, scene):
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    with local_cluster_work():
        job = start(job_args(scene, out), "local-cluster[2,1,1024]", log)
        wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
        executors = [
            pid
            for pid, cmd in descendants(job.pid).items()
            if "CoarseGrainedExecutorBackend" in cmd
        ]
        assert len(executors) == 2, "two executor JVMs expected"
        os.kill(executors[0], signal.SIGKILL)
        assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Lost executor" in text
    assert f"-> {out / 'scene.tif'}" in text  # the summary names the output
    assert_clean_result(scene, out)


def test_a_killed_driver_is_resumed_by_the_same_command(tmp_path, scene):
    out = tmp_path / "out"
    job = start(job_args(scene, out), "local[2]", tmp_path / "job.log")
    wait_until(lambda: committed_chunks(out), 300, "the first chunk", job)
    kill_whole(job)
    committed = committed_chunks(out)
    assert 0 < len(committed) < 96 and (out / LOCK_FILE).exists()

    again = submit(job_args(scene, out), "local[2]")
    assert again.returncode == 0, again.stderr[-3000:]
    report = assert_clean_result(scene, out)
    # Every committed chunk was kept; only the ones in flight or not started were inferred.
    assert report["rasters"][0]["chunks"] == {
        "planned": 96,
        "resumed": len(committed),
        "kept_on_retry": 0,
    }
    assert report["tiles"]["inferred"] == 96 - len(committed)


def test_a_spark_job_that_fails_keeps_its_chunks_and_says_so(tmp_path, spark, scene):
    """local[2] allows no task retry: a crashed Python worker fails the Spark job."""
    out = tmp_path / "out"
    config = load_config(scene.options | {"output": str(out)}, ROOT / "conf" / "default.yaml")
    job = prepare_job(config)

    def kill_workers_after_the_first_chunk():
        wait_until(lambda: committed_chunks(out), 300, "the first chunk")
        for pid in python_workers(os.getpid()):
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_workers_after_the_first_chunk)
    killer.start()
    with pytest.raises(JobFailed) as failed:
        run_job(spark, job)
    killer.join()
    message = str(failed.value)
    assert message.startswith(f"{out}: inference failed: Python worker exited unexpectedly")
    assert message.endswith(
        "the chunks written so far are kept: run the same command again to resume"
    )
    assert "\n" not in message and failed.value.exit_code == 1
    assert committed_chunks(out), "finished chunks are kept for the rerun"
    assert not (out / LOCK_FILE).exists() and not (out / "scene.tif").exists()
