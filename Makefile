# Two commands for a new user: `make run` and `make test`. Both create .venv from
# pyproject.toml at requirements.lock's versions when it is missing (or older than either).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
# Airflow has its own environment: its Spark provider pulls pyspark-client.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
# A migrated metadata database that each Airflow test copies (migrating takes 15 s).
AIRFLOW_DB := $(AIRFLOW_VENV)/home/airflow.db
# Spark's classes in one mapped file: the JVM of every spark-submit.sh run starts in half the time.
JVM_ARCHIVE := build/jvm/spark-classes.jsa
SAMPLE_INPUT ?= data/nc_landsat7_2000.tif data/L7_ETMs.tif
SAMPLE_MODEL ?= data/landcover.keras
SAMPLE_OUTPUT ?= out/sample

.PHONY: grid-example run test bench lint lock smoke-py312 venv airflow clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements.lock -e '.[cpu,dev,spark]'
	touch $(STAMP)

# requirements.lock: the versions .venv holds, after a change of pyproject.toml's ranges. Only
# registry pins (NAME==VERSION): a package installed from a file, a URL or a folder would name
# a place that other machines do not have, so it stops the lock; install it from the registry.
lock: $(STAMP)
	{ sed -n '1,2p' requirements.lock; $(VENV)/bin/python -m pip freeze --exclude-editable; } \
		> requirements.lock.new
	@if grep -vE '^#|^[A-Za-z0-9._-]+==[^ ]+$$' requirements.lock.new >&2; then \
		echo "make lock: the lines above are not registry pins; reinstall them by name" >&2; \
		rm requirements.lock.new; exit 1; fi
	mv requirements.lock.new requirements.lock

$(JVM_ARCHIVE): $(STAMP) conf/jvm-archive.sh
	SPARKINFER_VENV=$(abspath $(VENV)) conf/jvm-archive.sh $@

airflow: $(AIRFLOW_DB)

$(AIRFLOW_STAMP): conf/airflow-requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r conf/airflow-requirements.txt
	touch $(AIRFLOW_STAMP)

$(AIRFLOW_DB): $(AIRFLOW_STAMP)
	rm -rf $(AIRFLOW_VENV)/home
	AIRFLOW_HOME=$(abspath $(AIRFLOW_VENV)/home) AIRFLOW__CORE__LOAD_EXAMPLES=False \
		$(AIRFLOW_VENV)/bin/airflow db migrate > /dev/null

# The job on VENV's Python and Spark (spark-submit.sh takes .venv unless told).
run: $(STAMP) $(JVM_ARCHIVE)
	SPARKINFER_VENV=$(abspath $(VENV)) SPARKINFER_JVM_ARCHIVE=$(abspath $(JVM_ARCHIVE)) \
	./spark-submit.sh --input $(SAMPLE_INPUT) --model $(SAMPLE_MODEL) --output $(SAMPLE_OUTPUT) \
		--tile-size 128 --quicklook

# Many scenes, one map (docs/grids.md): the Olinda sample and a copy of it moved east by two
# thirds of its width and warped into the next UTM zone, mapped on one EPSG:3857 grid.
GRID_EXAMPLE ?= out/grid-example
grid-example: $(STAMP) $(JVM_ARCHIVE)
	rm -rf $(GRID_EXAMPLE) && mkdir -p $(GRID_EXAMPLE)/in
	cp data/L7_ETMs.tif $(GRID_EXAMPLE)/in/olinda.tif
	cp data/L7_ETMs.tif $(GRID_EXAMPLE)/moved.tif
	$(VENV)/bin/rio edit-info $(GRID_EXAMPLE)/moved.tif \
		--nodata 0 --transform '[28.5, 0, 295407.25, 0, -28.5, 9120760.75]'
	$(VENV)/bin/rio warp $(GRID_EXAMPLE)/moved.tif $(GRID_EXAMPLE)/in/east-utm24.tif \
		--dst-crs EPSG:31984 --dst-nodata 0 --resampling bilinear
	SPARKINFER_VENV=$(abspath $(VENV)) SPARKINFER_JVM_ARCHIVE=$(abspath $(JVM_ARCHIVE)) \
	./spark-submit.sh --input $(GRID_EXAMPLE)/in/olinda.tif $(GRID_EXAMPLE)/in/east-utm24.tif \
		--model $(SAMPLE_MODEL) --output $(GRID_EXAMPLE)/map --grid EPSG:3857 --resolution 30 \
		--grid-tile 256 --tile-size 128 --quicklook

test: $(STAMP) $(AIRFLOW_DB) $(JVM_ARCHIVE)
	$(VENV)/bin/python -m pytest

# Speed and memory against the bare model, a plain script and predict_batch_udf (about 25 min).
bench: $(STAMP) $(JVM_ARCHIVE)
	$(VENV)/bin/python -m benchmarks.run

# `make run` on Python 3.12, in a venv of its own (CI runs it after the suite).
PYTHON312 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12) python3.12)
smoke-py312:
	$(MAKE) run PYTHON=$(PYTHON312) VENV=.venv-py312 JVM_ARCHIVE=build/jvm/py312-classes.jsa \
		SAMPLE_OUTPUT=out/sample-py312
	.venv-py312/bin/python -c "import json, sys; v = json.load(open('out/sample-py312/_run.json'))['python']; \
		sys.exit(None if v.startswith('3.12.') else f'the smoke run ran on Python {v}, not 3.12')"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf out build dist *.egg-info
