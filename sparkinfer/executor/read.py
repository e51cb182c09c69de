"""Reading: a task's chunk rows become their windows (from the plan), each chunk's read window is
read in one piece on reader threads ahead of the model, and cut into its windows' pixels."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import rasterio
from rasterio.errors import RasterioError

from sparkinfer import storage
from sparkinfer.errors import InputError, first_line
from sparkinfer.mosaic import MosaicSource
from sparkinfer.plan import Chunk, RasterPlan, Tile
from sparkinfer.raster import GDAL_READ_OPTIONS, RasterInfo, read_window

# Where, in a window, the pixels whose output is kept lie: their validity decides whether the
# window is inferred at all.
KeptPart = Callable[[Tile], tuple[slice, slice]]


def window_core(window: Tile) -> tuple[slice, slice]:
    """A pixel model's kept output: the window's core."""
    return window.core.slices(window.read)


def whole_window(window: Tile) -> tuple[slice, slice]:
    """A chip classifier's one output, which is its whole window's."""
    return slice(None), slice(None)


@dataclass(frozen=True)
class PlacedWindow:
    """A window of the stage's plan: its raster (by index in the stage), its chunk and itself."""

    raster_index: int
    chunk: Chunk
    window: Tile


@dataclass(frozen=True)
class PlannedChunk:
    """A chunk row of the task, with the windows it infers (row-major, from its raster's plan)."""

    raster_index: int
    chunk: Chunk
    windows: tuple[Tile, ...]


@dataclass(frozen=True)
class ReadChunk:
    """A planned chunk and its read window: pixels (bands, height, width) in the raster's own
    type and their validity (height, width); or, where it could not be read, why."""

    planned: PlannedChunk
    data: np.ndarray | None
    valid: np.ndarray | None
    read_s: float
    error: str | None = None


@dataclass(frozen=True)
class ReadWindow:
    """One window cut from its chunk's read window, on its way to the model."""

    place: PlacedWindow
    pixels: np.ndarray | None  # (height, width, bands), a view; None: not to be inferred
    valid: np.ndarray | None  # of the window; None when every pixel is valid
    kept_valid: np.ndarray | None  # of its kept part (`KeptPart`)
    read_s: float  # its chunk's read, counted on the chunk's first window
    error: str | None = None  # its chunk could not be read


def planned_chunks(
    batches: Iterable[pa.RecordBatch], plans: tuple[RasterPlan, ...]
) -> Iterator[PlannedChunk]:
    """The chunk rows (`RasterPlan.chunks` with a `raster_index`), each with its windows."""
    for batch in batches:
        for row in batch.to_pylist():
            chunk = Chunk.of_row(row)
            windows = plans[row["raster_index"]].chunk_windows(chunk.row, chunk.col)
            yield PlannedChunk(row["raster_index"], chunk, tuple(windows))


class WindowReader:
    """Reads chunks' read windows, each in one piece, with a dataset handle per raster and thread.

    A chunk's windows are cut from its read window: windows overlap by the halo and cross
    GeoTIFF blocks, so reading them one by one would decode most blocks several times. GDAL
    handles must not be shared between threads: each reader thread opens its own. A raster with
    a mosaic (a grid tile of a map) is read from its inputs, warped (`MosaicSource.read`)."""

    def __init__(
        self,
        rasters: tuple[RasterInfo, ...],
        bands: tuple[int, ...],
        mosaics: tuple[MosaicSource | None, ...] = (),
    ) -> None:
        self.rasters = rasters
        self.bands = list(bands)
        self.mosaics = mosaics or (None,) * len(rasters)
        self.local = threading.local()
        self.opened: list[rasterio.DatasetReader] = []
        self.lock = threading.Lock()

    def _dataset(self, index: int) -> rasterio.DatasetReader:
        datasets = self.local.__dict__.setdefault("datasets", {})
        if index not in datasets:
            datasets[index] = rasterio.open(self.rasters[index].dataset)
            with self.lock:
                self.opened.append(datasets[index])
        return datasets[index]

    def read(self, planned: PlannedChunk) -> ReadChunk:
        started = time.perf_counter()
        info, read = self.rasters[planned.raster_index], planned.chunk.read
        mosaic = self.mosaics[planned.raster_index]
        try:
            if mosaic is not None:
                data, valid = mosaic.read(
                    self.bands, read.row_off, read.col_off, read.height, read.width
                )
                return ReadChunk(planned, data, valid, time.perf_counter() - started)
            with storage.gdal_env(**GDAL_READ_OPTIONS):
                data, valid = read_window(
                    self._dataset(planned.raster_index),
                    self.bands,
                    read.row_off,
                    read.col_off,
                    read.height,
                    read.width,
                    info.masking,
                )
        except (RasterioError, OSError) as exc:  # a broken file fails its raster, not the job
            error = f"{info.path}: cannot read pixels ({first_line(exc, 300)})"
            return ReadChunk(planned, None, None, time.perf_counter() - started, error)
        except InputError as exc:  # an input of a mosaic that cannot be warped
            return ReadChunk(planned, None, None, time.perf_counter() - started, str(exc))
        return ReadChunk(planned, data, valid, time.perf_counter() - started)

    def close(self) -> None:
        for src in self.opened:
            src.close()


def cut(chunk: ReadChunk, kept_part: KeptPart) -> Iterator[ReadWindow]:
    """The windows of a read chunk: views of its read window, with their validity. A window
    whose kept part has no valid pixel is not inferred (no pixels)."""
    planned = chunk.planned
    for i, window in enumerate(planned.windows):
        place = PlacedWindow(planned.raster_index, planned.chunk, window)
        read_s = chunk.read_s if i == 0 else 0.0  # the chunk's read, counted once
        if chunk.data is None:
            yield ReadWindow(place, None, None, None, read_s, chunk.error)
            continue
        rows, cols = window.read.slices(planned.chunk.read)
        window_valid = chunk.valid[rows, cols]
        kept_valid = window_valid[kept_part(window)]
        if not kept_valid.any():
            yield ReadWindow(place, None, None, None, read_s)
            continue
        # A view: the batch is stacked from the chunk's array, in its own type.
        pixels = np.moveaxis(chunk.data[:, rows, cols], 0, -1)
        valid = None if window_valid.all() else window_valid
        yield ReadWindow(place, pixels, valid, kept_valid, read_s)


def prefetched(
    chunks: Iterable[PlannedChunk], reader: WindowReader, readers: int, kept_part: KeptPart
) -> Iterator[ReadWindow]:
    """The chunks' windows, their read windows read by `readers` threads up to `readers` chunks
    ahead of the model; `reader` is closed at the end.

    GDAL reads and the model's call both release the GIL, so the next chunks are read and
    decoded while the model runs on this batch. The plan rows are consumed on the calling
    thread; memory holds at most `readers` + 1 read windows, in the raster's own type."""
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(readers, thread_name_prefix="sparkinfer-read") as pool:
        try:
            for chunk in chunks:
                ahead.append(pool.submit(reader.read, chunk))
                if len(ahead) > readers:
                    yield from cut(ahead.popleft().result(), kept_part)
            while ahead:
                yield from cut(ahead.popleft().result(), kept_part)
        finally:
            for future in ahead:
                future.cancel()
            pool.shutdown(wait=True)
            reader.close()
