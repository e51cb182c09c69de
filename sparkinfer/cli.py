"""The command line: its options, their notebook widgets, the run and its printed summary.

`python -m sparkinfer` and `jobs/infer_tiles.py` (what spark-submit.sh submits) run `main`.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from sparkinfer import storage
from sparkinfer.config import JobConfig, Resampling, load_config
from sparkinfer.errors import ConfigError, JobFailed, UserError
from sparkinfer.estimate import ESTIMATE_FILE
from sparkinfer.job import run_job
from sparkinfer.prepare import check_job, halo_notes, plan_job
from sparkinfer.session import is_connect, web_ui
from sparkinfer.stages.estimate import run_estimate

# Exit codes: 0 every output written; 1 a Spark job failed (one line; a rerun resumes); 2 a user
# error before any output (one line, nothing written); 3 some rasters failed (listed, also in
# _run.json) and the others were written.
EXIT_SOME_FAILED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise ConfigError(f"command line: {message} (see --help)")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        message = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        message = f"expected a whole number or 'auto', got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparkinfer",
        description="Seam-free tiled inference of a Keras/TensorFlow model over georeferenced "
        "rasters with Spark; writes one Cloud-Optimized GeoTIFF per input.",
    )
    add = parser.add_argument
    add("--config", metavar="YAML", help="YAML file of options (flags override it)")
    add(
        "--input",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="raster files, folders or glob patterns (quote globs), local or s3://",
    )
    add(
        "--model",
        nargs="+",
        action="extend",
        metavar="MODEL",
        help="a .keras file, a TensorFlow SavedModel folder or an .onnx file; several: an "
        "ensemble (the mean of their scores)",
    )
    add(
        "--backend",
        choices=["tensorflow", "jax"],
        help="Keras backend of a .keras model (default: KERAS_BACKEND or tensorflow)",
    )
    add(
        "--precision",
        choices=["float32", "bfloat16"],
        help="compute precision of a .keras model (default float32)",
    )
    add("--output", metavar="DIR", help="output folder, local or s3://bucket/prefix")
    add("--tile-size", type=int, metavar="PIXELS", help="core tile side (default 512)")
    add(
        "--halo",
        type=_int_or_auto,
        metavar="PIXELS|auto",
        help="context around each tile; auto: from the model's receptive field",
    )
    add(
        "--merge",
        choices=["crop", "blend"],
        help="crop: keep each window's core (default; exact for local models); blend: "
        "average overlapping windows (for models with global context)",
    )
    add(
        "--overlap",
        type=_int_or_auto,
        metavar="PIXELS|auto",
        help="with --merge blend: overlap of neighbouring windows (default auto: a fifth of "
        "the window)",
    )
    add(
        "--chip-size",
        type=int,
        metavar="PIXELS",
        help="for a chip classifier of any input size: the chips' side",
    )
    add(
        "--chip-stride",
        type=int,
        metavar="PIXELS",
        help="for a chip classifier: pixels between chips (default the chip size)",
    )
    add("--bands", type=_ints, metavar="B1,B2,..", help="1-based bands fed to the model")
    add(
        "--assets",
        type=_names,
        metavar="A1,A2,..",
        help="for STAC Item inputs: the assets stacked as the model's bands, in order, by "
        "asset key or band common name",
    )
    add(
        "--resampling",
        choices=get_args(Resampling),
        help="for STAC Item inputs: how assets of another resolution than the first are "
        "resampled to its grid (default bilinear)",
    )
    add("--scale", type=float, help="normalisation: pixels * scale + offset")
    add("--offset", type=float, help="normalisation: added after --scale")
    add("--mean", type=_floats, metavar="M1,M2,..", help="normalisation: per-band mean")
    add("--std", type=_floats, metavar="S1,S2,..", help="normalisation: per-band std")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument(
        "--softmax",
        dest="activation",
        action="store_const",
        const="softmax",
        help="the model outputs logits: softmax them into probabilities",
    )
    outputs.add_argument(
        "--sigmoid",
        dest="activation",
        action="store_const",
        const="sigmoid",
        help="the model outputs logits: sigmoid them into probabilities",
    )
    add(
        "--tta",
        choices=["none", "flips", "d4"],
        help="test-time augmentation: average the scores over each window's 4 flips or its 8 "
        "flips and rotations (default none)",
    )
    add(
        "--batch-size",
        type=_int_or_auto,
        metavar="N|auto",
        help="tiles per model call (default auto: from the device, see docs/performance.md)",
    )
    add(
        "--readers",
        type=_int_or_auto,
        metavar="N|auto",
        help="reader threads per task (default auto: one per core of the task)",
    )
    add(
        "--tasks-per-slot",
        type=int,
        metavar="N",
        help="inference tasks per task slot (default 4: faster executors take more)",
    )
    add(
        "--speculation",
        action="store_true",
        default=None,
        help="Spark speculation: a straggling task is copied to another executor",
    )
    add("--scores", action="store_true", default=None, help="also write per-class scores")
    add(
        "--verify",
        action="store_true",
        default=None,
        help="infer a sample window of each raster whole; its agreement with the tiles goes "
        "in _run.json",
    )
    add(
        "--quicklook",
        action="store_true",
        default=None,
        help="also write NAME.png, the class map with a legend",
    )
    add(
        "--polygons",
        action="store_true",
        default=None,
        help="also write NAME.polygons.parquet, the class map's regions as GeoParquet",
    )
    add(
        "--min-area",
        type=float,
        metavar="AREA",
        help="with --polygons: leave out regions smaller than AREA, in the CRS's units squared "
        "(default 0)",
    )
    add(
        "--chunk-tiles",
        type=_int_or_auto,
        metavar="N|auto",
        help="a Spark task reads, infers and writes chunks of N x N tiles (default auto: "
        "about 2048 pixels)",
    )
    add(
        "--cog-compression",
        choices=["deflate", "zstd", "lzw", "none"],
        help="compression of the output COGs",
    )
    add("--cog-blocksize", type=int, metavar="PIXELS", help="COG tile side (default 512)")
    add(
        "--fail-fast",
        action="store_true",
        default=None,
        help="stop at the first failing raster instead of writing the others",
    )
    add(
        "--overwrite",
        action="store_true",
        default=None,
        help="redo every raster; by default complete outputs are skipped and unfinished "
        "ones resume",
    )
    add(
        "--progress",
        type=float,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 10; 0: none)",
    )
    add(
        "--estimate",
        action="store_true",
        default=None,
        help="write no outputs: run a spread sample of the chunks and write _estimate.json "
        "(wall time here and on --estimate-slots, bytes, core-hours per 1,000 "
        "km2)",
    )
    add(
        "--estimate-sample",
        type=float,
        metavar="SHARE",
        help="with --estimate: share of the chunks to run (default 0.02; at least one per "
        "task slot)",
    )
    add(
        "--estimate-slots",
        type=_ints,
        metavar="N1,N2,..",
        help="with --estimate: task slots to predict the wall time on (default 8,64,512)",
    )
    add(
        "--verbose",
        action="store_true",
        default=None,
        help="show the start-up notices of the JVM (spark-submit.sh) and of the model's "
        "framework too",
    )
    add(
        "--trust-model",
        action="store_true",
        default=None,
        help="run code held in the model file (Lambda layers); only for files you trust",
    )
    add(
        "--cut-argmax",
        action="store_true",
        default=None,
        help="run an ONNX model that ends in an ArgMax up to it: scores instead of class "
        "indices, for --scores, --tta, ensembles and --merge blend",
    )
    return parser


@dataclass(frozen=True)
class Widget:
    """A notebook widget for one command-line option: its name (the flag without dashes), its
    choices (a dropdown; "" leaves the option out) or none (a text box)."""

    name: str
    flag: str
    choices: tuple[str, ...] | None
    many: bool  # takes several values: the text is split like a shell's


def widgets() -> list[Widget]:
    """One widget per option of the command line, in its order (not --config, --verbose)."""
    found = []
    for action in build_parser()._actions:
        flag = max(action.option_strings, key=len, default="")
        if flag in ("", "--help", "--config", "--verbose"):
            continue
        if action.nargs == 0:  # a switch: --scores, or one of --softmax/--sigmoid
            choices = ("", "true")
        else:
            choices = tuple(["", *action.choices]) if action.choices else None
        found.append(Widget(flag.removeprefix("--"), flag, choices, action.nargs == "+"))
    return found


PATH_WIDGETS = ("input", "model", "output")


def fuse_path(path: str) -> str:
    """A Databricks `dbfs:` URI as the path that GDAL and Python read on the cluster: a Unity
    Catalog volume's `dbfs:/Volumes/...` is `/Volumes/...`, the rest of DBFS is under `/dbfs`."""
    if path.startswith("dbfs:/Volumes/"):
        return path.removeprefix("dbfs:")
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path.removeprefix("dbfs:/")
    return path


def argv_of_widgets(values: dict[str, str]) -> list[str]:
    """The command line that notebook widget `values` (by `Widget.name`) stand for; empty
    values leave their option out, and paths may be `dbfs:` URIs (`fuse_path`)."""
    argv = []
    for widget in widgets():
        value = values.get(widget.name, "").strip()
        if not value:
            continue
        if widget.choices == ("", "true"):
            argv.append(widget.flag)
            continue
        words = shlex.split(value) if widget.many else [value]
        if widget.name in PATH_WIDGETS:
            words = [fuse_path(word) for word in words]
        argv += [widget.flag, *words]
    return argv


def config_from_args(argv: list[str], defaults_file: str | Path | None = None) -> JobConfig:
    """Parse flags and merge them over the defaults file and the --config file."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        "input": args.input,
        "model": args.model,
        "backend": args.backend,
        "precision": args.precision,
        "output": args.output,
        "tile_size": args.tile_size,
        "halo": args.halo,
        "merge": args.merge,
        "overlap": args.overlap,
        "chip_size": args.chip_size,
        "chip_stride": args.chip_stride,
        "bands": args.bands,
        "assets": args.assets,
        "resampling": args.resampling,
        "activation": args.activation,
        "tta": args.tta,
        "batch_size": args.batch_size,
        "readers": args.readers,
        "tasks_per_slot": args.tasks_per_slot,
        "speculation": args.speculation,
        "scores": args.scores,
        "quicklook": args.quicklook,
        "verify": args.verify,
        "polygons": args.polygons,
        "min_area": args.min_area,
        "chunk_tiles": args.chunk_tiles,
        "fail_fast": args.fail_fast,
        "overwrite": args.overwrite,
        "verbose": args.verbose,
        "trust_model": args.trust_model,
        "cut_argmax": args.cut_argmax,
        "estimate": args.estimate,
        "estimate_sample": args.estimate_sample,
        "estimate_slots": args.estimate_slots,
        "progress_seconds": args.progress,
    }
    norm = {"scale": args.scale, "offset": args.offset, "mean": args.mean, "std": args.std}
    if any(v is not None for v in norm.values()):
        overrides["normalization"] = {k: v for k, v in norm.items() if v is not None}
    cog = {"compression": args.cog_compression, "blocksize": args.cog_blocksize}
    if any(v is not None for v in cog.values()):
        overrides["cog"] = {k: v for k, v in cog.items() if v is not None}
    return load_config(overrides, config_file=args.config, defaults_file=defaults_file)


def print_summary(report: dict, stream=None, errors=None) -> None:
    """What was written, kept and where, on `stream` (stdout); then one line per failed raster
    on `errors` (stderr). Both default to the streams of the moment of the call."""
    stream, errors = stream or sys.stdout, errors or sys.stderr
    tiles = report["tiles"]
    timings = report["timings"]
    written = [r for r in report["rasters"] if r["status"] == "written"]
    kept = [r for r in report["rasters"] if r["status"] == "complete"]
    print(
        f"sparkinfer: {len(written)} raster(s) written, {len(kept)} already complete, "
        f"{len(report['failed'])} failed; {tiles['inferred']} tiles inferred, "
        f"{tiles['skipped_nodata']} all-nodata tiles skipped, in {timings['total_s']:.1f} s",
        file=stream,
    )
    for raster in report["rasters"]:
        for output in raster["outputs"]:
            print(f"  {raster['input']} -> {output}", file=stream)
    output_dir = report["config"]["output"]
    print(f"  run report: {output_dir}/_run.json", file=stream)
    for failure in report["failed"]:
        print(f"sparkinfer: failed ({failure['stage']}): {failure['error']}", file=errors)


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
        outcome = _run(checked, spark, started)
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
    return EXIT_SOME_FAILED if outcome["failed"] else 0


def _run(checked, spark, started: float) -> dict:
    # The Python workers start, load the model and inspect it: the driver never starts a
    # framework, and the stage finds the model loaded.
    job = plan_job(checked, spark)
    for note in halo_notes(job):
        print(f"sparkinfer: {note}", file=sys.stderr)
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
    for key, value in storage.executor_environment().items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    return builder.getOrCreate()
