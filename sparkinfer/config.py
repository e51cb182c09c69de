"""The job configuration: pydantic models, validated before Spark starts.

Sources merge in this order, later ones winning: the field defaults below, the job's defaults
file (`conf/default.yaml`, which states the same values for people to read and edit), the YAML
file given with `--config`, then command-line flags.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sparkinfer.config_groups import CogOptions, GridOptions, Normalization, StrictModel

# A stage's tasks per task slot (the inference stage's by default, `tasks_per_slot`): a faster
# executor takes more of them, and a lost task is a small share of the work.
TASKS_PER_SLOT = 4

# rasterio's names of the resampling methods a VRT source takes (GDAL's: without the underscore).
Resampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"]


def _default_backend() -> str:
    """Keras's own choice, `KERAS_BACKEND`, where it is one the job runs; else TensorFlow."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return backend if backend in ("tensorflow", "jax") else "tensorflow"


class JobConfig(StrictModel):
    """Everything one run of the job needs."""

    input: list[str] = Field(
        ...,
        min_length=1,
        description="Raster files, folders or glob patterns to run on: local paths or "
        "s3://bucket/key URIs (only the file name of an S3 pattern may hold wildcards).",
    )
    model: Annotated[list[str], Field(min_length=1)] = Field(
        ...,
        description="A .keras file, a TensorFlow SavedModel folder or an .onnx file; several: "
        "an ensemble, whose scores are the mean of the models' (same bands and classes).",
    )
    model_item: str | None = Field(
        None,
        description="A STAC Item with the Machine Learning Model extension (MLM) that describes "
        "the model (`sparkinfer.model_item`): the model asset, the input bands by name, their "
        "value scaling, the input size and the classes' names and colours; options given "
        "beside it win.",
    )
    backend: Literal["tensorflow", "jax"] = Field(
        default_factory=_default_backend,
        description="Keras backend that runs a .keras model; default KERAS_BACKEND where it is "
        "tensorflow or jax, else tensorflow.",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Compute precision of a .keras model: bfloat16 is faster on GPUs, with "
        "scores a little less exact.",
    )
    output: str = Field(
        ...,
        description="Folder where the COGs and _run.json are written: a local path or an "
        "s3://bucket/prefix URI.",
    )
    tile_size: int = Field(
        512,
        gt=0,
        description="Side of a core tile in pixels: the part of each model input that is kept. "
        "Must be a multiple of the model's total stride.",
    )
    halo: int | Literal["auto"] = Field(
        "auto",
        description="Pixels of context read around each core tile and cropped after inference; "
        "'auto' derives it from the model's receptive field, which makes the output seam-free.",
    )
    merge: Literal["crop", "blend"] = Field(
        "crop",
        description="How tiles' outputs make one map. 'crop' keeps each window's core (the halo "
        "is cut off): exact for models with a local receptive field. 'blend', for models with "
        "global context (global pooling, attention), overlaps whole windows by 'overlap' pixels "
        "and averages each pixel's scores over them with a tapered cosine (Tukey) weight.",
    )
    overlap: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="With merge 'blend': pixels by which neighbouring windows overlap, rounded "
        "up to twice the model's stride; 'auto': a fifth of the window, as ukis-csmask's 20%.",
    )
    chip_size: int | None = Field(
        None,
        gt=0,
        description="For a chip classifier that takes any input size: the chips' side, in "
        "pixels (one of a single size takes its own).",
    )
    chip_stride: int | None = Field(
        None,
        gt=0,
        description="For a chip classifier (a model that gives one class per window): pixels "
        "between neighbouring chips; default the chip size (chips side by side).",
    )
    bands: list[int] | None = Field(
        None, description="1-based input bands fed to the model, in order; default all bands."
    )
    assets: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        min_length=1,
        description="For STAC Item inputs: the assets stacked as the model's bands, in order, "
        "each by asset key or by the common name of one of an asset's bands (eo:bands).",
    )
    resampling: Resampling = Field(
        "bilinear",
        description="For STAC Item inputs: how assets of another resolution than the first are "
        "resampled to its grid; with a grid, how inputs are warped onto it.",
    )
    normalization: Normalization = Field(
        default_factory=Normalization, description="Pixel scaling before inference."
    )
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        "none",
        description="Applied to the model's outputs, for a model that outputs logits: "
        "softmax over the classes or sigmoid, so scores are probabilities.",
    )
    tta: Literal["none", "flips", "d4"] = Field(
        "none",
        description="Test-time augmentation: each window's scores are the mean of the model's "
        "over its 4 flips ('flips') or its 8 flips and rotations ('d4'), each mapped back; "
        "still seam-free, at 4 or 8 times the model's cost.",
    )
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="Tiles per model call; 'auto': on a CPU tiles up to 2^18 pixels together "
        "(one 512-pixel tile), on a GPU as many as half its free memory holds.",
    )
    readers: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="Threads per Spark task that read and decode chunk windows ahead of the "
        "model; 'auto': one per core of the task (spark.task.cpus).",
    )
    tasks_per_slot: int = Field(
        TASKS_PER_SLOT,
        gt=0,
        description="Spark tasks of the inference stage per task slot of the cluster: several "
        "keep slots busy to the end when executors run at different speeds (a faster one takes "
        "more tasks), and make a lost task a small share of the work.",
    )
    speculation: bool = Field(
        False,
        description="Run Spark's speculation: a copy of a task that runs much slower than its "
        "stage's others starts on another executor, and the first to finish counts. Applies to "
        "the session the job starts (spark-submit.sh); a given session keeps its own setting.",
    )
    scores: bool = Field(False, description="Also write per-class float32 scores.")
    confidence: Literal["maxprob", "margin", "entropy", "agreement"] | None = Field(
        None,
        description="Also write NAME.confidence.tif, how sure the model is of each pixel's "
        "class (`sparkinfer.confidence`), by this measure: 'maxprob', the top probability; "
        "'margin', the top one minus the second; 'entropy', 1 minus the normalised entropy; "
        "'agreement', the share of tta's transforms or an ensemble's models that agree.",
    )
    uncertain: int = Field(
        0,
        ge=0,
        description="Also write NAME.uncertain.parquet: the K chips where the model is least "
        "sure, spread apart (`sparkinfer.uncertain`); with confidence 'maxprob' unless another "
        "measure is given.",
    )
    uncertain_size: int = Field(256, ge=8, description="Side of the uncertain chips, in pixels.")
    verify: bool = Field(
        False,
        description="Also infer one sample window of each raster whole and report, in "
        "_run.json, how far the tiled class map agrees with it.",
    )
    quicklook: bool = Field(
        False, description="Also write NAME.png: the class map in the model's colours, a legend."
    )
    polygons: bool = Field(
        False,
        description="Also write NAME.polygons.parquet: GeoParquet of the class map's regions, "
        "each 4-connected region of one class one polygon, with its class and area.",
    )
    min_area: float = Field(
        0.0,
        ge=0,
        description="With polygons: leave out regions of less than this area, in the CRS's "
        "units squared (m² for a CRS in metres).",
    )
    chunk_tiles: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="Side, in tiles, of the square block of tiles one Spark task reads in one "
        "piece, infers and writes as one chunk file; 'auto' makes chunks of at least 2048 pixels "
        "a side, larger where their halo would be over 15% of the pixels they read.",
    )
    cog: CogOptions = Field(default_factory=CogOptions, description="Output COG layout.")
    grid: GridOptions | None = Field(
        None,
        description="Make one map over the inputs on this grid, a COG per grid tile, instead "
        "of one output per input.",
    )
    fail_fast: bool = Field(
        False,
        description="Stop at the first raster that fails instead of writing the others.",
    )
    overwrite: bool = Field(
        False,
        description="Redo every raster, even those whose outputs are complete for this input, "
        "model and configuration (by default they are skipped, and unfinished ones resume).",
    )
    progress_seconds: float = Field(
        10.0,
        ge=0,
        description="Seconds between progress lines (tiles done, rate, ETA) on stderr when it "
        "is not a terminal; a terminal gets one line updated every second. 0: no progress.",
    )
    estimate: bool = Field(
        False,
        description="Write no outputs: run the stages on a spread sample of the chunks and write "
        "_estimate.json, the predicted wall time, bytes and core-hours of the whole run.",
    )
    estimate_sample: Annotated[float, Field(gt=0, le=1)] = Field(
        0.02,
        description="With estimate: the share of chunks to sample (at least one per task slot).",
    )
    estimate_slots: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = Field(
        [8, 64, 512],
        description="With estimate: task slots to predict the run's wall time on, besides the "
        "cluster's own.",
    )
    verbose: bool = Field(
        False,
        description="Show the start-up notices of the JVM (spark-submit.sh) and of the model's "
        "framework in the Python workers.",
    )
    trust_model: bool = Field(
        False,
        description="Load the model with Keras safe_mode off, running any code it holds "
        "(Lambda layers); only for model files you trust.",
    )
    cut_argmax: bool = Field(
        False,
        description="For an ONNX model that ends in an ArgMax (its output class indices): cut "
        "its graph before the ArgMax, so that it outputs the scores the ArgMax takes, which "
        "scores, tta, ensembles and merge 'blend' need. As it ships, such a model gives the "
        "class map alone.",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _one_or_several(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _uncertain_measures_confidence(cls, data):
        if isinstance(data, dict) and data.get("uncertain") and data.get("confidence") is None:
            return data | {"confidence": "maxprob"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        if isinstance(self.halo, int):
            if self.halo < 0:
                raise ValueError(f"halo must be >= 0 or 'auto', got {self.halo}")
            if self.halo > self.tile_size:
                raise ValueError(
                    f"halo {self.halo} is larger than tile_size {self.tile_size}; "
                    "use a larger tile_size"
                )
        if self.merge == "blend" and self.halo != "auto":
            raise ValueError(
                "halo applies to merge 'crop'; with 'blend' windows overlap by "
                "overlap pixels instead"
            )
        if self.merge == "crop" and self.overlap != "auto":
            raise ValueError("overlap applies to merge 'blend'; with 'crop' give a halo")
        if self.confidence == "agreement" and self.tta == "none" and len(self.model) == 1:
            raise ValueError("confidence 'agreement' needs tta or several models to agree")
        if self.min_area and not self.polygons:
            raise ValueError("min_area applies to polygons; add polygons (--polygons)")
        if self.bands is not None:
            if not self.bands:
                raise ValueError("bands must list at least one band")
            if any(b < 1 for b in self.bands):
                raise ValueError(f"bands are 1-based, got {self.bands}")
        count = self.normalization.band_count
        if count is not None and self.bands is not None and count != len(self.bands):
            raise ValueError(
                f"normalization has statistics for {count} bands but {len(self.bands)} "
                "bands are selected"
            )
        return self
