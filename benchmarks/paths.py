"""The four ways to run a model over a raster that the benchmark compares, one per process.

    python -m benchmarks.paths PATH --raster R --model M --output DIR --result R.json [...]

Every path gets its tiles from sparkinfer's plan for the same config, so all four compute the
same read windows (core + halo) and produce the same useful pixels; only how they get there
differs. Each prints nothing and writes one JSON result: seconds, useful pixels and the peak
resident memory (VmHWM) of this process and of every process it started (the JVM, the Python
workers), read before Spark stops.

- model_only: the model on tensors already in memory, batch by batch (the limit).
- plain_script: what a user writes instead: one process, rasterio + TensorFlow, a sliding window
  over the raster that writes a tiled GeoTIFF.
- predict_batch_udf: Spark's built-in UDF, fed tile windows it reads itself, its class maps
  written to tile files and assembled into the same COG as sparkinfer's.
- sparkinfer: the job itself, end to end (prepare_job + run_job), COG included.

Start-up is timed apart from a path's seconds, since a long job pays it once: the interpreter and
the TensorFlow import of every path, and for the Spark paths the session start and a first job
that starts one Python worker per core and imports TensorFlow there (`spark_warmup_s`). Model
loading and graph tracing stay inside every path's seconds, on every worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np

from benchmarks.run import result_text
from sparkinfer.plan import PixelWindow, Tile

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "conf" / "default.yaml"
SPARK_DEFAULTS = ROOT / "conf" / "spark-defaults.conf"
SCALE = 1 / 255


def _vm_hwm_mb(pid: int | str) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.append(child)
            todo.append(child)
    return found


def peak_memory() -> dict:
    """Peak resident memory in MiB of this process, its JVM and its Python workers."""
    jvm, workers = 0.0, []
    for pid in _descendants(os.getpid()):
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        if exe == "java":
            jvm = max(jvm, _vm_hwm_mb(pid))
        elif exe.startswith("python"):
            workers.append(_vm_hwm_mb(pid))
    return {
        "driver_mb": round(_vm_hwm_mb("self"), 1),
        "jvm_mb": round(jvm, 1),
        "worker_max_mb": round(max(workers, default=0.0), 1),
        "python_processes": len(workers),
    }


def _job(args):
    from sparkinfer.flags import config_from_args
    from sparkinfer.job import prepare_job

    argv = [
        "--input",
        str(args.raster),
        "--model",
        str(args.model),
        "--output",
        str(args.output),
        "--tile-size",
        str(args.tile_size),
        "--scale",
        str(SCALE),
    ]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    return prepare_job(config_from_args(argv, defaults_file=DEFAULTS))


def _batch_size(job) -> int:
    """The job's tiles per model call, `auto` resolved as the job resolves it on a CPU: every
    path runs the same batches."""
    from sparkinfer.runtimes.base import CPU_CALL_PIXELS

    if job.config.batch_size != "auto":
        return job.config.batch_size
    window = job.tiling.tile_size + 2 * job.tiling.halo
    return max(1, CPU_CALL_PIXELS // window**2)


def _tiles(job) -> list[Tile]:
    plan = job.rasters[0].plan
    chunks = plan.chunks().select(["chunk_row", "chunk_col"]).to_pylist()
    return [t for c in chunks for t in plan.tiles_of_chunk(c["chunk_row"], c["chunk_col"])]


def _read(src, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """A tile's model input and the validity of its core (nodata in any band is invalid)."""
    from sparkinfer.raster import read_window
    from sparkinfer.runtimes import preprocess

    read = tile.read
    data, valid = read_window(
        src,
        list(range(1, src.count + 1)),
        read.row_off,
        read.col_off,
        read.height,
        read.width,
        masking="nodata",
    )
    core = valid[tile.core.slices(read)]
    return preprocess(np.moveaxis(data, 0, -1), valid, _normalization()), core


def _core_classes(tile: Tile, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The tile's class map: argmax of its core's scores, 255 where the input is nodata."""
    core = scores[tile.core.slices(tile.read)]
    classes = core.argmax(-1).astype(np.uint8)
    classes[~valid] = 255
    return classes


def _normalization():
    from sparkinfer.config import Normalization

    return Normalization(scale=SCALE)


def model_only(args) -> dict:
    import rasterio

    from sparkinfer.model import load_model

    job = _job(args)
    tiles = _tiles(job)
    with rasterio.open(args.raster) as src:
        windows = [_read(src, t)[0] for t in tiles]
    size = _batch_size(job)
    batches = [np.stack(windows[i : i + size]) for i in range(0, len(windows), size)]
    del windows
    runtime = load_model(args.model)
    runtime.scores(batches[0])  # trace the graph once, outside the timing
    started = time.perf_counter()
    for batch in batches:
        runtime.scores(batch)
    return {"seconds": time.perf_counter() - started, "memory": peak_memory()}


def plain_script(args) -> dict:
    """A single-process sliding window, written the way a user would."""
    import keras
    import rasterio
    from rasterio.windows import Window

    job = _job(args)
    tiles = _tiles(job)
    started = time.perf_counter()
    model = keras.models.load_model(args.model, compile=False)
    output = Path(args.output) / "plain.tif"
    Path(args.output).mkdir(parents=True, exist_ok=True)
    with rasterio.open(args.raster) as src:
        profile = src.profile | {
            "count": 1,
            "dtype": "uint8",
            "nodata": 255,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
            "predictor": 2,
        }
        with rasterio.open(output, "w", **profile) as dst:
            size = _batch_size(job)
            for i in range(0, len(tiles), size):
                batch = tiles[i : i + size]
                pixels, valid = zip(*(_read(src, t) for t in batch), strict=True)
                scores = model.predict_on_batch(np.stack(pixels))
                for tile, score, core_valid in zip(batch, scores, valid, strict=True):
                    core = tile.core
                    window = Window(core.col_off, core.row_off, core.width, core.height)
                    dst.write(_core_classes(tile, score, core_valid), 1, window=window)
    return {"seconds": time.perf_counter() - started, "memory": peak_memory()}


def _spark(cores: int):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(f"local[{cores}]").appName("sparkinfer-bench")
    for line in SPARK_DEFAULTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            builder = builder.config(key, value.strip())
    spark = builder.config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _warm_up(spark, cores: int) -> None:
    """Start one Python worker per core and import TensorFlow in it, as a first job would (in
    the workers the job uses: those with its Keras backend)."""
    from sparkinfer.session import worker_environment

    def import_tensorflow(batches):
        import tensorflow  # noqa: F401

        yield from batches

    with worker_environment(spark, "KERAS_BACKEND", "tensorflow"):
        frame = spark.range(cores, numPartitions=cores).mapInArrow(import_tensorflow, "id long")
    frame.collect()


def _started_spark(cores: int) -> tuple[object, dict]:
    t = time.perf_counter()
    spark = _spark(cores)
    session_s = time.perf_counter() - t
    t = time.perf_counter()
    _warm_up(spark, cores)
    return spark, {"session_start_s": session_s, "spark_warmup_s": time.perf_counter() - t}


def sparkinfer(args) -> dict:
    from sparkinfer.job import run_job

    spark, startup = _started_spark(args.cores)
    try:
        started = time.perf_counter()
        report = run_job(spark, _job(args)).report
        seconds = time.perf_counter() - started
        memory = peak_memory()
    finally:
        spark.stop()
    return {"seconds": seconds, "startup": startup, "memory": memory, "report": report}


def predict_batch_udf(args) -> dict:
    import pyarrow as pa
    from pyspark.ml.functions import predict_batch_udf as spark_predict_batch_udf
    from pyspark.sql.functions import array
    from pyspark.sql.types import ArrayType, ByteType

    from sparkinfer.cogs import assemble_cog
    from sparkinfer.config import CogOptions

    spark, startup = _started_spark(args.cores)
    try:
        started = time.perf_counter()
        job = _job(args)
        tiles = _tiles(job)
        info, tile_size = job.rasters[0].info, job.tiling.tile_size
        folder = Path(args.output) / "_tiles"
        folder.mkdir(parents=True, exist_ok=True)
        raster, model_path = str(args.raster), str(args.model)

        def make_predict_fn():
            import keras
            import rasterio

            from sparkinfer.runtimes.tensorflow_graph import configure_threads

            configure_threads(1)  # one core per task, as Spark scheduled it
            model = keras.models.load_model(model_path, compile=False)
            src = rasterio.open(raster)

            def predict(windows: np.ndarray) -> np.ndarray:
                batch = [
                    _tile_of(dict(zip(FIELDS, map(int, values), strict=True))) for values in windows
                ]
                pixels, valid = zip(*(_read(src, t) for t in batch), strict=True)
                scores = model.predict_on_batch(np.stack(pixels))
                out = np.full((len(batch), tile_size * tile_size), 255, np.uint8)
                for i, (t, score, core_valid) in enumerate(zip(batch, scores, valid, strict=True)):
                    h, w = t.core.height, t.core.width
                    out[i, : h * w] = _core_classes(t, score, core_valid).ravel()
                return out.view(np.int8)  # Spark has no unsigned byte

            return predict

        classify = spark_predict_batch_udf(
            make_predict_fn,
            return_type=ArrayType(ByteType()),
            batch_size=_batch_size(job),
            input_tensor_shapes=[[len(FIELDS)]],
        )
        frame = spark.createDataFrame(pa.Table.from_pylist([_row(t) for t in tiles]))  # by core
        predicted = frame.withColumn("classes", classify(array(*FIELDS)))

        def write_tiles(batches):
            from sparkinfer.writers import ChunkWriter

            for batch in batches:
                flat = batch.column("classes").flatten().to_numpy().view(np.uint8)
                for i, row in enumerate(batch.drop_columns(["classes"]).to_pylist()):
                    t = _tile_of(row)
                    h, w = t.core.height, t.core.width
                    start = i * tile_size * tile_size
                    classes = flat[start : start + h * w].reshape(h, w)
                    writer = ChunkWriter(_tile_chunk(folder, t), info, 8, False)
                    writer.write(t.core.row_off, t.core.col_off, classes, None)
                    writer.commit()
                yield pa.RecordBatch.from_pydict({"tiles": [batch.num_rows]})

        predicted.mapInArrow(write_tiles, "tiles long").collect()
        chunks = [_tile_chunk(folder, t) for t in tiles]
        assemble_cog(
            info,
            chunks,
            Path(args.output) / "udf.tif",
            CogOptions(),
            scores=False,
            classes=job.model.classes,
            channels=job.model.channels,
            metadata={},
        )
        seconds = time.perf_counter() - started
        memory = peak_memory()
    finally:
        spark.stop()
    return {"seconds": seconds, "startup": startup, "memory": memory}


# A tile as the UDF's table has it: one flat row of numbers.
FIELDS = (
    "tile_row",
    "tile_col",
    "core_row_off",
    "core_col_off",
    "core_height",
    "core_width",
    "read_row_off",
    "read_col_off",
    "read_height",
    "read_width",
)


def _row(tile: Tile) -> dict:
    values = (tile.row, tile.col, *astuple(tile.core), *astuple(tile.read))
    return dict(zip(FIELDS, values, strict=True))


def _tile_of(row: dict) -> Tile:
    values = [row[field] for field in FIELDS]
    return Tile(values[0], values[1], PixelWindow(*values[2:6]), PixelWindow(*values[6:]))


def _tile_chunk(folder: Path, tile: Tile):
    """The tile as a chunk of its own (the UDF path writes each tile's file)."""
    from sparkinfer.writers import ChunkSpec

    return ChunkSpec(str(folder), tile.row, tile.col, *astuple(tile.core))


PATHS = {f.__name__: f for f in (model_only, plain_script, predict_batch_udf, sparkinfer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", choices=sorted(PATHS))
    parser.add_argument("--raster", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, help="default: conf/default.yaml's")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    import tensorflow  # noqa: F401  (start-up, outside every path's timing)

    result = PATHS[args.path](args)
    args.result.write_text(result_text(result), encoding="utf-8")


if __name__ == "__main__":
    main()
