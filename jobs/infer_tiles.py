"""spark-submit entry point: parse options, check inputs, build the session, run the job.

    ./spark-submit.sh --input data/L7_ETMs.tif --model data/sample_model.keras --output out/x
"""

import io
import os
import sys
from pathlib import Path

from sparkinfer import storage
from sparkinfer.cli import config_from_args, print_summary
from sparkinfer.errors import JobFailed, UserError
from sparkinfer.job import check_job, halo_notes, plan_job, run_job
from sparkinfer.session import is_connect, web_ui

# Exit codes: 0 every output written; 1 a Spark job failed (one line; a rerun resumes); 2 a user
# error before any output (one line, nothing written); 3 some rasters failed (listed, also in
# _run.json) and the others were written.
EXIT_SOME_FAILED = 3

# Absent where only this script travels (cluster deploy mode): the built-in defaults are the same.
DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


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


def main(argv: list[str], spark=None) -> int:
    """Run the job for the command line `argv`; its exit code. With `spark`, on that session
    (left running); else on a session of its own, classic or Spark Connect (SPARK_REMOTE)."""
    tag = os.environ.get("SPARKINFER_STDERR_TAG")
    if tag:
        sys.stderr = _TaggedLines(sys.stderr, tag)
    try:
        defaults = DEFAULTS if DEFAULTS.is_file() else None
        checked = check_job(config_from_args(argv, defaults_file=defaults))
    except UserError as exc:  # found before Spark starts: one line, nothing written
        print(f"sparkinfer: error: {exc}", file=sys.stderr)
        return exc.exit_code

    own = spark is None
    if own:
        spark = _session()
        ui = web_ui(spark)
        print(f"sparkinfer: Spark UI at {ui}" if ui else "sparkinfer: Spark Connect at "
              f"{os.environ.get('SPARK_REMOTE')}", file=sys.stderr)  # fmt: skip
    try:
        outcome = _run(checked, spark)
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
    print_summary(outcome, errors=sys.stderr)
    return EXIT_SOME_FAILED if outcome["failed"] else 0


def _run(checked, spark) -> dict:
    # The Python workers start, load the model and inspect it: the driver never starts a
    # framework, and the stage finds the model loaded.
    job = plan_job(checked, spark)
    for note in halo_notes(job):
        print(f"sparkinfer: {note}", file=sys.stderr)
    return run_job(spark, job)


def _session():
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("sparkinfer")
    if os.environ.get("SPARK_REMOTE"):  # a Connect client: the server's cluster is set up
        return builder.getOrCreate()
    # Executors on other hosts reach s3:// inputs and outputs with the driver's AWS settings;
    # set here, not on the command line, so secrets stay out of `ps` (the UI redacts them).
    for key, value in storage.executor_environment().items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    return builder.getOrCreate()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
