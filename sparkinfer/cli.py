"""The command line's run: the config its flags make (`flags`), the run on a session, and
its printed summary.

`python -m sparkinfer` and `jobs/infer_tiles.py` (what spark-submit.sh submits) run `main`.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

from sparkinfer import s3
from sparkinfer.errors import JobFailed, UserError
from sparkinfer.estimate import ESTIMATE_FILE
from sparkinfer.flags import config_from_args
from sparkinfer.job import RUN_REPORT, inspected, run_job
from sparkinfer.prepare import Checked, check_job, plan_job
from sparkinfer.report import RunOutcome
from sparkinfer.session import is_connect, web_ui
from sparkinfer.stages.estimate import run_estimate
from sparkinfer.tiling import halo_notes

# Exit codes: 0 every output written; 1 a Spark job failed (one line; a rerun resumes); 2 a user
# error before any output (one line, nothing written); 3 some rasters failed (listed, also in
# _run.json) and the others were written.
EXIT_SOME_FAILED = 3


def print_summary(outcome: RunOutcome, stream=None, errors=None) -> None:
    """What was written, kept and where, on `stream` (stdout); then one line per failed raster
    on `errors` (stderr). Both default to the streams of the moment of the call."""
    stream, errors = stream or sys.stdout, errors or sys.stderr
    written, tiles = outcome.written, outcome.tiles
    grid = outcome.job.config.grid is not None
    print(
        f"sparkinfer: {len(written)} {'grid tile' if grid else 'raster'}(s) written, "
        f"{len(outcome.complete)} already complete, {len(outcome.failed)} failed; "
        f"{tiles['inferred']} tiles inferred, {tiles['skipped']} all-nodata tiles skipped, in "
        f"{outcome.timings['total_s']:.1f} s",
        file=stream,
    )
    if grid:  # a map of many tiles: its own files, not each tile's
        for output in outcome.map_files:
            print(f"  map -> {output}", file=stream)
    else:
        for raster in [*written, *outcome.complete]:
            for output in raster.outputs:
                print(f"  {raster.info.path} -> {output}", file=stream)
    print(f"  run report: {outcome.job.config.output}/{RUN_REPORT}", file=stream)
    for failure in outcome.failed:
        print(f"sparkinfer: failed ({failure.stage}): {failure.error}", file=errors)


def print_estimate(estimate: dict, stream=None) -> None:
    """The estimate's main figures on `stream` (stdout), and where the whole of it is."""
    stream = stream or sys.stdout
    plan, sample, data = estimate["plan"], estimate["sample"], estimate["bytes"]
    here = estimate["predicted"]["this_cluster"]
    print(
        f"sparkinfer: estimate from {sample['chunks']} of {plan['chunks']} chunks: "
        f"{plan['tiles']} tiles (halo share {plan['halo_share']:.1%}), "
        f"{data['read_decoded'] / 1e6:.3g} MB to read (halo included), "
        f"{data['write_outputs'] / 1e6:.3g} MB to write",
        file=stream,
    )
    slots = ", ".join(
        f"{n} slots {p['wall_s']:.0f} s" for n, p in estimate["predicted"]["by_slots"].items()
    )
    print(
        f"  {estimate['rate']['mpx_per_s_per_slot']:.3f} Mpx/s per task slot; predicted wall "
        f"time {here['wall_s']:.1f} s on this cluster ({here['slots']} slots); {slots}",
        file=stream,
    )
    per_km2 = estimate["core_hours_per_1000_km2"]
    if per_km2 is not None:
        print(f"  {per_km2:.4g} core-hours per 1,000 km2", file=stream)
    print(f"  estimate: {estimate['config']['output']}/{ESTIMATE_FILE}", file=stream)


class _TaggedLines(io.TextIOBase):
    """A stream whose every line starts with `tag`.

    spark-submit merges the Python driver's stderr into its stdout; spark-submit.sh asks for
    the tag (SPARKINFER_STDERR_TAG) and sends tagged lines back to stderr, so that errors,
    progress and notes stay on stderr and stdout holds only the summary."""

    def __init__(self, stream, tag: str) -> None:
        self.stream, self.tag, self.line_start = stream, tag, True

    def write(self, text: str) -> int:
        pieces = []
        for piece in text.splitlines(keepends=True):
            pieces.append(self.tag + piece if self.line_start else piece)
            self.line_start = piece.endswith("\n")
        self.stream.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv: list[str], spark=None, defaults_file: str | Path | None = None) -> int:
    """Run the job for the command line `argv` (over the options of `defaults_file`); its exit
    code. With `spark`, on that session (left running); else on a session of its own, classic
    or Spark Connect (SPARK_REMOTE)."""
    started = time.perf_counter()  # what an estimate predicts is measured from here
    tag = os.environ.get("SPARKINFER_STDERR_TAG")
    if tag:
        sys.stderr = _TaggedLines(sys.stderr, tag)
    try:
        checked = check_job(config_from_args(argv, defaults_file=defaults_file))
    except UserError as exc:  # found before Spark starts: one line, nothing written
        print(f"sparkinfer: error: {exc}", file=sys.stderr)
        return exc.exit_code

    own = spark is None
    if own:
        spark = _session(checked.config.speculation)
        ui = web_ui(spark)
        print(
            f"sparkinfer: Spark UI at {ui}"
            if ui
            else f"sparkinfer: Spark Connect at {os.environ.get('SPARK_REMOTE')}",
            file=sys.stderr,
        )
    elif checked.config.speculation:
        print(
            "sparkinfer: --speculation applies to sessions the job starts; this session "
            "keeps its spark.speculation",
            file=sys.stderr,
        )
    try:
        outcome = run_checked(checked, spark, started)
    except (UserError, JobFailed) as exc:  # a model or inputs the job cannot use, the folder
        outcome = exc  # taken meanwhile, a Spark job that failed: said after Spark stops
    except KeyboardInterrupt:
        if is_connect(spark):  # else the server would run the query on
            spark.interruptAll()
        outcome = JobFailed("interrupted; the same command resumes")
    finally:
        if own:
            spark.stop()
    if isinstance(outcome, UserError | JobFailed):
        print(f"sparkinfer: error: {outcome}", file=sys.stderr)
        return outcome.exit_code
    if checked.config.estimate:
        print_estimate(outcome)
        return 0
    print_summary(outcome, errors=sys.stderr)
    return EXIT_SOME_FAILED if outcome.failed else 0


def run_checked(
    checked: Checked, spark, started: float | None = None, notes=None
) -> RunOutcome | dict:
    """The run (or with `--estimate`, the estimate) of a checked command line on `spark`: the
    Python workers start, load the model and inspect it (the driver never starts a framework,
    and the stage finds the model loaded), the run is planned, what the user should know of
    its tiling goes to `notes` (stderr), and it runs. What `main` and the notebook share."""
    job = plan_job(checked, inspected(checked, spark))
    for note in halo_notes(job.model, job.tiling, job.config):
        print(f"sparkinfer: {note}", file=notes or sys.stderr)
    if job.config.estimate:
        return run_estimate(spark, job, started)
    return run_job(spark, job, started)


def _session(speculation: bool):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("sparkinfer")
    if os.environ.get("SPARK_REMOTE"):  # a Connect client: the server's cluster is set up
        if speculation:
            print(
                "sparkinfer: --speculation applies to sessions the job starts; set "
                "spark.speculation on the Spark Connect server",
                file=sys.stderr,
            )
        return builder.getOrCreate()
    if speculation:  # read when the scheduler starts: a running session keeps its own
        builder = builder.config("spark.speculation", "true")
    # Executors on other hosts reach s3:// inputs and outputs with the driver's AWS settings;
    # set here, not on the command line, so secrets stay out of `ps` (the UI redacts them).
    for key, value in s3.executor_environment().items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    return builder.getOrCreate()
