"""The job's edge with Spark: what it asks of a session, classic or Spark Connect.

Spark Connect (Databricks shared and serverless compute, Spark 4's `--remote`) has no
SparkContext: no broadcast variables, no RDDs, no executor environment, no setting read from
the driver's JVM. Everything the job needs from a session goes through this module, and only
DataFrame operations that both kinds run: `spark.range(...).mapInArrow(...)`, the session's
configuration, and files added to the session. No session setting is ever changed, so a
notebook's own session is left as it was.

`run_stage` runs each of the job's stages; `warm_workers` starts the Python workers before the
first, loads the model in them and has one inspect it.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from sparkinfer.devices import task_resources
from sparkinfer.errors import JobFailed, ModelError, first_line
from sparkinfer.inspection import ModelInfo, inspect_package
from sparkinfer.model import ModelPackage, load_for_task
from sparkinfer.plan import task_bounds
from sparkinfer.runtimes import RuntimeOptions

# Task slots assumed on a Spark Connect server that states neither `spark.default.parallelism`
# nor a local master: enough tasks to keep a few executors busy; set the setting to say better.
CONNECT_DEFAULT_SLOTS = 8


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def slots_of_master(master: str, cpu_count: int) -> int | None:
    """Task slots a master URL states (`local[4]`, `local[*]`, `local-cluster[2,1,1024]`);
    None for a cluster manager's URL."""
    if master == "local":
        return 1
    local = re.fullmatch(r"local\[(\*|\d+)(?:,\d+)?\]", master)
    if local:
        return cpu_count if local.group(1) == "*" else int(local.group(1))
    cluster = re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master)
    if cluster:
        return int(cluster.group(1)) * int(cluster.group(2))
    return None


def task_slots(spark) -> int:
    """How many tasks the session's executors run at once."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    stated = spark.conf.get("spark.default.parallelism", None)
    if stated:
        return int(stated)
    master = spark.conf.get("spark.master", "")
    return slots_of_master(master, os.cpu_count() or 1) or CONNECT_DEFAULT_SLOTS


def application(spark) -> dict:
    """The master, the application's id and the kind of session, for the run report."""
    conf = spark.conf
    return {
        "master": conf.get("spark.master", None),
        "app_id": conf.get("spark.app.id", None),
        "connect": is_connect(spark),
        "speculation": conf.get("spark.speculation", "false") == "true",
        "task_gpu_share": task_gpu_share(spark),
    }


def task_gpu_share(spark) -> float:
    """The share of a GPU each task is given (`spark.task.resource.gpu.amount`; 1 without GPUs):
    0.25 when four tasks share one."""
    return float(spark.conf.get("spark.task.resource.gpu.amount", None) or 1)


def web_ui(spark) -> str | None:
    """The Spark UI's address, where the driver knows it (not over Connect)."""
    return None if is_connect(spark) else spark.sparkContext.uiWebUrl


class Shipment:
    """A model package on its way to the executors; `package()` there gives it back."""

    def package(self) -> ModelPackage:
        raise NotImplementedError


@dataclass(frozen=True)
class _Broadcast(Shipment):
    variable: object  # pyspark.Broadcast

    def package(self) -> ModelPackage:
        return self.variable.value


_ARRIVED: dict[str, ModelPackage] = {}  # per Python worker: packages read from session files


@dataclass(frozen=True)
class _SessionFile(Shipment):
    name: str

    def package(self) -> ModelPackage:
        if self.name not in _ARRIVED:
            from pyspark import SparkFiles

            with open(SparkFiles.get(self.name), "rb") as file:
                _ARRIVED[self.name] = pickle.load(file)
        return _ARRIVED[self.name]


@contextmanager
def shipped(spark, package: ModelPackage) -> Iterator[Shipment]:
    """`package` sent to the executors once for the stages run inside: a zstd-compressed
    broadcast variable on a classic session; over Spark Connect a file added to the session
    (`addArtifacts`), named by the package's digest, read once per Python worker."""
    if not is_connect(spark):
        variable = spark.sparkContext.broadcast(package)
        yield _Broadcast(variable)
        variable.unpersist()  # not after a failure: the job's other tasks may still read it
        return
    name = f"sparkinfer-model-{package.digest[:16]}.pkl"
    with tempfile.TemporaryDirectory(prefix="sparkinfer-") as folder:
        path = Path(folder) / name
        path.write_bytes(pickle.dumps(package, protocol=pickle.HIGHEST_PROTOCOL))
        spark.addArtifacts(str(path), file=True)  # the same name again is the same bytes
    yield _SessionFile(name)


@contextmanager
def worker_environment(spark, key: str, value: str) -> Iterator[None]:
    """Stages started inside run in Python workers with `key=value` in their environment.

    Spark pools Python workers by the environment their functions carry, so workers of
    different values never mix. Over Spark Connect the executors' environment is the cluster's
    (`spark.executorEnv.*`): nothing is set, and the workers check what they need themselves."""
    if is_connect(spark):
        yield
        return
    environment = spark.sparkContext.environment
    previous = environment.get(key)
    environment[key] = value
    try:
        yield
    finally:
        if previous is None:
            del environment[key]
        else:
            environment[key] = previous


def map_in_partitions(
    spark,
    table: pa.Table,
    partitions: int,
    function: Callable,
    schema: pa.Schema,
    tapered: bool = False,
) -> list:
    """Run `function` (a mapInArrow function) over `table` cut into `partitions` runs of
    consecutive rows (`task_bounds`); its output rows, collected on the driver.

    `spark.range` gives each task its index, without a shuffle; the task takes its rows of
    `table` (a few numbers each), which travels with the function."""
    bounds = task_bounds(len(table), partitions, tapered)

    def rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def selected() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for task in batch.column(0).to_pylist():
                    start, stop = int(bounds[task]), int(bounds[task + 1])
                    yield from table.slice(start, stop - start).to_batches()

        return function(selected())

    tasks = len(bounds) - 1
    frame = spark.range(tasks, numPartitions=tasks)
    return frame.mapInArrow(rows, spark_schema(schema)).collect()


def run_stage(
    spark,
    table: pa.Table,
    partitions: int,
    partition: Callable[[Shipment | None], Callable],
    schema: pa.Schema,
    *,
    failed: str,
    hint: str,
    package: ModelPackage | None = None,
    tapered: bool = False,
) -> pa.Table:
    """One stage of the job: `partition(shipment)`, a mapInArrow function made with the model
    `package` shipped (or None without one), run over `table` in `partitions` tasks
    (`map_in_partitions`); its rows on the driver, in `schema`. A failed Spark job raises a
    one-line `JobFailed`: `failed`, the task's cause, then `hint`."""
    with ExitStack() as stack:
        stack.enter_context(spark_failures(failed, hint))
        shipment = None if package is None else stack.enter_context(shipped(spark, package))
        rows = map_in_partitions(spark, table, partitions, partition(shipment), schema, tapered)
    return pa.Table.from_pylist([row.asDict() for row in rows], schema=schema)


def spark_schema(schema: pa.Schema):
    """The Spark StructType of an Arrow schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


@contextmanager
def spark_failures(what: str, hint: str) -> Iterator[None]:
    """Raise a failed Spark job as a one-line `JobFailed`: what failed, the failed task's cause
    and what to do.

    The executors' full stack traces are already in Spark's log."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (Py4JJavaError, PySparkException) as exc:
        raise JobFailed(f"{what}: {task_failure(str(exc))}; {hint}") from None


def task_failure(text: str) -> str:
    """The cause of a failed Spark job in one line, from the driver-side exception's text."""
    lost = re.search(r"most recent failure: Lost task .*?\): (?:\S+Exception: )?(.+)", text)
    if lost:  # a JVM-side failure: "... Lost task 0.0 in stage 2.0 (TID 5) (host ...): cause"
        cause = lost.group(1)
    else:  # a Python exception in the task: its traceback ends with "Type: message"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        cause = lines[-1] if lines else "unknown error"
    return cause.split(". Consider setting")[0][:300]


INSPECTED_SCHEMA = pa.schema([("inspected", pa.binary())])  # a pickled ModelInfo or error line


def warm_workers(
    spark, package: ModelPackage, options: RuntimeOptions, names: list[str]
) -> ModelInfo | None:
    """Start a Python worker per core and load the model in each, with a job of one task per
    core, so that the stage's tasks find it loaded in the workers Spark reuses. The first task
    also inspects the model (`inspect_package`): the driver then never starts a framework.

    Returns what the inspection found; raises its ModelError; None when the job itself failed
    (the caller inspects on the driver, and the stage reports what keeps workers from running).
    """
    from py4j.protocol import Py4JJavaError
    from pyspark import TaskContext
    from pyspark.errors import PySparkException

    def load(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        resources = task_resources()
        package = shipment.package()
        # First, so that the runtime sets the task's thread limits before anything starts
        # the framework. The model itself, not its test-time augmentation: that is what is
        # inspected (augmentation mirrors its receptive field, the halo stays the same).
        runtime = None
        with suppress(Exception):  # the inspection below loads it again and says why it fails
            runtime = load_for_task(package, replace(options, tta="none"), resources)
        found = None
        if TaskContext.get().partitionId() == 0:
            try:
                found = pickle.dumps(inspect_package(package, names, options.backend, runtime))
            except ModelError as exc:
                found = pickle.dumps(str(exc))
            except Exception as exc:  # noqa: BLE001 -- whatever fails, the model is unusable
                found = pickle.dumps(f"{' + '.join(names)}: cannot load model ({first_line(exc)})")
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"inspected": [found]}, schema=INSPECTED_SCHEMA)

    cores = task_slots(spark)
    with shipped(spark, package) as shipment:
        with worker_environment(spark, "KERAS_BACKEND", options.backend):
            frame = spark.range(cores, numPartitions=cores).mapInArrow(
                load, spark_schema(INSPECTED_SCHEMA)
            )
        try:
            rows = frame.collect()
        except (Py4JJavaError, PySparkException):
            return None
    found = next((pickle.loads(r.inspected) for r in rows if r.inspected is not None), None)
    if isinstance(found, str):
        raise ModelError(found)
    return found
