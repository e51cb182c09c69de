"""Polygons of the class map (`--polygons`): each 4-connected region of one class as one polygon,
in GeoParquet, made without holding the raster in any process.

1. Per chunk, in the inference stage, where its class map is in memory: `chunk_polygons`
   polygonizes it (`rasterio.features.shapes`, 4-connectivity, nodata masked). A polygon that
   touches no chunk border inside the raster is a whole region: `write_chunk_polygons` writes it
   as it will be published (WKB in the CRS, pixels, bounding box). The others are parts of
   regions that may go on in a neighbour: they are written in pixel coordinates, with which part
   holds each pixel of the chunk's four edges. The file is committed with the chunk.
2. Per raster, in the assembly stage: `write_polygons` streams the chunks a chunk row at a time.
   Whole regions are copied as they are read (never decoded). Parts are merged
   (`merge_regions`): two parts are of one region where two of their edge pixels of the same
   class face each other across a border (union-find), and a region is unioned and written once
   none of its parts touches the bottom of the last chunk row read. Memory holds the parts of
   the regions still open and one chunk row's bottom edges.

Parts stay in the raster's pixel coordinates (integers, exact in floating point) until merged:
their union is exact, their edges running along pixel edges. Every vertex, of a whole region or
of a merged one, is taken to the CRS by the same formula (`_region_table`), so both agree to the
bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import rasterio.features
import shapely
from affine import Affine

from sparkinfer import storage
from sparkinfer.catalog import geoparquet_metadata
from sparkinfer.plan import PixelWindow
from sparkinfer.raster import RasterInfo
from sparkinfer.writers import CLASS_NODATA, ChunkSpec

BBOX_TYPE = pa.struct([(side, pa.float64()) for side in ("xmin", "ymin", "xmax", "ymax")])
POLYGONS_SCHEMA = pa.schema(
    [
        ("class", pa.uint8()),
        ("class_name", pa.string()),
        ("pixels", pa.int64()),
        ("area", pa.float64()),  # in the CRS's units squared: pixels x the pixel's area
        ("bbox", BBOX_TYPE),  # the polygon's bounds: GeoParquet 1.1's covering column
        ("geometry", pa.binary()),  # WKB Polygon in the raster's CRS
    ]
)
# Regions as the chunks store whole ones and the merge makes the others, before their class
# names and areas.
REGION_SCHEMA = pa.schema(
    [POLYGONS_SCHEMA.field(name) for name in ("class", "pixels", "bbox", "geometry")]
)
# A chunk's file: its whole regions (REGION_SCHEMA, `part` null), then its parts (`part`, WKB in
# pixel coordinates, the other columns but `class` null); which part holds each pixel of its
# edges in the schema's metadata (int32 little-endian: top row, bottom row, left column, right
# column; -1: none).
CHUNK_POLYGONS_SCHEMA = REGION_SCHEMA.append(pa.field("part", pa.binary()))
EDGES_KEY = b"sparkinfer:edges"
ROWS_PER_GROUP = 65_536  # polygons per row group of the GeoParquet file
GEOMETRY_TYPES = {
    shapely.GeometryType.POLYGON: "Polygon",
    shapely.GeometryType.MULTIPOLYGON: "MultiPolygon",
}


@dataclass(frozen=True)
class Edges:
    """Which polygon of a chunk (its index there; -1: none) holds each pixel of its edges."""

    top: np.ndarray  # the chunk's first row, left to right
    bottom: np.ndarray  # its last row
    left: np.ndarray  # its first column, top to bottom
    right: np.ndarray  # its last column

    def packed(self) -> np.ndarray:
        return np.concatenate([self.top, self.bottom, self.left, self.right]).astype("<i4")

    @classmethod
    def unpacked(cls, packed: np.ndarray, core: PixelWindow) -> Edges:
        return cls(*np.split(packed, np.cumsum([core.width, core.width, core.height])))


@dataclass(frozen=True)
class ChunkPolygons:
    """The 4-connected regions of one class within a chunk, in the raster's pixel coordinates."""

    core: PixelWindow  # the chunk's pixels
    classes: np.ndarray  # uint8, one per polygon
    geometries: np.ndarray  # shapely Polygons
    border: np.ndarray  # touches a chunk border inside the raster: a part of a larger region?
    edges: Edges

    def parts(self) -> ChunkPolygons:
        """The polygons that touch a border inside the raster, the edges numbering them alone
        (whole regions on an edge, at the raster's own edge, become -1)."""
        numbers = np.full(len(self.classes) + 1, -1, np.int32)  # [-1] stays -1
        numbers[np.flatnonzero(self.border)] = np.arange(self.border.sum(), dtype=np.int32)
        edges = Edges(
            *(
                numbers[e]
                for e in (self.edges.top, self.edges.bottom, self.edges.left, self.edges.right)
            )
        )
        return ChunkPolygons(
            self.core,
            self.classes[self.border],
            self.geometries[self.border],
            np.ones(int(self.border.sum()), bool),
            edges,
        )


@dataclass(frozen=True)
class Regions:
    """Whole regions: their classes and polygons, in the raster's pixel coordinates."""

    classes: np.ndarray
    geometries: np.ndarray


def _from_shapes(shapes: Iterable[tuple[dict, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Classes and shapely polygons of `rasterio.features.shapes`' GeoJSON, in one call to
    shapely (a polygon built from each dict took four times as long)."""
    points: list = []
    ring_ends, polygon_ends, classes = [0], [0], []
    for geometry, value in shapes:
        for ring in geometry["coordinates"]:
            points.extend(ring)
            ring_ends.append(len(points))
        polygon_ends.append(len(ring_ends) - 1)
        classes.append(value)
    if not classes:
        return np.empty(0, np.uint8), np.empty(0, object)
    geometries = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.array(points, float),
        (np.array(ring_ends), np.array(polygon_ends)),
    )
    return np.array(classes, np.uint8), geometries


def _edge(geometries: np.ndarray, touching: np.ndarray, strip: PixelWindow) -> np.ndarray:
    """The index of the polygon holding each pixel of `strip` (one row or column of the chunk;
    -1: nodata), rasterized from the polygons `touching` it."""
    indexes = np.flatnonzero(touching)
    if not len(indexes):
        return np.full(strip.height * strip.width, -1, np.int32)
    return rasterio.features.rasterize(
        zip(geometries[indexes], indexes.tolist(), strict=True),
        out_shape=(strip.height, strip.width),
        fill=-1,
        dtype="int32",
        transform=Affine.translation(strip.col_off, strip.row_off),
    ).ravel()


def chunk_polygons(
    class_map: np.ndarray, core: PixelWindow, height: int, width: int
) -> ChunkPolygons:
    """The polygons of `class_map`, the classes of the chunk `core` of a raster of `height` x
    `width` pixels: one per 4-connected region of one class, none of nodata."""
    shapes = rasterio.features.shapes(
        class_map,
        mask=class_map != CLASS_NODATA,
        connectivity=4,
        transform=Affine.translation(core.col_off, core.row_off),
    )
    classes, geometries = _from_shapes(shapes)
    left, top, right, bottom = shapely.bounds(geometries).reshape(-1, 4).T
    last_row, last_col = core.row_off + core.height, core.col_off + core.width
    at = (top == core.row_off, bottom == last_row, left == core.col_off, right == last_col)
    edges = Edges(
        _edge(geometries, at[0], PixelWindow(core.row_off, core.col_off, 1, core.width)),
        _edge(geometries, at[1], PixelWindow(last_row - 1, core.col_off, 1, core.width)),
        _edge(geometries, at[2], PixelWindow(core.row_off, core.col_off, core.height, 1)),
        _edge(geometries, at[3], PixelWindow(core.row_off, last_col - 1, core.height, 1)),
    )
    inside = (core.row_off > 0, last_row < height, core.col_off > 0, last_col < width)
    border = np.zeros(len(classes), bool)
    for touches, has_neighbour in zip(at, inside, strict=True):
        border |= touches & has_neighbour
    return ChunkPolygons(core, classes, geometries, border, edges)


def _region_table(regions: Regions, transform: tuple[float, ...]) -> pa.Table:
    """Regions as published (`REGION_SCHEMA`): pixels, and bounds and WKB in the CRS of the
    north-up `transform` (the job refuses rotated rasters)."""
    a, _, c, _, e, f = transform
    scale, origin = np.array([a, e]), np.array([c, f])
    geometries = shapely.transform(regions.geometries, lambda xy: xy * scale + origin)
    corners = shapely.bounds(regions.geometries).reshape(-1, 2, 2) * scale + origin
    low, high = corners.min(axis=1), corners.max(axis=1)  # a row's y falls as it goes down
    bbox = pa.StructArray.from_arrays(
        [low[:, 0], low[:, 1], high[:, 0], high[:, 1]], fields=list(BBOX_TYPE)
    )
    pixels = np.rint(shapely.area(regions.geometries)).astype(np.int64)
    return pa.Table.from_arrays(
        [
            pa.array(regions.classes, pa.uint8()),
            pixels,
            bbox,
            pa.array(shapely.to_wkb(geometries), pa.binary()),
        ],
        schema=REGION_SCHEMA,
    )


def write_chunk_polygons(path: Path, polygons: ChunkPolygons, transform: tuple[float, ...]) -> None:
    """Write a chunk's polygons to the local `path` (committed with the chunk): its whole regions
    in the CRS of `transform`, its parts in pixel coordinates, and its edges."""
    whole = ~polygons.border
    regions = _region_table(Regions(polygons.classes[whole], polygons.geometries[whole]), transform)
    parts = polygons.parts()
    count = len(parts.classes)
    parts_table = pa.Table.from_arrays(
        [
            pa.array(parts.classes, pa.uint8()),
            pa.nulls(count, pa.int64()),
            pa.nulls(count, BBOX_TYPE),
            pa.nulls(count, pa.binary()),
            pa.array(shapely.to_wkb(parts.geometries), pa.binary()),
        ],
        schema=CHUNK_POLYGONS_SCHEMA,
    )
    table = pa.concat_tables(
        [regions.append_column("part", pa.nulls(len(regions), pa.binary())), parts_table]
    )
    metadata = {EDGES_KEY: parts.edges.packed().tobytes()}
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="zstd")


def read_chunk_polygons(location: str, core: PixelWindow) -> tuple[pa.Table, ChunkPolygons]:
    """The whole regions (`REGION_SCHEMA`) and the parts of the chunk `core` that
    `write_chunk_polygons` wrote at `location`."""
    table = pq.read_table(pa.BufferReader(storage.read_bytes(location)))
    is_part = pc.is_valid(table["part"]).to_numpy(zero_copy_only=False)
    parts = table.filter(is_part)
    edges = Edges.unpacked(np.frombuffer(table.schema.metadata[EDGES_KEY], "<i4"), core)
    geometries = shapely.from_wkb(parts["part"].to_numpy(zero_copy_only=False))
    return (
        table.filter(~is_part).select(REGION_SCHEMA.names),
        ChunkPolygons(
            core, parts["class"].to_numpy(), geometries, np.ones(len(parts), bool), edges
        ),
    )


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
            output.add(_region_table(regions, info.transform))
        output.finish()
