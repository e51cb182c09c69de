"""One raster's outputs made from its committed chunks, in any process: its COG(s), tile index
or chip table, polygons, quicklook and STAC Item, and with `--verify` the comparison of a sample
window run whole. The assembly stage (`stages.assemble`) runs it on the executors.

Each output appears whole (written locally, then renamed or uploaded); the chunks go only once
all are there, so a run that dies here redoes the raster from its chunks. The STAC Item comes
last: it is there only when everything it lists is.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from sparkinfer import __version__, storage
from sparkinfer.catalog import write_stac_item, write_tile_index
from sparkinfer.chips import output_grid, write_chip_table
from sparkinfer.cogs import assemble_cog, write_chunks_vrt
from sparkinfer.config import CogOptions
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.errors import first_line
from sparkinfer.inspection import ModelInfo
from sparkinfer.polygon_merge import write_polygons
from sparkinfer.provenance import stamped
from sparkinfer.quicklook import write_quicklook
from sparkinfer.raster import RasterInfo
from sparkinfer.raster_job import IDENTITY_TAG, RasterJob
from sparkinfer.runtimes import Runtime
from sparkinfer.uncertain import chunk_tags, least_sure, write_uncertain
from sparkinfer.verify import sample_window, verify
from sparkinfer.writers import ChunkSpec
from sparkinfer.zarr_map import tile_marker, write_tile


@dataclass(frozen=True)
class AssemblySpec:
    """What every assembly task needs, and no model bytes: the COG's layout, what the model is
    (its classes, names and colours), how rasters were cut, the polygons' smallest area, the
    bands fed to the model and, with `--verify`, a model to verify with."""

    cog: CogOptions
    model: ModelInfo
    model_sha256: str
    tiling: Tiling | ChipGrid
    min_area: float
    bands: tuple[int, ...]
    verify: bool
    confidence: str | None = None  # the confidence's measure, where it is written
    uncertain: int = 0  # chips to pick where the model is least sure (`sparkinfer.uncertain`)
    uncertain_size: int = 256
    provenance: dict | None = None  # the Items' fields that say what made them (`provenance`)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' names, or their indices where the model names none."""
        model = self.model
        return model.class_names or tuple(str(i) for i in range(model.classes))

    def tags(self, raster: RasterJob) -> dict[str, str]:
        """The COG's metadata tags: what made it, and how."""
        tags = {"sparkinfer_version": __version__, "model_sha256": self.model_sha256}
        if isinstance(self.tiling, ChipGrid):
            tags |= {"chip_size": str(self.tiling.size), "chip_stride": str(self.tiling.stride)}
        else:
            tags |= {
                "halo": str(self.tiling.halo),
                "tile_size": str(self.tiling.tile_size),
                "merge": self.tiling.merge,
            }
        return tags | {"source": raster.info.path, IDENTITY_TAG: raster.identity}

    def stac_properties(self) -> dict:
        """The STAC Item's properties of this job's own."""
        properties = {
            "sparkinfer:version": __version__,
            "sparkinfer:model_sha256": self.model_sha256,
        }
        if isinstance(self.tiling, ChipGrid):
            return properties | {
                "sparkinfer:chip_size": self.tiling.size,
                "sparkinfer:chip_stride": self.tiling.stride,
            }
        return properties | {"sparkinfer:halo": self.tiling.halo}


@dataclass(frozen=True)
class AssemblyResult:
    """What assembling one raster did: how long it took, why it failed (None: it did not), and
    with `--verify` what the comparison found, as JSON."""

    input: str
    assemble_s: float
    error: str | None = None
    verify: str | None = None


ASSEMBLY_RESULT_SCHEMA = pa.schema(
    [
        ("input", pa.string()),
        ("assemble_s", pa.float64()),
        ("error", pa.string()),
        ("verify", pa.string()),
    ]
)


def chunk_specs(raster: RasterJob) -> list[ChunkSpec]:
    """Where each chunk of the raster's plan is written."""
    chunks = raster.plan.chunks()
    fields = ["chunk_row", "chunk_col", "row_off", "col_off", "height", "width"]
    return [ChunkSpec(folder=raster.staging, **c) for c in chunks.select(fields).to_pylist()]


def assemble_raster(
    raster: RasterJob, spec: AssemblySpec, runtime: Callable[[], Runtime] | None = None
) -> AssemblyResult:
    """Mosaic one raster's chunks into its outputs, then drop the chunks; with `runtime` (the
    model, loaded when first called), verify the class map. A failure is returned, not raised:
    the other rasters' assembly goes on."""
    started = time.perf_counter()
    try:
        verified = _write_outputs(raster, spec, runtime)
    except Exception as exc:  # noqa: BLE001 -- recorded per raster, reported at the end
        error = f"{raster.info.path}: {first_line(exc, 300)}"
        return AssemblyResult(raster.info.path, time.perf_counter() - started, error)
    storage.remove_tree(raster.staging)
    return AssemblyResult(raster.info.path, time.perf_counter() - started, verify=verified)


def _write_zarr_tile(raster: RasterJob, spec: AssemblySpec) -> None:
    """A grid tile into the map's Zarr store (`zarr_map.write_tile`) from its chunks, its tile
    index and uncertain chips beside, and last its marker: a tile with a marker is whole in
    the store."""
    model, chunks = spec.model, chunk_specs(raster)
    arrays = {"classes": dict(scores=False)}  # the tile's arrays, and their chunk files
    if raster.scores_path:
        arrays["scores"] = dict(scores=True)
    if raster.confidence_path:
        arrays["confidence"] = dict(scores=False, confidence=spec.confidence)
    with tempfile.TemporaryDirectory(prefix="sparkinfer-zarr-") as folder:
        vrts = {}
        for name, layer in arrays.items():
            vrts[name] = str(Path(folder) / f"{name}.vrt")
            write_chunks_vrt(
                raster.info,
                chunks,
                Path(vrts[name]),
                classes=model.classes,
                channels=model.channels,
                metadata=spec.tags(raster),
                class_names=model.class_names,
                **layer,
            )
        with storage.gdal_env(**storage.NO_LISTING):
            write_tile(raster.zarr, vrts)
    write_tile_index(raster.info, raster.plan, chunks, raster.tile_index_path, model.classes)
    _write_uncertain(raster, raster.info, chunks, spec)
    storage.write_text(raster.marker_path, tile_marker(raster.identity, raster.zarr))


def _write_uncertain(
    raster: RasterJob, grid: RasterInfo, chunks: list[ChunkSpec], spec: AssemblySpec
) -> None:
    """With `--uncertain`, the raster's least sure chips, from its chunks' candidates."""
    if raster.uncertain_path is None:
        return
    tags = chunk_tags(chunk.classes_path for chunk in chunks)
    chips = least_sure(tags, spec.uncertain, spec.uncertain_size)
    write_uncertain(grid, chips, spec.uncertain_size, raster.uncertain_path, spec.class_names)


def _write_outputs(
    raster: RasterJob, spec: AssemblySpec, runtime: Callable[[], Runtime] | None
) -> str | None:
    if raster.zarr is not None:
        _write_zarr_tile(raster, spec)
        return None
    model, verified = spec.model, None
    # A chip classifier's outputs lie on its chips' grid, a cell per chip.
    grid = output_grid(raster.info, raster.plan.tiling)
    chunks = chunk_specs(raster)
    common = dict(
        classes=model.classes,
        channels=model.channels,
        metadata=spec.tags(raster),
        class_names=model.class_names,
        class_colors=model.class_colors,
    )
    if raster.scores_path is not None:
        with storage.staged(raster.scores_path) as scores:
            assemble_cog(grid, chunks, scores, spec.cog, scores=True, **common)
    with (
        storage.staged(raster.classes_path) as classes,
        _staged_or_none(raster.confidence_path) as confidence,
    ):
        # The two COGs side by side: GDAL releases the GIL, and each reads and builds its
        # overviews on one thread.
        with ThreadPoolExecutor(2) as pool:
            made = [
                pool.submit(assemble_cog, grid, chunks, classes, spec.cog, scores=False, **common)
            ]
            if confidence is not None:
                made.append(
                    pool.submit(
                        assemble_cog,
                        grid,
                        chunks,
                        confidence,
                        spec.cog,
                        scores=False,
                        confidence=spec.confidence,
                        **common,
                    )
                )
            for future in made:
                future.result()
        _write_uncertain(raster, grid, chunks, spec)
        # From the local COG, before its commit: on S3 no download of what was just made.
        if raster.quicklook_path is not None:
            write_quicklook(
                str(classes), raster.quicklook_path, model.class_names, model.class_colors
            )
        if raster.chips:
            write_chip_table(raster.info, raster.plan, chunks, raster.chips_path, spec.class_names)
        else:
            write_tile_index(
                raster.info, raster.plan, chunks, raster.tile_index_path, model.classes
            )
        if raster.polygons_path is not None:
            write_polygons(
                raster.info, chunks, raster.polygons_path, spec.class_names, spec.min_area
            )
        if runtime is not None:
            verified = _verified(raster, classes, spec, runtime)
    assets = {
        "classes": raster.classes_path,
        "scores": raster.scores_path,
        "confidence": raster.confidence_path,
        "uncertain": raster.uncertain_path,
        "quicklook": raster.quicklook_path,
        "polygons": raster.polygons_path,
    }
    assets |= {"chips": raster.chips_path} if raster.chips else {"tiles": raster.tile_index_path}
    write_stac_item(
        grid,
        raster.stac_path,
        {key: path for key, path in assets.items() if path},
        model.class_names,
        model.class_colors,
        model.classes,
        spec.stac_properties(),
        raster.mosaic.inputs if raster.mosaic else (),
        spec.provenance and stamped(spec.provenance, raster.identity, model.formats),
    )
    return verified


@contextmanager
def _staged_or_none(location: str | None) -> Iterator[Path | None]:
    """`storage.staged` for a location, or None for none."""
    if location is None:
        yield None
        return
    with storage.staged(location) as path:
        yield path


def _verified(
    raster: RasterJob, classes_path: Path, spec: AssemblySpec, runtime: Callable[[], Runtime]
) -> str | None:
    """`--verify` on the raster's local class map: what `verify.verify` found, as JSON."""
    info = raster.info
    window = sample_window(info.height, info.width, spec.tiling, spec.model.input_size)
    if window is None:
        return None
    return json.dumps(verify(info, spec.bands, str(classes_path), runtime(), window))
