"""Airflow DAG: run sparkinfer daily with SparkSubmitOperator.

Airflow runs from its own environment (`make airflow` makes .venv-airflow); the operator
calls the `spark-submit` it finds on PATH, which must be the project's (.venv/bin first on
the scheduler's and workers' PATH), and the master comes from the `spark_default`
connection (for example AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "yarn"}').
Each run writes to `<output>/<ds>`, the run's date, so reruns of a day resume that day's
outputs and days never mix.
"""

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
LOG4J = REPO / "conf" / "log4j2.properties"

with DAG(
    dag_id="sparkinfer_daily",
    description="Seam-free inference of a model over georeferenced rasters, one COG per input",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    params={
        "input": Param(
            str(REPO / "data" / "nc_landsat7_2000.tif"),
            type="string",
            description="raster file, folder or glob",
        ),
        "model": Param(
            str(REPO / "data" / "landcover.keras"),
            type="string",
            description=".keras file or SavedModel folder",
        ),
        "output": Param(
            str(REPO / "out" / "airflow"),
            type="string",
            description="output root; the run's date is appended",
        ),
        "tile_size": Param(512, type="integer", minimum=1, description="core tile side"),
    },
):
    SparkSubmitOperator(
        task_id="infer_tiles",
        application=str(REPO / "jobs" / "infer_tiles.py"),
        application_args=[
            "--input",
            "{{ params.input }}",
            "--model",
            "{{ params.model }}",
            "--output",
            "{{ params.output }}/{{ ds }}",
            "--tile-size",
            "{{ params.tile_size }}",
        ],
        conn_id="spark_default",
        name="sparkinfer-{{ ds }}",
        properties_file=str(REPO / "conf" / "spark-defaults.conf"),
        conf={
            "spark.executorEnv.PYSPARK_PYTHON": PYTHON,
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG4J}",
        },
        env_vars={"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON},
    )
