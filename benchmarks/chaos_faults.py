"""The soak's faults (benchmarks/chaos.py): what each kind does to a running job, and what it
needs of the soak's setting (a cluster, a disk of its own, a gate in front of S3)."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from processes import descendants, kill_whole, processes, python_workers  # noqa: E402
from tcp_gate import TcpGate  # noqa: E402


class NoTarget(Exception):
    """The fault found nothing to hit (no Python worker, no executor, the job ended)."""


@dataclass
class Setting:
    """What the faults act on, besides the job's processes."""

    rng: random.Random
    cluster: Path  # the standalone workers' folder: their executors run under it
    raster: Path | None = None  # the input on local disk, which can be made unreadable
    disk: Path | None = None  # a small file system of its own holding the outputs
    gate: TcpGate | None = None  # in front of the S3 server, which it can cut off


@dataclass
class Attempt:
    """One start of the job's command: its process, its log and what was done to it."""

    process: subprocess.Popen
    log: Path
    killed: bool = False  # its driver was killed: the command must run again

    def running(self) -> bool:
        return self.process.poll() is None


def executors(cluster: Path) -> list[int]:
    """The executor JVMs the cluster's workers run now (their folders are under `cluster`)."""
    found = []
    for pid, (_, cmd) in processes().items():
        if "CoarseGrainedExecutorBackend" not in cmd:
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue  # gone meanwhile
        if cwd.is_relative_to(cluster):
            found.append(pid)
    return sorted(found)


def kill_python_worker(attempt: Attempt, setting: Setting) -> dict:
    """SIGKILL one Python worker of one executor: its task fails and Spark retries it."""
    deadline = time.monotonic() + 30  # time for a lost executor's successor to start some
    while attempt.running() and time.monotonic() < deadline:
        workers = [w for pid in executors(setting.cluster) for w in python_workers(pid)]
        if workers:
            victim = setting.rng.choice(sorted(workers))
            os.kill(victim, signal.SIGKILL)
            return {"pid": victim, "of": len(workers)}
        time.sleep(0.1)
    raise NoTarget("no Python worker")


def kill_executor_jvm(attempt: Attempt, setting: Setting) -> dict:
    """SIGKILL one executor JVM: its tasks run again elsewhere, the worker starts another."""
    deadline = time.monotonic() + 30
    while attempt.running() and time.monotonic() < deadline:
        found = executors(setting.cluster)
        if found:
            victim = setting.rng.choice(found)
            os.kill(victim, signal.SIGKILL)
            return {"pid": victim, "of": len(found)}
        time.sleep(0.1)
    raise NoTarget("no executor")


def kill_driver(attempt: Attempt, setting: Setting) -> dict:
    """SIGKILL the job's whole process tree; the soak then starts the same command again."""
    if not attempt.running():
        raise NoTarget("the job ended")
    tree = 1 + len(descendants(attempt.process.pid))
    kill_whole(attempt.process)
    attempt.killed = True
    return {"processes": tree}


def cut_s3(attempt: Attempt, setting: Setting) -> dict:
    """The S3 server unreachable for 2 to 6 s: connections refused, those open reset."""
    seconds = round(setting.rng.uniform(2, 6), 2)
    setting.gate.close()
    time.sleep(seconds)
    setting.gate.open()
    return {"seconds": seconds}


def fill_disk(attempt: Attempt, setting: Setting) -> dict:
    """The outputs' file system full for 1 to 4 s: a hidden file takes every free byte."""
    seconds = round(setting.rng.uniform(1, 4), 2)
    filler = setting.disk / ".filler"
    written = 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for block in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):  # down to the last byte
            try:
                while True:
                    written += os.write(fd, block)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    time.sleep(seconds)
    filler.unlink()
    return {"seconds": seconds, "filled_mib": round(written / 2**20, 1)}


def hide_input(attempt: Attempt, setting: Setting) -> dict:
    """The input gone from its path for 1 to 4 s (renamed and back: its size and modification
    time stay, so it is the same file to a re-run)."""
    seconds = round(setting.rng.uniform(1, 4), 2)
    hidden = setting.raster.with_name(f".{setting.raster.name}.away")
    setting.raster.rename(hidden)
    time.sleep(seconds)
    hidden.rename(setting.raster)
    return {"seconds": seconds}


# Fault kinds, what injects them, and what of the setting each needs. An injector gets the
# running attempt and the setting, returns what it hit, raises NoTarget if nothing was there to
# hit, and sets `attempt.killed` if the command must be started again.
FAULTS: dict[str, Callable[[Attempt, Setting], dict]] = {
    "python_worker": kill_python_worker,
    "executor_jvm": kill_executor_jvm,
    "driver": kill_driver,
    "s3_outage": cut_s3,
    "full_disk": fill_disk,
    "unreadable_input": hide_input,
}
NEEDS = {"s3_outage": "gate", "full_disk": "disk", "unreadable_input": "raster"}


def available(setting: Setting) -> list[str]:
    """The fault kinds this setting allows."""
    return [kind for kind in FAULTS if getattr(setting, NEEDS.get(kind, "cluster")) is not None]


def stop_all(attempt: Attempt | None, setting: Setting) -> None:
    """The soak interrupted: the job and any stray executor killed, the levers released."""
    if attempt is not None and attempt.running():
        kill_whole(attempt.process)
    for pid in executors(setting.cluster):
        os.kill(pid, signal.SIGKILL)
    if setting.gate is not None:
        setting.gate.close()
