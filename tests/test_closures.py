"""What each stage's tasks carry: its spec and the plan's rows, never the model's bytes. The
model travels once per stage, shipped (`session.shipped`); a task closure that captured it
would be pickled into every task as well. Pickled here as Spark pickles a mapInArrow function,
with a 20 MB model in the job: no closure reaches 64 KiB."""

import os
from dataclasses import replace

import pytest
from builders import write_raster
from pyspark import cloudpickle

from sparkinfer.config_sources import load_config
from sparkinfer.job import prepare_job
from sparkinfer.model import ModelPackage
from sparkinfer.prepare import runtime_options
from sparkinfer.sampling import AssemblySample
from sparkinfer.session import _SessionFile
from sparkinfer.stages.assemble import assembly_partition, assembly_spec
from sparkinfer.stages.estimate import sample_assembly, sample_inference
from sparkinfer.stages.infer import inference, stage_spec

LIMIT = 64 * 1024
MODEL_BYTES = 20_000_000


@pytest.fixture(scope="module")
def job(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("closures")
    scene = write_raster(folder / "scene.tif", 96, 160)
    config = load_config(
        {"input": [str(scene)], "model": str(models["conv"]), "output": str(folder / "out")}
    )
    big = ModelPackage("keras", os.urandom(MODEL_BYTES), "0" * 64)
    return replace(prepare_job(config), package=big)


@pytest.fixture
def shipment():
    return _SessionFile("sparkinfer-model-0000000000000000.pkl")


def test_a_closure_that_took_the_job_would_carry_the_model(job):
    assert len(cloudpickle.dumps(job)) > MODEL_BYTES


def test_the_inference_tasks_carry_no_model(job, shipment):
    function = inference(stage_spec(job, list(job.rasters)), shipment)
    assert len(cloudpickle.dumps(function)) < LIMIT


def test_the_assembly_tasks_carry_no_model(job, shipment):
    verifying = replace(job, config=job.config.model_copy(update={"verify": True}))
    spec = assembly_spec(verifying)
    function = assembly_partition(list(job.rasters), spec, runtime_options(job.config), shipment)
    assert len(cloudpickle.dumps(function)) < LIMIT


def test_the_estimate_s_tasks_carry_no_model(job, shipment):
    inferring = sample_inference(stage_spec(job, list(job.rasters)), shipment)
    samples = [AssemblySample(job.rasters[0], (), (), "scratch")]
    assembling = sample_assembly(samples, assembly_spec(job))
    assert len(cloudpickle.dumps(inferring)) < LIMIT
    assert len(cloudpickle.dumps(assembling)) < LIMIT
