"""How rasters are cut, as values checked when made: a `Tiling` (core tiles, the halo around
them, the model's stride, tiles per chunk, the merge) or, for a chip classifier, a `ChipGrid`
(chips of a size every stride pixels). `tiling` chooses one for a model; `plan` cuts a raster
with it, and says what each size means for its windows and chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class Tiling:
    """How rasters are cut: core tile side, halo, model stride and chunk side, in pixels/tiles."""

    tile_size: int
    halo: int
    stride: int = 1
    chunk_tiles: int = 4
    fixed_window: bool = False  # every window is window_size, padded past small rasters
    merge: Literal["crop", "blend"] = "crop"

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.tile_size < 1 or self.tile_size % self.stride:
            raise ValueError(
                f"tile_size {self.tile_size} must be a positive multiple of the model's "
                f"total stride {self.stride}"
            )
        if self.halo < 0 or self.halo % self.stride:
            raise ValueError(f"halo {self.halo} must be a multiple of the stride {self.stride}")
        if self.chunk_tiles < 1:
            raise ValueError(f"chunk_tiles must be >= 1, got {self.chunk_tiles}")

    @property
    def overlap(self) -> int:
        """Pixels by which neighbouring read windows overlap (inside the raster)."""
        return 2 * self.halo

    @property
    def window_size(self) -> int:
        """Side of every full-size read window."""
        return self.tile_size + 2 * self.halo

    @property
    def halo_share(self) -> float:
        """Fraction of a full read window's pixels that are halo (computed but not kept)."""
        return 1.0 - (self.tile_size / self.window_size) ** 2


@dataclass(frozen=True)
class ChipGrid:
    """How rasters are cut for a chip classifier, a model that gives one class per window:
    windows (chips) of `size` pixels every `stride` pixels, each one cell of the output grid,
    grouped `chunk_tiles` x `chunk_tiles` into chunks. Along each axis the chips cover the
    raster: the last one reaches past its edge (read as invalid pixels) where the stride does
    not end on it. The output grid is the raster's scaled by `stride`, centred on the chips."""

    size: int
    stride: int
    chunk_tiles: int

    merge: ClassVar[str] = "crop"  # each window keeps its own output; nothing is blended

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= self.size:
            raise ValueError(
                f"chip stride {self.stride} must be between 1 and the chip size {self.size}"
            )
        if self.chunk_tiles < 1:
            raise ValueError(f"chunk_tiles must be >= 1, got {self.chunk_tiles}")

    def cells(self, length: int) -> int:
        """Chips (output cells) along an axis of `length` pixels."""
        return max(1, -(-(length - self.size) // self.stride) + 1)

    @property
    def offset(self) -> float:
        """Where the output grid starts, in input pixels: its cells are centred on the chips."""
        return (self.size - self.stride) / 2
