"""Starting the job as users do (spark-submit.sh) and finding its processes, for fault injection."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pyspark

ROOT = Path(__file__).resolve().parent.parent
# The class-data archive that spark-submit.sh maps (made by make): the tests' JVMs start faster too.
JVM_OPTIONS = f"-XX:SharedArchiveFile={ROOT / 'build' / 'jvm' / 'spark-classes.jsa'} -Xlog:cds*=off"
LOCAL_CLUSTER_WORK = Path(pyspark.__file__).parent / "work"  # executors' folders land here


def submit_command(args: list, master: str | None, submit_args: str = "") -> tuple[list[str], dict]:
    """spark-submit.sh's command line and environment for `args` on `master` (None: the
    environment's SPARK_REMOTE, a Spark Connect server), with `submit_args` as
    SPARK_SUBMIT_ARGS when given."""
    venv = Path(sys.executable).parent.parent
    env = dict(os.environ, SPARKINFER_VENV=str(venv))
    if master is not None:
        env["SPARK_MASTER"] = master
    if submit_args:
        env["SPARK_SUBMIT_ARGS"] = submit_args
    return [str(ROOT / "spark-submit.sh"), *map(str, args)], env


def submit(
    args: list, master: str | None, timeout: int = 300, submit_args: str = ""
) -> subprocess.CompletedProcess:
    command, env = submit_command(args, master, submit_args)
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def start(args: list, master: str | None, log: Path) -> subprocess.Popen:
    """spark-submit.sh in the background, stdout and stderr to `log`, in its own session."""
    command, env = submit_command(args, master)
    with log.open("w") as out:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def local_cluster_work():
    """Remove the executor folders that local-cluster leaves in the pyspark package."""
    before = set(LOCAL_CLUSTER_WORK.iterdir()) if LOCAL_CLUSTER_WORK.exists() else set()
    try:
        yield
    finally:
        after = set(LOCAL_CLUSTER_WORK.iterdir()) if LOCAL_CLUSTER_WORK.exists() else set()
        for folder in after - before:
            shutil.rmtree(folder, ignore_errors=True)


def processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (ppid, cmdline)
    return found


def _below(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                frontier.append(pid)
    return found


def descendants(root: int) -> dict[int, str]:
    """The processes below `root`: pid -> command line."""
    return _below(root, processes())


def python_workers(root: int) -> list[int]:
    """Spark's Python workers below `root`: the children that pyspark.daemon forks."""
    table = processes()
    below = _below(root, table)
    return [
        pid
        for pid, cmd in below.items()
        if "pyspark.daemon" in cmd and "pyspark.daemon" in below.get(table[pid][0], "")
    ]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, job=None) -> None:
    """Poll `condition` every 50 ms; fail the test if it is not met in time or `job` ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if job is not None and job.poll() is not None:
            raise AssertionError(f"the job ended (exit {job.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def committed_chunks(output: Path) -> set[str]:
    """The chunk files committed (renamed into place) in the output's staging folders."""
    return {p.name for p in output.glob("_staging/*/chunk_*.tif")}


def kill_whole(job: subprocess.Popen) -> None:
    """The whole machine's view of a job dies at once: driver JVM, Python driver, workers."""
    tree = [job.pid, *descendants(job.pid)]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    job.wait(timeout=60)
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in tree[1:]),
        60,
        "the job's processes to end",
    )
