"""The job configuration's groups of options (`sparkinfer.config`): the pixels' normalisation,
the COGs' layout and a map's grid. Each validates itself."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(StrictModel):
    """How pixels are scaled before they reach the model (after band selection).

    `x * scale + offset` (the same for every band) first, then per-band `(x - mean) / std`:
    digital numbers to reflectance, then a model's own statistics in reflectance units. Each
    step is optional; none means float32 pixels unchanged.
    """

    scale: float | None = Field(None, description="Multiplier applied to every band.")
    offset: float | None = Field(None, description="Added to every band after `scale`.")
    mean: list[float] | None = Field(None, description="Per-band mean subtracted from pixels.")
    std: list[float] | None = Field(None, description="Per-band standard deviation divisor.")

    @model_validator(mode="after")
    def _statistics_together(self) -> Normalization:
        if self.mean is not None or self.std is not None:
            if self.mean is None or self.std is None:
                raise ValueError("mean and std must be given together")
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError("every std must be > 0")
        return self

    @property
    def band_count(self) -> int | None:
        """Number of bands the per-band statistics are for, or None when band-independent."""
        return None if self.mean is None else len(self.mean)


class CogOptions(StrictModel):
    """Layout of the Cloud-Optimized GeoTIFFs written."""

    compression: Literal["deflate", "zstd", "lzw", "none"] = Field(
        "deflate", description="Compression of the COG's tiles."
    )
    blocksize: int = Field(512, ge=64, le=4096, description="COG tile side in pixels.")

    @model_validator(mode="after")
    def _power_of_two(self) -> CogOptions:
        if self.blocksize & (self.blocksize - 1):
            raise ValueError(f"cog.blocksize must be a power of two, got {self.blocksize}")
        return self


class GridOptions(StrictModel):
    """One map over all the inputs, on a fixed grid (`sparkinfer.grid`), instead of one output
    per input."""

    crs: str = Field(..., description="The map's CRS, as EPSG:n or WKT.")
    resolution: float = Field(
        ..., gt=0, description="Side of the map's square pixels, in the units of its CRS."
    )
    bounds: Annotated[list[float], Field(min_length=4, max_length=4)] | None = Field(
        None,
        description="minx, miny, maxx, maxy of the map in its CRS; default: the union of the "
        "inputs' footprints.",
    )
    tile_size: int = Field(
        4096,
        gt=0,
        description="Side of a grid tile in pixels: one output file (or Zarr region) each. Tile "
        "origins are multiples of tile_size x resolution from the CRS's origin, so maps of "
        "neighbouring regions line up.",
    )
    mosaic: Literal["first", "newest"] = Field(
        "first",
        description="Which input a pixel comes from where inputs overlap: 'first', the first "
        "valid one in input order; 'newest', the valid one taken last (a STAC Item's datetime, "
        "else the file's modification time).",
    )
    format: Literal["cog", "zarr"] = Field(
        "cog",
        description="How the map is written: 'cog', a COG per grid tile under tiles/ with "
        "map.vrt over them and a STAC Collection; 'zarr', one Zarr v3 store map.zarr (CF "
        "grid mapping: xarray and rioxarray open it georeferenced).",
    )
    force: bool = Field(False, description="Make a map of more than 10^12 pixels.")
