"""The executor's partition function on one GPU, without Spark: the check a GPU machine runs.

    KERAS_BACKEND=jax python -m benchmarks.device --output DIR [--size 8192] [--tile 2048]

GPU machines lent for checks have JAX, onnxruntime and pyarrow but no Java, pyspark or
TensorFlow: there this runs `executor.infer_partition` (what `mapInArrow` calls in each task) over
plan tables made by `prepare_job`, with Keras on JAX. Wheels to carry for Python 3.12: keras,
namex, optree, rasterio, affine, cligj, click-plugins, pydantic, pydantic-core, annotated-types,
typing-inspection, zstandard, pyyaml and pystac. It writes DIR/device.json with:

1. `sample`: the sample's class maps (data/, the land-cover model) inferred on GPU 0 and on the
   CPU, and the share of pixels where they agree (the job's outputs must not depend on where the
   model ran);
2. `model_only`: the U-Net of benchmarks/models.py on batches already on the device, the
   device's limit, in useful (core) megapixels per second;
3. `partition`: the partition function over a mirrored copy of the sample of `--size` pixels a
   side (read, infer, write chunks: one task), in the same run, and its share of `model_only`;
   a first pass over one batch of chunks compiles the model outside the timing;
   `partition_sample_model`: the same with the sample's land-cover model (six bands).
4. `auto_batch` (with `--batch auto`, the default): the batch `--batch-size auto` picks on this
   device for the U-Net's window, which the two measurements above then use.
5. `shared_gpu`: the steady state, where the partition function over one raster is a single
   batch above. `--links` hard links of the mirrored raster make one job of many chunks; N
   processes (`--tasks 1,4,8,16`) share GPU 0 as Spark tasks do with
   `spark.task.resource.gpu.amount` 1/N, each over its own contiguous run of the chunks with
   cpus/N cores and the batch `--batch-size auto` picks for that share, after a warm-up batch
   of its own that loads and compiles the model outside the timing.
   Useful Mpx/s from the first timed start to the last end, and its share of `model_only`.

`--parts` picks among sample, partition (with model_only and auto_batch), shared_gpu and
sample_model (`partition_sample_model`): all by default.

Without a GPU everything runs on the CPU (`device` says so): small sizes make a smoke test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402

from benchmarks.large_raster import make_large_raster  # noqa: E402
from benchmarks.models import save_model  # noqa: E402
from benchmarks.run import result_text  # noqa: E402
from sparkinfer.devices import TaskResources  # noqa: E402
from sparkinfer.executor import infer_partition  # noqa: E402
from sparkinfer.flags import config_from_args  # noqa: E402
from sparkinfer.job import prepare_job  # noqa: E402
from sparkinfer.stages.infer import plan_table, stage_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = [ROOT / "data" / "nc_landsat7_2000.tif", ROOT / "data" / "L7_ETMs.tif"]


def _job(inputs: list[Path], model: Path, output: Path, *options: str):
    argv = [
        "--input",
        *map(str, inputs),
        "--model",
        str(model),
        "--output",
        str(output),
        "--backend",
        "jax",
        "--progress",
        "0",
        *options,
    ]
    return prepare_job(config_from_args(argv, defaults_file=ROOT / "conf" / "default.yaml"))


def run_partition(
    job, resources: TaskResources, chunks: int | None = None
) -> tuple[float, list[dict]]:
    """The partition function over the first `chunks` (default all) chunks of `job`, as one
    task; seconds and result rows."""
    plan = _fresh_plan(job).slice(0, chunks)
    started = time.perf_counter()
    rows = _rows(plan, stage_spec(job, job.rasters), job.package, resources)
    return time.perf_counter() - started, rows


def _classes(job) -> list[np.ndarray]:
    """Each raster's class map, from its committed chunk files."""
    from sparkinfer.assembly import chunk_specs

    maps = []
    for raster in job.rasters:
        out = np.full((raster.info.height, raster.info.width), 255, np.uint8)
        for chunk in chunk_specs(raster):
            with rasterio.open(chunk.classes_path) as src:
                rows = slice(chunk.row_off, chunk.row_off + chunk.height)
                out[rows, chunk.col_off : chunk.col_off + chunk.width] = src.read(1)
        maps.append(out)
    return maps


def sample_agreement(work: Path) -> dict:
    """The sample inferred on GPU 0 and on the CPU: where the class maps agree."""
    model = ROOT / "data" / "landcover.keras"
    maps, devices = {}, {}
    for name, resources in (
        ("gpu", TaskResources(os.cpu_count() or 1, "0")),
        ("cpu", TaskResources(os.cpu_count() or 1, None)),
    ):
        job = _job(SAMPLE, model, work / f"sample-{name}", "--tile-size", "128")
        _, rows = run_partition(job, resources)
        devices[name] = sorted({r["device"] for r in rows})
        maps[name] = _classes(job)
    same = sum(int((a == b).sum()) for a, b in zip(maps["gpu"], maps["cpu"], strict=True))
    total = sum(a.size for a in maps["gpu"])
    return {"devices": devices, "pixels": total, "agreement": same / total}


def model_only(model_path: Path, tile: int, halo: int, batch: int, precision: str) -> dict:
    """The U-Net on a batch already on the device: jitted stateless_call + argmax to uint8."""
    import jax
    import jax.numpy as jnp
    import keras

    model = keras.models.load_model(model_path, compile=False)
    if precision == "bfloat16":
        from sparkinfer.runtimes.keras_model import mixed_bfloat16

        model = mixed_bfloat16(model, keras)
    device = jax.devices()[0]
    variables = jax.device_put(
        (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        ),
        device,
    )
    window = tile + 2 * halo

    @jax.jit
    def classify(variables, x):
        y, _ = model.stateless_call(*variables, x, training=False)
        return jnp.argmax(y[:, halo : halo + tile, halo : halo + tile], axis=-1).astype(jnp.uint8)

    x = jax.device_put(
        np.random.default_rng(0).uniform(0, 1, (batch, window, window, 4)).astype(np.float32),
        device,
    )
    classify(variables, x).block_until_ready()  # compile outside the timing
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < 5:
        classify(variables, x).block_until_ready()
        calls += 1
    seconds = time.perf_counter() - started
    return {"device": str(device), "mpx_per_s": calls * batch * tile * tile / seconds / 1e6}


def auto_batch(job, gpu_share: float = 1) -> int:
    """The batch `--batch-size auto` picks on this device for `job`'s windows, for a task given
    `gpu_share` of the GPU."""
    from sparkinfer.model import load_package
    from sparkinfer.prepare import runtime_options

    window = job.tiling.window_size
    runtime = load_package(job.package, runtime_options(job.config), gpu=0)
    return runtime.auto_batch(window, window, np.dtype("uint8"), gpu_share)


def timed_partition(job, resources: TaskResources, batch: int) -> dict:
    """`run_partition` over all of `job`'s chunks, after one batch that compiles the model's
    shape outside the timing: seconds, useful pixels per second and the stage's parts."""
    run_partition(job, resources, chunks=batch)
    seconds, rows = run_partition(job, resources)
    useful = sum(r.info.height * r.info.width for r in job.rasters)
    return {
        "halo": job.tiling.halo,
        "batch": batch,
        "seconds": seconds,
        "mpx_per_s": useful / seconds / 1e6,
        **_summed(rows),
    }


def _fresh_plan(job):
    """The plan table of all of `job`'s chunks, its staging emptied: nothing is skipped."""
    from sparkinfer.job import chunks_to_do, prepare_staging

    for raster in job.rasters:
        prepare_staging(raster, overwrite=True)
    return plan_table([chunks_to_do(r) for r in job.rasters])


def _summed(rows: list[dict]) -> dict:
    """What result `rows` of the partition function ran on, the tiles they inferred and the
    seconds their tasks spent reading, inferring and writing."""
    return {
        "devices": sorted({r["device"] for r in rows}),
        "tiles": sum(r["inferred"] for r in rows),
        **{k: sum(r[k] for r in rows) for k in ("read_s", "infer_s", "write_s")},
    }


def _rows(plan, spec, package, resources: TaskResources) -> list[dict]:
    """The partition function over `plan` as one task: its result rows."""
    return [
        row
        for batch in infer_partition(plan.to_batches(), spec, package, resources)
        for row in batch.to_pylist()
    ]


def _shared_task(barrier, results, warm, timed, package, resources) -> None:
    """One of the processes of `shared_gpu`: a warm-up run, the barrier, then the timed run's
    start, end and rows."""
    _rows(*warm, package, resources)
    barrier.wait()
    started = time.time()
    rows = _rows(*timed, package, resources)
    results.put({"started": started, "ended": time.time(), "rows": rows})


def shared_gpu(job, warm_job, tasks: int) -> dict:
    """`tasks` processes sharing GPU 0 over `job`'s chunks, cut in contiguous runs as Spark's
    untapered tasks are, each with the batch `--batch-size auto` picks for a 1/tasks share;
    each warms up on a batch of its own chunks of `warm_job` (another staging folder, so the
    timed run skips nothing)."""
    plan, warm_plan = _fresh_plan(job), _fresh_plan(warm_job)
    per_task = len(plan) // tasks
    batch = auto_batch(job, 1 / tasks)
    context = multiprocessing.get_context("spawn")  # JAX's threads do not survive a fork
    barrier, results = context.Barrier(tasks), context.Queue()
    resources = TaskResources(max(1, (os.cpu_count() or 1) // tasks), "0")
    spec = stage_spec(job, job.rasters, 1 / tasks)
    warm_spec = stage_spec(warm_job, warm_job.rasters, 1 / tasks)
    processes = [
        context.Process(
            target=_shared_task,
            args=(
                barrier,
                results,
                (warm_plan.slice(index * batch, batch), warm_spec),
                (plan.slice(index * per_task, per_task), spec),
                job.package,
                resources,
            ),
        )
        for index in range(tasks)
    ]
    for process in processes:
        process.start()
    done = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    seconds = max(d["ended"] for d in done) - min(d["started"] for d in done)
    summed = _summed([row for d in done for row in d["rows"]])
    useful = job.tiling.tile_size**2 * summed["tiles"]
    return {
        "tasks": tasks,
        "cores_per_task": resources.cpus,
        "batch": batch,
        "chunks": per_task * tasks,
        "seconds": seconds,
        "mpx_per_s": useful / seconds / 1e6,
        **summed,
    }


PARTS = ("sample", "partition", "shared_gpu", "sample_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="work folder; device.json")
    parser.add_argument("--size", type=int, default=8192, help="side of the raster, pixels")
    parser.add_argument("--tile", type=int, default=2048, help="core tile side, pixels")
    parser.add_argument(
        "--batch",
        default="auto",
        help="tiles per model call, or auto: what the job's runtime picks there",
    )
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run")
    parser.add_argument("--tasks", default="1,4,8,16", help="shared_gpu: processes per GPU")
    parser.add_argument(
        "--links", type=int, default=16, help="shared_gpu: hard links of the raster, one input each"
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}: pick among {','.join(PARTS)}")
    work = args.output
    shutil.rmtree(work / "runs", ignore_errors=True)
    runs = work / "runs"
    result: dict = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "args": vars(args) | {"output": str(args.output)},
    }

    def save() -> None:  # after each part: a run stopped at its time limit keeps what it did
        (work / "device.json").write_text(result_text(result))

    if "sample" in parts:
        result["sample"] = sample_agreement(runs)
        save()
    gpu = TaskResources(os.cpu_count() or 1, "0")
    if "partition" in parts or "shared_gpu" in parts:
        unet = save_model("unet", work / "models")
        raster = make_large_raster(work / "rasters" / f"nc_{args.size}.tif", args.size)
        options = (
            "--tile-size",
            str(args.tile),
            "--precision",
            args.precision,
            "--scale",
            str(1 / 255),
        )
        batch = args.batch
        if batch == "auto":  # what `--batch-size auto` picks on this device for this window
            probe_job = _job([raster], unet, runs / "unet", *options)
            batch = auto_batch(probe_job)
            result["auto_batch"] = {"window": probe_job.tiling.window_size, "batch": batch}
        batch = int(batch)
        job = _job([raster], unet, runs / "unet", *options, "--batch-size", str(batch))
        result["model_only"] = model_only(unet, args.tile, job.tiling.halo, batch, args.precision)
        save()
    if "partition" in parts:
        result["partition"] = timed_partition(job, gpu, batch)
        result["partition"]["share_of_model_only"] = (
            result["partition"]["mpx_per_s"] / result["model_only"]["mpx_per_s"]
        )
        save()
    if "shared_gpu" in parts:
        links = []
        for index in range(args.links):
            link = raster.with_name(f"{raster.stem}_{index:02d}.tif")
            if not link.exists():
                os.link(raster, link)
            links.append(link)
        result["shared_gpu"] = []
        for tasks in map(int, args.tasks.split(",")):
            shared = [
                _job(links, unet, runs / f"shared-{tasks}-{name}", *options)
                for name in ("timed", "warm")
            ]
            measured = shared_gpu(*shared, tasks)
            measured["share_of_model_only"] = (
                measured["mpx_per_s"] / result["model_only"]["mpx_per_s"]
            )
            result["shared_gpu"].append(measured)
            save()
    if "sample_model" in parts:
        # The sample's land-cover model takes the six Landsat bands.
        six_bands = make_large_raster(
            work / "rasters" / f"nc6_{args.size}.tif", args.size, bands=(1, 2, 3, 4, 5, 6)
        )
        sample_options = [six_bands], ROOT / "data" / "landcover.keras", runs / "sample-large"
        sample = _job(*sample_options, "--tile-size", str(args.tile))
        sample_batch = auto_batch(sample) if args.batch == "auto" else int(args.batch)
        sample = _job(
            *sample_options, "--tile-size", str(args.tile), "--batch-size", str(sample_batch)
        )
        result["partition_sample_model"] = timed_partition(sample, gpu, sample_batch)
        save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
