"""A soak of random faults: runs of the job on a standalone cluster, each hit by faults at random
times, and after each run the checks that make exactly-once outputs (issue 27, its first step:
local disk).

    .venv/bin/python -m benchmarks.chaos [--seed 27] [--faults 30] [--runs 8] [--side 32]
                                         [--budget-s SECONDS]

A standalone cluster of 2 workers of 1 core each, on 127.0.0.1 and 127.0.0.2 (tests/servers.py),
runs the job as users run it (spark-submit.sh) over a raster of `--side` x `--side` tiles of 64
pixels, one tile per chunk (1,024 chunks at the default side), with the fault tests' slow model
(tests/builders.py `fault_model`). A clean run first gives the outputs every other run must
match, and the rate at which chunks are committed.

Then `--runs` runs, each into a fresh output folder, share `--faults` faults of the kinds in
FAULTS (balanced over the kinds, shuffled with `--seed`). In each run the faults land at random
times while chunks are being committed, spread over the time the run has left:

- `python_worker`: SIGKILL one of the executors' Python workers (Spark retries its task);
- `executor_jvm`: SIGKILL one executor JVM (the standalone worker starts another);
- `driver`: SIGKILL the job's whole process tree (spark-submit.sh, the driver JVM and Python
  driver), then start the same command again at once.

A run that ends with another exit than 0 without being killed is started again too, and counted
as a re-run. Once it exits 0, the checks: every output (COG, tile index, STAC Item without its
`datetime`) byte-identical to the clean run's and no other; no hidden temporary file
(`.NAME.*.tmp`) and no `_staging` left; the lock gone; `_run.json` accounting for every chunk
exactly once (chunks resumed from an earlier attempt plus the chunks this attempt's tasks
reported equal the plan, and each of those was inferred, skipped as nodata or kept on a retry).
A failed check is recorded, not raised: it is what the soak is for. With `--budget-s`, no run
starts once the soak has lasted that long.

Faults land at times drawn from `--seed`, but what they hit depends on timing: a seed repeats
the kinds and their order, not the runs. Writes benchmarks/results/DATE-HOST-chaos.json and
prints a table: faults by kind, runs, re-runs, outputs checked, mismatches, leftovers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The soak starts the job, finds its processes and runs a cluster as tests/test_faults.py and
# tests/test_spread.py do; those helpers live with the tests (which put their folder on
# sys.path in conftest.py), so this module does the same rather than keep a copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders import fault_model, write_raster  # noqa: E402
from processes import (  # noqa: E402
    committed_chunks,
    descendants,
    kill_whole,
    processes,
    python_workers,
    submit_command,
)
from servers import standalone_cluster  # noqa: E402

from benchmarks.run import envelope, write_result  # noqa: E402
from benchmarks.same_bytes import digests  # noqa: E402
from sparkinfer.lock import LOCK_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# As tests/conftest.py: Spark's scripts find pyspark, and executors run, with this interpreter.
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TILE = 64
# Both executors registered before the session starts (as in tests/test_spread.py), so that a
# run's first chunks are spread over the two workers from the start.
SUBMIT_ARGS = (
    "--conf spark.cores.max=2 --conf spark.scheduler.minRegisteredResourcesRatio=1.0 "
    "--conf spark.scheduler.maxRegisteredResourcesWaitingTime=120s"
)
KEPT = {"_run.json", LOCK_FILE}


class NoTarget(Exception):
    """The fault found nothing to hit (no Python worker, no executor, the job ended)."""


@dataclass
class Attempt:
    """One start of the job's command: its process, its log and what was done to it."""

    process: subprocess.Popen
    log: Path
    output: Path
    cluster: Path
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


def kill_python_worker(attempt: Attempt, rng: random.Random) -> dict:
    """SIGKILL one Python worker of one executor: its task fails and Spark retries it."""
    deadline = time.monotonic() + 30  # time for a lost executor's successor to start some
    while attempt.running() and time.monotonic() < deadline:
        workers = [w for pid in executors(attempt.cluster) for w in python_workers(pid)]
        if workers:
            victim = rng.choice(sorted(workers))
            os.kill(victim, signal.SIGKILL)
            return {"pid": victim, "of": len(workers)}
        time.sleep(0.1)
    raise NoTarget("no Python worker")


def kill_executor_jvm(attempt: Attempt, rng: random.Random) -> dict:
    """SIGKILL one executor JVM: its tasks run again elsewhere, the worker starts another."""
    deadline = time.monotonic() + 30
    while attempt.running() and time.monotonic() < deadline:
        found = executors(attempt.cluster)
        if found:
            victim = rng.choice(found)
            os.kill(victim, signal.SIGKILL)
            return {"pid": victim, "of": len(found)}
        time.sleep(0.1)
    raise NoTarget("no executor")


def kill_driver(attempt: Attempt, rng: random.Random) -> dict:
    """SIGKILL the job's whole process tree; the soak then starts the same command again."""
    if not attempt.running():
        raise NoTarget("the job ended")
    tree = 1 + len(descendants(attempt.process.pid))
    kill_whole(attempt.process)
    attempt.killed = True
    return {"processes": tree, "committed": len(committed_chunks(attempt.output))}


# Fault kinds and what injects them. Each gets the running attempt and the soak's random
# generator, returns what it hit, raises NoTarget if nothing was there to hit, and sets
# `attempt.killed` if the command must be started again. The S3 outage, the full disk and the
# unreadable input of issue 27 are to come.
FAULTS: dict[str, Callable[[Attempt, random.Random], dict]] = {
    "python_worker": kill_python_worker,
    "executor_jvm": kill_executor_jvm,
    "driver": kill_driver,
}
# Log lines that show a fault reached the job (Spark's warnings; counted per attempt).
EVIDENCE = {"lost_task": "Lost task", "lost_executor": "Lost executor"}


class Soak:
    def __init__(self, args, master: str, cluster: Path, raster: Path, model: Path) -> None:
        self.args, self.master, self.cluster = args, master, cluster
        self.raster, self.model = raster, model
        self.logs = args.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.rate = 0.0  # chunks committed per second, from the clean run
        self.expected: dict[str, str] = {}
        self.current: Attempt | None = None  # the job running now, if any

    def job_args(self, output: Path) -> list:
        return [
            "--input",
            self.raster,
            "--model",
            self.model,
            "--output",
            output,
            "--tile-size",
            TILE,
            "--chunk-tiles",
            1,
            "--batch-size",
            1,
            "--progress",
            0,
        ]

    def start(self, output: Path, log: Path) -> Attempt:
        command, env = submit_command(self.job_args(output), self.master, SUBMIT_ARGS)
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.current = Attempt(process, log, output, self.cluster)
        return self.current

    def clean(self) -> dict:
        output = self.args.work / "clean"
        shutil.rmtree(output, ignore_errors=True)
        began = time.monotonic()
        attempt = self.start(output, self.logs / "clean.log")
        rc = attempt.process.wait()
        if rc != 0:
            raise RuntimeError(f"the clean run failed (exit {rc}): see {attempt.log}")
        report = json.loads((output / "_run.json").read_text())
        self.expected = digests(output)
        planned = report["rasters"][0]["chunks"]["planned"]
        self.rate = planned / report["timings"]["tasks_s"]
        return {
            "seconds": round(time.monotonic() - began, 1),
            "chunks": planned,
            "tasks_s": report["timings"]["tasks_s"],
            "chunks_per_s": round(self.rate, 2),
            "outputs": self.expected,
        }

    def wait_for_commits(self, attempt: Attempt, more_than: int) -> bool:
        """Wait until the attempt has committed a chunk beyond `more_than`; False if it ended."""
        while attempt.running():
            if len(committed_chunks(attempt.output)) > more_than:
                return True
            time.sleep(0.05)
        return False

    def delay(self, attempt: Attempt, pending: int) -> float:
        """A random wait before the next fault: the run's remaining time, as the clean run's
        rate predicts it, shared among the faults still to come."""
        planned = self.args.side**2
        left = max(planned - len(committed_chunks(attempt.output)), 0) / self.rate
        return self.rng.uniform(0.05, 1.0) * left / (pending + 0.5)

    def run(self, index: int, kinds: list[str]) -> dict:
        """One run hit by faults of `kinds`, started again until it exits 0; then its checks."""
        output = self.args.work / f"run{index:03d}"
        shutil.rmtree(output, ignore_errors=True)
        pending = list(kinds)
        attempts, injected, missed = [], [], []
        began = time.monotonic()
        while True:
            number = len(attempts)
            log = self.logs / f"run{index:03d}-{number}.log"
            before = len(committed_chunks(output))
            attempt = self.start(output, log)
            started = time.monotonic()
            if pending and self.wait_for_commits(attempt, before):
                while pending and attempt.running():
                    wake = time.monotonic() + self.delay(attempt, len(pending))
                    while attempt.running() and time.monotonic() < wake:
                        time.sleep(0.05)
                    if not attempt.running():
                        break
                    kind = pending.pop(0)
                    at = round(time.monotonic() - started, 2)
                    try:
                        hit = FAULTS[kind](attempt, self.rng)
                    except NoTarget as why:
                        missed.append({"kind": kind, "attempt": number, "why": str(why)})
                        continue
                    injected.append({"kind": kind, "attempt": number, "at_s": at} | hit)
                    print(f"  run {index} attempt {number}: {kind} at {at} s", flush=True)
                    if attempt.killed:
                        break
            rc = attempt.process.wait()
            text = log.read_text(errors="replace")
            attempts.append(
                {
                    "exit": rc,
                    "killed": attempt.killed,
                    "seconds": round(time.monotonic() - started, 1),
                    "committed_after": len(committed_chunks(output)),
                }
                | {key: text.count(line) for key, line in EVIDENCE.items()}
                | ({} if rc == 0 or attempt.killed else {"log_tail": tail(text)})
            )
            if rc == 0:
                break
            if len(attempts) >= self.args.max_attempts:
                break
        # Faults left when the job ended before they were due.
        missed += [{"kind": kind, "why": "the run ended first"} for kind in pending]
        result = {
            "run": index,
            "seconds": round(time.monotonic() - began, 1),
            "attempts": attempts,
            "reruns": len(attempts) - 1,
            "unexpected_exits": [a["exit"] for a in attempts if a["exit"] != 0 and not a["killed"]],
            "injected": injected,
            "missed": missed,
        }
        if attempts[-1]["exit"] != 0:
            result["finished"] = False
            return result
        result |= {"finished": True} | self.check(output)
        if not result["mismatches"] and not result["leftovers"] and result["accounted"]:
            shutil.rmtree(output)  # kept for a look otherwise
        return result

    def check(self, output: Path) -> dict:
        """The outputs against the clean run's, what is left beside them, the lock, and the
        report's account of the chunks."""
        found = digests(output)
        mismatches = sorted(
            name
            for name in set(found) | set(self.expected)
            if found.get(name) != self.expected.get(name)
        )
        # Hidden files anywhere, and the job's own entries (`_staging`) but the report and the
        # lock (checked on its own).
        leftovers = sorted(
            str(p.relative_to(output))
            for p in output.rglob("*")
            if p.name.startswith(".")
            or (p.parent == output and p.name.startswith("_") and p.name not in KEPT)
        )
        checked = {
            "outputs_checked": len(found),
            "mismatches": mismatches,
            "leftovers": leftovers,
            "lock_left": (output / LOCK_FILE).exists(),
            "accounted": False,
        }
        try:
            report = json.loads((output / "_run.json").read_text())
        except (OSError, ValueError) as error:
            return checked | {"report_error": repr(error)}
        (raster,) = report["rasters"]
        chunks, tiles = raster["chunks"], raster["tiles"]
        reported = sum(e["chunks"] for e in report["executors"].values())
        # One tile per chunk: each chunk a task reported was inferred, all nodata, or found
        # committed by its failed attempt; with those resumed, every planned chunk once.
        accounted = (
            raster["status"] == "written"
            and chunks["resumed"] + reported == chunks["planned"] == self.args.side**2
            and tiles["inferred"] + tiles["skipped_nodata"] + chunks["kept_on_retry"] == reported
            and not report["failed"]
        )
        return checked | {
            "accounted": accounted,
            "chunks": chunks | {"reported": reported, "inferred": tiles["inferred"]},
        }


def tail(log: str) -> str:
    """The end of a log, kept in the result: without this machine's home folder (write_result
    takes the checkout's and the temporary folder's paths out)."""
    return log[-2000:].replace(str(Path.home()), "~")


def schedule(faults: int, runs: int, rng: random.Random) -> list[list[str]]:
    """`faults` kinds, as even over FAULTS as they divide, shuffled and dealt to `runs` runs."""
    kinds = [list(FAULTS)[i % len(FAULTS)] for i in range(faults)]
    rng.shuffle(kinds)
    share, extra = divmod(faults, runs)
    dealt, start = [], 0
    for run in range(runs):
        count = share + (run < extra)
        dealt.append(kinds[start : start + count])
        start += count
    return dealt


def summary(result: dict) -> dict:
    runs = result["runs"]
    injected = Counter(f["kind"] for r in runs for f in r["injected"])
    missed = Counter(f["kind"] for r in runs for f in r["missed"])
    finished = [r for r in runs if r["finished"]]
    return {
        "faults_planned": result["settings"]["faults"],
        "faults_injected": sum(injected.values()),
        "faults_by_kind": {k: {"injected": injected[k], "missed": missed[k]} for k in FAULTS},
        "runs_planned": result["settings"]["runs"],
        "runs": len(runs),
        "runs_finished": len(finished),
        "reruns": sum(r["reruns"] for r in runs),
        "unexpected_exits": [e for r in runs for e in r["unexpected_exits"]],
        "outputs_checked": sum(r["outputs_checked"] for r in finished),
        "mismatches": sum(len(r["mismatches"]) for r in finished),
        "leftovers": sum(len(r["leftovers"]) for r in finished),
        "locks_left": sum(r["lock_left"] for r in finished),
        "runs_not_accounted": sum(not r["accounted"] for r in finished),
        "seconds": result["seconds"],
        "soak_failed": result.get("error"),
    }


def table(totals: dict) -> str:
    lines = [
        "| fault | injected | missed (nothing to hit, or the run ended first) |",
        "|---|---|---|",
    ]
    for kind, counts in totals["faults_by_kind"].items():
        lines.append(f"| {kind} | {counts['injected']} | {counts['missed']} |")
    lines += [
        "",
        "| runs | finished | re-runs | unexpected exits | outputs checked | mismatches | "
        "leftovers | locks left | chunks not accounted | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {totals['runs']} | {totals['runs_finished']} | {totals['reruns']} | "
        f"{len(totals['unexpected_exits'])} | {totals['outputs_checked']} | "
        f"{totals['mismatches']} | {totals['leftovers']} | {totals['locks_left']} | "
        f"{totals['runs_not_accounted']} | {totals['seconds']:.0f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--faults", type=int, default=30, help="faults over the whole soak")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--side", type=int, default=32, help="raster side in 64-pixel tiles")
    parser.add_argument("--max-attempts", type=int, default=12, help="starts of one run, at most")
    parser.add_argument(
        "--budget-s", type=float, help="start no run after this many seconds of the soak"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "chaos")
    args = parser.parse_args()
    args.work = args.work.resolve()  # executors are found by their folders under it
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    side = args.side * TILE
    raster = args.work / "in" / f"scene_{args.side}.tif"
    if not raster.exists():
        raster.parent.mkdir(exist_ok=True)
        write_raster(raster, side, side, seed=27)
    model = args.work / "wide.onnx"
    if not model.exists():
        fault_model(args.work)
    cluster = args.work / "cluster"
    shutil.rmtree(cluster, ignore_errors=True)
    result = envelope(
        args,
        cluster="standalone, 2 workers of 1 core on 127.0.0.1 and 127.0.0.2",
        storage="local disk",
        tile_size=TILE,
        chunk_tiles=1,
        chunks=args.side**2,
        fault_kinds=list(FAULTS),
    )
    result["runs"] = []
    with standalone_cluster(cluster, cores=(1, 1)) as master:
        soak = Soak(args, master, cluster, raster, model)
        try:
            print("clean run", flush=True)
            result["clean"] = soak.clean()
            print(f"  {result['clean']['seconds']} s, {soak.rate:.1f} chunks/s", flush=True)
            for index, kinds in enumerate(schedule(args.faults, args.runs, soak.rng)):
                if args.budget_s and time.monotonic() - began > args.budget_s:
                    print(f"budget spent: runs {index} to {args.runs - 1} not started")
                    break
                print(f"run {index}: {', '.join(kinds) or 'no fault'}", flush=True)
                done = soak.run(index, kinds)
                result["runs"].append(done)
                print(
                    f"  {done['seconds']} s, {done['reruns']} re-runs, "
                    f"mismatches {done.get('mismatches')}, leftovers {done.get('leftovers')}, "
                    f"lock left {done.get('lock_left')}, accounted {done.get('accounted')}",
                    flush=True,
                )
        except Exception as error:  # the soak's own failure: what was done so far is kept
            result["error"] = repr(error)
            raise
        finally:
            if soak.current is not None and soak.current.running():
                kill_whole(soak.current.process)  # interrupted mid-run
            for pid in executors(cluster):  # the workers stop theirs; any stray too
                os.kill(pid, signal.SIGKILL)
            result["seconds"] = round(time.monotonic() - began, 1)
            result["totals"] = summary(result)
            result["table"] = table(result["totals"])
            write_result(result, "chaos")
            print(result["table"])


if __name__ == "__main__":
    main()
