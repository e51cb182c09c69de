"""Nothing lost, nothing duplicated: per-raster failures, resume, the lock, safe models, names."""

import json
import os
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import rasterio
from builders import lambda_model, whole_image_outputs, write_raster

from sparkinfer.config_sources import load_config
from sparkinfer.errors import InputError, ModelError, OutputError
from sparkinfer.job import prepare_job, run_job
from sparkinfer.lock import LOCK_FILE
from sparkinfer.outputs import STAGING_FOLDER, output_names
from sparkinfer.report import decoded_per_useful
from sparkinfer.stages.infer import infer_and_write, plan_table, stage_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"


@pytest.fixture
def infer(spark, capsys):
    """The command line, run in this process on the shared session (`cli.main(argv, spark)`):
    its exit code and what it printed."""
    from sparkinfer.cli import main

    def run(*args):
        code = main([str(a) for a in args], spark, defaults_file=DEFAULTS)
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


def broken_geotiff(path: Path) -> Path:
    """A compressed GeoTIFF whose header reads but whose pixel data is garbage past a third."""
    write_raster(path, 256, 256, seed=5)
    with rasterio.open(path) as src:
        profile = src.profile | {
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 64,
            "blockysize": 64,
        }
        data = src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    raw = bytearray(path.read_bytes())
    third = len(raw) // 3
    raw[third : 2 * third] = os.urandom(third)
    path.write_bytes(bytes(raw))
    return path


def test_a_broken_raster_fails_alone_and_a_rerun_keeps_what_was_written(tmp_path, models, infer):
    (tmp_path / "in").mkdir()
    good = write_raster(tmp_path / "in" / "good.tif", 150, 130, seed=1)
    broken = broken_geotiff(tmp_path / "in" / "broken.tif")
    five = write_raster(tmp_path / "in" / "five.tif", 40, 40, bands=5)
    out = tmp_path / "out"
    args = [
        "--input",
        tmp_path / "in",
        "--model",
        models["conv"],
        "--output",
        out,
        "--tile-size",
        64,
    ]

    done = infer(*args)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("sparkinfer: failed")]
    assert len(lines) == 2, done.stderr
    assert any(f": {broken}: " in line for line in lines)
    assert any(
        line.startswith(f"sparkinfer: failed (plan): {five}: 5 bands selected") for line in lines
    )
    report = json.loads((out / "_run.json").read_text())
    assert {(f["input"], f["stage"]) for f in report["failed"]} >= {(str(five), "plan")}
    assert {f["input"] for f in report["failed"]} == {str(broken), str(five)}
    expected, _, _ = whole_image_outputs(models["conv"], good)
    with rasterio.open(out / "good.tif") as written:
        assert (written.read(1) == expected).mean() >= 0.9999
    outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("_"))
    assert outputs == ["good.stac.json", "good.tif", "good.tiles.parquet"], "no half outputs"
    # What the broken raster had written stays staged for a resume, under its identity.
    assert [p.name.rsplit("-", 1)[0] for p in (out / "_staging").iterdir()] == ["broken"]
    written_at = (out / "good.tif").stat().st_mtime_ns

    again = infer(*args)
    assert again.returncode == 3
    report = json.loads((out / "_run.json").read_text())
    assert [(r["input"], r["status"]) for r in report["rasters"]] == [(str(good), "complete")]
    assert (out / "good.tif").stat().st_mtime_ns == written_at, "a complete output is kept"


def test_fail_fast_stops_at_the_first_failing_raster(tmp_path, models, infer):
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", 64, 64)
    five = write_raster(tmp_path / "in" / "b.tif", 64, 64, bands=5)
    out = tmp_path / "out"
    done = infer(
        "--input", tmp_path / "in", "--model", models["conv"], "--output", out, "--fail-fast"
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"sparkinfer: error: {five}: ")
    assert not out.exists()


def config(**options):
    return load_config(options, defaults_file=DEFAULTS)


def scene_in(tmp_path: Path, name: str = "scene.tif", *args, **kwargs) -> Path:
    """A test raster in tmp_path/in (outputs go to tmp_path/out: never an input's folder)."""
    (tmp_path / "in").mkdir(exist_ok=True)
    return write_raster(tmp_path / "in" / name, *args, **kwargs)


def test_complete_outputs_are_kept_until_the_input_or_config_changes(tmp_path, spark, models):
    raster = scene_in(tmp_path, "scene.tif", 100, 90)
    common = dict(input=[str(raster)], model=str(models["conv"]), output=str(tmp_path / "out"))
    first = run_job(spark, prepare_job(config(**common, tile_size=64))).report
    assert first["rasters"][0]["status"] == "written"
    output = tmp_path / "out" / "scene.tif"
    written_at = output.stat().st_mtime_ns

    # A speculative copy that lost wrote a chunk after the assembly removed the staging folder.
    job = prepare_job(config(**common, tile_size=64))
    late = Path(job.rasters[0].staging)
    late.mkdir(parents=True)
    (late / "chunk_r0000_c0000.tif").write_bytes(b"late")
    again = run_job(spark, job).report
    assert again["rasters"][0]["status"] == "complete" and again["tiles"]["inferred"] == 0
    assert output.stat().st_mtime_ns == written_at
    assert not (tmp_path / "out" / STAGING_FOLDER).exists(), "the late chunk is dropped"

    scene_in(tmp_path, "scene.tif", 100, 90, seed=9)  # new imagery under the same name
    edited = run_job(spark, prepare_job(config(**common, tile_size=64))).report
    assert edited["rasters"][0]["status"] == "written" and edited["tiles"]["inferred"] == 4

    changed = run_job(spark, prepare_job(config(**common, tile_size=32))).report
    assert changed["rasters"][0]["status"] == "written" and changed["tiles"]["inferred"] == 12
    forced = run_job(spark, prepare_job(config(**common, tile_size=32, overwrite=True))).report
    assert forced["rasters"][0]["status"] == "written" and forced["tiles"]["inferred"] == 12


def test_the_identity_covers_the_cog_layout_and_the_version(tmp_path, models, monkeypatch):
    import sparkinfer.raster_job

    raster = scene_in(tmp_path, "scene.tif", 100, 90)
    common = dict(input=[str(raster)], model=str(models["conv"]), output=str(tmp_path / "out"))

    def identity(**options):
        return prepare_job(config(**common, **options)).rasters[0].identity

    first = identity()
    assert identity() == first
    assert identity(cog={"compression": "zstd"}) != first
    assert identity(cog={"blocksize": 256}) != first
    # Chunks carry the candidates of `--uncertain`'s chips, of its K and chip side.
    assert identity(uncertain=4) not in (first, identity(uncertain=4, uncertain_size=64))
    monkeypatch.setattr(sparkinfer.raster_job, "__version__", "0.0.0-other")
    assert identity() != first, "another version of the job writes other bytes"


def test_an_unfinished_raster_resumes_from_its_chunks(tmp_path, spark, models):
    raster = scene_in(tmp_path, "scene.tif", 200, 190, seed=3)
    options = dict(input=[str(raster)], model=str(models["unet"]), output=str(tmp_path / "out"))
    job = prepare_job(config(**options, tile_size=32, chunk_tiles=2))
    (only,) = job.rasters
    staging = Path(only.staging)
    stale = staging.parent / "scene-0123456789abcdef"  # another model's or config's chunks
    stale.mkdir(parents=True)
    (stale / "chunk_r0000_c0000.tif").write_bytes(b"old")
    # A run that died after writing the first 5 of its 12 chunks, while assembling another
    # raster's COG (its staged file, VRT and GDAL's overviews) and its report:
    staging.mkdir(parents=True)
    out = tmp_path / "out"
    left = [".other.tif.0123456789ab.tmp", ".other.tif.0123456789ab.vrt"]
    left += [".other.tif.0123456789ab.tmp.ovr.tmp", "._run.json.ba9876543210.tmp"]
    kept = [".keep", ".other.tif.tmp", "notes.0123456789ab.tmp"]  # not the job's
    for name in left + kept:
        (out / name).write_bytes(b"part")
    chunks = only.plan.chunks()
    assert len(chunks) == 12
    first_five = plan_table([chunks.slice(0, 5)])
    infer_and_write(
        spark, first_five, 2, stage_spec(job, [only]), job.package, failed="died", hint=""
    )
    assert len(list(staging.glob("*.tif"))) == 5

    report = run_job(spark, job).report
    assert report["rasters"][0]["chunks"] == {"planned": 12, "resumed": 5, "kept_on_retry": 0}
    # The plan's pixels read, halos included, per pixel kept (test_plan checks the figure).
    decoded = decoded_per_useful([only.plan])
    assert report["decoded_per_useful_pixel"] == report["rasters"][0]["decoded_per_useful_pixel"]
    assert report["decoded_per_useful_pixel"] == decoded > 1
    tiles_left = sum(chunks.slice(5)["tiles"].to_pylist())
    assert report["tiles"]["inferred"] == tiles_left
    assert not stale.exists(), "chunks of another identity never mix with this run's"
    assert not [name for name in left if (out / name).exists()]
    assert all((out / name).exists() for name in kept)
    assert not (tmp_path / "out" / STAGING_FOLDER).exists()
    expected, _, _ = whole_image_outputs(models["unet"], raster, stride=4)
    with rasterio.open(tmp_path / "out" / "scene.tif") as written:
        assert (written.read(1) == expected).mean() >= 0.9999


def test_a_running_job_holds_the_output_folder(tmp_path, spark, models):
    raster = scene_in(tmp_path, "scene.tif", 64, 64)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK_FILE
    options = dict(input=[str(raster)], model=str(models["conv"]), output=str(out))
    lock.write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": "2026-11-26T00:00:00+00:00",
            }
        )
    )
    with pytest.raises(OutputError, match=f"in use by another run \\(pid {os.getpid()} on "):
        prepare_job(config(**options))
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    report = run_job(
        spark, prepare_job(config(**options))
    ).report  # a dead run's lock is taken over
    assert report["rasters"][0]["status"] == "written" and not lock.exists()


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path):
    """Eight runs find the same dead run's lock at once: exactly one of them holds the folder."""
    import threading

    from sparkinfer.lock import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = json.dumps({"host": socket.gethostname(), "pid": gone.pid})

    def take_over(start, holders, refused, all_tried):
        def tried(outcomes):
            outcomes.append(threading.get_ident())
            if len(holders) + len(refused) == 8:
                all_tried.set()

        start.wait()
        try:
            with OutputLock(str(out)).held():
                tried(holders)
                all_tried.wait(30)  # still holding while the others try, however slow they are
        except OutputError:
            tried(refused)

    for _ in range(5):  # the race is short: try it several times
        (out / LOCK_FILE).write_text(stale)
        start, holders, refused, all_tried = threading.Barrier(8), [], [], threading.Event()
        runs = [
            threading.Thread(target=take_over, args=(start, holders, refused, all_tried))
            for _ in range(8)
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        assert (len(holders), len(refused)) == (1, 7)
        assert not (out / LOCK_FILE).exists()


def test_output_names_are_safe_and_distinct():
    paths = [
        "/a/scene.tif",
        "/b/scene.tif",
        "/c/São Paulo (2020).tif",
        "/d/..tif",
        "/e/_staging.tif",
        "/f/Scene.TIF",
    ]
    names = output_names(["scene", "scene", "São Paulo (2020)", ".", "_staging", "Scene"], paths)
    assert names[2] == "Sao_Paulo_2020" and names[3] == "raster" and names[4] == "staging"
    assert len(set(n.casefold() for n in names)) == len(names)
    assert names[0].startswith("scene-") and names[1].startswith("scene-")
    assert all("/" not in n and not n.startswith((".", "_")) for n in names)


def test_same_stems_and_unusual_names_get_distinct_safe_outputs(tmp_path, spark, models):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    a = write_raster(tmp_path / "x" / "scène 1.tif", 70, 50, seed=1)
    b = write_raster(tmp_path / "y" / "scène 1.tif", 40, 60, crs="EPSG:4326", seed=2)
    report = run_job(
        spark,
        prepare_job(
            config(input=[str(a), str(b)], model=str(models["conv"]), output=str(tmp_path / "out"))
        ),
    ).report
    outputs = [Path(r["outputs"][0]) for r in report["rasters"]]
    assert len(set(outputs)) == 2 and all(p.name.startswith("scene_1-") for p in outputs)
    for raster, output in zip((a, b), outputs, strict=True):
        with rasterio.open(raster) as src, rasterio.open(output) as out:
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)


def test_a_model_with_code_is_refused_unless_trusted(tmp_path, spark):
    model = lambda_model(tmp_path / "lambda.keras")
    raster = scene_in(tmp_path, "scene.tif", 64, 64)
    options = dict(input=[str(raster)], model=str(model), output=str(tmp_path / "out"), halo=2)
    with pytest.raises(ModelError, match="safe mode will not run; pass --trust-model"):
        prepare_job(config(**options))
    report = run_job(spark, prepare_job(config(**options, trust_model=True))).report
    assert report["rasters"][0]["status"] == "written"


def test_a_rotated_raster_is_refused_and_the_others_planned(tmp_path, models):
    from rasterio.transform import Affine

    good = scene_in(tmp_path, "good.tif", 64, 64)
    rotated = scene_in(
        tmp_path, "rotated.tif", 64, 64, transform=Affine(10, 2, 500_000, 2, -10, 5_300_000)
    )
    job = prepare_job(
        config(
            input=[str(good), str(rotated)], model=str(models["conv"]), output=str(tmp_path / "out")
        )
    )
    assert [r.info.path for r in job.rasters] == [str(good)]
    (failure,) = job.failed
    assert failure.stage == "plan" and "rotated or sheared" in failure.error
    with pytest.raises(InputError, match="rotated or sheared"):
        prepare_job(
            config(input=[str(rotated)], model=str(models["conv"]), output=str(tmp_path / "out"))
        )
