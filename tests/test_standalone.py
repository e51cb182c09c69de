"""A real Spark standalone cluster on 127.0.0.1 (a master and one worker from the installed
pyspark): spark-submit.sh with SPARK_MASTER=spark://... gives the local[2] output."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from builders import write_raster
from processes import submit, wait_until

SPARK_CLASS = Path(sys.executable).parent / "spark-class"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as page:
            return json.load(page)["aliveworkers"]
    except OSError:
        return 0


@pytest.fixture
def standalone(tmp_path):
    """spark://127.0.0.1:PORT with one 2-core worker; both stopped after the test."""
    port, ui_port = free_port(), free_port()
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(tmp_path / "logs"))
    log = (tmp_path / "cluster.log").open("w")
    common = dict(env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    master = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master",
                               "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(ui_port)], **common)  # fmt: skip
    url = f"spark://127.0.0.1:{port}"
    worker = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", url,
                               "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
                               "--webui-port", str(free_port()),
                               "--work-dir", str(tmp_path / "work")], **common)  # fmt: skip
    try:
        wait_until(lambda: alive_workers(ui_port) == 1, 120, "the worker to register")
        yield url
    finally:
        for process in (worker, master):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


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
