#!/usr/bin/env bash
# Build the JVM class-data archive that spark-submit.sh maps at start (make does this once):
# Spark's classes come from one mapped file instead of thousands of jar entries parsed and
# verified one by one, which halves the start of a session on a 2-core machine.
#   conf/jvm-archive.sh ARCHIVE
# The archive records the JVM and class path it was made with; any other JVM ignores it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SPARKINFER_VENV:-$here/.venv}"
archive="$1"
mkdir -p "$(dirname "$archive")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A session that runs the kinds of work the job does (Arrow frames, Python workers in
# mapInArrow, a collect), so their classes are loaded and archived when the JVM exits.
cat > "$work/warm.py" <<'PY'
import pyarrow as pa
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
frame = spark.createDataFrame(pa.table({"id": list(range(8))}).to_pandas())
frame.mapInArrow(lambda batches: batches, "id long").repartition(2).collect()
spark.stop()
PY

PATH="$venv/bin:$PATH" SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$venv/bin/python" \
    "$venv/bin/spark-submit" --master 'local[2]' \
    --driver-java-options "-XX:ArchiveClassesAtExit=$work/classes.jsa -Xlog:cds*=off \
-Dlog4j2.configurationFile=file:$here/conf/log4j2.properties" \
    "$work/warm.py" > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
mv "$work/classes.jsa" "$archive"
