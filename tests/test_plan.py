"""The tiling plan: pure arithmetic, no Spark, no pixels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkinfer.cuts import ChipGrid, Tiling
from sparkinfer.plan import Chunk, PixelWindow, RasterPlan, plan_axis, round_up


@st.composite
def axis_cases(draw, longest: int = 3000):
    stride = draw(st.sampled_from([1, 2, 4, 8]))
    tile = stride * draw(st.integers(1, 40))
    halo = stride * draw(st.integers(0, tile // stride))
    length = draw(st.integers(1, longest))
    return length, Tiling(tile, halo, stride)


@settings(max_examples=400, deadline=None)
@given(axis_cases())
def test_axis_cores_cover_once_and_reads_hold_core_plus_halo(case):
    length, tiling = case
    axis = plan_axis(length, tiling)
    coverage = np.zeros(length, int)
    for start, stop in zip(axis.core_start, axis.core_stop, strict=True):
        coverage[start:stop] += 1
    assert (coverage == 1).all()

    padded = round_up(length, tiling.stride)
    sizes = set((axis.read_stop - axis.read_start).tolist())
    assert len(sizes) == 1, "every read window of an axis has one size"
    size = sizes.pop()
    assert size == (tiling.window_size if padded > tiling.window_size else padded)
    assert (axis.read_start >= 0).all() and (axis.read_stop <= padded).all()
    assert (axis.read_start % tiling.stride == 0).all(), "windows on the model's stride grid"
    # Each read window holds its core plus the halo, clipped to the (padded) raster.
    assert (axis.read_start <= np.maximum(axis.core_start - tiling.halo, 0)).all()
    assert (axis.read_stop >= np.minimum(axis.core_stop + tiling.halo, padded)).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(2, 40), st.integers(1, 5))
def test_chunks_partition_tiles_in_adjacent_blocks(height, width, tile, chunk_tiles):
    tiling = Tiling(tile * 4, 4, 4, chunk_tiles)
    plan = RasterPlan(height, width, tiling)
    table = plan.chunks()
    assert len(table) == plan.chunk_count
    covered = np.zeros((height, width), np.uint8)
    seen = set()
    for chunk in map(Chunk.of_row, table.to_pylist()):
        covered[chunk.core.slices(PixelWindow(0, 0, height, width))] += 1
        tiles = plan.tiles_of_chunk(chunk.row, chunk.col)
        assert len(tiles) == chunk.tiles
        for tile in tiles:
            seen.add((tile.row, tile.col))
            assert (tile.row // chunk_tiles, tile.col // chunk_tiles) == (chunk.row, chunk.col)
            assert _inside(tile.core, chunk.core)
            # The chunk's read window (read in one piece) holds every tile's read window.
            assert _inside(tile.read, chunk.read)
    assert (covered == 1).all(), "chunks cover the raster exactly once"
    assert len(seen) == plan.tile_count


def _inside(inner: PixelWindow, outer: PixelWindow) -> bool:
    return (
        outer.row_off <= inner.row_off
        and outer.col_off <= inner.col_off
        and inner.row_off + inner.height <= outer.row_off + outer.height
        and inner.col_off + inner.width <= outer.col_off + outer.width
    )


def test_edge_windows_shift_inward_and_keep_their_shape():
    axis = plan_axis(1000, Tiling(256, 32, 1))
    assert axis.core_start.tolist() == [0, 256, 512, 768]
    assert axis.core_stop.tolist() == [256, 512, 768, 1000]
    assert axis.read_start.tolist() == [0, 224, 480, 680]
    assert (axis.read_stop - axis.read_start).tolist() == [320] * 4


def test_raster_smaller_than_a_window_is_read_whole_padded_to_the_stride():
    axis = plan_axis(50, Tiling(64, 8, 4))
    assert axis.core_start.tolist() == [0] and axis.core_stop.tolist() == [50]
    assert axis.read_start.tolist() == [0] and axis.read_stop.tolist() == [52]


def test_plan_of_a_huge_raster_is_metadata_only():
    plan = RasterPlan(1_000_000, 1_000_000, Tiling(1024, 32, 1, chunk_tiles=16))
    assert plan.tile_count == 977 * 977
    assert plan.chunk_count == 62 * 62


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tile_size=100, halo=0, stride=8), "multiple of the model's total stride 8"),
        (dict(tile_size=64, halo=6, stride=4), "halo 6 must be a multiple"),
        (dict(tile_size=64, halo=0, stride=1, chunk_tiles=0), "chunk_tiles"),
    ],
)
def test_tiling_refuses_sizes_off_the_stride_grid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Tiling(**kwargs)


def test_halo_share_is_the_computed_but_discarded_fraction():
    assert Tiling(512, 16, 1).halo_share == pytest.approx(1 - (512 / 544) ** 2)


def test_a_fixed_window_is_read_whole_past_a_small_raster():
    """A model of one input size gets it even from a raster smaller than its window: the read
    reaches past the raster's edge, where pixels are zero and invalid."""
    fixed = Tiling(tile_size=50, halo=7, fixed_window=True)
    axis = plan_axis(40, fixed)
    assert (axis.read_start.tolist(), axis.read_stop.tolist()) == ([0], [64])
    assert plan_axis(40, Tiling(tile_size=50, halo=7)).read_stop.tolist() == [40]
    wide = plan_axis(130, fixed)
    assert set((wide.read_stop - wide.read_start).tolist()) == {64}


# Rasters of up to 200 x 200: every pixel is checked in Python, and 1-pixel tiles are drawn too.
@settings(max_examples=100, deadline=None)
@given(axis_cases(longest=200), st.integers(1, 200), st.integers(1, 4))
def test_a_blend_chunk_infers_every_window_that_reaches_into_it(case, width, chunk_tiles):
    """With `blend`, each pixel of a chunk gets every window of the raster's grid that covers
    it, clipped to the chunk, whichever chunk holds it; and the chunk reads them in one piece."""
    height, axis_tiling = case
    tiling = Tiling(
        axis_tiling.tile_size, axis_tiling.halo, axis_tiling.stride, chunk_tiles, merge="blend"
    )
    plan = RasterPlan(height, width, tiling)
    covering = np.zeros((height, width), int)  # windows of the whole grid over each pixel
    for top, bottom in zip(plan.rows.read_start, plan.rows.read_stop, strict=True):
        for left, right in zip(plan.cols.read_start, plan.cols.read_stop, strict=True):
            covering[top:bottom, left:right] += 1
    kept = np.zeros((height, width), int)
    whole = PixelWindow(0, 0, height, width)
    for chunk in map(Chunk.of_row, plan.chunks().to_pylist()):
        windows = plan.chunk_windows(chunk.row, chunk.col)
        assert len(windows) == chunk.windows >= chunk.tiles
        for w in windows:
            assert w.core.height > 0 and w.core.width > 0, "only windows reaching in"
            assert _inside(w.core, chunk.core) and _inside(w.core, w.read)
            assert _inside(w.read, chunk.read)
            kept[w.core.slices(whole)] += 1
    np.testing.assert_array_equal(kept, covering)


def test_decoded_pixels_per_useful_pixel_count_each_chunk_s_read_window():
    from sparkinfer.report import decoded_per_useful

    # Four one-tile chunks of 512, each read as 576 x 576 (the halo of 32 shifted inward at
    # the edges): 4 x 576^2 / 1024^2.
    one_tile = RasterPlan(1024, 1024, Tiling(512, 32, chunk_tiles=1))
    assert decoded_per_useful([one_tile]) == round(4 * 576**2 / 1024**2, 4) == 1.2656
    # One chunk of the four tiles reads its union once: 1024 x 1024, nothing more.
    assert decoded_per_useful([RasterPlan(1024, 1024, Tiling(512, 32, chunk_tiles=2))]) == 1.0
    # Over several plans, the pixels add up before they divide.
    small = RasterPlan(512, 512, Tiling(512, 32, chunk_tiles=1))
    assert decoded_per_useful([one_tile, small]) == round(
        (4 * 576**2 + 512**2) / (1024**2 + 512**2), 4
    )
    assert decoded_per_useful([RasterPlan(64, 64, ChipGrid(8, 8, 2))]) is None


@pytest.mark.parametrize(
    "tile, halo, score_channels, tiles, decoded",
    [
        (512, 32, 0, 4, 1.0635),  # at least 2048 pixels a side
        (512, 74, 0, 4, 1.1498),  # 2048 still holds the halo
        (512, 80, 0, 5, 1.1289),  # it does not: 2560
        (2048, 288, 0, 4, 1.1456),  # a GPU's tiles: 8192 (1.6415 in chunks of one tile)
        (2048, 400, 0, 4, 1.2048),  # the side is bounded at 8192, whatever the halo
        (2048, 288, 8, 2, 1.3010),  # 8 bands of float32 scores bound it at 4096
        (3000, 288, 0, 2, 1.2012),  # a third tile would pass 8192
    ],
)
def test_auto_chunks_decode_at_most_1_15_pixels_per_pixel_kept_within_their_bounds(
    tile, halo, score_channels, tiles, decoded
):
    from sparkinfer.report import decoded_per_useful
    from sparkinfer.tiling import auto_chunk_tiles

    assert auto_chunk_tiles(tile, halo, score_channels) == tiles
    side = tiles * tile
    assert round(((side + 2 * halo) / side) ** 2, 4) == decoded
    # Over a raster of many chunks, as `_run.json` reports it: edge windows shift inward.
    plan = RasterPlan(8 * side, 8 * side, Tiling(tile, halo, chunk_tiles=tiles))
    assert decoded_per_useful([plan]) < decoded
