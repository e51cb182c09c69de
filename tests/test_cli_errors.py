"""Bad input: one clear line naming the file, a non-zero exit, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import write_raster

ROOT = Path(__file__).resolve().parent.parent


# The command line's main, then a line if the driver imported TensorFlow: the model is loaded
# and checked in the Python workers, never on the driver.
MAIN = """
import sys
from sparkinfer.cli import main
code = main(sys.argv[1:])
if "tensorflow" in sys.modules:
    print("the driver imported tensorflow", file=sys.stderr)
sys.exit(code)
"""


def infer(*args, **env):
    done = subprocess.run(
        [sys.executable, "-c", MAIN, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **env),
    )
    assert "the driver imported tensorflow" not in done.stderr
    return done


@pytest.fixture
def scene(tmp_path):
    (tmp_path / "in").mkdir()
    return write_raster(tmp_path / "in" / "scene.tif", 64, 64)


def _bad_inputs(tmp_path, scene, models):
    text_tif = tmp_path / "in" / "notes.tif"
    text_tif.write_text("not a raster\n")
    bad_yaml = tmp_path / "job.yaml"
    bad_yaml.write_text("tile_size: 128\nhalo_pixels: 8\n")
    missing = tmp_path / "in" / "nope.tif"
    # case: (input, model, extra flags, the file the line must name, what it must say)
    return {
        "missing file": (missing, models["conv"], [], missing, "input not found"),
        "not a raster": (text_tif, models["conv"], [], text_tif, "not a readable raster"),
        "bad config key": (
            scene,
            models["conv"],
            ["--config", bad_yaml],
            bad_yaml,
            "unknown option 'halo_pixels'",
        ),
        "classifier of any size": (
            scene,
            models["dense"],
            [],
            models["dense"],
            "takes any input size; give the chips' side with --chip-size",
        ),
    }


FOUND_BEFORE_SPARK = ["missing file", "not a raster", "bad config key"]


# The classifier's size is found once the model is loaded: the job starts Spark for that.
@pytest.mark.parametrize(
    "case", [*FOUND_BEFORE_SPARK, pytest.param("classifier of any size", marks=pytest.mark.slow)]
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, scene, models, case):
    raster, model, extra, named, message = _bad_inputs(tmp_path, scene, models)[case]
    out = tmp_path / "out"
    done = infer("--input", raster, "--model", model, "--output", out, *extra)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sparkinfer: error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert errors[0].startswith(f"sparkinfer: error: {named}: ")
    if case in FOUND_BEFORE_SPARK:  # said before Spark starts: not even its UI line
        assert lines == errors, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists(), "nothing written for a bad input"


# case: (more inputs, grid flags, what the line starts with, what it must say); the scene is
# 64 x 64 pixels of 10 m in UTM 33N, near 15 E 48 N.
BAD_MAPS = {
    "bounds that no input meets": (
        [],
        ["--grid", "EPSG:32633", "--resolution", "10", "--bounds", "0,0,1000,1000"],
        "--bounds 0.0,0.0,1000.0,1000.0: ",
        "no input meets them",
    ),
    "a grid CRS that cannot hold the input": (
        [],
        ["--grid", "+proj=ortho +lat_0=-48 +lon_0=-165", "--resolution", "10"],
        "{scene}: ",
        "choose a --grid CRS that covers it",
    ),
    "a grid CRS that is none": (
        [],
        ["--grid", "EPSG:99999", "--resolution", "10"],
        "--grid EPSG:99999: ",
        "not a CRS",
    ),
    "more than 10^12 pixels": (
        [],
        ["--grid", "EPSG:32633", "--resolution", "0.0001"],
        "the inputs' bounds 500000.0,5299360.0,500640.0,5300000.0 at --resolution 0.0001 hold ",
        "or pass --force",
    ),
    "bands that differ between inputs": (
        ["three.tif"],
        ["--grid", "EPSG:3857", "--resolution", "10"],
        "{three}: ",
        "has 3 bands where",
    ),
}


@pytest.mark.parametrize("case", BAD_MAPS)
def test_a_map_the_inputs_cannot_make_is_one_line_before_spark(tmp_path, scene, models, case):
    more, flags, named, message = BAD_MAPS[case]
    three = write_raster(tmp_path / "in" / "three.tif", 64, 64, bands=3)
    inputs = [scene, *(tmp_path / "in" / name for name in more)]
    out = tmp_path / "out"
    done = infer("--input", *inputs, "--model", models["conv"], "--output", out, *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr  # not even Spark's UI line
    assert lines[0].startswith(f"sparkinfer: error: {named.format(scene=scene, three=three)}")
    assert not out.exists(), "nothing written for a bad input"


def test_a_band_mismatch_is_one_line_once_the_workers_read_the_model(
    tmp_path, models, spark, capsys
):
    """The model's band count is known once the Python workers load it (here on the shared
    session, in this process)."""
    from sparkinfer.cli import main

    five_bands = write_raster(tmp_path / "five.tif", 32, 32, bands=5)
    out = tmp_path / "out"
    code = main(
        ["--input", str(five_bands), "--model", str(models["conv"]), "--output", str(out)],
        spark,
        defaults_file=ROOT / "conf" / "default.yaml",
    )
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sparkinfer: error: {five_bands}: 5 bands selected but the model takes 4; choose them "
        "with --bands"
    ]
    assert not out.exists(), "nothing written for a bad input"


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_bad_input_through_spark_submit_is_the_last_line_on_stderr(tmp_path, scene, verbose):
    """spark-submit merges the Python driver's stderr into its stdout; spark-submit.sh sends
    the job's lines back: stdout stays empty, the error is stderr's last line, and the JVM's
    start-up notice shows only with --verbose."""
    out = tmp_path / "out"
    env = dict(os.environ, SPARKINFER_VENV=str(Path(sys.executable).parent.parent))
    done = subprocess.run(
        [
            str(ROOT / "spark-submit.sh"),
            "--input",
            scene,
            "--model",
            tmp_path / "missing.keras",
            "--output",
            out,
            *(["--verbose"] if verbose else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-1] == f"sparkinfer: error: {tmp_path / 'missing.keras'}: model not found"
    assert ("WARNING: Using incubator modules: jdk.incubator.vector" in lines) == verbose
    assert len(lines) == (2 if verbose else 1)
    assert "Traceback" not in done.stderr and not out.exists()
