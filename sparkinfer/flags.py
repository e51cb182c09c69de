"""The command line's flags: their parser (how each reads its value: `flag_parsing`) and the
`JobConfig` they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from sparkinfer.config import JobConfig, Resampling
from sparkinfer.config_sources import load_config
from sparkinfer.flag_parsing import (
    Parser,
    UnlessGiven,
    floats,
    int_or_auto,
    ints,
    joined_bounds,
    names,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparkinfer",
        description="Seam-free tiled inference of a Keras/TensorFlow model over georeferenced "
        "rasters with Spark; writes one Cloud-Optimized GeoTIFF per input.",
    )
    add = parser.add_argument
    add("--config", metavar="YAML", help="YAML file of options (flags override it)")
    add(
        "--rerun",
        metavar="ITEM",
        help="make again the map an output STAC Item describes: its inputs, model and options "
        "(flags override them; give --output)",
    )
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
        "--model-item",
        metavar="JSON",
        help="a STAC Item (MLM extension) describing the model: its file, bands, scaling, "
        "input size and classes (instead of --model)",
    )
    add(
        "--backend",
        choices=["tensorflow", "jax"],
        help="Keras backend of a .keras model (default: KERAS_BACKEND or tensorflow)",
    )
    add("--precision", choices=["float32", "bfloat16"], help="compute precision, .keras models")
    add("--output", metavar="DIR", help="output folder, local or s3://bucket/prefix")
    add("--tile-size", type=int, metavar="PIXELS", help="core tile side (default 512)")
    add(
        "--halo",
        type=int_or_auto,
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
        type=int_or_auto,
        metavar="PIXELS|auto",
        help="with --merge blend: overlap of neighbouring windows (default auto: a fifth of "
        "the window)",
    )
    add("--chip-size", type=int, metavar="PIXELS", help="a chip classifier of any size: its side")
    add(
        "--chip-stride",
        type=int,
        metavar="PIXELS",
        help="for a chip classifier: pixels between chips (default the chip size)",
    )
    add("--bands", type=ints, metavar="B1,B2,..", help="1-based bands fed to the model")
    add(
        "--assets",
        type=names,
        metavar="A1,A2,..",
        help="for STAC Item inputs: the assets stacked as the model's bands, in order, by "
        "asset key or band common name",
    )
    add(
        "--resampling",
        choices=get_args(Resampling),
        help="how STAC Item assets of another resolution than the first are resampled to its "
        "grid, and with --grid how inputs are warped onto the map (default bilinear)",
    )
    add(
        "--scale",
        dest="normalization.scale",
        type=float,
        help="normalisation: pixels * scale + offset",
    )
    add("--offset", dest="normalization.offset", type=float, help="normalisation: after --scale")
    add(
        "--mean",
        dest="normalization.mean",
        type=floats,
        metavar="M1,M2,..",
        help="normalisation: per-band mean",
    )
    add(
        "--std",
        dest="normalization.std",
        type=floats,
        metavar="S1,S2,..",
        help="normalisation: per-band std",
    )
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
        type=int_or_auto,
        metavar="N|auto",
        help="tiles per model call (default auto: from the device, see docs/performance.md)",
    )
    add(
        "--readers",
        type=int_or_auto,
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
    add("--confidence", action=UnlessGiven, const=True, help="also write NAME.confidence.tif")
    add(
        "--confidence-measure",
        dest="confidence",
        choices=get_args(get_args(JobConfig.model_fields["confidence"].annotation)[0]),
        help="how sure the model is of each pixel (implies --confidence): maxprob (default), "
        "the top probability; margin, the top minus the second; entropy, 1 - normalised entropy",
    )
    add("--uncertain", type=int, metavar="K", help="also write the K least sure chips to label")
    add("--uncertain-size", type=int, metavar="N", help="their side in pixels (default 256)")
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
        type=int_or_auto,
        metavar="N|auto",
        help="a Spark task reads, infers and writes chunks of N x N tiles (default auto: "
        "about 2048 pixels)",
    )
    add(
        "--cog-compression",
        dest="cog.compression",
        choices=["deflate", "zstd", "lzw", "none"],
        help="compression of the output COGs",
    )
    add("--cog-blocksize", dest="cog.blocksize", type=int, metavar="PIXELS", help="COG tile side")
    add(
        "--grid",
        dest="grid.crs",
        metavar="CRS",
        help="make one map over the inputs on a grid of this CRS (EPSG:n or WKT), instead of "
        "one output per input (see --format); needs --resolution",
    )
    add(
        "--resolution",
        dest="grid.resolution",
        type=float,
        metavar="R",
        help="with --grid: pixel side in the CRS's units",
    )
    add(
        "--bounds",
        dest="grid.bounds",
        type=floats,
        metavar="MINX,MINY,MAXX,MAXY",
        help="with --grid: the map's extent in its CRS (default: the inputs' footprints)",
    )
    add(
        "--grid-tile",
        dest="grid.tile_size",
        type=int,
        metavar="PIXELS",
        help="with --grid: side of a grid tile, one COG each (default 4096)",
    )
    add(
        "--mosaic",
        dest="grid.mosaic",
        choices=["first", "newest"],
        help="with --grid: where inputs overlap, each pixel from the first valid input in "
        "input order (first, default) or the newest (a STAC Item's datetime, else the file's time)",
    )
    add(
        "--format",
        dest="grid.format",
        choices=["cog", "zarr"],
        help="with --grid: a COG per grid tile and map.vrt (cog, default), or one Zarr v3 "
        "store map.zarr (zarr)",
    )
    add(
        "--force",
        dest="grid.force",
        action="store_true",
        default=None,
        help="with --grid: make a map of more than 10^12 pixels",
    )
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
        dest="progress_seconds",
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
        type=ints,
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


def config_from_args(argv: list[str], defaults_file: str | Path | None = None) -> JobConfig:
    """Parse flags and merge them over the defaults file and the --config file. Each flag's
    destination is the `JobConfig` field it sets (`section.field` inside `normalization` or
    `cog`); a flag left out sets nothing."""
    args = vars(build_parser().parse_args(joined_bounds(argv)))
    config_file, rerun = args.pop("config"), args.pop("rerun")
    overrides: dict[str, Any] = {}
    for key, value in args.items():
        if value is not None:
            section, _, name = key.rpartition(".")
            (overrides.setdefault(section, {}) if section else overrides)[name] = value
    return load_config(overrides, config_file, defaults_file, rerun)
