"""Regions merged across chunks into `NAME.polygons.parquet` (`--polygons`, step 2; step 1 is
`sparkinfer.polygons`): in the assembly stage, the chunks' files are streamed a chunk row at a
time; whole regions are copied as read, parts of one region (edge pixels of one class facing
each other across a border) are joined by union-find and written once none of them touches the
last chunk row read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from sparkinfer import storage
from sparkinfer.catalog import geoparquet_metadata
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow
from sparkinfer.polygons import (
    GEOMETRY_TYPES,
    POLYGONS_SCHEMA,
    ROWS_PER_GROUP,
    ChunkPolygons,
    Regions,
    read_chunk_polygons,
    region_table,
)
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import ChunkSpec


@dataclass(frozen=True)
class _Edge:
    """A chunk edge's pixels: the part holding each (-1: none) and its class."""

    parts: np.ndarray
    classes: np.ndarray


def _edge_parts(indexes: np.ndarray, first_part: int, classes: np.ndarray) -> _Edge:
    """A chunk's edge of part `indexes`, its parts numbered from `first_part`."""
    valid = indexes >= 0
    edge_classes = np.full(len(indexes), CLASS_NODATA, np.uint8)
    edge_classes[valid] = classes[indexes[valid]]
    return _Edge(np.where(valid, indexes.astype(np.int64) + first_part, -1), edge_classes)


class _OpenRegions:
    """The parts of regions that may go on past the chunks read so far, joined by union-find."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.parts: dict[int, tuple[int, shapely.Polygon]] = {}  # part -> class, geometry

    def add(self, part: int, class_index: int, geometry: shapely.Polygon) -> None:
        self.parent[part] = part
        self.parts[part] = (class_index, geometry)

    def _root(self, part: int) -> int:
        while self.parent[part] != part:
            self.parent[part] = self.parent[self.parent[part]]  # path halving
            part = self.parent[part]
        return part

    def join(self, one: _Edge, other: _Edge) -> None:
        """Join the parts that face each other across a border, pixel by pixel, where both
        pixels are of one class."""
        facing = (one.parts >= 0) & (other.parts >= 0) & (one.classes == other.classes)
        pairs = np.unique(np.stack([one.parts[facing], other.parts[facing]], axis=1), axis=0)
        for a, b in pairs.tolist():
            root_a, root_b = self._root(a), self._root(b)
            if root_a != root_b:
                self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def close(self, open_edges: list[_Edge]) -> Regions:
        """Union and remove the regions none of whose parts is on `open_edges`."""
        on_edges = np.unique(np.concatenate([e.parts for e in open_edges] or [np.empty(0, int)]))
        still_open = {self._root(p) for p in on_edges.tolist() if p in self.parent}
        closing: dict[int, list[int]] = {}
        for part in self.parts:  # in the order parts came: the output's order is fixed
            root = self._root(part)
            if root not in still_open:
                closing.setdefault(root, []).append(part)
        classes, geometries = [], []
        for members in closing.values():
            pieces = [self.parts[p][1] for p in members]
            classes.append(self.parts[members[0]][0])
            # Exact in floating point: edges run along rows and columns at integer coordinates,
            # so every crossing is a vertex of the grid (unioned on the integer grid,
            # grid_size=1, the regions came out the same, 2.6 times slower).
            geometries.append(pieces[0] if len(pieces) == 1 else shapely.union_all(pieces))
            for part in members:
                del self.parts[part], self.parent[part]
        return Regions(np.array(classes, np.uint8), np.array(geometries, object))


def merge_regions(rows: Iterable[Iterable[ChunkPolygons]]) -> Iterator[Regions]:
    """The regions that the chunks' parts (`ChunkPolygons.parts`) make, each whole: `rows` are
    the raster's chunk rows, top to bottom, each its chunks' parts from left to right."""
    regions = _OpenRegions()
    above: list[_Edge] = []  # the bottom edges of the chunk row above
    next_part = 0
    for row in rows:
        bottoms: list[_Edge] = []
        left: _Edge | None = None  # the right edge of the chunk to the left
        for column, chunk in enumerate(row):
            first = next_part
            next_part += len(chunk.classes)
            for index, (class_index, geometry) in enumerate(
                zip(chunk.classes.tolist(), chunk.geometries, strict=True)
            ):
                regions.add(first + index, class_index, geometry)
            edges = chunk.edges
            if above:
                regions.join(above[column], _edge_parts(edges.top, first, chunk.classes))
            if left is not None:
                regions.join(left, _edge_parts(edges.left, first, chunk.classes))
            left = _edge_parts(edges.right, first, chunk.classes)
            bottoms.append(_edge_parts(edges.bottom, first, chunk.classes))
        yield regions.close(bottoms)
        above = bottoms
    yield regions.close([])


def _wkb_types(wkb: pa.ChunkedArray) -> set[int]:
    """The geometry types of WKB values, read from their headers (byte order, then type)."""
    headers = pc.unique(pc.binary_slice(wkb, 0, 5)).to_pylist()
    return {int.from_bytes(h[1:], "little" if h[0] else "big") for h in headers}


class _PolygonFile:
    """NAME.polygons.parquet being written by `writer`: regions in, class names and areas
    added, those under `min_area` left out, in row groups of `ROWS_PER_GROUP`; the `geo`
    metadata last (`finish`), with the bounds of what was written."""

    def __init__(
        self,
        writer: pq.ParquetWriter,
        info: RasterInfo,
        class_names: tuple[str, ...],
        min_area: float,
    ) -> None:
        a, b, _, d, e, _ = info.transform
        self.pixel_area, self.min_area, self.crs = abs(a * e - b * d), min_area, info.crs
        self.names = pa.array(class_names, pa.string())
        self.writer = writer
        self.pending: list[pa.Table] = []
        self.bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
        self.types: set[int] = set()

    def add(self, regions: pa.Table) -> None:
        area = pc.multiply(regions["pixels"].cast(pa.float64()), self.pixel_area)
        kept = pc.greater_equal(area, self.min_area)
        regions, area = regions.filter(kept), area.filter(kept)
        if not len(regions):
            return
        bbox = regions["bbox"].combine_chunks()
        low = [pc.min(bbox.field(side)).as_py() for side in ("xmin", "ymin")]
        high = [pc.max(bbox.field(side)).as_py() for side in ("xmax", "ymax")]
        self.bounds = np.concatenate(
            [np.minimum(self.bounds[:2], low), np.maximum(self.bounds[2:], high)]
        )
        self.types |= _wkb_types(regions["geometry"])
        self.pending.append(
            pa.table(
                [
                    regions["class"],
                    self.names.take(regions["class"]),
                    regions["pixels"],
                    area,
                    bbox,
                    regions["geometry"],
                ],
                schema=POLYGONS_SCHEMA,
            )
        )
        if sum(map(len, self.pending)) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending))
            self.pending = []

    def finish(self) -> None:
        self._flush()
        written = bool(self.types)
        geo = geoparquet_metadata(
            self.crs,
            [GEOMETRY_TYPES[t] for t in sorted(self.types)],
            self.bounds.tolist() if written else None,
        )
        geo["columns"]["geometry"]["covering"] = {
            "bbox": {side: ["bbox", side] for side in ("xmin", "ymin", "xmax", "ymax")}
        }
        self.writer.add_key_value_metadata({"geo": json.dumps(geo)})


def write_polygons(
    info: RasterInfo,
    chunks: list[ChunkSpec],
    path: str,
    class_names: tuple[str, ...],
    min_area: float,
) -> None:
    """GeoParquet 1.1 of the raster's regions, from its `chunks`' polygon files (row-major, as
    the plan lists them): class, class name, pixels, area, bounds and polygon in the raster's
    CRS; regions of less than `min_area` (CRS units squared) left out."""
    with (
        storage.staged(path) as local,
        pq.ParquetWriter(local, POLYGONS_SCHEMA, compression="zstd", store_schema=False) as writer,
    ):
        # No Arrow schema in the file: readers would take its metadata in place of `geo`.
        output = _PolygonFile(writer, info, class_names, min_area)

        def parts_of(chunk: ChunkSpec) -> ChunkPolygons:
            core = PixelWindow(chunk.row_off, chunk.col_off, chunk.height, chunk.width)
            whole, parts = read_chunk_polygons(chunk.polygons_path, core)
            output.add(whole)  # as the chunk is read: whole regions are never held
            return parts

        rows = (map(parts_of, row) for _, row in groupby(chunks, key=lambda ch: ch.chunk_row))
        for regions in merge_regions(rows):
            output.add(region_table(regions, info.transform))
        output.finish()
