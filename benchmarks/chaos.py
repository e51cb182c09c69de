"""A soak of random faults: runs of the job on a standalone cluster, each hit by faults at random
times, and after each run the checks that make exactly-once outputs (issue 27).

    .venv/bin/python -m benchmarks.chaos [--storage local|s3] [--seed 27] [--faults 30]
                                         [--runs 8] [--side 32] [--budget-s SECONDS]

A standalone cluster of 2 workers of 1 core each, on 127.0.0.1 and 127.0.0.2 (tests/servers.py),
runs the job as users run it (spark-submit.sh) over a raster of `--side` x `--side` tiles of 64
pixels, one tile per chunk (1,024 chunks at the default side), with the fault tests' slow model
(tests/builders.py `fault_model`). A clean run first gives the outputs every other run must
match, and the rate at which chunks are committed.

`--storage local`: the input on local disk, the outputs on a tmpfs of `--disk-mib` mounted for
the soak (root only; elsewhere on local disk, without the full-disk fault). `--storage s3`: the
input read from and the outputs written to moto's S3 server, which the job reaches through a
TCP gate (tests/tcp_gate.py) that the outage closes.

Then `--runs` runs, each into a fresh output folder, share `--faults` faults of the kinds the
storage allows (balanced over the kinds, shuffled with `--seed`; benchmarks/chaos_faults.py). In
each run the faults land at random times while chunks are being committed, spread over the time
the run has left:

- `python_worker`: SIGKILL one of the executors' Python workers (Spark retries its task);
- `executor_jvm`: SIGKILL one executor JVM (the standalone worker starts another);
- `driver`: SIGKILL the job's whole process tree (spark-submit.sh, the driver JVM and Python
  driver), then start the same command again at once;
- `s3_outage` (s3): the S3 server unreachable for 2 to 6 s, connections refused and reset;
- `full_disk` (local, on the tmpfs): the outputs' file system full for 1 to 4 s;
- `unreadable_input` (local): the input gone from its path for 1 to 4 s.

A run that ends with another exit than 0 without being killed is started again too, and counted
as a re-run. Once it exits 0, the checks (benchmarks/chaos_outputs.py): every output (COG, tile
index, STAC Item without its `datetime`) byte-identical to the clean run's and no other; no
hidden temporary file (`.NAME.*.tmp`), no `_staging` and no unfinished multipart upload left;
the lock gone; `_run.json` accounting for every chunk exactly once (chunks resumed from an
earlier attempt plus the chunks this attempt's tasks reported equal the plan, and each of those
was inferred, skipped as nodata or kept on a retry). A failed check is recorded, not raised: it
is what the soak is for. With `--budget-s`, no run starts once the soak has lasted that long.

Faults land at times drawn from `--seed`, but what they hit depends on timing: a seed repeats
the kinds and their order, not the runs. Writes benchmarks/results/DATE-HOST-chaos-STORAGE.json
and prints a table: faults by kind, runs, re-runs, outputs checked, mismatches, leftovers.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path

# The soak starts the job and runs a cluster and an S3 server as the tests do; those helpers
# live with the tests (which put their folder on sys.path in conftest.py), so this module does
# the same rather than keep a copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders import fault_model, write_raster  # noqa: E402
from processes import submit_command  # noqa: E402
from servers import s3_client, s3_server, standalone_cluster  # noqa: E402
from tcp_gate import TcpGate  # noqa: E402

from benchmarks.chaos_faults import FAULTS, Attempt, NoTarget, Setting, available, stop_all  # noqa: E402
from benchmarks.chaos_outputs import LocalOutputs, S3Outputs, check, report  # noqa: E402
from benchmarks.run import envelope, write_result  # noqa: E402

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
# Log lines that show a fault reached the job (Spark's warnings; counted per attempt).
EVIDENCE = {"lost_task": "Lost task", "lost_executor": "Lost executor"}


class Soak:
    def __init__(self, args, master: str, place: Place, setting: Setting, model: Path) -> None:
        self.args, self.master, self.place, self.setting = args, master, place, setting
        self.outputs, self.model = place.outputs, model
        self.logs = args.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rate = 0.0  # chunks committed per second, from the clean run
        self.expected: dict[str, str] = {}
        self.current: Attempt | None = None  # the job running now, if any

    def job_args(self, output: str) -> list:
        return [
            "--input",
            self.place.raster,
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

    def start(self, output: str, log: Path) -> Attempt:
        command, env = submit_command(self.job_args(output), self.master, SUBMIT_ARGS)
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                env=env | self.place.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.current = Attempt(process, log)
        return self.current

    def clean(self) -> dict:
        output = self.outputs.location("clean")
        self.outputs.remove(output)
        began = time.monotonic()
        attempt = self.start(output, self.logs / "clean.log")
        rc = attempt.process.wait()
        if rc != 0:
            raise RuntimeError(f"the clean run failed (exit {rc}): see {attempt.log}")
        done = report(self.outputs, output)
        self.expected = self.outputs.digests(output)
        planned = done["rasters"][0]["chunks"]["planned"]
        self.rate = planned / done["timings"]["tasks_s"]
        self.outputs.remove(output)  # its digests are kept; the disk is small
        return {
            "seconds": round(time.monotonic() - began, 1),
            "chunks": planned,
            "tasks_s": done["timings"]["tasks_s"],
            "chunks_per_s": round(self.rate, 2),
            "outputs": self.expected,
        }

    def wait_for_commits(self, attempt: Attempt, output: str, more_than: int) -> bool:
        """Wait until the attempt has committed a chunk beyond `more_than`; False if it ended."""
        while attempt.running():
            if self.outputs.committed(output) > more_than:
                return True
            time.sleep(0.2)
        return False

    def delay(self, output: str, pending: int) -> float:
        """A random wait before the next fault: the run's remaining time, as the clean run's
        rate predicts it, shared among the faults still to come."""
        planned = self.args.side**2
        left = max(planned - self.outputs.committed(output), 0) / self.rate
        return self.setting.rng.uniform(0.05, 1.0) * left / (pending + 0.5)

    def run(self, index: int, kinds: list[str]) -> dict:
        """One run hit by faults of `kinds`, started again until it exits 0; then its checks."""
        output = self.outputs.location(f"run{index:03d}")
        self.outputs.remove(output)
        pending = list(kinds)
        attempts, injected, missed = [], [], []
        began = time.monotonic()
        while True:
            number = len(attempts)
            log = self.logs / f"run{index:03d}-{number}.log"
            before = self.outputs.committed(output)
            attempt = self.start(output, log)
            started = time.monotonic()
            if pending and self.wait_for_commits(attempt, output, before):
                while pending and attempt.running():
                    wake = time.monotonic() + self.delay(output, len(pending))
                    while attempt.running() and time.monotonic() < wake:
                        time.sleep(0.05)
                    if not attempt.running():
                        break
                    kind = pending.pop(0)
                    at = round(time.monotonic() - started, 2)
                    try:
                        hit = FAULTS[kind](attempt, self.setting)
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
                    "committed_after": self.outputs.committed(output),
                }
                | {key: text.count(line) for key, line in EVIDENCE.items()}
                | ({} if rc == 0 or attempt.killed else {"last_line": last_line(text)})
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
        if self.passed(result):
            self.outputs.remove(output)  # kept for a look otherwise
        return result

    @staticmethod
    def passed(result: dict) -> bool:
        return not (
            result["mismatches"]
            or result["leftovers"]
            or result["partial_uploads"]
            or result["lock_left"]
            or not result["accounted"]
        )

    def check(self, output: str) -> dict:
        """The outputs against the clean run's, what is left beside them, the lock, and the
        report's account of the chunks."""
        checked = check(self.outputs, output, self.expected) | {"accounted": False}
        try:
            done = report(self.outputs, output)
        except (OSError, ValueError) as error:
            return checked | {"report_error": repr(error)}
        (raster,) = done["rasters"]
        chunks, tiles = raster["chunks"], raster["tiles"]
        reported = sum(e["chunks"] for e in done["executors"].values())
        # One tile per chunk: each chunk a task reported was inferred, all nodata, or found
        # committed by its failed attempt; with those resumed, every planned chunk once.
        accounted = (
            raster["status"] == "written"
            and chunks["resumed"] + reported == chunks["planned"] == self.args.side**2
            and tiles["inferred"] + tiles["skipped_nodata"] + chunks["kept_on_retry"] == reported
            and not done["failed"]
        )
        return checked | {
            "accounted": accounted,
            "chunks": chunks | {"reported": reported, "inferred": tiles["inferred"]},
        }


class Place:
    """Where a soak reads its input and writes its runs, and what the job needs to reach it."""

    def __init__(self, raster: str, outputs: LocalOutputs | S3Outputs, env: dict | None = None):
        self.raster, self.outputs, self.env = raster, outputs, env or {}


@contextmanager
def tmpfs(folder: Path, mib: int):
    """A tmpfs of `mib` at `folder` for the block, or None where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(folder):  # left by an interrupted soak
        subprocess.run(["umount", "-l", str(folder)], check=False)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        print(f"no tmpfs ({mounted.stderr.strip()}): no full-disk fault", flush=True)
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def local_place(args, raster: Path, setting: Setting):
    with tmpfs(args.work / "disk", args.disk_mib) as disk:
        setting.raster, setting.disk = raster, disk
        yield Place(str(raster), LocalOutputs(disk or args.work / "out"))


@contextmanager
def s3_place(args, raster: Path, setting: Setting):
    """The input uploaded to moto's S3 server; the job's endpoint a gate in front of it."""
    with s3_server(args.work, ["scenes", "predictions"]) as env:
        client = s3_client(env)
        with client.open_output_stream(f"scenes/{raster.name}") as out:
            out.write(raster.read_bytes())
        server_port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
        setting.gate = TcpGate(server_port)
        job_env = env | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{setting.gate.port}"}
        outputs = S3Outputs("predictions", env["AWS_ENDPOINT_URL"], env)
        yield Place(f"s3://scenes/{raster.name}", outputs, job_env)


def storage_named(args, setting: Setting) -> str:
    if args.storage == "s3":
        return "moto S3 server, through a TCP gate"
    if setting.disk:
        return f"local disk, outputs on a tmpfs of {args.disk_mib} MiB"
    return "local disk"


def last_line(log: str) -> str:
    """A failed attempt's last line (the job's one line for an error), without this machine's
    home folder (write_result takes the checkout's and the temporary folder's paths out)."""
    lines = [line for line in log.splitlines() if line.strip()]
    return (lines[-1] if lines else "").replace(str(Path.home()), "~")


def schedule(kinds: list[str], faults: int, runs: int, rng: random.Random) -> list[list[str]]:
    """`faults` of `kinds`, as even over them as they divide, shuffled and dealt to `runs` runs."""
    drawn = [kinds[i % len(kinds)] for i in range(faults)]
    rng.shuffle(drawn)
    share, extra = divmod(faults, runs)
    dealt, start = [], 0
    for run in range(runs):
        count = share + (run < extra)
        dealt.append(drawn[start : start + count])
        start += count
    return dealt


def summary(result: dict) -> dict:
    runs = result["runs"]
    injected = Counter(f["kind"] for r in runs for f in r["injected"])
    missed = Counter(f["kind"] for r in runs for f in r["missed"])
    finished = [r for r in runs if r["finished"]]
    kinds = result["settings"]["fault_kinds"]
    return {
        "faults_planned": result["settings"]["faults"],
        "faults_injected": sum(injected.values()),
        "faults_by_kind": {k: {"injected": injected[k], "missed": missed[k]} for k in kinds},
        "runs_planned": result["settings"]["runs"],
        "runs": len(runs),
        "runs_finished": len(finished),
        "reruns": sum(r["reruns"] for r in runs),
        "unexpected_exits": [e for r in runs for e in r["unexpected_exits"]],
        "outputs_checked": sum(r["outputs_checked"] for r in finished),
        "mismatches": sum(len(r["mismatches"]) for r in finished),
        "leftovers": sum(len(r["leftovers"]) for r in finished),
        "partial_uploads": sum(r["partial_uploads"] for r in finished),
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
        "leftovers | partial uploads | locks left | chunks not accounted | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {totals['runs']} | {totals['runs_finished']} | {totals['reruns']} | "
        f"{len(totals['unexpected_exits'])} | {totals['outputs_checked']} | "
        f"{totals['mismatches']} | {totals['leftovers']} | {totals['partial_uploads']} | "
        f"{totals['locks_left']} | {totals['runs_not_accounted']} | {totals['seconds']:.0f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--faults", type=int, default=30, help="faults over the whole soak")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--side", type=int, default=32, help="raster side in 64-pixel tiles")
    parser.add_argument("--max-attempts", type=int, default=12, help="starts of one run, at most")
    parser.add_argument("--disk-mib", type=int, default=256, help="the local outputs' tmpfs")
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
    setting = Setting(random.Random(args.seed), cluster)
    with ExitStack() as stack:
        master = stack.enter_context(standalone_cluster(cluster, cores=(1, 1)))
        opened = s3_place if args.storage == "s3" else local_place
        place = stack.enter_context(opened(args, raster, setting))
        kinds = available(setting)
        result = envelope(
            args,
            cluster="standalone, 2 workers of 1 core on 127.0.0.1 and 127.0.0.2",
            storage=storage_named(args, setting),
            tile_size=TILE,
            chunk_tiles=1,
            chunks=args.side**2,
            fault_kinds=kinds,
        ) | {"runs": []}
        soak = Soak(args, master, place, setting, model)
        try:
            print(f"clean run ({args.storage}; faults: {', '.join(kinds)})", flush=True)
            result["clean"] = soak.clean()
            print(f"  {result['clean']['seconds']} s, {soak.rate:.1f} chunks/s", flush=True)
            for index, planned in enumerate(schedule(kinds, args.faults, args.runs, setting.rng)):
                if args.budget_s and time.monotonic() - began > args.budget_s:
                    print(f"budget spent: runs {index} to {args.runs - 1} not started")
                    break
                print(f"run {index}: {', '.join(planned) or 'no fault'}", flush=True)
                done = soak.run(index, planned)
                result["runs"].append(done)
                print(
                    f"  {done['seconds']} s, {done['reruns']} re-runs "
                    f"(exits {[a['exit'] for a in done['attempts']]}), "
                    f"mismatches {done.get('mismatches')}, leftovers {done.get('leftovers')}, "
                    f"partial uploads {done.get('partial_uploads')}, "
                    f"lock left {done.get('lock_left')}, accounted {done.get('accounted')}",
                    flush=True,
                )
        except Exception as error:  # the soak's own failure: what was done so far is kept
            result["error"] = repr(error)
            raise
        finally:
            stop_all(soak.current, setting)
            result["seconds"] = round(time.monotonic() - began, 1)
            result["totals"] = summary(result)
            result["table"] = table(result["totals"])
            write_result(result, f"chaos-{args.storage}")
            print(result["table"])


if __name__ == "__main__":
    main()
