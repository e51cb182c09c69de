"""Bad input: one clear line naming the file, a non-zero exit, nothing written."""

import os
import subprocess
import sys
import time
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
        capture_output=True, text=True, timeout=120, env=dict(os.environ, **env),
    )  # fmt: skip
    assert "the driver imported tensorflow" not in done.stderr
    return done


@pytest.fixture
def scene(tmp_path):
    (tmp_path / "in").mkdir()
    return write_raster(tmp_path / "in" / "scene.tif", 64, 64)


def _bad_inputs(tmp_path, scene, models):
    text_tif = tmp_path / "in" / "notes.tif"
    text_tif.write_text("not a raster\n")
    five_bands = write_raster(tmp_path / "in" / "five.tif", 32, 32, bands=5)
    bad_yaml = tmp_path / "job.yaml"
    bad_yaml.write_text("tile_size: 128\nhalo_pixels: 8\n")
    missing = tmp_path / "in" / "nope.tif"
    # case: (input, model, extra flags, the file the line must name, what it must say)
    return {
        "missing file": (missing, models["conv"], [], missing, "input not found"),
        "not a raster": (text_tif, models["conv"], [], text_tif, "not a readable raster"),
        "band mismatch": (five_bands, models["conv"], [], five_bands,
                          "5 bands selected but the model takes 4"),
        "not convolutional": (scene, models["dense"], [], models["dense"],
                              "not fully convolutional"),
        "bad config key": (scene, models["conv"], ["--config", bad_yaml], bad_yaml,
                           "unknown option 'halo_pixels'"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["missing file", "not a raster", "band mismatch", "not convolutional", "bad config key"]
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
    assert "Traceback" not in done.stderr
    assert not out.exists(), "nothing written for a bad input"


@pytest.mark.parametrize("verbose", [False, True])
def test_bad_input_through_spark_submit_is_the_last_line_on_stderr(tmp_path, scene, verbose):
    """spark-submit merges the Python driver's stderr into its stdout; spark-submit.sh sends
    the job's lines back: stdout stays empty, the error is stderr's last line, and the JVM's
    start-up notice shows only with --verbose."""
    out = tmp_path / "out"
    env = dict(os.environ, SPARKINFER_VENV=str(Path(sys.executable).parent.parent))
    done = subprocess.run(
        [str(ROOT / "spark-submit.sh"), "--input", scene, "--model", tmp_path / "missing.keras",
         "--output", out, *(["--verbose"] if verbose else [])],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-1] == f"sparkinfer: error: {tmp_path / 'missing.keras'}: model not found"
    assert ("WARNING: Using incubator modules: jdk.incubator.vector" in lines) == verbose
    assert len(lines) == (2 if verbose else 1)
    assert "Traceback" not in done.stderr and not out.exists()


def test_spark_submit_shows_stderr_lines_as_they_come(tmp_path):
    """The driver's lines reach stderr while the job runs, not when it ends."""
    env = dict(os.environ, SPARKINFER_VENV=str(Path(sys.executable).parent.parent))
    job = subprocess.Popen(
        [str(ROOT / "spark-submit.sh"), "--input", ROOT / "data" / "L7_ETMs.tif", "--model",
         ROOT / "data" / "landcover.keras", "--output", tmp_path / "out", "--tile-size", "128"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    first = job.stderr.readline()
    first_at = time.monotonic()
    out, _ = job.communicate(timeout=300)
    # The workers load and check the model, then the job runs, after the session's line.
    assert first.startswith("sparkinfer: Spark UI at ") and time.monotonic() - first_at > 2
    assert job.returncode == 0 and out.startswith("sparkinfer: 1 raster(s) written")
