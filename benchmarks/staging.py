"""What the chunk files' compression costs: the tasks' writes, the staging bytes, and the
assembly that reads them back, for each candidate profile side by side in one run.

    python -m benchmarks.staging [--size 8192] [--repeats 3] [--cores 2] [--scores]

Chunk files are intermediate: the assembly reads each once, through a VRT, into the final COG,
whose options (`--cog-compression`, deflate by default) are not these. For each profile (none,
zstd level 1, LZW, deflate), with the repeats interleaved:

- `pipeline`: the partition function over all chunks in `cores` processes, as
  `benchmarks/feed` runs it, with the free runtime (`benchmarks.free_runtime`), whose scores
  are made to look like a model's (`SoftmaxRuntime`): wall seconds, and the write share,
  its chunks' `write_s` over their `read_s + infer_s + write_s` (task time, as `_run.json`
  reports it);
- `staging_bytes`: the chunk files it wrote;
- `assembly`: `assembly.assemble_raster` over them in this process, seconds;
- the sha256 of every output file: the same for every profile, or the run fails.

Writes benchmarks/results/DATE-HOST-staging.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.feed import _job, task_slices
from benchmarks.free_runtime import FreeRuntime
from benchmarks.large_raster import make_large_raster
from benchmarks.models import save_model
from benchmarks.run import envelope, write_result
from sparkinfer.runtimes.base import classes_of

ROOT = Path(__file__).resolve().parent.parent

PROFILES = {
    "none": {"compress": "none"},
    "zstd1": {"compress": "zstd", "zstd_level": 1},
    "lzw": {"compress": "lzw"},
    "deflate6": {"compress": "deflate", "zlevel": 6},
}


def _with_profile(compression: dict) -> dict:
    from sparkinfer import writers

    base = {k: v for k, v in writers.CHUNK_PROFILE.items() if k not in ("compress", "zstd_level")}
    return base | compression


class SoftmaxRuntime(FreeRuntime):
    """The free runtime with scores that look like a segmentation model's, so that their
    compression is measured on realistic bytes: a softmax over `channels` logits, each a
    multiple of one uint8 band (full float32 mantissas, smooth where the image is). Looked up
    in a table per channel, so they cost a few passes over the scores; the class is their
    argmax."""

    def __init__(self, bands: int, channels: int) -> None:
        super().__init__(bands, channels=channels)
        slopes = np.linspace(0.01, 0.04, channels, dtype=np.float32)
        self.exp = np.exp(slopes[:, None] * np.arange(256, dtype=np.float32))  # (channels, 256)

    def classify(self, pixels: np.ndarray, valid, with_scores: bool = False):
        if not with_scores:
            return super().classify(pixels, valid)
        bands = pixels.shape[-1]
        exps = np.stack(
            [self.exp[k][pixels[..., k % bands]] for k in range(self.channels)], axis=-1
        )
        scores = exps / exps.sum(axis=-1, keepdims=True)
        return classes_of(scores), scores


def _task(task: tuple) -> list[tuple[float, float, float]]:
    """One task of the partition function with the softmax runtime and the chunk profile
    given; each chunk's (read_s, infer_s, write_s)."""
    import sparkinfer.executor.partition as partition
    from sparkinfer import writers

    table, spec, package, bands, channels, profile = task
    partition.load_for_task = lambda package, options, resources: SoftmaxRuntime(
        bands, channels
    )  # this worker process's own modules
    writers.CHUNK_PROFILE.clear()
    writers.CHUNK_PROFILE.update(profile)
    timings = []
    for batch in partition.infer_partition(table.to_batches(), spec, package):
        for row in batch.to_pylist():
            timings.append((row["read_s"], row["infer_s"], row["write_s"]))
    return timings


def _staging_bytes(job) -> int:
    return sum(
        path.stat().st_size
        for raster in job.rasters
        for path in Path(raster.staging).rglob("*")
        if path.is_file()
    )


def _rasters_written(job) -> dict[str, str]:
    """sha256 of each raster written (the COGs; the STAC Items hold the time they were made)."""
    return {
        Path(path).name: hashlib.sha256(Path(path).read_bytes()).hexdigest()
        for raster in job.rasters
        for path in raster.outputs
        if path.endswith(".tif")
    }


def measure(job, pool: ProcessPoolExecutor, cores: int, profile: dict) -> dict:
    from sparkinfer.assembly import assemble_raster
    from sparkinfer.stages.assemble import assembly_spec

    spec, slices = task_slices(job, cores)
    model = job.model
    tasks = [(part, spec, job.package, model.bands, model.channels, profile) for part in slices]
    started = time.perf_counter()
    timings = [t for part in pool.map(_task, tasks) for t in part]
    pipeline_s = time.perf_counter() - started
    read_s, infer_s, write_s = (sum(column) for column in zip(*timings, strict=True))
    staged = _staging_bytes(job)
    started = time.perf_counter()
    for raster in job.rasters:
        assert assemble_raster(raster, assembly_spec(job), None).error is None
    return {
        "pipeline_s": pipeline_s,
        "write_share": write_s / (read_s + infer_s + write_s),
        "task_s": {"read": read_s, "infer": infer_s, "write": write_s},
        "staging_bytes": staged,
        "assembly_s": time.perf_counter() - started,
        "outputs": _rasters_written(job),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--scores", action="store_true", help="also write float32 scores")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()

    raster = make_large_raster(args.work / "rasters" / f"nc_{args.size}.tif", args.size)
    model = save_model("null", args.work / "models")
    job = _job(
        raster,
        model,
        args.work / "runs" / "staging" / "job",
        ["--scores"] if args.scores else [],
    )
    runs: dict[str, list[dict]] = {name: [] for name in PROFILES}
    with ProcessPoolExecutor(args.cores) as pool:
        measure(job, pool, args.cores, _with_profile(PROFILES["zstd1"]))  # imports: untimed
        for repeat in range(args.repeats):
            for name, compression in PROFILES.items():
                runs[name].append(measure(job, pool, args.cores, _with_profile(compression)))
                last = runs[name][-1]
                print(
                    f"  run {repeat + 1} {name:8s}: pipeline {last['pipeline_s']:.2f} s, "
                    f"write share {last['write_share']:.3f}, "
                    f"staged {last['staging_bytes'] / 2**20:.1f} MiB, "
                    f"assembly {last['assembly_s']:.2f} s",
                    flush=True,
                )
    outputs = {json.dumps(run["outputs"]) for name in runs for run in runs[name]}
    assert len(outputs) == 1, "the outputs differ between staging profiles"
    median = statistics.median
    profiles = {
        name: {
            "profile": PROFILES[name],
            "pipeline_s": [round(r["pipeline_s"], 2) for r in done],
            "pipeline_median_s": round(median(r["pipeline_s"] for r in done), 2),
            "write_share_median": round(median(r["write_share"] for r in done), 3),
            "task_write_median_s": round(median(r["task_s"]["write"] for r in done), 2),
            "staging_mib": round(done[-1]["staging_bytes"] / 2**20, 1),
            "assembly_median_s": round(median(r["assembly_s"] for r in done), 2),
            "pipeline_plus_assembly_median_s": round(
                median(r["pipeline_s"] + r["assembly_s"] for r in done), 2
            ),
        }
        for name, done in runs.items()
    }
    result = envelope(args) | {
        "raster": {"side": args.size, "pixels": args.size**2},
        "scores": args.scores,
        "chunks": sum(raster.plan.chunks().num_rows for raster in job.rasters),
        "profiles": profiles,
        "outputs_sha256": json.loads(outputs.pop()),
    }
    print(json.dumps(profiles, indent=2))
    write_result(result, "staging-scores" if args.scores else "staging")


if __name__ == "__main__":
    main()
