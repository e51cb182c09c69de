r"""Corrupted GeoTIFFs through the job: each case must end in a correct output, or in exit 3 with
one line naming its file, the good raster's output intact and no traceback, hang or crash
(issue 27).

    .venv/bin/python -m benchmarks.fuzz_inputs --seed 27 --cases 500 --batch 25 \
        --work out/bench/fuzz

Sources: data/nc_landsat7_2000.tif (the sample: 6 bands, tiled 256, deflate, band-interleaved,
its IFD at the end) and a COG made from it here (deflate, 256 blocks, pixel-interleaved, one
overview, its IFDs at the front). Case i corrupts source (i // 6) % 2 with mutation i % 6, from a
`random.Random` seeded with (seed, i), aimed at a region that benchmarks/tiff_fuzz.py finds in
the file: `truncate`, `flip_header`, `flip_ifd`, `flip_offsets`, `flip_tile`, `wrong_bytecount`.

What each case should give: the file read whole by rasterio, in a process of its own (GDAL's
read options as the job's). Each distinct decoded content (pixels, masks, type, CRS, transform,
nodata) is written once as a clean GeoTIFF, and the clean copies run through the job first, in
reference runs of `--ref-batch` rasters: their class maps are what a correct case's must equal.

Each batch is one run of the job as `make run` runs it (`--tile-size 128 --quicklook` on
data/landcover.keras, master local[*,4], conf/spark-defaults.conf), in a process of its own with
a timeout (`--timeout`), over one input folder: the batch's cases and good.tif, a plain copy of
the sample. A case is `correct` (its class map and STAC Item written, the class map equal to its
clean copy's, same CRS and transform) or `refused` (nothing written, one stderr line naming its
file, exit 3); anything else is a `violation`, with its reasons. A batch that times out, exits
otherwise than 0 or 3, prints a traceback or a worker's crash, or loses good.tif's class map is
run again in halves (each with good.tif; `--reruns` runs in all) until the cases that cause it
are alone. A process per run, not `cli.main` on a shared session: in local mode the Python
workers' stderr (a crash, a traceback) reaches the terminal through the JVM, past any capture
of this process's `sys.stderr`; a hang is killed with its JVM; a crash ends with its run.

Writes benchmarks/results/DATE-HOST-fuzz.json (counts by mutation and outcome) and copies each
violating case to WORK/violations/ with violations.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.run import envelope, write_result
from benchmarks.tiff_fuzz import MUTATIONS, tiff_layout

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "nc_landsat7_2000.tif"
MODEL = ROOT / "data" / "landcover.keras"
JOB_OPTIONS = ["--tile-size", "128", "--quicklook"]  # what `make run` adds (Makefile)
GOOD = "good.tif"
# What a crashed or lost Python worker, JVM or native library leaves on stderr.
CRASH_TEXTS = (
    "Python worker exited unexpectedly",
    "Segmentation fault",
    "SIGSEGV",
    "core dumped",
    "A fatal error has been detected",
    "OutOfMemoryError",
    "MemoryError",
)


@dataclass
class Case:
    index: int
    kind: str
    source: str
    path: Path
    detail: dict
    decoded: str | None = None  # digest of what rasterio decodes; None: it cannot
    decode_error: str | None = None
    outcome: str | None = None
    reasons: list[str] = field(default_factory=list)
    line: str | None = None  # the line naming it, when refused
    batch: int | None = None
    run: str | None = None  # the run that classified it


@dataclass
class Run:
    code: int | None  # None: timed out
    stderr: str
    seconds: float
    output: Path

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def other_lines(run: Run) -> list[str]:
    """The run's stderr lines that are not the job's own (`sparkinfer: ...`) nor the JVM's
    start-up notice (which spark-submit.sh leaves out): what a user would see unexplained."""
    return [
        line
        for line in run.lines
        if not line.startswith(("sparkinfer: ", "WARNING: Using incubator modules"))
    ]


# --- the cases ------------------------------------------------------------------------------


def make_sources(folder: Path) -> dict[str, Path]:
    """The sample as it is and a COG made from it."""
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "sample.tif"
    shutil.copyfile(SAMPLE, sample)
    cog = folder / "cog.tif"
    with rasterio.open(SAMPLE) as src:
        profile = {
            k: v for k, v in src.profile.items() if k not in ("blockxsize", "blockysize", "tiled")
        }
        profile |= {"driver": "COG", "compress": "deflate", "blocksize": 256}
        profile |= {"interleave": "pixel", "overview_resampling": "nearest"}
        with rasterio.open(cog, "w", **profile) as dst:
            dst.write(src.read())
    return {"sample": sample, "cog": cog}


def make_cases(sources: dict[str, Path], count: int, seed: int, folder: Path) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {name: path.read_bytes() for name, path in sources.items()}
    layouts = {name: tiff_layout(raw) for name, raw in data.items()}
    kinds, names = list(MUTATIONS), list(sources)
    cases = []
    for i in range(count):
        kind, source = kinds[i % len(kinds)], names[(i // len(kinds)) % len(names)]
        rng = random.Random(f"{seed}-{i}")
        corrupted, detail = MUTATIONS[kind](data[source], layouts[source], rng)
        path = folder / f"c{i:04d}-{kind.replace('_', '-')}-{source}.tif"
        path.write_bytes(corrupted)
        cases.append(Case(i, kind, source, path, detail))
    return cases


# --- what rasterio decodes, and its clean copy ----------------------------------------------


def decode(path: Path, refs: Path) -> dict:
    """Read `path` whole as the job would; its content's digest, its clean copy written to
    `refs` (once per digest). In the process that calls it: GDAL may crash on a bad file."""
    import numpy as np
    import rasterio

    from sparkinfer.errors import first_line
    from sparkinfer.raster import GDAL_READ_OPTIONS, _masking

    try:
        with rasterio.Env(**GDAL_READ_OPTIONS), rasterio.open(path) as src:
            pixels = src.read()
            masking = _masking(src)
            mask = src.read_masks().all(axis=0) if masking == "mask" else None
            meta = {
                "width": src.width,
                "height": src.height,
                "count": src.count,
                "dtype": pixels.dtype.name,
                "crs": src.crs.to_wkt() if src.crs else None,
                "transform": list(src.transform)[:6],
                "nodata": None if masking == "none" else src.nodata,
                "masking": masking,
            }
    except Exception as exc:  # noqa: BLE001 -- whatever rasterio raises: the file is unreadable
        return {"decoded": None, "error": f"{type(exc).__name__}: {first_line(exc)}"}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    if mask is not None:
        digest.update(mask.tobytes())
    name = digest.hexdigest()[:16]
    clean = refs / f"ref-{name}.tif"
    if not clean.exists():
        try:
            profile = {
                "driver": "GTiff",
                "width": meta["width"],
                "height": meta["height"],
                "count": meta["count"],
                "dtype": meta["dtype"],
                "crs": meta["crs"],
                "transform": rasterio.Affine(*meta["transform"]),
                "nodata": meta["nodata"],
                "tiled": True,
                "compress": "deflate",
            }
            partial = clean.with_suffix(".partial")
            with rasterio.open(partial, "w", **profile) as dst:
                dst.write(pixels)
                if mask is not None:
                    dst.write_mask(mask.astype(np.uint8) * 255)
            partial.rename(clean)
        except Exception as exc:  # noqa: BLE001
            return {"decoded": name, "error": f"no clean copy: {first_line(exc)}"}
    return {"decoded": name, "error": None}


def decode_all(paths: list[Path], refs: Path, timeout: float) -> dict[str, dict]:
    """`decode` for each path, in a child process (a batch at a time, then one by one if that
    child dies), so that a crash or a hang is the file's, not the fuzzer's."""
    refs.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict] = {}

    def child(group: list[Path]) -> dict | None:
        listing = refs / "decode-list.json"
        answer = refs / "decode-answer.json"
        listing.write_text(json.dumps([str(p) for p in group]))
        answer.unlink(missing_ok=True)
        command = [sys.executable, "-m", "benchmarks.fuzz_inputs", "--decode", str(listing)]
        command += ["--work", str(refs)]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0 or not answer.exists():
            return None
        return json.loads(answer.read_text())

    for start in range(0, len(paths), 100):
        group = paths[start : start + 100]
        answer = child(group)
        if answer is None:
            answer = {}
            for path in group:
                one = child([path])
                answer[str(path)] = one[str(path)] if one else {"decoded": None, "error": "crash"}
        found |= answer
    return found


# --- runs of the job ------------------------------------------------------------------------


def run_job(inputs: list[Path], output: Path, timeout: float) -> Run:
    """The job over `inputs` as `make run` runs it, in a process of its own (its JVM and
    Python workers with it), killed after `timeout` seconds."""
    conf = ROOT / "conf"
    submit = [
        "--master local[*,4]",
        f"--properties-file {shlex.quote(str(conf / 'spark-defaults.conf'))}",
        "--driver-java-options",
        shlex.quote(f"-Dlog4j2.configurationFile=file:{conf / 'log4j2.properties'}"),
        "pyspark-shell",
    ]
    env = os.environ | {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_SUBMIT_ARGS": " ".join(submit),
    }
    command = [sys.executable, str(ROOT / "jobs" / "infer_tiles.py"), "--input"]
    command += [*map(str, inputs), "--model", str(MODEL), "--output", str(output), *JOB_OPTIONS]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its JVM and workers in its group, killed with it
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        code = None
    output.mkdir(parents=True, exist_ok=True)
    (output.parent / f"{output.name}.stderr.txt").write_text(stderr, encoding="utf-8")
    return Run(code, stderr, time.perf_counter() - started, output)


def class_map(folder: Path, stem: str) -> dict | None:
    """A run's class map for `stem`: its pixels' digest, CRS and transform; None when its class
    map or its STAC Item (written last) is missing."""
    import numpy as np
    import rasterio

    path = folder / f"{stem}.tif"
    if not (path.exists() and (folder / f"{stem}.stac.json").exists()):
        return None
    with rasterio.open(path) as src:
        pixels = src.read(1)
        return {
            "sha256": hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest(),
            "shape": list(pixels.shape),
            "crs": src.crs.to_wkt() if src.crs else None,
            "transform": list(src.transform)[:6],
        }


def reference_maps(refs: Path, batch: int, timeout: float) -> tuple[dict, list[dict]]:
    """The class map of each clean copy (None where the job did not write one), by digest."""
    clean = sorted(refs.glob("ref-*.tif"))
    maps, runs = {}, []
    for start in range(0, len(clean), batch):
        group = clean[start : start + batch]
        folder = refs / f"in-{start // batch:03d}"
        output = refs / f"out-{start // batch:03d}"
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for path in group:
            os.link(path, folder / path.name)
        run = run_job([folder], output, timeout)
        runs.append(
            {
                "rasters": len(group),
                "code": run.code,
                "seconds": round(run.seconds, 1),
                "traceback": "Traceback" in run.stderr,
                "other_lines": other_lines(run),
            }
        )
        print(
            f"reference run {start // batch}: {len(group)} rasters, exit {run.code}, "
            f"{run.seconds:.0f} s",
            flush=True,
        )
        for path in group:
            maps[path.stem.removeprefix("ref-")] = class_map(output, path.stem)
    return maps, runs


# --- a batch, judged ------------------------------------------------------------------------


def batch_problems(run: Run, good: dict) -> list[str]:
    """What is wrong with a run as a whole."""
    problems = []
    if run.code is None:
        problems.append("hang (timed out)")
    elif run.code not in (0, 3):
        problems.append(f"exit {run.code}")
    if "Traceback" in run.stderr:
        problems.append("traceback")
    problems += [f"crash: {text}" for text in CRASH_TEXTS if text in run.stderr]
    found = class_map(run.output, GOOD.removesuffix(".tif"))
    if found is None:
        problems.append("good raster's output missing")
    elif found != good:
        problems.append("good raster's output differs")
    return problems


def judge(case: Case, run: Run, refs: dict) -> None:
    """The case's outcome in `run`, whose batch had no problem of its own."""
    name = case.path.name
    named = [line for line in run.lines if name in line]
    found = class_map(run.output, case.path.stem)
    reasons = []
    if found is not None:
        expected = refs.get(case.decoded) if case.decoded else None
        if case.decoded is None:
            reasons.append(f"output written, but rasterio cannot read it ({case.decode_error})")
        elif expected is None:
            reasons.append("output written, but its clean copy gave none")
        elif found != expected:
            reasons.append("wrong output (not its clean copy's)")
        outcome = "correct"
        case.line = named[0] if named else None  # a line beside a correct output: noted
    else:
        if (run.output / f"{case.path.stem}.tif").exists():
            reasons.append("partial output (class map without its STAC Item)")
        if len(named) != 1:
            reasons.append(f"{len(named)} lines name the file")
        else:
            case.line = named[0]
        if run.code != 3:
            reasons.append(f"refused with exit {run.code}")
        outcome = "refused"
    case.outcome, case.reasons = ("violation", reasons) if reasons else (outcome, [])


def run_cases(cases: list[Case], folder: Path, good_source: Path, timeout: float) -> Run:
    """One job run over `cases` and good.tif in one input folder."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "in").mkdir(parents=True)
    shutil.copyfile(good_source, folder / "in" / GOOD)
    for case in cases:
        os.link(case.path, folder / "in" / case.path.name)
    return run_job([folder / "in"], folder / "out", timeout)


@dataclass
class Batches:
    """What every run of cases shares: good.tif's source and class map, the clean copies'
    class maps, the timeout, the runs' log and how many runs the halving may still take."""

    good_source: Path
    good: dict
    refs: dict
    timeout: float
    reruns_left: int
    log: list[dict] = field(default_factory=list)


def settle(cases: list[Case], folder: Path, label: str, batches: Batches) -> None:
    """Run `cases` (with good.tif) and judge them. A run with a problem of its own is run again
    in halves until the cases that cause it are alone, each then a violation; past the reruns
    allowed, every case of such a run is one, as a case of that batch."""
    run = run_cases(cases, folder, batches.good_source, batches.timeout)
    problems = batch_problems(run, batches.good)
    batches.log.append(
        {
            "run": label,
            "cases": [c.index for c in cases],
            "code": run.code,
            "seconds": round(run.seconds, 1),
            "problems": problems,
            "stderr_tail": run.lines[-8:] if problems else [],
            "other_lines": other_lines(run),
        }
    )
    print(
        f"  {label}: {len(cases)} cases, exit {run.code}, {run.seconds:.0f} s"
        + (f", {'; '.join(problems)}" if problems else ""),
        flush=True,
    )
    if not problems:
        for case in cases:
            judge(case, run, batches.refs)
            case.run = label
        return
    if len(cases) == 1 or batches.reruns_left < 2:
        for case in cases:
            alone = "" if len(cases) == 1 else f"in a run of {len(cases)} cases: "
            case.outcome, case.run = "violation", label
            case.reasons = [alone + problem for problem in problems]
            named = [line for line in run.lines if case.path.name in line]
            case.line = named[-1] if named else None
        return
    batches.reruns_left -= 2
    half = len(cases) // 2
    for part, name in ((cases[:half], "a"), (cases[half:], "b")):
        settle(part, folder.with_name(folder.name + name), label + name, batches)


# --- the whole --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--batch", type=int, default=25, help="cases per run of the job")
    parser.add_argument("--ref-batch", type=int, default=100, help="clean copies per run")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take")
    parser.add_argument(
        "--reruns", type=int, default=20, help="runs the halving of failed batches may take"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "fuzz")
    parser.add_argument("--decode", type=Path, help=argparse.SUPPRESS)  # the decoding child's
    args = parser.parse_args()
    if args.decode:
        paths = json.loads(args.decode.read_text())
        answer = {p: decode(Path(p), args.work) for p in paths}
        (args.work / "decode-answer.json").write_text(json.dumps(answer))
        return

    started = time.perf_counter()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    sources = make_sources(work / "sources")
    cases = make_cases(sources, args.cases, args.seed, work / "cases")
    refs = work / "refs"
    decoded = decode_all([*sources.values(), *(c.path for c in cases)], refs, args.timeout)
    for case in cases:
        case.decoded = decoded[str(case.path)]["decoded"]
        case.decode_error = decoded[str(case.path)]["error"]
    t = time.perf_counter()
    maps, ref_runs = reference_maps(refs, args.ref_batch, args.timeout)
    ref_s = time.perf_counter() - t
    good = maps.get(decoded[str(sources["sample"])]["decoded"])
    if good is None:
        sys.exit("the sample's clean copy gave no class map: see its reference run")

    batches = Batches(sources["sample"], good, maps, args.timeout, args.reruns)
    t = time.perf_counter()
    for number, start in enumerate(range(0, len(cases), args.batch)):
        batch = cases[start : start + args.batch]
        for case in batch:
            case.batch = number
        settle(batch, work / "batches" / f"b{number:03d}", f"b{number:03d}", batches)
    fuzz_s = time.perf_counter() - t

    del args.decode  # the decoding child's, not a setting
    result = envelope(args, model=str(MODEL), job_options=JOB_OPTIONS, master="local[*,4]")
    digests = {name: decoded[str(path)]["decoded"] for name, path in sources.items()}
    result |= summary(cases, batches.log, maps, ref_runs, digests)
    result["seconds"] = {
        "total": round(time.perf_counter() - started, 1),
        "references": round(ref_s, 1),
        "batches": round(fuzz_s, 1),
    }
    keep_violations(cases, work / "violations")
    print_table(result["counts"])
    print(
        f"{len(cases)} cases, {result['runs']['batches']} batches "
        f"({result['runs']['job_runs']} job runs), {result['seconds']['total']:.0f} s"
    )
    write_result(result, "fuzz")


def summary(
    cases: list[Case], log: list[dict], maps: dict, ref_runs: list[dict], sources: dict
) -> dict:
    """The result's counts and lists; `sources`: each source's decoded digest."""
    kinds = list(MUTATIONS)
    counts = {k: dict(Counter(c.outcome for c in cases if c.kind == k)) for k in kinds}
    counts["all"] = dict(Counter(c.outcome for c in cases))
    by_source = {
        s: dict(Counter(c.outcome for c in cases if c.source == s)) for s in ("sample", "cog")
    }
    refused = [c for c in cases if c.outcome == "refused"]
    stages = Counter(
        c.line.split("(", 1)[1].split(")", 1)[0]
        if c.line.startswith("sparkinfer: failed (")
        else "other"
        for c in refused
    )
    problems = [entry for entry in log if entry["problems"]]
    return {
        "counts": counts,
        "counts_by_source": by_source,
        "refused_by_stage": dict(stages),
        "refusal_examples": _examples(refused),
        # Correct cases whose corruption changed what rasterio reads (pixels or metadata).
        "correct_and_decoded_differently": sum(
            1 for c in cases if c.outcome == "correct" and c.decoded != sources[c.source]
        ),
        "correct_with_a_line": [
            {"case": c.path.name, "line": c.line}
            for c in cases
            if c.outcome == "correct" and c.line
        ],
        "not_decodable": sum(1 for c in cases if c.decoded is None),
        # Refused although rasterio reads them whole: refused for what their metadata says.
        "refused_but_decodable": _examples([c for c in refused if c.decoded is not None]),
        "batch_exit_codes": dict(Counter(str(entry["code"]) for entry in log)),
        # Lines on stderr that are not the job's: runs, then references.
        "other_stderr_lines": [
            {"run": entry.get("run", "reference"), "line": line}
            for entry in [*log, *ref_runs]
            for line in entry["other_lines"]
        ],
        "clean_copies": len(maps),
        "runs": {
            "batches": len({c.batch for c in cases}),
            "job_runs": len(log) + len(ref_runs),
            "references": ref_runs,
            "with_problems": problems,
        },
        "violations": [
            {
                "case": c.path.name,
                "kind": c.kind,
                "source": c.source,
                "detail": c.detail,
                "reasons": c.reasons,
                "line": c.line,
                "run": c.run,
            }
            for c in cases
            if c.outcome == "violation"
        ],
    }


def _examples(refused: list[Case]) -> dict[str, dict]:
    """The refusals by message (the text after the file's name, less GDAL's words): how many,
    and one line of each."""
    found: dict[str, dict] = {}
    for case in refused:
        message = case.line.split(case.path.name + ": ", 1)[-1].split(" (", 1)[0][:80]
        entry = found.setdefault(message, {"count": 0, "example": case.line})
        entry["count"] += 1
    return found


def keep_violations(cases: list[Case], folder: Path) -> None:
    bad = [c for c in cases if c.outcome == "violation"]
    shutil.rmtree(folder, ignore_errors=True)
    if not bad:
        return
    folder.mkdir(parents=True)
    for case in bad:
        shutil.copyfile(case.path, folder / case.path.name)
    listing = [{"case": c.path.name, "kind": c.kind, "reasons": c.reasons} for c in bad]
    (folder / "violations.json").write_text(json.dumps(listing, indent=2) + "\n")


def print_table(counts: dict) -> None:
    outcomes = ("correct", "refused", "violation")
    print(f"{'mutation':<16}" + "".join(f"{o:>11}" for o in outcomes))
    for kind, found in counts.items():
        print(f"{kind:<16}" + "".join(f"{found.get(o, 0):>11}" for o in outcomes))


if __name__ == "__main__":
    main()
