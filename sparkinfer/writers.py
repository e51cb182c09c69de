"""Writing predictions' chunks: a task's GeoTIFF per chunk and layer (class map, scores,
confidence), from which `sparkinfer.cogs` makes each raster's COGs.

A Spark task writes each chunk's prediction (`sparkinfer.executor`), once complete, into the
chunk's GeoTIFFs under temporary names and commits them (`storage.commit`: a rename, or an
upload to S3) once each is whole. The chunk's name comes from the plan (its position in the
chunk grid), so a retried task replaces the file instead of adding one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from affine import Affine

from sparkinfer import storage
from sparkinfer.outputs import CLASS_NODATA, SCORE_NODATA
from sparkinfer.raster import RasterInfo
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


def chunk_name(chunk_row: int, chunk_col: int) -> str:
    return f"chunk_r{chunk_row:05d}_c{chunk_col:05d}.tif"


def scores_name(classes_name: str) -> str:
    """The name of the scores file beside a class map file."""
    return classes_name.removesuffix(".tif") + ".scores.tif"


def confidence_name(classes_name: str) -> str:
    """The name of the confidence file (`sparkinfer.confidence`) beside a class map file."""
    return classes_name.removesuffix(".tif") + ".confidence.tif"


def polygons_name(classes_name: str) -> str:
    """The name of a chunk's polygons file (`sparkinfer.polygons`) beside its class map."""
    return classes_name.removesuffix(".tif") + ".polygons.parquet"


def chunk_files(
    chunk_row: int,
    chunk_col: int,
    scores: bool,
    *,
    confidence: bool = False,
    polygons: bool = False,
) -> list[str]:
    """The names of a chunk's files, in the order `ChunkWriter.commit` writes them."""
    name = chunk_name(chunk_row, chunk_col)
    return (
        [name]
        + ([scores_name(name)] if scores else [])
        + ([confidence_name(name)] if confidence else [])
        + ([polygons_name(name)] if polygons else [])
    )


def is_committed(listed: set[str], chunk_row: int, chunk_col: int, scores: bool, **layers) -> bool:
    """Whether a chunk is committed, from the names listed in its staging folder: all its files
    (`chunk_files`, given its `layers`) are there (each appears whole)."""
    return all(name in listed for name in chunk_files(chunk_row, chunk_col, scores, **layers))


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
    def confidence_path(self) -> str:
        return confidence_name(self.classes_path)

    @property
    def chips_path(self) -> str:
        """A chip classifier's chip table of the chunk (`sparkinfer.chips`)."""
        return self.classes_path.removesuffix(".tif") + ".chips.parquet"

    @property
    def polygons_path(self) -> str:
        return polygons_name(self.classes_path)


class ChunkWriter:
    """Writes one chunk's class map (and optionally scores and confidence) tile by tile, then
    commits it. The class map stays in memory too (`class_map`, a byte per pixel) for what is
    counted in it."""

    def __init__(
        self,
        spec: ChunkSpec,
        raster: RasterInfo,
        channels: int,
        write_scores: bool,
        write_confidence: bool = False,
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
        self._confidence = (
            self._open(spec.confidence_path, common, 1, "uint8", CLASS_NODATA)
            if write_confidence
            else None
        )

    def _open(self, final: str, profile: dict, count: int, dtype: str, nodata: float):
        tmp = storage.staging_file(final)
        dst = rasterio.open(tmp, "w", count=count, dtype=dtype, nodata=nodata, **profile)
        self._files.append((tmp, final, dst))
        return dst

    def write(
        self,
        row_off: int,
        col_off: int,
        classes: np.ndarray,
        scores: np.ndarray | None,
        confidence: np.ndarray | None = None,
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
        if self._confidence is not None and confidence is not None:
            self._confidence.write(confidence, 1, window=window)

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
        for tmp, final, dataset in self._files:
            if dataset is not None:
                check_whole(tmp, final)  # each file whole before any is committed
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
