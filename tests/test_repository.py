"""What a clone carries works on any machine: the lock pins packages of the registry by name,
and no tracked file names a place of the machine it was written on."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# An absolute path into a temporary folder, a home folder or this workplace's checkouts, where
# it starts a token (a Databricks `dbfs:/tmp/...` or a `$(VENV)/home/...` is no such path).
MACHINE_PATH = re.compile(r"(?:^|[\s\"'`=(\[,])(/tmp|/root|/home|/Users|/work|/var/folders)/")
REGISTRY_PIN = re.compile(r"[A-Za-z0-9._-]+==[^\s@;]+")


def test_the_lock_holds_registry_pins_only():
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert len(pins) > 50  # the whole environment, not a stub
    assert [line for line in pins if not REGISTRY_PIN.fullmatch(line)] == []


def test_the_lock_check_refuses_a_file_url():
    """`make lock`'s own check, on a freeze that holds a wheel from a local file."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (pattern,) = re.findall(r"grep -vE '([^']+)' requirements.lock.new", makefile)
    wheel = "ukis-csmask @ file:///tmp/w/ukis_csmask-1.0.0.whl"
    freeze = f"numpy==2.1.0\n{wheel}\n-e .\n"
    found = subprocess.run(
        ["grep", "-vE", pattern.replace("$$", "$")], input=freeze, capture_output=True, text=True
    )
    assert found.stdout.splitlines() == [wheel, "-e ."]


def _tracked_texts():
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, names):
        path = ROOT / name.decode()
        if path == Path(__file__):
            continue  # its examples of such paths
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary files (rasters, models) and files deleted in the working tree


def test_no_tracked_file_names_a_path_of_this_machine():
    leaks = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path, text in _tracked_texts()
        for number, line in enumerate(text.splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert leaks == []


def test_the_machine_path_pattern():
    assert MACHINE_PATH.search('"work": "/tmp/wt/out"')
    assert MACHINE_PATH.search("see /work/shared/FIELD-NOTES.md")
    assert MACHINE_PATH.search("PYTHON ?= /root/.pyenv/bin/python")
    assert not MACHINE_PATH.search('"output": "dbfs:/tmp/out"')
    assert not MACHINE_PATH.search("AIRFLOW_DB := $(AIRFLOW_VENV)/home/airflow.db")
    assert not MACHINE_PATH.search('"/dbfs/tmp/out"')
