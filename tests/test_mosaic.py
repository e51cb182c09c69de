"""A window of the output grid read from several inputs: each warped onto it, first valid wins."""

import numpy as np
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.transform import from_origin

from sparkinfer.errors import InputError
from sparkinfer.grid import OutputGrid
from sparkinfer.mosaic import read_mosaic, window_of
from sparkinfer.raster import read_info, read_window


def _write(path, data, crs, transform, nodata=None, mask=None):
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype=data.dtype,
            crs=crs,
            transform=transform,
            nodata=nodata,
        ) as dst,
    ):
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return read_info(str(path))


def test_window_of_is_the_tile_and_its_halo():
    grid = OutputGrid("EPSG:32633", 10.0, 8)
    transform, height, width = window_of(grid, 2, -3, 3)
    assert transform == Affine(10.0, 0.0, 130.0, 0.0, -10.0, 270.0)
    assert (height, width) == (14, 14)
    assert transform == grid.tile_transform(2, -3) * Affine.translation(-3, -3)
    assert window_of(grid, 2, -3, 0) == (grid.tile_transform(2, -3), 8, 8)


@pytest.mark.parametrize("masking", ["nodata", "mask", "none"])
def test_one_aligned_input_reads_as_read_window(tmp_path, masking):
    grid = OutputGrid("EPSG:32633", 10.0, 8)
    col, row = 6250, -62500  # the tile whose top-left corner is (500000, 5000000)
    rng = np.random.default_rng(1)
    data = rng.integers(1, 1000, (2, 10, 10)).astype("int16")
    hole = np.zeros((10, 10), bool)
    hole[2:4, 5:8] = True
    kwargs = {}
    if masking == "nodata":
        data[0][hole] = -1  # one band's nodata makes the pixel invalid
        kwargs["nodata"] = -1
    elif masking == "mask":
        kwargs["mask"] = ~hole
    origin = from_origin(500000, 5000000, 10, 10)
    info = _write(tmp_path / "a.tif", data, "EPSG:32633", origin, **kwargs)
    assert info.masking == masking

    transform, height, width = window_of(grid, col, row, 3)
    pixels, valid = read_mosaic(grid, transform, height, width, [info], [2, 1], "nearest")

    with rasterio.open(info.dataset) as src:
        expected, expected_valid = read_window(src, [2, 1], 0, 0, 11, 11, info.masking)
    assert pixels.dtype == np.int16
    np.testing.assert_array_equal(valid[3:, 3:], expected_valid)
    np.testing.assert_array_equal(pixels[:, 3:, 3:], np.where(expected_valid, expected, 0))
    assert not valid[:3].any() and not valid[:, :3].any()  # the halo past the input's edge
    assert not pixels[:, :3].any() and not pixels[:, :, :3].any()
    assert valid[3:13, 3:13].sum() == 100 - (hole.sum() if masking != "none" else 0)


def _two_zones(tmp_path, dtype_b="float32"):
    """Two inputs near 18 E, the meridian between UTM zones 33 and 34, overlapping in part,
    with a nodata patch in the first inside the overlap; and a grid window in EPSG:3857 that
    holds them both."""
    rng = np.random.default_rng(7)
    infos = []
    for name, crs, shift in (("a", "EPSG:32633", 0.0), ("b", "EPSG:32634", 500.0)):
        (x,), (y,) = rasterio.warp.transform("EPSG:4326", crs, [18.0], [45.0])
        transform = from_origin(round(x) - 600 + shift, round(y) + 600 - shift / 2, 30, 30)
        data = rng.uniform(1, 100, (2, 40, 40)).astype("float32" if name == "a" else dtype_b)
        nodata = -9999.0 if name == "a" else 0
        if name == "a":
            data[:, 25:35, 25:35] = nodata  # a patch the second input covers
            data[1, 10, 10] = nodata  # one band only
        infos.append(_write(tmp_path / f"{name}.tif", data, crs, transform, nodata=nodata))
    grid = OutputGrid("EPSG:3857", 40.0, 32)
    (x,), (y,) = rasterio.warp.transform("EPSG:4326", "EPSG:3857", [18.0], [45.0])
    col, row = int(x // (32 * 40)), int(-y // (32 * 40))
    return grid, window_of(grid, col, row, 16), infos


def _source_positions(info, window):
    """Where each pixel centre of the window falls in the input, in its pixel coordinates
    (column, row; fractional), computed exactly with PROJ."""
    transform, height, width = window
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    xs, ys = transform * (cols.ravel(), rows.ravel())
    xs, ys = rasterio.warp.transform("EPSG:3857", info.crs, xs, ys)
    src_cols, src_rows = ~Affine(*info.transform) * (np.array(xs), np.array(ys))
    return src_cols.reshape(height, width), src_rows.reshape(height, width)


# GDAL's warper places each pixel to within an eighth of a pixel of its exact position.
PLACED_WITHIN = 0.125


def _reference(infos, window, bands, resampling):
    """The mosaic computed apart, in numpy, from each pixel centre's exact position in each
    input: its nearest pixel, or the bilinear mean of its four nearest where all four are
    valid (pixels of bilinear near nodata or an edge are left out: invalid here); merged
    first valid in input order. Also where the warper, which places pixels to within
    `PLACED_WITHIN`, must agree: for nearest, pixels farther than that from a source pixel's
    edge in every input; for bilinear, how far its value may be off, per pixel."""
    _, height, width = window
    dtype = np.result_type(*(info.dtype for info in infos))
    pixels = np.zeros((len(bands), height, width), dtype)
    valid = np.zeros((height, width), bool)
    sure = np.ones((height, width), bool)
    slack = np.zeros((height, width))
    for info in infos:
        with rasterio.open(info.dataset) as src:
            data = src.read(bands).astype(np.float64)
        ok_source = (data != info.nodata).all(axis=0)
        cols, rows = _source_positions(info, window)
        if resampling == "nearest":
            c, r = np.floor(cols).astype(int), np.floor(rows).astype(int)
            inside = (c >= 0) & (c < info.width) & (r >= 0) & (r < info.height)
            c, r = np.clip(c, 0, info.width - 1), np.clip(r, 0, info.height - 1)
            values, ok = data[:, r, c], inside & ok_source[r, c]
            for position in (cols, rows):
                edge = np.abs(position - np.round(position))
                sure &= edge > PLACED_WITHIN
        else:
            x, y = cols - 0.5, rows - 0.5
            c0, r0 = np.floor(x).astype(int), np.floor(y).astype(int)
            fx, fy = x - c0, y - r0
            inside = (c0 >= 0) & (c0 + 1 < info.width) & (r0 >= 0) & (r0 + 1 < info.height)
            c0, r0 = np.clip(c0, 0, info.width - 2), np.clip(r0, 0, info.height - 2)
            ok = inside.copy()
            values = np.zeros((len(bands), height, width))
            corners = []
            for dr, dc, weight in (
                (0, 0, (1 - fy) * (1 - fx)),
                (0, 1, (1 - fy) * fx),
                (1, 0, fy * (1 - fx)),
                (1, 1, fy * fx),
            ):
                ok &= ok_source[r0 + dr, c0 + dc]
                values += weight * data[:, r0 + dr, c0 + dc]
                corners.append(data[:, r0 + dr, c0 + dc])
            # Moved by up to PLACED_WITHIN along each axis, a bilinear value changes by at most
            # that share of its corners' range, twice; and once more by rounding to integers.
            spread = (np.max(corners, axis=0) - np.min(corners, axis=0)).max(axis=0)
            slack = np.where(ok & ~valid, 2 * PLACED_WITHIN * spread + 1, slack)
            if np.dtype(info.dtype).kind in "iu":  # warped in its own type: rounded
                values = np.floor(values + 0.5)
        take = ok & ~valid
        pixels[:, take] = values[:, take]
        valid |= take
    return pixels, valid, sure, slack


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_two_utm_zones_equal_a_mosaic_computed_apart(tmp_path, resampling):
    grid, window, infos = _two_zones(tmp_path, dtype_b="uint16")
    pixels, valid = read_mosaic(grid, *window, infos, [1, 2], resampling)
    expected, expected_valid, sure, _ = _reference(infos, window, [1, 2], resampling)
    assert pixels.dtype == np.float32  # float32 and uint16
    if resampling == "nearest":
        assert sure.mean() > 0.25  # the others are within an eighth of a pixel of an edge
        np.testing.assert_array_equal(valid[sure], expected_valid[sure])
        np.testing.assert_array_equal(pixels[:, sure], expected[:, sure])
    else:
        # Each input alone: where the reference has all four neighbours, the mosaic is valid
        # and as close as the warper's placement allows. It is valid at a few more pixels, at
        # holes' and edges' rims, where GDAL weighs the valid neighbours alone: never a nodata
        # value in them (the range check below). (So the merge is checked with nearest.)
        for info in infos:
            alone, alone_valid = read_mosaic(grid, *window, [info], [1, 2], resampling)
            expected, expected_valid, _, slack = _reference([info], window, [1, 2], resampling)
            np.testing.assert_array_equal(alone_valid | expected_valid, alone_valid)
            off = np.abs(alone.astype(float) - expected).max(axis=0)
            assert (off[expected_valid] <= slack[expected_valid]).all()
            assert (alone_valid & ~expected_valid).sum() < 0.1 * alone_valid.sum()
    assert 0 < valid.sum() < valid.size
    # No nodata value resampled into a valid pixel: all lie in the inputs' range of values.
    assert pixels[:, valid].min() >= 1 and pixels[:, valid].max() <= 100
    assert not pixels[:, ~valid].any()


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic"])
def test_a_pixel_does_not_depend_on_the_window_it_is_read_in(tmp_path, resampling):
    """What makes a map seam-free across chunks: a chunk's read window and the whole map's
    give each pixel the same value (GDAL's warper fits its defaults to each window)."""
    grid, (transform, height, width), infos = _two_zones(tmp_path, dtype_b="uint16")
    whole, whole_valid = read_mosaic(grid, transform, height, width, infos, [1, 2], resampling)
    for row, col, rows, cols in ((10, 17, 23, 31), (0, 40, 64, 5), (33, 0, 1, 64)):
        part_transform = transform * Affine.translation(col, row)
        part, part_valid = read_mosaic(grid, part_transform, rows, cols, infos, [1, 2], resampling)
        np.testing.assert_array_equal(part_valid, whole_valid[row : row + rows, col : col + cols])
        np.testing.assert_array_equal(part, whole[:, row : row + rows, col : col + cols])


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_input_order_decides_the_overlap(tmp_path, resampling):
    grid, window, (a, b) = _two_zones(tmp_path)
    ab, ab_valid = read_mosaic(grid, *window, [a, b], [1, 2], resampling)
    ba, ba_valid = read_mosaic(grid, *window, [b, a], [1, 2], resampling)
    only_a, a_valid = read_mosaic(grid, *window, [a], [1, 2], resampling)
    only_b, b_valid = read_mosaic(grid, *window, [b], [1, 2], resampling)
    both = a_valid & b_valid
    assert both.sum() > 50 and (a_valid & ~b_valid).any() and (b_valid & ~a_valid).any()
    np.testing.assert_array_equal(ab_valid, a_valid | b_valid)
    np.testing.assert_array_equal(ba_valid, ab_valid)
    np.testing.assert_array_equal(ab[:, both], only_a[:, both])
    np.testing.assert_array_equal(ba[:, both], only_b[:, both])
    assert (ab[:, both] != ba[:, both]).all()
    np.testing.assert_array_equal(ab[:, ~both], ba[:, ~both])


def test_nodata_patch_of_the_first_is_filled_from_the_second(tmp_path):
    grid, window, (a, b) = _two_zones(tmp_path)
    pixels, valid = read_mosaic(grid, *window, [a, b], [1, 2], "nearest")
    only_a, a_valid = read_mosaic(grid, *window, [a], [1, 2], "nearest")
    only_b, b_valid = read_mosaic(grid, *window, [b], [1, 2], "nearest")
    # The patch: inside a's outline (its neighbours on both sides valid) but invalid in a.
    rows, cols = np.nonzero(a_valid)
    inside = np.zeros_like(a_valid)
    inside[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    patch = inside & ~a_valid & b_valid
    assert patch.sum() > 20
    assert valid[patch].all()
    np.testing.assert_array_equal(pixels[:, patch], only_b[:, patch])


def test_band_counts_that_differ_are_refused_in_one_line(tmp_path):
    transform = from_origin(500000, 5000000, 10, 10)
    a = _write(tmp_path / "a.tif", np.ones((2, 4, 4), "uint8"), "EPSG:32633", transform)
    b = _write(tmp_path / "b.tif", np.ones((3, 4, 4), "uint8"), "EPSG:32633", transform)
    grid = OutputGrid("EPSG:32633", 10.0, 4)
    with pytest.raises(InputError) as caught:
        read_mosaic(grid, *window_of(grid, 6250, -62500, 0), [a, b], [1], "nearest")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{b.path}: has 3 bands where {a.path} has 2;")
    assert "same bands" in message


def test_an_input_with_every_pixel_valid_is_valid_inside_its_outline(tmp_path):
    """Warped with no mask (GDAL's fastest kernels), what it covers is its footprint."""
    grid, window, _ = _two_zones(tmp_path)
    rng = np.random.default_rng(3)
    (x,), (y,) = rasterio.warp.transform("EPSG:4326", "EPSG:32633", [18.0], [45.0])
    transform = from_origin(round(x) - 600, round(y) + 600, 30, 30)
    data = rng.integers(1, 100, (1, 40, 40)).astype("uint8")
    info = _write(tmp_path / "all.tif", data, "EPSG:32633", transform)
    assert info.masking == "none"
    pixels, valid = read_mosaic(grid, *window, [info], [1], "nearest")
    expected, expected_valid, sure, _ = _reference([info], window, [1], "nearest")
    assert 0 < valid.sum() < valid.size and sure.mean() > 0.5
    np.testing.assert_array_equal(valid[sure], expected_valid[sure])
    np.testing.assert_array_equal(pixels[:, sure], expected[:, sure])
