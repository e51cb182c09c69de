"""The Databricks notebook runs top to bottom here: no dbutils, so the widgets' defaults."""

import runpy
import shutil
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "jobs" / "databricks_infer_tiles.py"


def test_the_notebook_source_runs_with_a_local_session(spark):
    source = NOTEBOOK.read_text(encoding="utf-8")
    assert source.startswith("# Databricks notebook source\n")
    assert source.count("\n# COMMAND ----------\n") == 3
    output = ROOT / "out" / "notebook"
    shutil.rmtree(output, ignore_errors=True)
    try:
        names = runpy.run_path(str(NOTEBOOK), init_globals={"spark": spark})
        sample = ROOT / "data" / "nc_landsat7_2000.tif"
        assert names["written"] == [(str(sample), str(output / "nc_landsat7_2000.tif"))]
        assert names["outcome"].job.config.tile_size == 128  # the options widget's default
        with rasterio.open(sample) as src, rasterio.open(output / "nc_landsat7_2000.tif") as out:
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
            valid = (src.read_masks() > 0).all(axis=0)
            assert (out.read_masks(1) > 0).tolist() == valid.tolist()  # classes where data is
    finally:
        shutil.rmtree(output, ignore_errors=True)


def test_the_widgets_are_the_command_line_options():
    from sparkinfer.flags import build_parser, config_from_args
    from sparkinfer.widgets import argv_of_widgets, widgets

    flags = {a.option_strings[-1] for a in build_parser()._actions if a.option_strings}
    assert {w.flag for w in widgets()} == flags - {"--help", "--config", "--verbose"}
    values = {
        "input": "dbfs:/Volumes/main/geo/scenes/a.tif '/dbfs/b c.tif'",
        "model": "/Volumes/main/geo/models/m.keras",
        "output": "dbfs:/tmp/out",
        "tile-size": "256",
        "merge": "blend",
        "scores": "true",
        "softmax": "true",
        "verify": "",
        "halo": " ",
    }
    argv = argv_of_widgets(values)
    assert argv == [
        "--input",
        "/Volumes/main/geo/scenes/a.tif",
        "/dbfs/b c.tif",
        "--model",
        "/Volumes/main/geo/models/m.keras",
        "--output",
        "/dbfs/tmp/out",
        "--tile-size",
        "256",
        "--merge",
        "blend",
        "--softmax",
        "--scores",
    ]
    config = config_from_args(argv)
    assert (config.tile_size, config.merge, config.activation, config.scores, config.verify) == (
        256,
        "blend",
        "softmax",
        True,
        False,
    )
