# Databricks notebook source
# MAGIC %md
# MAGIC # sparkinfer: seam-free inference over georeferenced rasters
# MAGIC
# MAGIC Runs a model over every input raster with this notebook's Spark session and writes one
# MAGIC Cloud-Optimized GeoTIFF per input, with its CRS, transform and nodata. The session may be
# MAGIC classic (a single-user cluster) or Spark Connect (shared-access and serverless compute):
# MAGIC the job uses no SparkContext.
# MAGIC
# MAGIC * Install the package on the cluster first (see docs/deploy.md, "Databricks"): the wheel
# MAGIC   as a cluster library, or `%pip install` of the wheel from a volume.
# MAGIC * One widget per option of `jobs/infer_tiles.py --help`; an empty widget leaves its option
# MAGIC   at its default, a switch (`scores`, `softmax`, ...) is on when set to `true`.
# MAGIC * Paths are read by GDAL on the executors: Unity Catalog volumes (`/Volumes/...` or
# MAGIC   `dbfs:/Volumes/...`), `/dbfs/...` or `s3://`.
# MAGIC
# MAGIC Without `dbutils` (run outside Databricks) the widgets' defaults are used: the sample
# MAGIC scene and model of the repository, written to its `out/notebook` folder.

# COMMAND ----------

import os
import sys
from pathlib import Path

from sparkinfer.widgets import argv_of_widgets, widgets

# In a Databricks Git folder a notebook runs in its own folder; elsewhere, beside this file.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
REPO = HERE.parent
DEFAULTS = {
    "input": str(REPO / "data" / "nc_landsat7_2000.tif"),
    "model": str(REPO / "data" / "landcover.keras"),
    "output": str(REPO / "out" / "notebook"),
    "tile-size": "128",
}

try:
    panel = dbutils.widgets  # noqa: F821 -- defined by Databricks
except NameError:
    panel = None
if panel is not None:
    for option in widgets():
        default = DEFAULTS.get(option.name, "")
        if option.choices:
            panel.dropdown(option.name, default, list(option.choices))
        else:
            panel.text(option.name, default)
values = {o.name: panel.get(o.name) for o in widgets()} if panel is not None else DEFAULTS

# COMMAND ----------

from sparkinfer.cli import print_estimate, print_summary, run_checked  # noqa: E402
from sparkinfer.errors import SparkInferError  # noqa: E402
from sparkinfer.flags import config_from_args  # noqa: E402
from sparkinfer.prepare import check_job  # noqa: E402

if "spark" not in globals():  # Databricks defines it; a plain Python run makes one
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("sparkinfer")
    if not os.environ.get("SPARK_REMOTE"):  # else a Spark Connect client of that server
        builder = builder.master("local[*,4]")
    spark = builder.getOrCreate()

try:  # what the command line runs (`cli.run_checked`), on the notebook's session
    config = config_from_args(argv_of_widgets(values))
    outcome = run_checked(check_job(config), spark, notes=sys.stdout)
except SparkInferError as exc:  # one line, as the command line gives it
    raise SystemExit(f"sparkinfer: error: {exc}") from None

# COMMAND ----------

if config.estimate:  # _estimate.json, and no outputs
    print_estimate(outcome, stream=sys.stdout)
else:
    print_summary(outcome, stream=sys.stdout, errors=sys.stdout)
    written = [(r.info.path, r.classes_path) for r in [*outcome.written, *outcome.complete]]
