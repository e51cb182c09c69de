"""The sha256 of every output of one U-Net run over a mirrored copy of the NC scene: run it on
two versions of the code and compare, to show a change kept the outputs' bytes.

    .venv/bin/python -m benchmarks.same_bytes --work out/same-bytes --result after.json

The raster and the model (random weights from a fixed seed) are made in `--work` once and
reused; each call runs the job afresh (`--overwrite`) with `--scores --polygons`, in-process on
`local[2]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model

ROOT = Path(__file__).resolve().parent.parent


def digest(name: str, data: bytes) -> str:
    """sha256 of one output's bytes; of a STAC Item, without its `datetime`, which is when the
    predictions were made."""
    if name.endswith(".stac.json"):
        item = json.loads(data)
        del item["properties"]["datetime"]
        data = json.dumps(item, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """`digest` of each file of the run's outputs (not its report, whose timings differ, nor a
    hidden temporary file)."""
    return {
        path.name: digest(path.name, path.read_bytes())
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(("_", "."))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--result", type=Path, required=True, help="where the digests go")
    args = parser.parse_args()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    from sparkinfer.cli import main as run

    raster = make_large_raster(args.work / f"nc_{args.size}.tif", args.size)
    model = save_model("unet", args.work / "models")
    output = args.work / "out"
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
    spark = spark.getOrCreate()
    argv = [
        *("--input", str(raster), "--model", str(model), "--output", str(output)),
        *("--tile-size", str(args.tile_size), "--scores", "--polygons", "--overwrite"),
        *("--progress", "0"),
    ]
    code = run(argv, spark, defaults_file=ROOT / "conf" / "default.yaml")
    spark.stop()
    if code:
        sys.exit(code)
    args.result.write_text(json.dumps(digests(output), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
