"""The library installs beside a platform's own Spark: the built wheel goes into a Python 3.12
venv that already holds another pyspark 4.x, leaves that pyspark in place, and runs the job
(`python -m sparkinfer`) with the platform's Spark."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import export_onnx

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "data" / "nc_landsat7_2000.tif"
PLATFORM_PYSPARK = "4.0.5"  # the oldest line the library declares, not the lock's 4.3


def python312() -> str:
    """A Python 3.12 that runs: pyenv's (its `python3.12` shim needs a version selected), or
    one on PATH."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(pyenv, "versions/3.12*/bin/python3.12")))
    candidates.append(shutil.which("python3.12") or "python3.12")
    for candidate in candidates:
        if subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("no Python 3.12 on this machine (pyenv's 3.12, or python3.12 on PATH)")


def _pip(venv: Path, command: str, *args) -> subprocess.CompletedProcess:
    """This suite's pip acting on `venv` (which needs no pip of its own); packages are not
    byte-compiled on install (half the install's time), only as they are imported."""
    if command == "install":
        args = ("--no-compile", *args)
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), command, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Path:
    """A Python 3.12 venv holding pyspark 4.0.5 and nothing of ours, as a platform's is."""
    venv = tmp_path_factory.mktemp("platform") / "venv"
    subprocess.run([python312(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _pip(venv, "install", "--quiet", f"pyspark=={PLATFORM_PYSPARK}")
    return venv


def _version(venv: Path, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def test_the_wheel_leaves_the_platform_spark_in_place_and_runs(tmp_path, platform, run):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT), "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("sparkinfer-*.whl")
    installed = _pip(platform, "install", str(wheel), "onnxruntime")
    assert "pyspark" not in installed.stdout.lower()
    assert _version(platform, "pyspark") == PLATFORM_PYSPARK
    assert _pip(platform, "check").returncode == 0

    model = export_onnx(ROOT / "data" / "landcover.keras", tmp_path / "landcover.onnx")
    python = str(platform / "bin" / "python")
    done = subprocess.run(
        [
            python,
            "-m",
            "sparkinfer",
            "--input",
            str(SCENE),
            "--model",
            str(model),
            "--output",
            str(tmp_path / "out"),
            "--tile-size",
            "128",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("sparkinfer: 1 raster(s) written")
    assert f"/{platform.name}/lib/python3.12/site-packages/sparkinfer" in _origin(platform)

    run(input=[str(SCENE)], model=str(model), output=str(tmp_path / "lock"), tile_size=128)
    with (
        rasterio.open(tmp_path / "out" / SCENE.name) as a,
        rasterio.open(tmp_path / "lock" / SCENE.name) as b,
    ):
        classes = a.read(1)
        assert (a.crs, a.transform) == (b.crs, b.transform)
        assert (classes == b.read(1)).mean() >= 0.9999, "the lock's stack gives the same map"
    assert np.unique(classes).size >= 5, "a real land-cover map"


def _origin(venv: Path) -> str:
    """Where the venv's Python imports sparkinfer from (not this checkout)."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sparkinfer; print(sparkinfer.__file__)"],
        cwd=venv,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()
