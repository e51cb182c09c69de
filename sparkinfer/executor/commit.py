"""Committing: a finished chunk's prediction written as its files, whole or not at all.

Its class map (and scores) go into the chunk's GeoTIFFs (`writers.ChunkWriter`); each sink the
task chose adds what it makes of the prediction beside them: a pixel model's tile counts (a tag
of the class map, which the tile index is made of) and polygons, a chip classifier's chip
table, the candidates of the least sure chips (a tag too). Then every file is committed. The
task does this on its writer thread: GDAL compresses with the GIL released, while the model
runs on the next windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow.parquet as pq

from sparkinfer.catalog import TILE_COUNTS_TAG, tile_counts
from sparkinfer.chips import chunk_chip_table
from sparkinfer.executor.merge import PredictedChunk
from sparkinfer.executor.spec import StageSpec
from sparkinfer.plan import Chunk, RasterPlan
from sparkinfer.polygons import chunk_polygons, write_chunk_polygons
from sparkinfer.raster import RasterInfo
from sparkinfer.uncertain import CANDIDATES_TAG, chunk_candidates
from sparkinfer.writers import ChunkSpec, ChunkWriter


class Sink(Protocol):
    """What a finished chunk also flows into: a file staged with its `writer` (committed with
    the chunk), or tags for its class map, which it returns."""

    def __call__(
        self, writer: ChunkWriter, raster_index: int, chunk: Chunk, predicted: PredictedChunk
    ) -> dict[str, str]: ...


@dataclass(frozen=True)
class TileCounts:
    """The pixels of each class in each of the chunk's tiles (`catalog.tile_counts`)."""

    plans: tuple[RasterPlan, ...]
    classes: int

    def __call__(
        self, writer: ChunkWriter, raster_index: int, chunk: Chunk, predicted: PredictedChunk
    ) -> dict[str, str]:
        tiles = self.plans[raster_index].tiles_of_chunk(chunk.row, chunk.col)
        return {TILE_COUNTS_TAG: tile_counts(predicted.classes, chunk.core, tiles, self.classes)}


@dataclass(frozen=True)
class UncertainCandidates:
    """The chunk's part of the chips where the model is least sure (`uncertain.chunk_candidates`),
    a tag of its class map."""

    grids: tuple[RasterInfo, ...]  # each raster's output grid
    k: int
    size: int
    classes: int

    def __call__(
        self, writer: ChunkWriter, raster_index: int, chunk: Chunk, predicted: PredictedChunk
    ) -> dict[str, str]:
        grid = self.grids[raster_index]
        candidates = chunk_candidates(
            predicted.confidence,
            predicted.classes,
            chunk.core,
            (grid.height, grid.width),
            self.size,
            self.k,
            self.classes,
        )
        return {CANDIDATES_TAG: candidates}


@dataclass(frozen=True)
class Polygons:
    """The chunk's polygons, written beside its class map (`sparkinfer.polygons`)."""

    rasters: tuple[RasterInfo, ...]

    def __call__(
        self, writer: ChunkWriter, raster_index: int, chunk: Chunk, predicted: PredictedChunk
    ) -> dict[str, str]:
        info = self.rasters[raster_index]
        write_chunk_polygons(
            writer.staged_file(writer.spec.polygons_path),
            chunk_polygons(predicted.classes, chunk.core, info.height, info.width),
            info.transform,
        )
        return {}


@dataclass(frozen=True)
class ChipTable:
    """A chip classifier's chips of the chunk (`chips.chunk_chip_table`), committed before its
    class map: a chunk whose class map is there has its table too."""

    channels: int

    def __call__(
        self, writer: ChunkWriter, raster_index: int, chunk: Chunk, predicted: PredictedChunk
    ) -> dict[str, str]:
        table = chunk_chip_table(list(predicted.chips), self.channels)
        pq.write_table(
            table, writer.staged_file(writer.spec.chips_path, first=True), compression="zstd"
        )
        return {}


def commit_chunk(
    spec: StageSpec,
    raster_index: int,
    chunk: Chunk,
    predicted: PredictedChunk,
    sinks: tuple[Sink, ...],
) -> None:
    """Write the chunk of raster `raster_index` and what `sinks` make of it, and commit them;
    on any error, drop what was written."""
    core = chunk.core
    files = ChunkSpec(
        spec.staging[raster_index],
        chunk.row,
        chunk.col,
        core.row_off,
        core.col_off,
        core.height,
        core.width,
    )
    writer = ChunkWriter(
        files, spec.grid(raster_index), spec.channels, spec.scores, spec.confidence is not None
    )
    try:
        writer.write(
            core.row_off, core.col_off, predicted.classes, predicted.scores, predicted.confidence
        )
        tags: dict[str, str] = {}
        for sink in sinks:
            tags |= sink(writer, raster_index, chunk, predicted)
        writer.commit(tags)
    except BaseException:
        writer.abort()
        raise
