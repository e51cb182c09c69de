#!/usr/bin/env bash
# Submit jobs/infer_tiles.py with the project's interpreter and library.
#   SPARK_MASTER       master URL (default local[*,4]: all cores, a failed task tried up to 4
#                      times, as on a cluster): spark://host:7077, yarn, k8s://https://...
#   SPARK_SUBMIT_ARGS  extra spark-submit options, e.g. "--executor-memory 4g --num-executors 8"
#   SPARKINFER_VENV    virtual environment holding pyspark and the dependencies (default .venv)
#   SPARKINFER_JVM_ARCHIVE  the JVM's class-data archive made for that venv's Spark (default
#                      build/jvm/spark-classes.jsa, made by make for .venv)
#   SPARK_REMOTE       run as a Spark Connect client instead: sc://host:15002, or local[2] for
#                      a local Connect server (SPARK_MASTER and SPARK_SUBMIT_ARGS then do not
#                      apply: the server's cluster runs the stage, and needs the package installed)
# Every argument after the script name goes to the job (see --help).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SPARKINFER_VENV:-$here/.venv}"
python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
    echo "spark-submit.sh: no Python at $python; run 'make venv' first" >&2
    exit 2
fi

export PATH="$venv/bin:$PATH"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$python}"
master="${SPARK_MASTER:-local[*,4]}"
if [[ "$master" == local* || "${SPARK_REMOTE:-}" == local* ]]; then
    export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

verbose=0
for arg in "$@"; do
    if [[ "$arg" == "--verbose" ]]; then verbose=1; fi
done
if (( ! verbose )); then
    exec 2> >(grep -v --line-buffered '^WARNING: Using incubator modules' >&2)
fi

# The class-data archive of Spark's classes (conf/jvm-archive.sh, made by make) halves the JVM's
# start; a JVM that cannot use it (another version, another class path, no file) starts as usual.
archive="${SPARKINFER_JVM_ARCHIVE:-$here/build/jvm/spark-classes.jsa}"
java_options="-XX:SharedArchiveFile=$archive -Xlog:cds*=off"
log_options="-Dlog4j2.configurationFile=file:$here/conf/log4j2.properties"

# A Spark Connect client is a Python program: no spark-submit, and its stderr stays its own. A
# local server (local[N]) starts in the client's JVM, with the job's settings.
if [[ -n "${SPARK_REMOTE:-}" ]]; then
    export PYSPARK_SUBMIT_ARGS="--properties-file $here/conf/spark-defaults.conf \
--driver-java-options '$java_options $log_options' pyspark-shell"
    exec "$python" "$here/jobs/infer_tiles.py" "$@"
fi

# The library travels to executors as a zip; on a cluster whose image already has the package
# installed, the zip simply shadows it with the same code.
mkdir -p "$here/build"
"$python" - "$here" <<'PY'
import pathlib, sys, zipfile
root = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(root / "build" / "sparkinfer.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    for path in sorted((root / "sparkinfer").rglob("*.py")):
        zf.write(path, path.relative_to(root))
PY

# spark-submit merges the Python driver's stderr into its stdout: the driver tags its stderr
# lines and they go back to stderr here, so stdout holds only the summary. Without --verbose,
# the JVM's start-up notice is left out.
tag=$'\x1e'
export SPARKINFER_STDERR_TAG="$tag"
# A shell loop, not awk: mawk holds lines for /dev/stderr until it exits, progress included.
exec > >(while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ "$line" == "$tag"* ]]; then printf '%s\n' "${line#"$tag"}" >&2
    else printf '%s\n' "$line"; fi
done)

extra=()
if [[ -n "${SPARK_SUBMIT_ARGS:-}" ]]; then
    read -r -a extra <<< "$SPARK_SUBMIT_ARGS"
fi

exec "$venv/bin/spark-submit" \
    --master "$master" \
    --name sparkinfer \
    --properties-file "$here/conf/spark-defaults.conf" \
    --driver-java-options "$java_options $log_options" \
    --conf "spark.executor.extraJavaOptions=$java_options" \
    --conf "spark.executorEnv.PYSPARK_PYTHON=$PYSPARK_PYTHON" \
    --py-files "$here/build/sparkinfer.zip" \
    "${extra[@]}" \
    "$here/jobs/infer_tiles.py" "$@"
