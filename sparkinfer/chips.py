"""A chip classifier's outputs: one class per chip on a grid of one cell per chip, and the chips
as a GeoParquet table.

The inference stage writes each chunk's cells into its class map (and scores) as it writes any
chunk, and beside it the chunk's chip table (`chunk_chip_table`), committed with it. Assembly
makes the COG from those chunks on the output grid (`output_grid`), and streams the chunks'
tables into `NAME.chips.parquet` a chunk at a time (`write_chip_table`), adding each chip's
window and footprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from affine import Affine

from sparkinfer import storage
from sparkinfer.catalog import geoparquet_metadata, grid_bbox, wkb_rectangles
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import ChunkSpec


def output_grid(info: RasterInfo, tiling: Tiling | ChipGrid) -> RasterInfo:
    """The grid a raster's outputs lie on: its own, or with chips a cell per chip, `stride`
    pixels a side, centred on its chip (a chip of `size` pixels starts `offset` pixels before
    its cell)."""
    if not isinstance(tiling, ChipGrid):
        return info
    transform = (
        Affine(*info.transform)
        * Affine.translation(tiling.offset, tiling.offset)
        * Affine.scale(tiling.stride)
    )
    return replace(
        info,
        width=tiling.cells(info.width),
        height=tiling.cells(info.height),
        transform=tuple(transform)[:6],
    )


@dataclass(frozen=True)
class ChipResult:
    """One chip's prediction: its cell, its class and scores (None when no pixel of it is
    valid: it was not inferred) and the share of its pixels that are valid."""

    row: int
    col: int
    classes: int | None
    scores: np.ndarray | None  # float32 (channels,)
    valid_share: float


def _chunk_schema(channels: int) -> pa.Schema:
    return pa.schema(
        [
            ("chip_row", pa.int32()),
            ("chip_col", pa.int32()),
            ("class", pa.uint8()),
            ("scores", pa.list_(pa.float32(), channels)),
            ("valid_share", pa.float32()),
        ]
    )


def chunk_chip_table(chips: list[ChipResult], channels: int) -> pa.Table:
    """The chips of one chunk, as the stage commits them beside its class map."""
    scores = [None if c.scores is None else c.scores.tolist() for c in chips]
    return pa.table(
        {
            "chip_row": [c.row for c in chips],
            "chip_col": [c.col for c in chips],
            "class": [c.classes for c in chips],
            "scores": scores,
            "valid_share": [c.valid_share for c in chips],
        },
        schema=_chunk_schema(channels),
    )


CHIPS_SCHEMA = pa.schema(
    [
        ("chip_row", pa.int32()),
        ("chip_col", pa.int32()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("size", pa.int32()),
        ("status", pa.string()),  # "inferred", or "skipped_nodata" (no valid pixel)
        ("class", pa.uint8()),
        ("class_name", pa.string()),
        ("scores", pa.list_(pa.float32())),  # every class's score, by class index
        ("valid_share", pa.float32()),
        ("geometry", pa.binary()),  # the chip's footprint, WKB polygon in the raster's CRS
    ]
)


def write_chip_table(
    info: RasterInfo,
    plan: RasterPlan,
    chunks: list[ChunkSpec],
    path: str,
    class_names: tuple[str, ...],
) -> None:
    """GeoParquet 1.1 of the raster's chips: their windows, footprints, classes, scores and
    valid shares, from the tables its `chunks` carry, streamed a chunk at a time (memory holds
    one chunk's chips, whatever the raster's size)."""
    chips = plan.tiling
    transform = Affine(*info.transform)
    # The chips' windows reach past the raster's edges where the stride does not end on them.
    extent = int(plan.rows.read_stop[-1]), int(plan.cols.read_stop[-1])
    geo = geoparquet_metadata(info.crs, ["Polygon"], grid_bbox(transform, *extent))
    schema = CHIPS_SCHEMA.with_metadata(
        {
            b"geo": json.dumps(geo).encode(),
            b"sparkinfer": json.dumps(
                {
                    "class_names": list(class_names),
                    "chip_size": chips.size,
                    "chip_stride": chips.stride,
                }
            ).encode(),
        }
    )
    names = np.array([*class_names, None], dtype=object)
    with (
        storage.staged(path) as local,
        pq.ParquetWriter(local, schema, compression="zstd") as writer,
    ):
        for chunk in chunks:
            table = pq.read_table(pa.BufferReader(storage.read_bytes(chunk.chips_path)))
            rows = table["chip_row"].to_numpy()
            cols = table["chip_col"].to_numpy()
            classes = table["class"].combine_chunks()
            top, left = plan.rows.read_start[rows], plan.cols.read_start[cols]
            size = np.full(len(rows), chips.size)
            inferred = classes.is_valid().to_numpy(zero_copy_only=False)
            index = classes.fill_null(len(class_names)).to_numpy()
            columns = {
                "chip_row": rows,
                "chip_col": cols,
                "row_off": top,
                "col_off": left,
                "size": size,
                "status": np.where(inferred, "inferred", "skipped_nodata"),
                "class": classes,
                "class_name": pa.array(names[index], pa.string()),
                "scores": table["scores"].combine_chunks().cast(pa.list_(pa.float32())),
                "valid_share": table["valid_share"].combine_chunks(),
                "geometry": wkb_rectangles(transform, top, left, size, size),
            }
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))
