"""Command-line parsing and the printed summary of `jobs/infer_tiles.py`."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkinfer.config import JobConfig, load_config
from sparkinfer.errors import ConfigError


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
        prog="infer_tiles.py",
        description="Seam-free tiled inference of a Keras/TensorFlow model over georeferenced "
        "rasters with Spark; writes one Cloud-Optimized GeoTIFF per input.",
    )
    add = parser.add_argument
    add("--config", metavar="YAML", help="YAML file of options (flags override it)")
    add("--input", nargs="+", action="extend", metavar="PATH",
        help="raster files, folders or glob patterns (quote globs), local or s3://")  # fmt: skip
    add("--model", metavar="MODEL",
        help="a .keras file, a TensorFlow SavedModel folder or an .onnx file")  # fmt: skip
    add("--backend", choices=["tensorflow", "jax"],
        help="Keras backend of a .keras model (default: KERAS_BACKEND or tensorflow)")  # fmt: skip
    add("--precision", choices=["float32", "bfloat16"],
        help="compute precision of a .keras model (default float32)")  # fmt: skip
    add("--output", metavar="DIR", help="output folder, local or s3://bucket/prefix")
    add("--tile-size", type=int, metavar="PIXELS", help="core tile side (default 512)")
    add("--halo", type=_int_or_auto, metavar="PIXELS|auto",
        help="context around each tile; auto: from the model's receptive field")  # fmt: skip
    add("--merge", choices=["crop", "blend"],
        help="crop: keep each window's core (default; exact for local models); blend: "
             "average overlapping windows (for models with global context)")  # fmt: skip
    add("--overlap", type=_int_or_auto, metavar="PIXELS|auto",
        help="with --merge blend: overlap of neighbouring windows (default auto: a fifth of "
             "the window)")  # fmt: skip
    add("--bands", type=_ints, metavar="B1,B2,..", help="1-based bands fed to the model")
    add("--scale", type=float, help="normalisation: pixels * scale + offset")
    add("--offset", type=float, help="normalisation: added after --scale")
    add("--mean", type=_floats, metavar="M1,M2,..", help="normalisation: per-band mean")
    add("--std", type=_floats, metavar="S1,S2,..", help="normalisation: per-band std")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument("--softmax", dest="activation", action="store_const", const="softmax",
                         help="the model outputs logits: softmax them into probabilities")
    outputs.add_argument("--sigmoid", dest="activation", action="store_const", const="sigmoid",
                         help="the model outputs logits: sigmoid them into probabilities")
    add("--batch-size", type=_int_or_auto, metavar="N|auto",
        help="tiles per model call (default auto: from the device, see the README)")  # fmt: skip
    add("--readers", type=_int_or_auto, metavar="N|auto",
        help="reader threads per task (default auto: one per core of the task)")  # fmt: skip
    add("--scores", action="store_true", default=None, help="also write per-class scores")
    add("--verify", action="store_true", default=None,
        help="infer a sample window of each raster whole; its agreement with the tiles goes "
             "in _run.json")  # fmt: skip
    add("--quicklook", action="store_true", default=None,
        help="also write NAME.png, the class map with a legend")  # fmt: skip
    add("--chunk-tiles", type=_int_or_auto, metavar="N|auto",
        help="a Spark task reads, infers and writes chunks of N x N tiles (default auto: "
             "about 2048 pixels)")  # fmt: skip
    add("--cog-compression", choices=["deflate", "zstd", "lzw", "none"],
        help="compression of the output COGs")  # fmt: skip
    add("--cog-blocksize", type=int, metavar="PIXELS", help="COG tile side (default 512)")
    add("--fail-fast", action="store_true", default=None,
        help="stop at the first failing raster instead of writing the others")  # fmt: skip
    add("--overwrite", action="store_true", default=None,
        help="redo every raster; by default complete outputs are skipped and unfinished "
             "ones resume")  # fmt: skip
    add("--progress", type=float, metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 10; "
             "0: none)")  # fmt: skip
    add("--verbose", action="store_true",
        help="show the JVM's start-up notices too (spark-submit.sh)")  # fmt: skip
    add("--trust-model", action="store_true", default=None,
        help="run code held in the model file (Lambda layers); only for files you "
             "trust")  # fmt: skip
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
        "bands": args.bands,
        "activation": args.activation,
        "batch_size": args.batch_size,
        "readers": args.readers,
        "scores": args.scores,
        "quicklook": args.quicklook,
        "verify": args.verify,
        "chunk_tiles": args.chunk_tiles,
        "fail_fast": args.fail_fast,
        "overwrite": args.overwrite,
        "trust_model": args.trust_model,
        "progress_seconds": args.progress,
    }
    norm = {"scale": args.scale, "offset": args.offset, "mean": args.mean, "std": args.std}
    if any(v is not None for v in norm.values()):
        overrides["normalization"] = {k: v for k, v in norm.items() if v is not None}
    cog = {"compression": args.cog_compression, "blocksize": args.cog_blocksize}
    if any(v is not None for v in cog.values()):
        overrides["cog"] = {k: v for k, v in cog.items() if v is not None}
    return load_config(overrides, config_file=args.config, defaults_file=defaults_file)


def print_summary(report: dict, stream=sys.stdout, errors=sys.stderr) -> None:
    """What was written, kept and where; then one line per failed raster on `errors`."""
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
