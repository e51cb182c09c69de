"""Locations: local paths and s3:// URIs named, split and handed to GDAL alike."""

import threading
import time

import pytest

from sparkinfer import s3, storage


@pytest.mark.parametrize(
    ("location", "parent", "name", "gdal"),
    [
        ("s3://bucket/in/scene.tif", "s3://bucket/in", "scene.tif", "/vsis3/bucket/in/scene.tif"),
        ("s3://bucket/in/", "s3://bucket", "in", "/vsis3/bucket/in/"),
        ("s3://bucket", "s3://bucket", "bucket", "/vsis3/bucket"),
        ("/data/in/scene.tif", "/data/in", "scene.tif", "/data/in/scene.tif"),
    ],
)
def test_locations_split_alike(location, parent, name, gdal):
    assert storage.parent(location) == parent
    assert storage.name(location) == name
    assert storage.gdal_path(location) == gdal


def test_join_keeps_the_scheme():
    assert storage.join("s3://bucket/out", "_staging", "a.tif") == "s3://bucket/out/_staging/a.tif"
    assert storage.join("/data/out", "a.tif") == "/data/out/a.tif"


def test_gdal_gets_its_s3_endpoint_from_aws_endpoint_url(monkeypatch):
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    with storage.gdal_env() as env:
        options = env.options
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and options["AWS_HTTPS"] == "NO"
    assert options["AWS_VIRTUAL_HOSTING"] == "FALSE"


def test_executors_get_the_aws_variables_that_are_set(monkeypatch):
    for key in s3.AWS_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert s3.executor_environment() == {
        "AWS_REGION": "eu-west-1",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }


def test_local_files_commit_whole_under_their_final_name(tmp_path):
    final = str(tmp_path / "out.json")
    staged = storage.staging_file(final)
    assert staged.parent == tmp_path and staged.name.startswith(".")  # hidden until renamed
    storage.write_text(final, "{}\n")
    assert storage.read_text(final) == "{}\n" and storage.list_names(str(tmp_path)) == {"out.json"}
    assert not storage.create_new(final, "other") and storage.read_text(final) == "{}\n"


def test_a_folder_a_lost_task_still_writes_into_is_removed(tmp_path):
    """A speculative copy that lost goes on writing chunks for a moment after its stage, while
    the assembly removes the staging folder. Writers make no folder: once it is gone, it stays
    gone, with nothing left in it."""
    folder = tmp_path / "staging"
    folder.mkdir()
    for i in range(200):
        (folder / f"chunk_{i}.tif").write_bytes(b"x" * 512)
    killed = time.monotonic() + 0.3  # when Spark's kill reaches the lost task

    def lost_task():
        i = 200
        while time.monotonic() < killed:
            try:
                (folder / f"chunk_{i}.tif").write_bytes(b"x" * 512)
            except FileNotFoundError:
                return
            i += 1

    writer = threading.Thread(target=lost_task)
    writer.start()
    storage.remove_tree(str(folder))
    writer.join()
    assert not folder.exists()
