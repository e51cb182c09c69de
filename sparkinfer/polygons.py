"""Polygons of the class map (`--polygons`): each 4-connected region of one class as one polygon,
in GeoParquet, made without holding the raster in any process.

1. Per chunk, in the inference stage, where its class map is in memory: `chunk_polygons`
   polygonizes it (`rasterio.features.shapes`, 4-connectivity, nodata masked). A polygon that
   touches no chunk border inside the raster is a whole region: `write_chunk_polygons` writes it
   as it will be published (WKB in the CRS, pixels, bounding box). The others are parts of
   regions that may go on in a neighbour: they are written in pixel coordinates, with which part
   holds each pixel of the chunk's four edges. The file is committed with the chunk.
2. Per raster, in the assembly stage: `polygon_merge.write_polygons` streams the chunks a
   chunk row at a time. Whole regions are copied as they are read (never decoded). Parts are
   merged (`merge_regions`): two parts are of one region where two of their edge pixels of the same
   class face each other across a border (union-find), and a region is unioned and written once
   none of its parts touches the bottom of the last chunk row read. Memory holds the parts of
   the regions still open and one chunk row's bottom edges.

Parts stay in the raster's pixel coordinates (integers, exact in floating point) until merged:
their union is exact, their edges running along pixel edges. Every vertex, of a whole region or
of a merged one, is taken to the CRS by the same formula (`region_table`), so both agree to the
bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import rasterio.features
import shapely
from affine import Affine

from sparkinfer import storage
from sparkinfer.outputs import CLASS_NODATA
from sparkinfer.plan import PixelWindow

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


def region_table(regions: Regions, transform: tuple[float, ...]) -> pa.Table:
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
    regions = region_table(Regions(polygons.classes[whole], polygons.geometries[whole]), transform)
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
