"""`--estimate`: the arithmetic of the prediction with exact values, then a real estimate on the
shared session, which writes nothing but `_estimate.json`, and the run that follows it."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from builders import write_raster

from sparkinfer.cuts import Tiling
from sparkinfer.estimate import (
    Rates,
    Workload,
    blocks_read,
    compared,
    core_hours_per_1000_km2,
    job_identity,
    makespan,
    pixel_area_m2,
    predict,
    read_pixels,
    sample_size,
    slot_hours,
    spread_sample,
    tasks_of,
)
from sparkinfer.plan import RasterPlan

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"

RATES = Rates(
    setup_s=10.0,
    stage_overhead_s=1.0,
    first_call_s=0.5,
    slot_s_per_px=1e-6,
    assemble_overhead_s=0.5,
    cog_s_per_px=1e-7,
    index_s_per_tile=1e-3,
    item_s=0.2,
)
# An 8192² raster in 16 chunks of 2048² (256 tiles of 512).
WORKLOAD = Workload(np.full(16, 2048 * 2048, np.int64), (8192 * 8192,), (256,))


def test_the_sample_is_a_share_of_the_chunks_and_at_least_one_per_slot():
    assert sample_size(1000, 0.02, 2) == 20
    assert sample_size(16, 0.02, 2) == 2
    assert sample_size(1000, 0.02, 64) == 64
    assert sample_size(3, 0.5, 8) == 3


def test_the_sample_is_spread_over_each_rasters_quadrants_and_over_rasters():
    rows, cols = np.divmod(np.arange(16), 4)  # one raster of 4 x 4 chunks, row-major
    picks = spread_sample(np.zeros(16, np.int32), rows, cols, 4)
    assert picks.tolist() == [4, 6, 12, 14]  # (1, 0), (1, 2), (3, 0), (3, 2): a quadrant each
    # Rasters of 4 and 12 chunks: samples in proportion.
    index = np.array([0] * 4 + [1] * 12)
    rows = np.concatenate([np.divmod(np.arange(4), 2)[0], np.divmod(np.arange(12), 4)[0]])
    cols = np.concatenate([np.divmod(np.arange(4), 2)[1], np.divmod(np.arange(12), 4)[1]])
    assert np.bincount(index[spread_sample(index, rows, cols, 4)]).tolist() == [1, 3]


def test_chunks_are_cut_into_tasks_as_spark_range_cuts_ids():
    assert tasks_of(np.array([1, 2, 3, 4, 5]), 2).tolist() == [3, 12]  # ids 0-1 and 2-4
    assert tasks_of(np.array([1, 2, 3]), 8).tolist() == [1, 2, 3]
    assert tasks_of(np.array([0.5, 1.5, 2.0, 4.0]), 2).tolist() == [2.0, 6.0]


def test_tasks_take_the_first_free_slot_in_order():
    assert makespan([4, 1, 1, 1, 1], 2) == 4
    assert makespan([1, 1, 1], 2) == 2
    assert makespan([3, 3, 3, 3], 8) == 3
    assert makespan([], 4) == 0


def test_the_prediction_adds_the_measured_fixed_costs_to_the_tasks_on_the_slots():
    assembly = 0.5 + 8192 * 8192 * 1e-7 + 256 * 1e-3 + 0.2  # one raster: one task
    two = predict(RATES, WORKLOAD, 2)  # 8 tasks of 2 chunks, 4 on each slot
    assert (two.setup_s, two.assemble_s) == (10.0, pytest.approx(assembly, rel=1e-12))
    assert two.infer_write_s == pytest.approx(1.0 + 0.5 + 4 * 2 * 2048 * 2048 * 1e-6, rel=1e-12)
    assert two.wall_s == pytest.approx(10.0 + 35.054432 + 7.6668864, rel=1e-12)
    eight = predict(RATES, WORKLOAD, 8)  # 16 tasks of one chunk, 2 on each slot
    assert eight.infer_write_s == pytest.approx(1.5 + 2 * 4.194304, rel=1e-12)
    many = predict(RATES, WORKLOAD, 64)  # a chunk is the shortest the stage can be
    assert many.infer_write_s == pytest.approx(1.5 + 4.194304, rel=1e-12)
    assert many.figures() == {
        "slots": 64,
        "setup_s": 10.0,
        "infer_write_s": 5.69,
        "assemble_s": 7.67,
        "wall_s": 23.36,
    }


def test_core_hours_count_the_work_that_grows_with_pixels():
    hours = slot_hours(RATES, WORKLOAD)
    assert hours == pytest.approx((8192 * 8192 * 1e-6 + 7.1668864) / 3600, rel=1e-12)
    assert core_hours_per_1000_km2(2.0, 4, 500.0) == 16.0


def test_pixel_area_in_square_metres():
    assert pixel_area_m2("EPSG:32633", (10.0, 0, 500_000.0, 0, -10.0, 5_300_000.0), 100) == 100.0
    us_feet = pixel_area_m2("EPSG:2264", (10.0, 0, 2e6, 0, -10.0, 7e5), 100)  # NC, US feet
    assert us_feet == pytest.approx((10 * 1200 / 3937) ** 2, rel=1e-12)
    at_equator = pixel_area_m2("EPSG:4326", (1e-4, 0, 12.5, 0, -1e-4, 0.01), 200)  # rows 0-200
    assert at_equator == pytest.approx((1e-4 * math.pi / 180 * 6_371_008.8) ** 2, rel=1e-12)
    at_60 = pixel_area_m2("EPSG:4326", (1e-4, 0, 12.5, 0, -1e-4, 60.01), 200)
    assert at_60 == pytest.approx(at_equator / 2, rel=1e-9)
    assert pixel_area_m2(None, (1.0, 0, 0, 0, -1.0, 0), 10) is None


def test_pixels_and_blocks_read_count_the_halo():
    # 100² in tiles of 32 + 4 of halo, chunks of 2 x 2 tiles: read windows [0, 68) and [60, 100)
    chunks = RasterPlan(100, 100, Tiling(32, 4, chunk_tiles=2)).chunks()
    assert read_pixels(chunks) == (68 + 40) ** 2
    assert blocks_read(chunks, 64, 64) == (2 + 2) ** 2  # the second chunk's halo: block 0 again
    assert blocks_read(chunks, 50, 50) == (2 + 1) ** 2


def test_an_estimate_is_compared_part_by_part_and_found_by_its_identity():
    estimate = {
        "made_at": "T",
        "predicted": {
            "this_cluster": {
                "slots": 2,
                "setup_s": 10.0,
                "infer_write_s": 30.0,
                "assemble_s": 3.0,
                "wall_s": 43.0,
            }
        },
    }
    timings = {
        "setup_s": 8.0,
        "infer_write_s": 32.0,
        "assemble_s": 2.5,
        "wall_s": 42.5,
        "total_s": 35.0,
    }
    assert compared(estimate, timings) == {
        "made_at": "T",
        "predicted": {"setup_s": 10.0, "infer_write_s": 30.0, "assemble_s": 3.0, "wall_s": 43.0},
        "actual": {"setup_s": 8.0, "infer_write_s": 32.0, "assemble_s": 2.5, "wall_s": 42.5},
        "predicted_over_actual": {
            "setup_s": 1.25,
            "infer_write_s": 0.938,
            "assemble_s": 1.2,
            "wall_s": 1.012,
        },
    }
    assert job_identity(["b", "a"]) == job_identity(["a", "b"])
    assert job_identity(["a", "b"]) == hashlib.sha256(b"a b").hexdigest()[:16]


@pytest.fixture(scope="module")
def estimated(spark, models, tmp_path_factory):
    """An estimate of a 200 x 260 raster (tiles of 32, 2 x 2 per chunk: 20 chunks, 4 of them
    sampled), then the run that follows it, then a run of another config into the same folder;
    in process on the shared session."""
    from sparkinfer.cli import main

    folder = tmp_path_factory.mktemp("estimate")
    (folder / "in").mkdir()
    raster = write_raster(folder / "in" / "scene.tif", 200, 260, seed=4)
    out = folder / "out"
    args = [
        "--input",
        str(raster),
        "--model",
        str(models["conv"]),
        "--output",
        str(out),
        "--tile-size",
        "32",
        "--chunk-tiles",
        "2",
        "--progress",
        "0",
    ]
    codes = [
        main(
            [*args, "--estimate", "--estimate-sample", "0.2", "--estimate-slots", "4,40"],
            spark,
            defaults_file=DEFAULTS,
        )
    ]
    after_estimate = sorted(p.name for p in out.iterdir())
    estimate = json.loads((out / "_estimate.json").read_text())
    codes.append(main(args, spark, defaults_file=DEFAULTS))
    run = json.loads((out / "_run.json").read_text())
    codes.append(
        main([*args, "--overwrite", "--cog-compression", "zstd"], spark, defaults_file=DEFAULTS)
    )
    other = json.loads((out / "_run.json").read_text())
    return codes, after_estimate, estimate, run, other


def test_an_estimate_writes_only_its_json(estimated):
    codes, after_estimate, _, _, _ = estimated
    assert codes == [0, 0, 0]
    assert after_estimate == ["_estimate.json"]  # no chunk, COG, lock or scratch folder left


def test_an_estimate_states_the_plan_the_sample_and_the_prediction(estimated):
    _, _, estimate, _, _ = estimated
    plan = RasterPlan(200, 260, Tiling(32, 4, chunk_tiles=2))  # the conv stack's halo is 4
    assert estimate["plan"] == {
        "rasters": 1,
        "pixels": 52000,
        "tiles": 63,
        "windows": 63,
        "chunks": 20,
        "tile_size": 32,
        "halo": 4,
        "stride": 1,
        "chunk_tiles": 2,
        "fixed_window": False,
        "merge": "crop",
        "overlap": 8,
        "halo_share": 0.36,
        "seam_free": True,
    }
    assert read_pixels(plan.chunks()) == 81648
    assert estimate["bytes"]["read_decoded"] == 81648 * 4  # 4 uint8 bands
    sample = estimate["sample"]
    assert (sample["chunks"], sample["of_chunks"], sample["tasks"], sample["failed"]) == (
        4,
        20,
        4,
        [],
    )
    # Chunks (1, 0), (1, 3), (1, 4) and (2, 2) of the 4 x 5: 4 + 4 + 2 + 4 tiles, none nodata.
    assert (sample["tiles_inferred"], sample["tiles_skipped_nodata"]) == (14, 0)
    assert sample["pixels"] == 3 * 64 * 64 + 64 * 4
    assert estimate["cluster"]["task_slots"] == 2 and estimate["cluster"]["cpus_per_slot"] == 1
    predicted = estimate["predicted"]
    assert predicted["this_cluster"]["slots"] == 2 and list(predicted["by_slots"]) == ["4", "40"]
    for prediction in [predicted["this_cluster"], *predicted["by_slots"].values()]:
        parts = prediction["setup_s"] + prediction["infer_write_s"] + prediction["assemble_s"]
        assert prediction["wall_s"] == pytest.approx(parts, abs=0.02)
        assert prediction["setup_s"] == pytest.approx(estimate["measured"]["setup_s"], abs=0.01)
    assert predicted["by_slots"]["40"]["wall_s"] <= predicted["this_cluster"]["wall_s"]
    measured = estimate["measured"]
    assert measured["slot_s_per_px"] > 0 and measured["cog_s_per_px"] > 0
    assert estimate["rate"]["mpx_per_s_per_slot"] == pytest.approx(
        1e-6 / measured["slot_s_per_px"], rel=1e-3
    )
    assert estimate["area_km2"] == 52000 * 100 / 1e6  # 10 m pixels
    # From the file's own rounded figures, as a reader recomputes it: the same value.
    assert estimate["core_hours_per_1000_km2"] == round(
        core_hours_per_1000_km2(estimate["slot_hours"], 1, estimate["area_km2"]), 6
    )
    assert estimate["bytes"]["write_outputs"] > 0 and estimate["bytes"]["write_staging"] > 0


def test_the_run_that_follows_records_its_figures_next_to_the_estimate(estimated):
    _, _, estimate, run, other = estimated
    section = run["estimate"]
    assert section["made_at"] == estimate["made_at"]
    assert section["predicted"] == {
        key: estimate["predicted"]["this_cluster"][key]
        for key in ("setup_s", "infer_write_s", "assemble_s", "wall_s")
    }
    assert section["actual"]["wall_s"] == round(run["timings"]["wall_s"], 2)
    assert section["actual"]["infer_write_s"] == round(run["timings"]["infer_write_s"], 2)
    assert section["predicted_over_actual"]["wall_s"] == pytest.approx(
        section["predicted"]["wall_s"] / section["actual"]["wall_s"], rel=1e-2
    )
    assert run["tiles"]["planned"] == estimate["plan"]["tiles"]
    assert "estimate" not in other  # another config: another identity
