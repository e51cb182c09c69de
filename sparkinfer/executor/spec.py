"""What executors are told about the stage: the rasters, their plans and where their chunks go,
and how the model runs. Sent with each task's closure, so it holds no model bytes (the model
travels once per executor, `session.shipped`)."""

from __future__ import annotations

from dataclasses import dataclass

from sparkinfer.chips import output_grid
from sparkinfer.cuts import ChipGrid
from sparkinfer.mosaic import MosaicSource
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import RasterInfo
from sparkinfer.runtimes import RuntimeOptions


@dataclass(frozen=True)
class StageSpec:
    """What executors need to infer and write every chunk of the stage."""

    rasters: tuple[RasterInfo, ...]
    plans: tuple[RasterPlan, ...]  # each raster's, to expand a chunk row into its windows
    staging: tuple[str, ...]  # one chunk folder per raster
    bands: tuple[int, ...]
    runtime: RuntimeOptions  # how the model runs, the pixels' normalisation included
    batch_size: int | None  # windows per model call; None: the runtime's auto_batch
    readers: int | None  # reader threads per task; None: one per core of the task
    gpu_share: float  # of its GPU, a GPU task's (`spark.task.resource.gpu.amount`): auto batch
    channels: int  # the model's output channels: the scores' bands
    scores: bool
    polygons: bool  # each chunk's polygons are written beside it (`sparkinfer.polygons`)
    mosaics: tuple[MosaicSource | None, ...] = ()  # per raster: a grid tile's inputs, or None
    confidence: str | None = None  # the measure of each chunk's confidence written; None: none
    uncertain: tuple[int, int] | None = None  # K and the side of the least sure chips; or none

    @property
    def blend(self) -> bool:
        """Whether windows' scores are blended (`merge: blend`) instead of cropped."""
        return self.plans[0].tiling.merge == "blend"

    @property
    def chips(self) -> bool:
        """Whether the model is a chip classifier: one class per window."""
        return isinstance(self.plans[0].tiling, ChipGrid)

    def grid(self, index: int) -> RasterInfo:
        """The grid raster `index`'s outputs are written on: its own, or its chips' cells."""
        return output_grid(self.rasters[index], self.plans[index].tiling)
