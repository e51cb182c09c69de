"""What to label next: the chips of a raster where the model is least sure (`--uncertain K`),
as NAME.uncertain.parquet.

Chips are the cells of a grid of `size` x `size` pixels from the raster's corner (edge cells
smaller than that are left out); a chip counts when at least half of its pixels are valid. Its
score is its pixels' mean confidence (`sparkinfer.confidence`). The K chips taken are picked
lowest score first, skipping any chip that touches one already taken (8-neighbours on the
chip grid), so that two chips are at least one chip's side apart and do not cluster.

Each chunk, where its confidence and classes are in memory (the inference stage), sums its
part of every chip it meets (`chunk_candidates`) into a tag of its class map, committed with it,
so a resumed run finds them as it finds the chunk. Of the chips wholly inside, it keeps only
the `9 K` lowest that count: each chip taken rules out at most 8 others, so the K picks are
always among the map's `9 K` lowest. The assembly sums the parts of chips across chunk borders
and picks (`least_sure`), a chunk at a time: memory holds `9 K` chips and the parts of those
across borders, whatever the raster's size.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine

from sparkinfer import storage
from sparkinfer.catalog import geoparquet_metadata, grid_bbox, wkb_rectangles
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow
from sparkinfer.raster import RasterInfo

MIN_VALID_SHARE = 0.5  # of a chip's pixels, for it to count
# A chunk's chip sums, stored in its class map's metadata: {"whole": [...], "parts": [...]}, each
# [chip row, chip column, confidence sum, valid pixels, class 0 pixels, ...].
CANDIDATES_TAG = "SPARKINFER_UNSURE_CHIPS"


@dataclass(frozen=True, order=True)
class Chip:
    """A chip of the grid, ordered by its score, then by its place (ties broken alike
    everywhere)."""

    mean_confidence: float  # 0 to 1
    row: int  # on the chip grid
    col: int
    valid_pixels: int
    class_pixels: tuple[int, ...]


def mean_confidence(total: int, valid: int) -> float:
    """A chip's score from the sum of its valid pixels' confidence bytes and their number:
    rounded, so that chips equal to 6 digits are ordered by their place."""
    return round(total / valid / 255, 6)


def chip_of(row: int, col: int, total: int, valid: int, counts, size: int) -> Chip | None:
    """The chip at `row`, `col` from its sums (of confidence bytes and valid pixels, and the
    valid pixels of each class), or None if it does not count."""
    if valid < MIN_VALID_SHARE * size * size:
        return None
    return Chip(mean_confidence(total, valid), row, col, valid, tuple(int(n) for n in counts))


def chunk_candidates(
    confidence: np.ndarray,
    classes: np.ndarray,
    core: PixelWindow,
    grid: tuple[int, int],
    size: int,
    k: int,
    count: int,
) -> str:
    """The `CANDIDATES_TAG` of a chunk: `confidence` and `classes` are its `core`'s, uint8, 255
    where nodata, of a raster of `grid` (height, width); `count` classes. Sums per chip first,
    then the class pixels of the chips kept only."""
    first_row, row_cuts = _chip_spans(core.row_off, core.height, grid[0] // size, size)
    first_col, col_cuts = _chip_spans(core.col_off, core.width, grid[1] // size, size)
    if not len(row_cuts) or not len(col_cuts):
        return json.dumps({"whole": [], "parts": []})
    valid = confidence != CLASS_NODATA
    totals = _block_sums(np.where(valid, confidence, 0), row_cuts, col_cuts)
    pixels = _block_sums(valid.view(np.uint8), row_cuts, col_cuts)
    heights, widths = np.diff(row_cuts), np.diff(col_cuts)
    inside = (heights[:, None] == size) & (widths[None, :] == size)
    counting = inside & (pixels >= MIN_VALID_SHARE * size * size)
    parts = np.argwhere(~inside & (pixels > 0))
    whole = np.argwhere(counting)
    # Scored as `chip_of` scores them, with Python's round (numpy's rounds otherwise).
    sums = zip(totals[counting].tolist(), pixels[counting].tolist(), strict=True)
    scores = [mean_confidence(total, valid) for total, valid in sums]
    # The 9 k lowest, by score then place: argwhere gives places in order, and the sort is stable.
    whole = whole[np.argsort(np.array(scores), kind="stable")[: 9 * k]]

    def entry(i: int, j: int) -> list[int]:
        """[chip row, chip column, confidence sum, valid pixels, class 0 pixels, ...]"""
        cell = np.s_[row_cuts[i] : row_cuts[i + 1], col_cuts[j] : col_cuts[j + 1]]
        labels = classes[cell][valid[cell]]
        counts = np.bincount(labels[labels < count], minlength=count).tolist()
        return [
            first_row + int(i),
            first_col + int(j),
            int(totals[i, j]),
            int(pixels[i, j]),
            *counts,
        ]

    candidates = {"whole": [entry(*e) for e in whole], "parts": [entry(*e) for e in parts]}
    return json.dumps(candidates, separators=(",", ":"))


def _chip_spans(start: int, length: int, chips: int, size: int) -> tuple[int, np.ndarray]:
    """Along one axis of a chunk from `start`, `length` long, on a grid of `chips` whole chips:
    the first chip it meets, and where each chip it meets starts in it, then where the last
    ends (empty if it meets none)."""
    first, stop = start // size, min(-(-(start + length) // size), chips)
    if stop <= first:
        return first, np.array([], np.int64)
    cuts = np.arange(first, stop + 1) * size - start
    return first, np.clip(cuts, 0, length)


def _block_sums(values: np.ndarray, row_cuts: np.ndarray, col_cuts: np.ndarray) -> np.ndarray:
    """int64 sums of `values` over the blocks between the cuts."""
    inner = values[: row_cuts[-1], : col_cuts[-1]]
    # A row of a chip fits 32 bits (255 x its side); uint32 sums several times faster.
    by_col = np.add.reduceat(inner, col_cuts[:-1], axis=1, dtype=np.uint32)
    return np.add.reduceat(by_col, row_cuts[:-1], axis=0, dtype=np.int64)


def least_sure(tags: Iterable[str], k: int, size: int) -> list[Chip]:
    """`pick` over the chips of a raster from its chunks' `CANDIDATES_TAG`s, a chunk at a
    time: the chips wholly in a chunk as they come, those across chunk borders once summed."""
    kept: list[tuple] = []  # a max-heap of the 9 k lowest, by (score, place), as negated keys
    parts: dict[tuple[int, int], np.ndarray] = {}

    def keep(chip: Chip | None) -> None:
        if chip is None:
            return
        key = (-chip.mean_confidence, -chip.row, -chip.col)
        if len(kept) < 9 * k:
            heapq.heappush(kept, (key, chip))
        elif key > kept[0][0]:
            heapq.heapreplace(kept, (key, chip))

    for tag in tags:
        candidates = json.loads(tag)
        for row, col, total, valid, *counts in candidates["whole"]:
            keep(chip_of(row, col, total, valid, counts, size))
        for row, col, *sums in candidates["parts"]:
            here = np.array(sums, np.int64)
            parts[row, col] = parts[row, col] + here if (row, col) in parts else here
    for (row, col), (total, valid, *counts) in parts.items():
        keep(chip_of(row, col, int(total), int(valid), counts, size))
    return pick([chip for _, chip in kept], k)


def pick(candidates: list[Chip], k: int) -> list[Chip]:
    """The K lowest chips, each skipped where it touches one taken before it."""
    taken: list[Chip] = []
    near: set[tuple[int, int]] = set()
    for chip in sorted(candidates):
        if len(taken) == k:
            break
        if (chip.row, chip.col) in near:
            continue
        taken.append(chip)
        near |= {(chip.row + dr, chip.col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    return taken


def chunk_tags(classes_paths: Iterable[str]) -> Iterable[str]:
    """The `CANDIDATES_TAG` of each chunk's class map, read one at a time."""
    for path in classes_paths:
        with storage.open_own_raster(path) as src:
            tag = src.tags().get(CANDIDATES_TAG)
        if tag is None:
            raise RuntimeError(f"{path}: the chunk has no uncertain chips; re-run with --overwrite")
        yield tag


UNCERTAIN_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),  # 1: the least sure
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("mean_confidence", pa.float64()),
        ("valid_pixels", pa.int64()),
        ("class_pixels", pa.list_(pa.int64())),  # pixels of each class, by class index
        ("geometry", pa.binary()),  # the chip's footprint, WKB polygon in the raster's CRS
    ]
)


def write_uncertain(
    info: RasterInfo, chips: list[Chip], size: int, path: str, class_names: tuple[str, ...]
) -> None:
    """GeoParquet 1.1 of the chips, least sure first."""
    transform = Affine(*info.transform)
    geo = geoparquet_metadata(info.crs, ["Polygon"], grid_bbox(transform, info.height, info.width))
    metadata = {b"geo": json.dumps(geo).encode(), b"class_names": json.dumps(class_names).encode()}
    top = np.array([c.row * size for c in chips], np.int64)
    left = np.array([c.col * size for c in chips], np.int64)
    sides = np.full(len(chips), size, np.int64)
    table = pa.table(
        {
            "rank": np.arange(1, len(chips) + 1, dtype=np.int32),
            "row_off": top,
            "col_off": left,
            "height": sides,
            "width": sides,
            "mean_confidence": [c.mean_confidence for c in chips],
            "valid_pixels": [c.valid_pixels for c in chips],
            "class_pixels": [list(c.class_pixels) for c in chips],
            "geometry": wkb_rectangles(transform, top, left, sides, sides),
        },
        schema=UNCERTAIN_SCHEMA.with_metadata(metadata),
    )
    with storage.staged(path) as local:
        pq.write_table(table, local, compression="zstd")
