# Databricks notebook source
# MAGIC %md
# MAGIC # sparkinfer: seam-free inference over georeferenced rasters
# MAGIC
# MAGIC Runs a Keras/TensorFlow model over every input raster with this notebook's Spark session
# MAGIC and writes one Cloud-Optimized GeoTIFF per input, with its CRS, transform and nodata.
# MAGIC
# MAGIC * Install the package on the cluster first: build the wheel (`pip wheel . -w dist`), copy
# MAGIC   it to a volume and add it as a cluster library (or `%pip install
# MAGIC   /Volumes/<catalog>/<schema>/<volume>/sparkinfer-0.1.0-py3-none-any.whl` in a cell).
# MAGIC * Paths are read by GDAL on the executors: use `/Volumes/...` (Unity Catalog) or
# MAGIC   `/dbfs/...` paths, not `dbfs:` URIs.
# MAGIC * `options` takes the flags of `jobs/infer_tiles.py --help`, such as
# MAGIC   `--tile-size 256 --scores`.
# MAGIC
# MAGIC Without `dbutils` (run outside Databricks) the widgets' defaults are used: the sample
# MAGIC scene and model of the repository, written to its `out/notebook` folder.

# COMMAND ----------

import shlex
import sys
from pathlib import Path

# In a Databricks Git folder a notebook runs in its own folder; elsewhere, beside this file.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
REPO = HERE.parent
DEFAULTS = {
    "input": str(REPO / "data" / "nc_landsat7_2000.tif"),
    "model": str(REPO / "data" / "landcover.keras"),
    "output": str(REPO / "out" / "notebook"),
    "options": "--tile-size 128",
}

try:
    widgets = dbutils.widgets  # noqa: F821 -- defined by Databricks
except NameError:
    widgets = None
if widgets is not None:
    for name, default in DEFAULTS.items():
        widgets.text(name, default)


def widget(name: str) -> str:
    return widgets.get(name) if widgets is not None else DEFAULTS[name]


# COMMAND ----------

from sparkinfer.cli import config_from_args, print_summary  # noqa: E402
from sparkinfer.errors import SparkInferError  # noqa: E402
from sparkinfer.job import prepare_job, run_job  # noqa: E402

if "spark" not in globals():  # Databricks defines it; a plain Python run makes a local one
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[*,4]").appName("sparkinfer").getOrCreate()

argv = ["--input", *shlex.split(widget("input")), "--model", widget("model"),
        "--output", widget("output"), *shlex.split(widget("options"))]  # fmt: skip
try:
    report = run_job(spark, prepare_job(config_from_args(argv), spark))
except SparkInferError as exc:  # one line, as the command line gives it
    raise SystemExit(f"sparkinfer: error: {exc}") from None

# COMMAND ----------

print_summary(report, stream=sys.stdout, errors=sys.stdout)
written = [(r["input"], r["outputs"][0]) for r in report["rasters"] if r["outputs"]]
