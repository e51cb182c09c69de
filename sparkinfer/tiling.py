"""How a model's rasters are cut, from the job's config and what the model is: tiles and the
halo that makes them seam-free (`crop`), overlapping windows (`blend`) or a chip classifier's
chips; whether the result equals whole-image inference, and what the user should be told."""

from __future__ import annotations

import math
from dataclasses import asdict

from sparkinfer.config import JobConfig
from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.errors import ConfigError, ModelError
from sparkinfer.inspection import ModelInfo
from sparkinfer.plan import round_up

# chunk_tiles 'auto'. A chunk's window is read in one piece: its core and the halo around it, which
# is decoded again by the neighbouring chunks. Chunks are at least CHUNK_PIXELS a side, so that
# there are enough of them to keep every core busy, and grow until they decode at most
# DECODED_PER_USEFUL pixels per pixel they keep (a halo of 288 around tiles of 2048 decodes 1.64
# in chunks of one tile, 1.15 in chunks of 4 x 4). A chunk's arrays bound the growth: its core
# is at most CHUNK_PIXELS_MAX a side (64 MiB of classes, 268 MB per band of a 4-band uint8
# window), and, where a chunk holds float32 scores, they take at most CHUNK_SCORES_BYTES.
CHUNK_PIXELS = 2048
CHUNK_PIXELS_MAX = 8192
DECODED_PER_USEFUL = 1.15
CHUNK_SCORES_BYTES = 512 * 2**20


def auto_chunk_tiles(tile_size: int, halo: int, score_channels: int) -> int:
    """Tiles per chunk side: the fewest of at least CHUNK_PIXELS whose window decodes at most
    DECODED_PER_USEFUL pixels per pixel of the core, within the bounds on a chunk's arrays
    (`score_channels`: the float32 scores a chunk holds per pixel; 0 when it holds none)."""
    side_max = CHUNK_PIXELS_MAX
    if score_channels:
        side_max = min(side_max, math.isqrt(CHUNK_SCORES_BYTES // (4 * score_channels)))
    tiles = max(1, CHUNK_PIXELS // tile_size)
    while (tiles + 1) * tile_size <= side_max and (
        (tiles * tile_size + 2 * halo) / (tiles * tile_size)
    ) ** 2 > DECODED_PER_USEFUL:
        tiles += 1
    return tiles


def _resolve_halo(config: JobConfig, model: ModelInfo) -> int:
    if config.halo != "auto":
        return round_up(config.halo, model.stride)
    if model.receptive_halo is None:
        raise ModelError(
            f"{model.path}: each output pixel depends on the whole input window (global "
            "pooling or attention), so no halo makes tiles equal whole-image inference; give "
            "the context to read around each tile with --halo PIXELS, or blend overlapping "
            "windows with --merge blend"
        )
    return round_up(model.receptive_halo, model.stride)


def _chip_grid(config: JobConfig, model: ModelInfo) -> ChipGrid:
    """Chips of the classifier's input size every `chip_stride` pixels; the options of
    per-pixel models are refused, as they would change nothing."""
    given = [
        flag
        for flag, used in (
            ("--merge blend", config.merge == "blend"),
            ("--halo", config.halo != "auto"),
            ("--verify", config.verify),
            ("--polygons", config.polygons),
        )
        if used
    ]
    if given:
        raise ConfigError(
            f"{model.path}: a chip classifier gives one class per window, so {given[0]} does "
            "not apply; chips are placed with --chip-stride"
        )
    if config.estimate:
        raise ConfigError(
            f"{model.path}: --estimate covers per-pixel models; run a chip "
            "classifier on a part of the input to time it"
        )
    size = model.input_size or config.chip_size
    if size is None:
        raise ConfigError(
            f"{model.path}: the chip classifier takes any input size; give the "
            "chips' side with --chip-size PIXELS"
        )
    if config.chip_size not in (None, size):
        raise ConfigError(
            f"{model.path}: the chip classifier takes {size}-pixel chips only; "
            f"--chip-size {config.chip_size} does not fit it"
        )
    stride = config.chip_stride or size
    if stride > size:
        raise ConfigError(
            f"--chip-stride {stride} is larger than the chips ({size} pixels, the "
            "model's input); chips would leave gaps"
        )
    chunk_tiles = config.chunk_tiles
    if chunk_tiles == "auto":  # about CHUNK_PIXELS of input per chunk side
        chunk_tiles = max(1, CHUNK_PIXELS // stride)
    return ChipGrid(size, stride, chunk_tiles)


def tiling_for(config: JobConfig, model: ModelInfo) -> Tiling | ChipGrid:
    """How the model's rasters are cut: the halo (`crop`) or half the overlap (`blend`) around
    tiles of `tile_size`, whose windows are the model's input where its size is fixed; a chip
    classifier's chips."""
    if model.task == "chips":
        return _chip_grid(config, model)
    for flag, value in (("--chip-size", config.chip_size), ("--chip-stride", config.chip_stride)):
        if value is not None:
            raise ConfigError(
                f"{model.path}: {flag} applies to chip classifiers (an output of "
                "(batch, classes)); this model gives a class per pixel"
            )
    if config.merge == "blend":
        margin = model.stride  # overlaps are even multiples of the stride: half is the halo
        window = model.input_size or config.tile_size * 5 // 4
        overlap = window // 5 if config.overlap == "auto" else config.overlap
        halo = round_up(overlap, 2 * margin) // 2
    else:
        halo = _resolve_halo(config, model)
    tile_size = config.tile_size
    if model.input_size is not None:  # the window is the model's input
        tile_size = model.input_size - 2 * halo
        if tile_size < 1:
            blend = config.merge == "blend"
            room = f"an overlap of {2 * halo}" if blend else f"a halo of {halo} on each side"
            raise ModelError(
                f"{model.path}: the model takes windows of exactly {model.input_size} pixels, "
                f"which leave no room for {room}; give a smaller --{'overlap' if blend else 'halo'}"
            )
    try:
        chunk_tiles = config.chunk_tiles
        if chunk_tiles == "auto":
            holds_scores = config.scores or config.merge == "blend"
            chunk_tiles = auto_chunk_tiles(tile_size, halo, model.channels if holds_scores else 0)
        return Tiling(
            tile_size,
            halo,
            model.stride,
            chunk_tiles,
            fixed_window=model.input_size is not None,
            merge=config.merge,
        )
    except ValueError as exc:
        raise ConfigError(f"tile_size/halo do not fit the model: {exc}") from None


def seam_free(model: ModelInfo, tiling: Tiling | ChipGrid) -> bool:
    """Whether the stitched output equals whole-image inference: windows are cropped to their
    cores, and the halo covers the model's receptive field. (A chip classifier's output is
    per chip: there is no whole-image inference to equal.)"""
    return (
        isinstance(tiling, Tiling)
        and tiling.merge == "crop"
        and model.receptive_halo is not None
        and tiling.halo >= model.receptive_halo
    )


def halo_notes(model: ModelInfo, tiling: Tiling | ChipGrid, config: JobConfig) -> list[str]:
    """What a user should know about the context the job gives each tile: a tile size, halo or
    overlap that differs from the one given, and whether the result is seam-free."""
    if isinstance(tiling, ChipGrid):
        return []
    blend = tiling.merge == "blend"
    notes = []
    if model.input_size is not None and tiling.tile_size != config.tile_size:
        context = (
            f"overlapping by {tiling.overlap}" if blend else f"{tiling.halo} of halo on each side"
        )
        notes.append(
            f"tile size {tiling.tile_size}: the model takes windows of exactly "
            f"{model.input_size} pixels, {context}"
        )
    if blend:
        if config.overlap != "auto" and config.overlap != tiling.overlap:
            notes.append(
                f"overlap {config.overlap} rounded up to {tiling.overlap}, a multiple "
                f"of twice the model's stride {model.stride}"
            )
        if model.receptive_halo is not None:
            notes.append(
                f"the model's receptive field is local ({model.receptive_halo} pixels): "
                "--merge crop gives whole-image inference exactly"
            )
        notes.append(
            f"windows of {tiling.window_size} pixels overlap by {tiling.overlap} and "
            "their scores are blended: smooth across tiles, not seam-free"
        )
        return notes
    halo, given = tiling.halo, config.halo
    if given != "auto" and given != halo:
        notes.append(
            f"halo {given} rounded up to {halo}, a multiple of the model's stride {model.stride}"
        )
    if model.receptive_halo is None:
        notes.append(
            f"{model.path}: each output pixel depends on the whole input window: "
            "tiles are not seam-free; --merge blend smooths their borders"
        )
    elif halo < model.receptive_halo:
        notes.append(
            f"halo {halo} is less than the model's receptive field "
            f"({model.receptive_halo} pixels, by {model.halo_found_by}): tiles differ "
            "from whole-image inference near their borders"
        )
    return notes


def tiling_report(model: ModelInfo, tiling: Tiling | ChipGrid) -> dict:
    """How the rasters were cut: tiles, halo or overlap, and whether that is seam-free; or a
    chip classifier's chips (the output grid's cells are `stride` pixels)."""
    if isinstance(tiling, ChipGrid):
        return {"chips": asdict(tiling)}
    return asdict(tiling) | {
        "overlap": tiling.overlap,
        "halo_share": round(tiling.halo_share, 4),
        "seam_free": seam_free(model, tiling),
    }
