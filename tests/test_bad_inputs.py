"""Bad inputs, each with its one line: a raster's own problem fails that raster and the others
are planned; a problem of the whole run stops it before Spark (exit 2)."""

import re
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import write_raster
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError, InputError, ModelError, OutputError
from sparkinfer.job import prepare_job

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"


def config(**options):
    return load_config(options, defaults_file=DEFAULTS)


def _no_georeference(path: Path) -> Path:
    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # what this raster is for
    with rasterio.open(
        path, "w", driver="GTiff", width=32, height=32, count=4, dtype="uint8"
    ) as dst:
        dst.write(np.ones((4, 32, 32), np.uint8))
    return path


def _complex(path: Path) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=32,
        height=32,
        count=4,
        dtype="complex64",
        crs="EPSG:32633",
        transform=from_origin(500_000, 5_300_000, 10, 10),
    ) as dst:
        dst.write(np.ones((4, 32, 32), np.complex64))
    return path


def _truncated(path: Path) -> Path:
    write_raster(path, 64, 64)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _text(path: Path) -> Path:
    path.write_text("not a raster\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# A raster's own problem: (make it, what its line says).
RASTER_PROBLEMS = {
    "missing file": (lambda p: p, "input not found"),
    "empty file": (_empty, "file is empty"),
    "truncated GeoTIFF": (_truncated, "not a readable raster"),
    "text file named .tif": (_text, "not a readable raster"),
    "no georeference": (_no_georeference, "raster has no georeference"),
    "wrong band count": (
        lambda p: write_raster(p, 32, 32, bands=3),
        "3 bands selected but the model takes 4",
    ),
    "complex pixels": (_complex, "pixel type complex64 is not supported"),
    "rotated geotransform": (
        lambda p: write_raster(p, 32, 32, transform=rasterio.Affine(10, 2, 5e5, 2, -10, 5.3e6)),
        "the geotransform is rotated or sheared",
    ),
    "name with spaces and non-ASCII letters, wrong bands": (
        lambda p: write_raster(p.with_name("São Tomé 2.tif"), 32, 32, bands=5),
        "5 bands selected but the model takes 4",
    ),
}


@pytest.mark.parametrize("case", sorted(RASTER_PROBLEMS))
def test_a_bad_raster_fails_alone_with_one_line(tmp_path, models, case):
    (tmp_path / "in").mkdir()
    good = write_raster(tmp_path / "in" / "good.tif", 64, 64)
    make, message = RASTER_PROBLEMS[case]
    bad = make(tmp_path / "in" / "bad.tif")
    job = prepare_job(
        config(input=[str(good), str(bad)], model=str(models["conv"]), output=str(tmp_path / "out"))
    )
    assert [r.info.path for r in job.rasters] == [str(good)]
    (failure,) = job.failed
    assert failure.error.startswith(f"{bad}: ") and message in failure.error
    assert "\n" not in failure.error
    with pytest.raises(InputError, match=message):  # alone, nothing to run: exit 2
        prepare_job(
            config(input=[str(bad)], model=str(models["conv"]), output=str(tmp_path / "out"))
        )
    assert not (tmp_path / "out").exists()


def test_a_glob_matching_nothing_fails_alone(tmp_path, models):
    (tmp_path / "in").mkdir()
    good = write_raster(tmp_path / "in" / "good.tif", 64, 64)
    pattern = str(tmp_path / "in" / "*.jp2")
    job = prepare_job(
        config(input=[str(good), pattern], model=str(models["conv"]), output=str(tmp_path / "out"))
    )
    assert [(f.input, f.stage) for f in job.failed] == [(pattern, "input")]
    assert job.failed[0].error == f"{pattern}: no files match this pattern"


def test_bands_out_of_range_fail_the_raster(tmp_path, models):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "a.tif", 32, 32)
    with pytest.raises(InputError, match=f"{raster}: band 9 requested but the raster has 4"):
        prepare_job(
            config(
                input=[str(raster)],
                model=str(models["conv"]),
                output=str(tmp_path / "out"),
                bands=[1, 2, 3, 9],
            )
        )


@pytest.mark.parametrize(
    "given, where, message",
    [
        ("in/a.tif", "in", "output folder is the folder of input"),
        ("in", "in/sub", "output folder is inside input"),
        ("in/*.tif", "in/pred", "output folder is inside input"),
        ("in/*/x.tif", "in/pred", "output folder is inside input"),
        ("in/a.tif", "in/sub", None),  # beside an input file, in a folder of its own: fine
        ("in/a.tif", "out", None),
    ],
)
def test_output_folder_is_refused_only_where_inputs_are_listed(
    tmp_path, models, monkeypatch, given, where, message
):
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", 32, 32)
    monkeypatch.chdir(tmp_path)  # relative paths, as typed in the scenes' folder
    options = dict(input=[given], model=str(models["conv"]), output=where)
    if message is None:
        assert prepare_job(config(**options)).output == str(tmp_path / where)
        return
    with pytest.raises(OutputError, match=f"^{re.escape(str(tmp_path / where))}: {message}"):
        prepare_job(config(**options))


def test_output_folder_under_a_file_is_refused(tmp_path, models):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "a.tif", 32, 32)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        prepare_job(
            config(
                input=[str(raster)],
                model=str(models["conv"]),
                output=str(tmp_path / "file" / "out"),
            )
        )


def test_an_output_folder_that_refuses_writes_is_refused(tmp_path, models):
    """/sys refuses new files even to root, for whom permission bits (and os.access) say yes."""
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "a.tif", 32, 32)
    with pytest.raises(
        OutputError,
        match="^/sys/sparkinfer-out: cannot write in the folder /sys "
        r"\(Permission denied\); choose another --output$",
    ):
        prepare_job(
            config(input=[str(raster)], model=str(models["conv"]), output="/sys/sparkinfer-out")
        )


@pytest.mark.parametrize(
    "model, message",
    [("missing.keras", "model not found"), ("corrupt.keras", "cannot load model")],
)
def test_model_missing_or_corrupt_stops_the_run(tmp_path, model, message):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "a.tif", 32, 32)
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match=f"^{tmp_path / model}: {message}"):
        prepare_job(
            config(input=[str(raster)], model=str(tmp_path / model), output=str(tmp_path / "out"))
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tile_size": "big"}, "tile_size: Input should be a valid integer"),
        ({"tile_size": -64}, "tile_size: Input should be greater than 0"),
        ({"tile_size": 64, "halo": 100}, "halo 100 is larger than tile_size 64"),
        ({"batch_size": 0}, "batch_size: Input should be greater than 0"),
    ],
)
def test_bad_option_values_are_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config(input=["a.tif"], model="m.keras", output="out", **options)
    assert "\n" not in str(caught.value)


def test_a_one_pixel_raster_is_inferred(tmp_path, run, models):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "dot.tif", 1, 1)
    report = run(input=[str(raster)], model=str(models["unet"]), output=str(tmp_path / "out"))
    assert report["tiles"] == {"planned": 1, "skipped_nodata": 0, "inferred": 1}
    with rasterio.open(raster) as src, rasterio.open(tmp_path / "out" / "dot.tif") as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, (1, 1))
        assert out.read(1)[0, 0] != 255


def test_a_huge_sparse_raster_is_planned_without_reading_pixels(tmp_path, models):
    (tmp_path / "in").mkdir()
    huge = tmp_path / "in" / "huge.tif"
    with rasterio.open(
        huge,
        "w",
        driver="GTiff",
        width=1_000_000,
        height=1_000_000,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        nodata=0,
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        sparse_ok=True,
        bigtiff="yes",
        transform=from_origin(500_000, 5_300_000, 10, 10),
    ):
        pass
    assert huge.stat().st_size < 4_000_000, "declared 4 TB, nothing written"
    tracemalloc.start()
    job = prepare_job(
        config(input=[str(huge)], model=str(models["conv"]), output=str(tmp_path / "out"))
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (raster,) = job.rasters
    assert raster.plan.tile_count == 1954**2
    assert peak < 64 * 2**20, f"planning allocated {peak / 2**20:.0f} MiB"
