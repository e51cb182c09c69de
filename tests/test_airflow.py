"""The Airflow DAG, from Airflow's own environment (.venv-airflow, made by `make airflow`):
it imports cleanly, and `airflow dags test` runs it for real on the sample."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = ROOT / ".venv-airflow" / "bin"
MIGRATED_DB = ROOT / ".venv-airflow" / "home" / "airflow.db"  # `make airflow` migrates it once
DAG_FILE = ROOT / "jobs" / "airflow_infer_tiles.py"


@pytest.fixture
def airflow_env(tmp_path):
    assert MIGRATED_DB.is_file(), "no .venv-airflow: run `make airflow` (make test does)"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / DAG_FILE.name).symlink_to(DAG_FILE)
    (tmp_path / "home").mkdir()
    shutil.copy(MIGRATED_DB, tmp_path / "home" / "airflow.db")
    return dict(
        os.environ,
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2,2]"}),
        # The operator runs the spark-submit on PATH: the project's.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )


def airflow(args, env, timeout=300):
    return subprocess.run(
        [str(AIRFLOW / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_dag_imports_with_its_schedule_params_and_retries(airflow_env):
    code = """if True:
        import json, os
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        dag = bag.dags["sparkinfer_daily"]
        print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                          "schedule": dag.schedule, "tasks": dag.task_ids,
                          "retries": dag.default_args["retries"],
                          "params": sorted(dag.params)}))
    """
    done = airflow(["python", "-c", code], airflow_env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "errors": {},
        "schedule": "@daily",
        "tasks": ["infer_tiles"],
        "retries": 2,
        "params": ["input", "model", "output", "tile_size"],
    }


def test_airflow_dags_test_runs_the_job_on_the_sample(airflow_env, tmp_path):
    conf = {"output": str(tmp_path / "out"), "tile_size": 128}
    done = airflow(
        ["airflow", "dags", "test", "sparkinfer_daily", "2026-11-26", "-c", json.dumps(conf)],
        airflow_env,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    output = tmp_path / "out" / "2026-11-26"  # the run's date, templated into the path
    sample = ROOT / "data" / "nc_landsat7_2000.tif"
    with rasterio.open(sample) as src, rasterio.open(output / sample.name) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    report = json.loads((output / "_run.json").read_text())
    assert report["config"]["tile_size"] == 128 and report["failed"] == []
