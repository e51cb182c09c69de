"""Servers the tests start on 127.0.0.1 and stop after: a Spark standalone cluster (a master and
one worker from the installed pyspark), a Spark Connect server, and an S3-compatible object
store (moto in server mode)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processes import JVM_OPTIONS, wait_until

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as page:
            return json.load(page)["aliveworkers"]
    # A master still starting up refuses, or answers with an empty page (seen in CI).
    except (OSError, ValueError, KeyError):
        return 0


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


ROOT = Path(__file__).resolve().parent.parent


def fake_nvidia_smi(folder: Path, gpus: int) -> Path:
    """A folder holding an `nvidia-smi` that answers conf/gpu-discovery.sh's query with `gpus`
    GPU indices, as the real one does on a host with that many GPUs."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    indices = "\\n".join(str(i) for i in range(gpus))
    script.write_text(f'#!/bin/sh\nprintf "{indices}\\n"\n')
    script.chmod(0o755)
    return folder


@contextmanager
def standalone_cluster(
    folder: Path, gpus: int = 0, cores: tuple[int, ...] = (2,), pinned: bool = False
) -> Iterator[str]:
    """spark://127.0.0.1:PORT with a worker of each of `cores` cores (worker i on 127.0.0.(i+1)),
    offering `gpus` GPUs found by conf/gpu-discovery.sh (with a fake nvidia-smi: this machine
    has no GPU). With `pinned`, worker i and all it starts (executor, Python workers) run on
    CPU i only. The cluster gets no AWS_* variables, as on a real cluster: executors have only
    what the job passes them."""
    port, ui_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(folder / "logs"),
        "SPARK_DAEMON_JAVA_OPTS": JVM_OPTIONS,
    }
    if gpus:
        env["PATH"] = f"{fake_nvidia_smi(folder / 'bin', gpus)}:{env['PATH']}"
        env["SPARK_WORKER_OPTS"] = (
            f"-Dspark.worker.resource.gpu.amount={gpus} "
            f"-Dspark.worker.resource.gpu.discoveryScript={ROOT / 'conf' / 'gpu-discovery.sh'}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "cluster.log").open("w")
    common = dict(env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    master = subprocess.Popen(
        [
            str(BIN / "spark-class"),
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui_port),
        ],
        **common,
    )
    url = f"spark://127.0.0.1:{port}"
    workers = []
    for i, count in enumerate(cores):
        # Worker i on 127.0.0.(i + 1): hosts of their own to Spark, which never runs a
        # speculative copy of a task on the host of its first attempt.
        host = f"127.0.0.{i + 1}"
        pin = ["taskset", "-c", str(i)] if pinned else []
        workers.append(
            subprocess.Popen(
                [
                    *pin,
                    str(BIN / "spark-class"),
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    host,
                    "--cores",
                    str(count),
                    "--memory",
                    "2g",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(folder / f"work{i}"),
                ],
                **common | {"env": env | {"SPARK_LOCAL_IP": host}},
            )
        )
    try:
        wait_until(lambda: _alive_workers(ui_port) == len(cores), 120, "the workers to register")
        yield url
    finally:
        _stop([*workers, master])
        log.close()


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def connect_server(folder: Path, master: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Spark Connect server of the installed pyspark (what sbin/start-connect-server.sh
    starts) on `master`; yields its sc:// URL and its process. Its Python workers run this
    interpreter."""
    port = free_port()
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    log = (folder / "connect.log").open("w")
    server = subprocess.Popen(
        [
            str(BIN / "spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--master",
            master,
            "--conf",
            f"spark.connect.grpc.binding.port={port}",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}",
            "--conf",
            f"spark.executor.extraJavaOptions={JVM_OPTIONS}",
            "--driver-java-options",
            JVM_OPTIONS,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _listens(port), 120, "the Spark Connect server to listen", server)
        yield f"sc://127.0.0.1:{port}", server
    finally:
        _stop([server])
        log.close()


def s3_client(env: dict[str, str]):
    """A pyarrow client of the server `s3_server` started, allowed to create buckets."""
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        allow_bucket_creation=True,
    )


@contextmanager
def s3_server(folder: Path, buckets: list[str]) -> Iterator[dict[str, str]]:
    """moto's S3 server with empty `buckets`; yields the AWS variables that reach it."""
    port = free_port()
    log = (folder / "moto.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/"), 60, "the S3 server to answer")
        env = S3_CREDENTIALS | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        admin = s3_client(env)
        for bucket in buckets:
            admin.create_dir(bucket)
        yield env
    finally:
        _stop([server])
        log.close()
