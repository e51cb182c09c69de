import os
import sys
from pathlib import Path

import pytest

# Executors and Python workers must run this interpreter (the project's venv).
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


# Fixtures that start Spark (a session, a cluster): a test that uses one, directly or through
# another fixture, is slow. The fast loop (`pytest -m "not slow"`) runs no Spark at all.
SPARK_FIXTURES = {"spark", "run", "standalone"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SPARK_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_spark_in_fast_tests(request, monkeypatch):
    """A test not marked slow cannot start Spark: its SPARK_HOME names no Spark, so a JVM it
    would start (in this process or a child) fails, and the test with it."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("SPARK_HOME", str(ROOT / "tests" / "no-spark-in-fast-tests"))


@pytest.fixture(scope="session")
def spark():
    from processes import JVM_OPTIONS
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("sparkinfer-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """The test models, built once per session."""
    from builders import conv_stack, dense_classifier, unet

    folder = tmp_path_factory.mktemp("models")
    return {
        "conv": conv_stack(folder / "conv.keras"),
        "unet": unet(folder / "unet.keras"),
        "dense": dense_classifier(folder / "dense.keras"),
    }


@pytest.fixture(scope="session")
def onnx_models(models, tmp_path_factory):
    """The test models exported to ONNX, for the runs that start Python workers afresh (a job
    submitted to a cluster): they load onnxruntime in 0.3 s, TensorFlow in 8."""
    from builders import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(models[name], folder / f"{name}.onnx") for name in ("conv", "unet")}


@pytest.fixture
def run(spark):
    """Run the job in-process on the shared local[2] session; returns the run report."""
    from sparkinfer.config_sources import load_config
    from sparkinfer.job import prepare_job, run_job

    def _run(**options):
        config = load_config(options, defaults_file=ROOT / "conf" / "default.yaml")
        return run_job(spark, prepare_job(config)).report

    return _run


@pytest.fixture(scope="session")
def standalone(tmp_path_factory):
    """A Spark standalone cluster on 127.0.0.1 (spark://... URL) whose worker offers two fake
    GPUs, shared by the tests that submit to a cluster; stopped after the session."""
    from servers import standalone_cluster

    with standalone_cluster(tmp_path_factory.mktemp("standalone"), gpus=2) as url:
        yield url


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with buckets `scenes` and `predictions`; its AWS variables are
    set in this process (and so in every spark-submit.sh the tests start) for the module."""
    from servers import s3_server

    with (
        s3_server(tmp_path_factory.mktemp("s3"), ["scenes", "predictions"]) as env,
        pytest.MonkeyPatch.context() as patch,
    ):
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
