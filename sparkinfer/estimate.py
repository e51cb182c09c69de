"""What a run will cost, from figures measured on a sample of it: pure arithmetic, no Spark.

`--estimate` (`stages.estimate`) runs the real inference stage on a few chunks spread over the
rasters and times the parts of a run; this module turns those `Rates` into a `Prediction` of a
whole run's wall time on any number of task slots, and works out what a plan reads and writes.

What is measured and what is modelled:
- measured: the time from the command's start to the inference stage (checks, session, Python
  workers loading the model, planning), each stage's fixed cost (its wall time less its longest
  task), a worker's first model call (tracing, once per worker), the seconds per output pixel
  of a task slot (read, infer, write, with the halo and the all-nodata tiles as sampled), and
  the assembly's seconds per pixel (COG), per tile (tile index) and per raster (STAC Item);
- modelled: chunks cut into tasks as the stages cut them (`tasks_of`), tasks run in order
  on the first free slot (`makespan`), every chunk at the sampled rate per pixel.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rasterio.crs import CRS

from sparkinfer.config import TASKS_PER_SLOT
from sparkinfer.plan import task_bounds

ESTIMATE_FILE = "_estimate.json"
EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


@dataclass(frozen=True)
class Rates:
    """What a sample run measured on one cluster."""

    setup_s: float  # command start to the inference stage: checks, session, workers, plan
    stage_overhead_s: float  # the inference stage's wall time less its longest task
    first_call_s: float  # a worker's first model call less a later one (tracing), once each
    slot_s_per_px: float  # seconds per output pixel in one task slot: read, infer, write
    assemble_overhead_s: float  # the assembly stage's wall time less its longest task
    cog_s_per_px: float  # an assembly task's seconds per pixel: COG (scores, quicklook)
    index_s_per_tile: float  # its seconds per tile: the tile index
    item_s: float  # its seconds per raster: the STAC Item


@dataclass(frozen=True)
class Workload:
    """What a run has to do: each chunk's output pixels in the stage's order, and each raster's
    pixels and tiles in the assembly's order."""

    chunk_pixels: np.ndarray  # int64, one per chunk of every raster
    raster_pixels: tuple[int, ...]
    raster_tiles: tuple[int, ...]


@dataclass(frozen=True)
class Prediction:
    """A run's predicted wall time on `slots` task slots, by part, in seconds."""

    slots: int
    setup_s: float
    infer_write_s: float
    assemble_s: float

    @property
    def wall_s(self) -> float:
        return self.setup_s + self.infer_write_s + self.assemble_s

    def figures(self) -> dict:
        """As `_estimate.json` states it: seconds to the hundredth."""
        parts = {
            "setup_s": self.setup_s,
            "infer_write_s": self.infer_write_s,
            "assemble_s": self.assemble_s,
            "wall_s": self.wall_s,
        }
        return {"slots": self.slots} | {key: round(value, 2) for key, value in parts.items()}


def sample_size(count: int, share: float, minimum: int) -> int:
    """Chunks to sample of `count`: `share` of them, rounded, and at least `minimum` (one per
    task slot), never more than there are."""
    return min(count, max(minimum, round(share * count)))


def _morton(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Z-order position of grid cells: their rows' and columns' bits interleaved."""
    code = np.zeros(len(rows), np.int64)
    for bit in range(31):
        code |= ((rows.astype(np.int64) >> bit) & 1) << (2 * bit + 1)
        code |= ((cols.astype(np.int64) >> bit) & 1) << (2 * bit)
    return code


def spread_sample(
    raster_index: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int
) -> np.ndarray:
    """Positions, in the given order, of `size` chunks spread over the rasters: each raster's
    chunks ordered along a Z curve (so that neighbours in the order are neighbours on the
    ground), rasters one after another, and every `len / size`-th taken from the middle of its
    stretch. Rasters get samples in proportion to their chunks, and each raster's are spread
    over its quadrants rather than along its first rows."""
    order = np.lexsort((_morton(rows, cols), raster_index))
    picks = ((np.arange(size) + 0.5) * len(order) / size).astype(np.int64)
    return np.sort(order[picks])


def tasks_of(work: np.ndarray, partitions: int, tapered: bool = False) -> np.ndarray:
    """Each task's share of `work` (one figure per row, in order: pixels, seconds) when the rows
    are cut into `partitions` runs as the stages cut them (`plan.task_bounds`: even, as
    `spark.range(n, partitions)` cuts its ids, or `tapered` as the inference stage's); as many
    tasks as rows when there are fewer."""
    bounds = task_bounds(len(work), partitions, tapered)
    sums = np.concatenate([[0], np.cumsum(work)])
    return sums[bounds[1:]] - sums[bounds[:-1]]


def makespan(work: Sequence[float], slots: int) -> float:
    """Seconds until the last of tasks `work` (seconds each) ends, when they start in order,
    each on the first slot free, as Spark's scheduler hands out a stage's tasks."""
    free = [0.0] * max(1, slots)
    for seconds in work:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free)


def predict(
    rates: Rates, workload: Workload, slots: int, tasks_per_slot: int = TASKS_PER_SLOT
) -> Prediction:
    """The wall time of the run of `workload` on `slots` task slots, from `rates`, its
    inference stage cut into `tasks_per_slot` tasks per slot (`--tasks-per-slot`)."""
    partitions = TASKS_PER_SLOT * slots
    tasks = tasks_of(
        workload.chunk_pixels, tasks_per_slot * slots, tapered=tasks_per_slot > 1
    )  # as `job` cuts them
    tasks = tasks * rates.slot_s_per_px
    infer = rates.stage_overhead_s + rates.first_call_s + makespan(tasks, slots)
    rasters = [
        pixels * rates.cog_s_per_px + tiles * rates.index_s_per_tile + rates.item_s
        for pixels, tiles in zip(workload.raster_pixels, workload.raster_tiles, strict=True)
    ]
    per_task = tasks_of(np.asarray(rasters), partitions) if rasters else []
    assemble = rates.assemble_overhead_s + makespan(per_task, slots)
    return Prediction(slots, rates.setup_s, infer, assemble)


def slot_hours(rates: Rates, workload: Workload) -> float:
    """Task-slot hours of the run's variable work (what grows with its pixels): inference and
    assembly; fixed costs (setup, stages' overheads, first calls) left out."""
    pixels = float(np.sum(workload.chunk_pixels, dtype=np.int64))
    assembly = sum(
        p * rates.cog_s_per_px + t * rates.index_s_per_tile + rates.item_s
        for p, t in zip(workload.raster_pixels, workload.raster_tiles, strict=True)
    )
    return (pixels * rates.slot_s_per_px + assembly) / 3600


def core_hours_per_1000_km2(hours: float, cores_per_slot: int, area_km2: float) -> float:
    """Core-hours per 1,000 km² of `slot hours` of work on rasters covering `area_km2`."""
    return hours * cores_per_slot / area_km2 * 1000


def pixel_area_m2(crs_wkt: str | None, transform: Sequence[float], height: int) -> float | None:
    """Ground area of one pixel in m²: exact for a projected CRS; for longitude and latitude,
    at the raster's middle row on a sphere of the Earth's mean radius; None without a CRS."""
    if not crs_wkt:
        return None
    crs = CRS.from_user_input(crs_wkt)
    a, _, _, _, e, f = transform[:6]
    if crs.is_geographic:
        metres_per_degree = math.pi / 180 * EARTH_RADIUS_M
        latitude = math.radians(f + e * height / 2)
        return abs(a * e) * metres_per_degree**2 * math.cos(latitude)
    unit = crs.linear_units_factor[1]
    return abs(a * e) * unit * unit


def read_pixels(chunks: pa.Table) -> int:
    """Pixels the chunks of a plan (`RasterPlan.chunks`) read, the halo included: the sum of
    their read windows (neighbouring chunks' windows overlap by the halo: read twice)."""
    return int(
        pc.sum(
            pc.multiply(
                chunks["read_height"].cast(pa.int64()), chunks["read_width"].cast(pa.int64())
            )
        ).as_py()
        or 0
    )


def blocks_read(chunks: pa.Table, block_height: int, block_width: int) -> int:
    """Input blocks (GeoTIFF tiles or strips) the chunks' read windows touch, all together:
    what a reader decodes and, on object storage, fetches (a block in two chunks' halos twice)."""

    def span(offset: pa.ChunkedArray, size: pa.ChunkedArray, block: int) -> np.ndarray:
        start = offset.to_numpy().astype(np.int64)
        stop = start + size.to_numpy().astype(np.int64)
        return (stop - 1) // block - start // block + 1

    rows = span(chunks["read_row_off"], chunks["read_height"], block_height)
    cols = span(chunks["read_col_off"], chunks["read_width"], block_width)
    return int(np.sum(rows * cols))


def job_identity(identities: Sequence[str]) -> str:
    """One identity for a run's rasters (`prepare` gives each its own): an estimate is compared
    with a run of the same rasters, model and config."""
    return hashlib.sha256(" ".join(sorted(identities)).encode()).hexdigest()[:16]


COMPARED = ("setup_s", "infer_write_s", "assemble_s", "wall_s")


def compared(estimate: dict, timings: dict) -> dict:
    """A run's report section on its estimate: the estimate's prediction for the cluster it
    ran on, the run's own figures, and their ratio, part by part."""
    predicted = estimate["predicted"]["this_cluster"]
    actual = {key: round(timings[key], 2) for key in COMPARED}
    return {
        "made_at": estimate["made_at"],
        "predicted": {key: predicted[key] for key in COMPARED},
        "actual": actual,
        "predicted_over_actual": {
            key: round(predicted[key] / actual[key], 3) for key in COMPARED if actual[key] > 0
        },
    }
