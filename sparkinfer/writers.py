"""Writing predictions: per-task GeoTIFF chunks, then one Cloud-Optimized GeoTIFF per raster.

A Spark task writes each chunk's prediction (`sparkinfer.executor`), once complete, into the
chunk's GeoTIFF under a temporary name and commits it (`storage.commit`: a rename, or an upload
to S3). The chunk's name comes from the plan (its position in the chunk grid), so a retried
task replaces the file instead of adding one. Assembly reads the chunks through a VRT and lets
GDAL's COG driver write the final file block by block (with overviews), under a temporary name,
committed at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from affine import Affine

from sparkinfer import storage
from sparkinfer.config import CogOptions
from sparkinfer.outputs import CLASS_NODATA, SCORE_NODATA
from sparkinfer.plan import PixelWindow
from sparkinfer.raster import GDAL_CACHE_BYTES, RasterInfo
from sparkinfer.whole_tiff import check_whole

# Chunks are intermediate: fast compression, tiled so the COG driver reads them by block; a
# chunk's scores are written band by band (`executor.merge` holds them so), not interleaved.
CHUNK_PROFILE = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "zstd",
    "zstd_level": 1,
    "bigtiff": "if_safer",
}


def hex_rgb(color: str) -> tuple[int, int, int]:
    """'#rrggbb' as an (r, g, b) tuple of 0-255 integers."""
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def chunk_name(chunk_row: int, chunk_col: int) -> str:
    return f"chunk_r{chunk_row:05d}_c{chunk_col:05d}.tif"


def scores_name(classes_name: str) -> str:
    """The name of the scores file beside a class map file."""
    return classes_name.removesuffix(".tif") + ".scores.tif"


def polygons_name(classes_name: str) -> str:
    """The name of a chunk's polygons file (`sparkinfer.polygons`) beside its class map."""
    return classes_name.removesuffix(".tif") + ".polygons.parquet"


def chunk_files(
    chunk_row: int, chunk_col: int, scores: bool, *, polygons: bool = False
) -> list[str]:
    """The names of a chunk's files, in the order `ChunkWriter.commit` writes them."""
    name = chunk_name(chunk_row, chunk_col)
    return (
        [name]
        + ([scores_name(name)] if scores else [])
        + ([polygons_name(name)] if polygons else [])
    )


def is_committed(
    listed: set[str], chunk_row: int, chunk_col: int, scores: bool, *, polygons: bool = False
) -> bool:
    """Whether a chunk is committed, from the names listed in its staging folder: all its files
    are there (each appears whole)."""
    names = chunk_files(chunk_row, chunk_col, scores, polygons=polygons)
    return all(name in listed for name in names)


@dataclass(frozen=True)
class ChunkSpec:
    """Where one chunk lies in its raster, and where its files go."""

    folder: str  # local path or s3:// URI
    chunk_row: int
    chunk_col: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def classes_path(self) -> str:
        return storage.join(self.folder, chunk_name(self.chunk_row, self.chunk_col))

    @property
    def scores_path(self) -> str:
        return scores_name(self.classes_path)

    @property
    def chips_path(self) -> str:
        """A chip classifier's chip table of the chunk (`sparkinfer.chips`)."""
        return self.classes_path.removesuffix(".tif") + ".chips.parquet"

    @property
    def polygons_path(self) -> str:
        return polygons_name(self.classes_path)


class ChunkWriter:
    """Writes one chunk's class map (and optionally scores) tile by tile, then commits it. The
    class map stays in memory too (`class_map`, a byte per pixel) for what is counted in it."""

    def __init__(
        self, spec: ChunkSpec, raster: RasterInfo, channels: int, write_scores: bool
    ) -> None:
        self.spec = spec
        transform = Affine(*raster.transform) * Affine.translation(spec.col_off, spec.row_off)
        common = dict(
            CHUNK_PROFILE,
            width=spec.width,
            height=spec.height,
            crs=raster.crs,
            transform=transform,
        )
        self.class_map = np.full((spec.height, spec.width), CLASS_NODATA, np.uint8)
        # (staging file, final name, its dataset while open; None for `staged_file`'s)
        self._files: list[tuple[Path, str, rasterio.io.DatasetWriter | None]] = []
        self._classes = self._open(spec.classes_path, common, 1, "uint8", CLASS_NODATA)
        self._scores = (
            self._open(
                spec.scores_path, common | {"interleave": "band"}, channels, "float32", SCORE_NODATA
            )
            if write_scores
            else None
        )

    def _open(self, final: str, profile: dict, count: int, dtype: str, nodata: float):
        tmp = storage.staging_file(final)
        dst = rasterio.open(tmp, "w", count=count, dtype=dtype, nodata=nodata, **profile)
        self._files.append((tmp, final, dst))
        return dst

    def write(
        self, row_off: int, col_off: int, classes: np.ndarray, scores: np.ndarray | None
    ) -> None:
        """Write one tile's core at raster offsets (row_off, col_off)."""
        window = rasterio.windows.Window(
            col_off - self.spec.col_off,
            row_off - self.spec.row_off,
            classes.shape[1],
            classes.shape[0],
        )
        self._classes.write(classes, 1, window=window)
        top, left = int(window.row_off), int(window.col_off)
        self.class_map[top : top + classes.shape[0], left : left + classes.shape[1]] = classes
        if self._scores is not None and scores is not None:
            self._scores.write(np.moveaxis(scores, -1, 0), window=window)

    def staged_file(self, final: str, first: bool = False) -> Path:
        """A local file for the caller to write `final` into: committed with the chunk, after
        the files opened before it (`first`: before them all), or removed with it."""
        tmp = storage.staging_file(final)
        self._files.insert(0 if first else len(self._files), (tmp, final, None))
        return tmp

    def commit(self, tags: dict[str, str] | None = None) -> None:
        """Close the files and move (or upload) them to their final names; `tags` go into the
        class map's metadata, so they are committed with it."""
        if tags:
            self._classes.update_tags(**tags)
        self._close()
        for tmp, _, dataset in self._files:
            if dataset is not None:
                check_whole(tmp)  # each file whole before any is committed
        for tmp, final, _ in self._files:
            storage.commit(tmp, final)

    def abort(self) -> None:
        self._close()
        for tmp, _, _ in self._files:
            tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        for _, _, dst in self._files:
            if dst is not None:
                dst.close()


@dataclass(frozen=True)
class BandLayout:
    """The bands of a class map or of its scores, as the COGs and VRTs carry them."""

    count: int
    dtype: str
    nodata: float
    descriptions: list[str]
    colors: tuple[str, ...]  # the class map's colour table; none for scores
    resampling: str  # of its overviews

    @classmethod
    def of(
        cls,
        scores: bool,
        classes: int,
        channels: int,
        class_names: tuple[str, ...] = (),
        class_colors: tuple[str, ...] = (),
    ) -> BandLayout:
        """The class map carries the model's class names in its band's description and its
        colours in the band's colour table; scores bands are described by class name."""
        names = class_names or tuple(str(i) for i in range(classes))
        if scores:
            # One sigmoid channel is the score of class 1.
            described = names if channels == classes else names[1:]
            return cls(
                channels, "float32", SCORE_NODATA, [f"score {n}" for n in described], (), "AVERAGE"
            )
        listed = ", ".join(f"{i} {name}" for i, name in enumerate(class_names))
        description = f"class ({listed})" if class_names else "class"
        return cls(1, "uint8", CLASS_NODATA, [description], class_colors, "NEAREST")


def vrt_xml(
    raster: RasterInfo,
    sources: list[tuple[str, PixelWindow]],
    layout: BandLayout,
    metadata: dict[str, str],
    relative: bool = False,
) -> str:
    """A GDAL VRT of `raster`'s grid made of `sources`: files, each placed at its window of the
    grid; with `relative`, their names are relative to the VRT's folder."""
    a, b, c, d, e, f = raster.transform
    lines = [
        f'<VRTDataset rasterXSize="{raster.width}" rasterYSize="{raster.height}">',
        f"  <SRS>{escape(raster.crs or '')}</SRS>",
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
        "  <Metadata>",
        *(f'    <MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in metadata.items()),
        "  </Metadata>",
    ]
    vrt_type = {"uint8": "Byte", "float32": "Float32"}[layout.dtype]
    nodata_text = "nan" if math.isnan(layout.nodata) else str(int(layout.nodata))
    name_attribute = ' relativeToVRT="1"' if relative else ""
    for band in range(1, layout.count + 1):
        lines += [
            f'  <VRTRasterBand dataType="{vrt_type}" band="{band}">',
            f"    <Description>{escape(layout.descriptions[band - 1])}</Description>",
            f"    <NoDataValue>{nodata_text}</NoDataValue>",
        ]
        if layout.colors:
            lines += ["    <ColorInterp>Palette</ColorInterp>", "    <ColorTable>"]
            lines += [
                f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>'
                for r, g, b in map(hex_rgb, layout.colors)
            ]
            lines.append("    </ColorTable>")
        for source, window in sources:
            size = f'xSize="{window.width}" ySize="{window.height}"'
            lines += [
                "    <SimpleSource>",
                f"      <SourceFilename{name_attribute}>{escape(source)}</SourceFilename>",
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" {size}/>',
                f'      <DstRect xOff="{window.col_off}" yOff="{window.row_off}" {size}/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def write_chunks_vrt(
    raster: RasterInfo,
    chunks: list[ChunkSpec],
    path: Path,
    *,
    scores: bool,
    classes: int,
    channels: int,
    metadata: dict[str, str],
    class_names: tuple[str, ...] = (),
    class_colors: tuple[str, ...] = (),
) -> BandLayout:
    """A VRT at the local `path` of the raster's class map (or scores) made of its chunk files,
    its bands laid out by `BandLayout.of`; the class map also carries the class names as a JSON
    list (tag CLASS_NAMES). Returns the layout."""
    names = class_names or tuple(str(i) for i in range(classes))
    metadata = metadata | {"CLASS_NAMES": json.dumps(list(names))}
    layout = BandLayout.of(scores, classes, channels, class_names, class_colors)
    sources = [
        (
            storage.gdal_path(chunk.scores_path if scores else chunk.classes_path),
            PixelWindow(chunk.row_off, chunk.col_off, chunk.height, chunk.width),
        )
        for chunk in chunks
    ]
    path.write_text(vrt_xml(raster, sources, layout, metadata), encoding="utf-8")
    return layout


def assemble_cog(
    raster: RasterInfo,
    chunks: list[ChunkSpec],
    path: Path,
    options: CogOptions,
    *,
    scores: bool,
    **band_options,
) -> None:
    """Mosaic chunk files into one COG at the local `path` (a `storage.staged` file: the
    caller commits it), through their VRT (`write_chunks_vrt`, which takes `band_options`)."""
    vrt = path.with_suffix(".vrt")
    layout = write_chunks_vrt(raster, chunks, vrt, scores=scores, **band_options)
    try:
        with storage.gdal_env(
            **storage.NO_LISTING, GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS"
        ):
            rasterio.shutil.copy(
                str(vrt),
                str(path),
                driver="COG",
                COMPRESS=options.compression.upper(),
                PREDICTOR="YES",
                BLOCKSIZE=options.blocksize,
                OVERVIEWS="AUTO",
                RESAMPLING=layout.resampling,
                BIGTIFF="IF_SAFER",
            )
        check_whole(path)
    finally:
        vrt.unlink(missing_ok=True)
