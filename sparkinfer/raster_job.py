"""What a raster of a run is: its input's metadata (or a grid tile's, with the inputs that make
its pixels), its plan, its identity (what its outputs were made from) and where its outputs go.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sparkinfer import __version__
from sparkinfer.config import JobConfig
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.model import ModelPackage
from sparkinfer.mosaic import MosaicSource
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.zarr_map import ZarrRegion

IDENTITY_TAG = "SPARKINFER_IDENTITY"  # the class map's tag that holds its identity


@dataclass(frozen=True)
class RasterJob:
    """One input raster, its plan and where its outputs go."""

    info: RasterInfo
    plan: RasterPlan
    identity: str  # hash of input, model and config: what the outputs were made from
    classes_path: str  # local path or s3:// URI, as every location below
    scores_path: str | None
    confidence_path: str | None
    uncertain_path: str | None
    quicklook_path: str | None
    polygons_path: str | None
    staging: str
    mosaic: MosaicSource | None = None  # a grid tile of a map: its pixels come from its inputs
    zarr: ZarrRegion | None = None  # a grid tile written into the map's Zarr store

    @property
    def chips(self) -> bool:
        """Whether the model is a chip classifier: its class map has a cell per chip, and a
        chip table stands for the tile index."""
        return isinstance(self.plan.tiling, ChipGrid)

    @property
    def tile_index_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".tiles.parquet"

    @property
    def chips_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".chips.parquet"

    @property
    def stac_path(self) -> str:
        return self.classes_path.removesuffix(".tif") + ".stac.json"

    @property
    def marker_path(self) -> str:
        """A grid tile in a Zarr store: the file that says it is there, and from what."""
        return self.classes_path.removesuffix(".tif") + ".zarr.json"

    @property
    def outputs(self) -> list[str]:
        if self.zarr is not None:  # its pixels are in the store; here, what tells of them
            return [self.tile_index_path, self.marker_path]
        table = self.chips_path if self.chips else self.tile_index_path
        paths = (
            self.classes_path,
            self.scores_path,
            self.confidence_path,
            self.uncertain_path,
            self.quicklook_path,
            table,
            self.polygons_path,
            self.stac_path,
        )
        return [p for p in paths if p]


def input_version(info: RasterInfo) -> list:
    """What tells an input from an edited one: its path and its file's size and time; an
    Item's digest, which covers its JSON, its assets' files, those chosen and their
    resampling."""
    return [info.path, *([info.item.digest] if info.item else [info.size, info.mtime_ns])]


def identity(
    source: list,
    package: ModelPackage,
    config: JobConfig,
    tiling: Tiling | ChipGrid,
    labels: tuple | None = None,
) -> str:
    """Hash of everything that decides a raster's outputs, their bytes included (the COG's
    layout, the code that wrote them): chunks of another run never mix. `source`: what its
    pixels are made of (`input_version`, or a grid tile's inputs and place); `labels`: the
    classes' names and colours where a model item, not the model, gives them."""
    parts = {
        "input": source,
        "model": package.digest,
        "tiling": asdict(tiling),
        "pixels": config.model_dump(
            include={
                "bands",
                "normalization",
                "activation",
                "tta",
                "scores",
                "confidence",
                "backend",
                "precision",
                "cog",
                "polygons",
                "min_area",
            }
        ),
        "version": __version__,
    }
    if labels is not None:
        parts["labels"] = labels
    if config.uncertain:  # each chunk holds its candidates (`sparkinfer.uncertain`)
        parts["uncertain"] = [config.uncertain, config.uncertain_size]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
