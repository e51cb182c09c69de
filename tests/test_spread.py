"""Unequal executors: a real standalone cluster on 127.0.0.1 of two 1-core workers, each pinned
to a CPU of its own, the second sharing its CPU with two busy loops that the test starts and
stops.

With a few tasks per slot (the default 4), tapered so that the last ones are short, the fast
executor takes more of them, and the stage ends close to what the two executors' measured
rates allow; with one task per executor the slow one's half decides. With --speculation Spark
copies the slow executor's straggling task to the fast one: outputs stay exactly-once, byte for
byte those of the run without."""

import json
import subprocess
import sys

import pytest
from builders import fault_model, write_raster
from processes import submit
from servers import standalone_cluster

pytestmark = pytest.mark.slow

TILE = 64
ROWS, COLS = 16, 20  # 320 one-tile chunks: about 15 s on the two executors
SPECULATION = (
    "--conf spark.speculation.multiplier=1.2 --conf spark.speculation.quantile=0.5 "
    "--conf spark.speculation.minTaskRuntime=500ms --conf "
    "spark.speculation.interval=100ms --conf spark.eventLog.enabled=true "
    "--conf spark.eventLog.compress=false"
)
# The session starts only once both executors have registered, so that the warm-up job loads
# the model on each. Otherwise the slow worker's executor, starting on a busy CPU, can register
# after it and take a stage task cold: CI saw its first chunk 14.5 s after the stage's first.
BOTH_REGISTERED = (
    "--conf spark.cores.max=2 --conf spark.scheduler.minRegisteredResourcesRatio=1.0 "
    "--conf spark.scheduler.maxRegisteredResourcesWaitingTime=120s"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unequal")
    with standalone_cluster(folder / "cluster", cores=(1, 1), pinned=True) as master:
        # Two busy loops: the second worker's executor gets about a third of its CPU.
        burners = [
            subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])
            for _ in range(2)
        ]
        try:
            yield master, folder
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()


@pytest.fixture(scope="module")
def scene(cluster):
    _, folder = cluster
    (folder / "in").mkdir()
    raster = write_raster(folder / "in" / "scene.tif", ROWS * TILE, COLS * TILE, seed=12)
    return raster, fault_model(folder)


def _run(cluster, scene, name, *options, submit_args: str = ""):
    master, folder = cluster
    raster, model = scene
    done = submit(
        [
            "--input",
            raster,
            "--model",
            model,
            "--output",
            folder / name,
            "--tile-size",
            TILE,
            "--chunk-tiles",
            1,
            "--batch-size",
            1,
            "--progress",
            0,
            *options,
        ],
        master,
        submit_args=f"{BOTH_REGISTERED} {submit_args}",
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads((folder / name / "_run.json").read_text())


@pytest.fixture(scope="module")
def spread(cluster, scene):
    return _run(cluster, scene, "spread")


def test_the_fast_executor_takes_more_and_the_stage_ends_as_their_rates_allow(spread):
    executors = spread["executors"]
    assert len(executors) == 2
    slow, fast = sorted(executors.values(), key=lambda e: e["chunks_per_s"])
    print(json.dumps({"executors": executors} | spread["timings"]))
    assert fast["chunks_per_s"] > 1.3 * slow["chunks_per_s"], "the busy loop slows one"
    assert fast["chunks"] > slow["chunks"]
    assert fast["chunks"] + slow["chunks"] == ROWS * COLS
    assert spread["timings"]["tasks_s"] <= 1.15 * _allowed(executors.values(), ROWS * COLS)


def _allowed(executors, chunks: int) -> float:
    """When the stage could end at best, seconds after its first task's start: each executor
    working at its measured rate from its own first task on, all ending together. An executor
    can start late (its Python worker starts on a busy CPU), and no cut of the work helps that."""
    rate = sum(e["chunks_per_s"] for e in executors)
    return (chunks + sum(e["chunks_per_s"] * e["started_s"] for e in executors)) / rate


def test_one_task_per_executor_waits_for_the_slow_one(cluster, scene, spread):
    one_each = _run(cluster, scene, "one-each", "--tasks-per-slot", 1)
    counts = sorted(e["chunks"] for e in one_each["executors"].values())
    print(json.dumps({"one_task_each": one_each["executors"]} | one_each["timings"]))
    assert counts == [ROWS * COLS // 2] * 2
    fast, slow = sorted(one_each["executors"].values(), key=lambda e: e["span_s"])
    assert fast["span_s"] < 0.7 * slow["span_s"], "the fast executor waits, idle, for the slow"
    assert one_each["timings"]["tasks_s"] > spread["timings"]["tasks_s"]


def test_speculated_copies_leave_each_chunk_once(cluster, scene, spread):
    master, folder = cluster
    events = folder / "events"
    events.mkdir()
    # One task per executor: the slow one's task is still running long after the fast one's
    # ended, so Spark copies it to the fast executor; both write its remaining chunks.
    report = _run(
        cluster,
        scene,
        "speculated",
        "--speculation",
        "--tasks-per-slot",
        1,
        submit_args=f"{SPECULATION} --conf spark.eventLog.dir={events}",
    )
    assert report["spark"]["speculation"] is True
    log = "\n".join(p.read_text() for p in events.rglob("*") if p.is_file())
    starts = [json.loads(line) for line in log.splitlines() if "SparkListenerTaskStart" in line]
    speculative = [s for s in starts if s["Task Info"]["Speculative"]]
    print(json.dumps({"task_starts": len(starts), "speculative": len(speculative)}))
    assert speculative, "Spark copied a straggling task"
    # The copy that won kept the chunks the other had committed, and wrote the rest: each once.
    assert sum(e["chunks"] for e in report["executors"].values()) == ROWS * COLS
    kept = report["rasters"][0]["chunks"]["kept_on_retry"]
    print(json.dumps({"kept_by_the_copy": kept} | report["executors"]))
    assert report["tiles"]["inferred"] + kept == ROWS * COLS
    assert not (folder / "speculated" / "_staging").exists()
    assert (folder / "speculated" / "scene.tif").read_bytes() == (
        folder / "spread" / "scene.tif"
    ).read_bytes()
