"""The plan of one map over many inputs: pure geometry on metadata, no pixels and no Spark."""

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import rasterio.warp
import shapely
from affine import Affine
from builders import write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.coords import BoundingBox
from rasterio.crs import CRS

from sparkinfer.errors import ConfigError, InputError
from sparkinfer.grid import OutputGrid, TileRange, footprint, plan_grid
from sparkinfer.raster import read_info


@dataclass(frozen=True)
class Scene:
    """An input's metadata, as the plan reads it from a `RasterInfo`."""

    path: str
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int


def _places(plan) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(tile.col, tile.row, tile.inputs) for tile in plan.tiles]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_grid_tiles_start_at_the_origin_and_count_rows_down():
    grid = OutputGrid("EPSG:32633", 30.0, 4)  # tiles of 120 m
    assert grid.tile_bounds(0, 0) == BoundingBox(0.0, -120.0, 120.0, 0.0)
    assert grid.tile_bounds(-1, -1) == BoundingBox(-120.0, 0.0, 0.0, 120.0)
    assert grid.tile_bounds(2, 3) == BoundingBox(240.0, -480.0, 360.0, -360.0)
    assert grid.tile_transform(0, 0) == Affine(30.0, 0.0, 0.0, 0.0, -30.0, 0.0)
    assert grid.tile_transform(-1, -1) == Affine(30.0, 0.0, -120.0, 0.0, -30.0, 120.0)
    assert grid.tile_transform(2, 3) == Affine(30.0, 0.0, 240.0, 0.0, -30.0, -360.0)
    tile = grid.grid_tile(2, 3, (1,))
    assert (tile.col, tile.row, tile.width, tile.height, tile.inputs) == (2, 3, 4, 4, (1,))
    assert tile.transform @ (4, 4) == (tile.bounds.right, tile.bounds.bottom)

    # Snapped outward; an edge on a tile edge takes no tile beyond it.
    assert grid.tiles_covering((0, -120, 120, 0)) == TileRange(range(0, 1), range(0, 1))
    assert grid.tiles_covering((-1, -121, 121, 1)) == TileRange(range(-1, 2), range(-1, 2))
    assert grid.tiles_covering((250, -470, 251, -469)) == TileRange(range(2, 3), range(3, 4))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0.1, 0.3, 10.0, 30.0, 1 / 3]),
    st.sampled_from([1, 7, 256, 4096]),
    st.integers(-(10**5), 10**5),
    st.integers(-(10**5), 10**5),
)
def test_a_tile_s_bounds_are_covered_by_it_alone_and_meet_its_neighbours(
    resolution, size, col, row
):
    grid = OutputGrid("EPSG:3857", resolution, size)
    bounds = grid.tile_bounds(col, row)
    assert grid.tiles_covering(bounds) == TileRange(range(col, col + 1), range(row, row + 1))
    assert grid.tile_bounds(col + 1, row).left == bounds.right
    assert grid.tile_bounds(col, row + 1).top == bounds.bottom


def test_neighbouring_maps_share_their_grid_tiles():
    grid = OutputGrid("EPSG:32633", 0.3, 7)  # 2.1 m tiles, edges not whole numbers
    scene = Scene("wide.tif", "EPSG:32633", (0.5, 0, 1000.0, 0, -0.5, 2000.0), 200, 20)
    west = plan_grid(grid, [scene], bounds=(1000, 1990, 1051, 2000))
    east = plan_grid(grid, [scene], bounds=(1051, 1990, 1100, 2000))
    west_tiles = {(t.col, t.row): t for t in west.tiles}
    east_tiles = {(t.col, t.row): t for t in east.tiles}
    shared = west_tiles.keys() & east_tiles.keys()
    assert {col for col, _ in shared} == {500}  # 1051 m is inside column 500
    assert len(shared) == len({row for _, row in west_tiles}) == 6
    for place in shared:
        assert west_tiles[place] == east_tiles[place]
    # And each is the tile of one map over both.
    whole = {(t.col, t.row): t for t in plan_grid(grid, [scene]).tiles}
    assert whole == west_tiles | east_tiles


@pytest.mark.parametrize("grid_crs", ["EPSG:3857", "EPSG:32634"])
def test_a_utm_scene_meets_the_tiles_its_reprojected_footprint_overlaps(grid_crs):
    # 90 km near the east edge of zone 33: turned and bent in the grid's CRS.
    scene = Scene("utm.tif", "EPSG:32633", (30.0, 0, 700_000.0, 0, -30.0, 5_100_000.0), 3000, 3000)
    grid = OutputGrid(grid_crs, 100.0, 64)
    outline = footprint(scene, grid)
    corners = [(700_000, 5_100_000), (790_000, 5_100_000), (790_000, 5_010_000)]
    xs, ys = rasterio.warp.transform("EPSG:32633", grid_crs, *zip(*corners, strict=True))
    assert list(outline.exterior.coords)[0:45:22] == list(zip(xs, ys, strict=True))

    plan = plan_grid(grid, [scene])
    around = grid.tiles_covering(outline.bounds)
    expected = [
        (col, row, (0,))
        for row in range(around.rows.start - 2, around.rows.stop + 2)
        for col in range(around.cols.start - 2, around.cols.stop + 2)
        if outline.intersection(shapely.box(*grid.tile_bounds(col, row))).area > 0
    ]
    assert _places(plan) == expected
    assert plan.bounds == BoundingBox(*outline.bounds)
    assert 200 < len(expected) < around.count  # the turned outline misses the corners


def test_a_tile_lists_the_inputs_that_overlap_it_in_input_order(tmp_path):
    grid = OutputGrid("EPSG:32633", 30.0, 4)  # tiles of 120 m
    west = write_raster(tmp_path / "west.tif", 20, 20, 1, transform=Affine(30, 0, 0, 0, -30, 0))
    east = write_raster(tmp_path / "east.tif", 20, 20, 1, transform=Affine(30, 0, 360, 0, -30, 0))
    inputs = [read_info(str(east)), read_info(str(west))]
    plan = plan_grid(grid, inputs)
    # East spans x 360..960, columns 3 to 7; west x 0..600, columns 0 to 4 (it only touches
    # column 5); rows 0 to 4 hold both scenes' y -600..0.
    lists = {0: (1,), 1: (1,), 2: (1,), 3: (0, 1), 4: (0, 1), 5: (0,), 6: (0,), 7: (0,)}
    assert _places(plan) == [(col, row, lists[col]) for row in range(5) for col in range(8)]
    assert plan.bounds == BoundingBox(0.0, -600.0, 960.0, 0.0)

    # Bounds limit the tiles; a tile that only the other scene's edge touches lists one.
    clipped = plan_grid(grid, inputs, bounds=(500, -100, 700, -10))
    assert _places(clipped) == [(4, 0, (0, 1)), (5, 0, (0,))]


def test_bounds_that_meet_no_input_are_refused_in_one_line():
    grid = OutputGrid("EPSG:32633", 30.0, 4)
    scene = Scene("scene.tif", "EPSG:32633", (30.0, 0, 0.0, 0, -30.0, 0.0), 20, 20)
    with pytest.raises(ConfigError) as error:
        plan_grid(grid, [scene], bounds=(10_000, 10_000, 20_000, 20_000))
    assert _one_line(error) == (
        "--bounds 10000.0,10000.0,20000.0,20000.0: no input meets them (the inputs span "
        "0.0,-600.0,600.0,0.0); give bounds in the grid's CRS EPSG:32633 that overlap them"
    )
    with pytest.raises(ConfigError) as error:
        plan_grid(grid, [scene], bounds=(600, 0, 0, 600))
    assert _one_line(error).startswith("--bounds 600.0,0.0,0.0,600.0: give minx,miny,maxx,maxy")


def test_more_pixels_than_the_limit_are_refused_unless_forced():
    scene = Scene(
        "scene.tif", "EPSG:32633", (30.0, 0, 600_000.0, 0, -30.0, 5_100_000.0), 3000, 3000
    )
    with pytest.raises(ConfigError) as error:
        plan_grid(OutputGrid("EPSG:32633", 0.01, 4096), [scene])  # centimetres, not metres
    assert _one_line(error) == (
        "the inputs' bounds 600000.0,5010000.0,690000.0,5100000.0 at --resolution 0.01 hold "
        "81,054,153,048,064 pixels (4,831,204 grid tiles), more than 1,000,000,000,000; "
        "check --resolution and --bounds (in the grid CRS's units), or pass --force"
    )
    small = OutputGrid("EPSG:32633", 30.0, 4)
    with pytest.raises(ConfigError, match=r"hold 12,000 pixels .* or pass --force$"):
        plan_grid(small, [scene], bounds=(600_000, 5_097_000, 603_600, 5_100_000), max_pixels=10**4)
    forced = plan_grid(
        small,
        [scene],
        bounds=(600_000, 5_097_000, 603_600, 5_100_000),
        max_pixels=10**4,
        force=True,
    )
    assert len(forced.tiles) == 30 * 25


@pytest.mark.parametrize(
    ("crs", "transform", "grid_crs", "why"),
    [
        # 200 km around the south pole: Web Mercator sends the pole to its bottom edge, and
        # the outline folds over itself.
        (
            "EPSG:3031",
            (10_000.0, 0, -100_000.0, 0, -10_000.0, 100_000.0),
            "EPSG:3857",
            "folds over itself in the grid's CRS EPSG:3857 (a pole or the antimeridian)",
        ),
        # 100 degrees from zone 33's central meridian, at the equator: PROJ refuses.
        (
            "EPSG:4326",
            (0.05, 0, 105.0, 0, -0.05, 1.0),
            "EPSG:32633",
            "reaches outside the domain of the grid's CRS EPSG:32633",
        ),
        # A corner on the antipode of an equatorial stereographic projection's centre.
        (
            "EPSG:4326",
            (0.05, 0, 180.0, 0, -0.05, 0.0),
            CRS.from_proj4("+proj=stere +lat_0=0 +lon_0=0 +datum=WGS84").to_wkt(),
            "reaches where the grid's CRS +proj=stere +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 "
            "+datum=WGS84 +units=m +no_defs=True is infinite",
        ),
    ],
)
def test_an_input_the_grid_s_crs_cannot_hold_is_named_in_one_line(crs, transform, grid_crs, why):
    scene = Scene("/data/far.tif", crs, transform, 20, 20)
    with pytest.raises(InputError) as error:
        plan_grid(OutputGrid(grid_crs, 100.0), [scene])
    message = _one_line(error)
    assert message.startswith(f"/data/far.tif: the raster {why}")
    assert message.endswith("; choose a --grid CRS that covers it")


def test_an_input_whose_crs_cannot_be_used_is_named_in_one_line():
    scene = Scene("/data/odd.tif", "EPSG:999999", (30.0, 0, 0.0, 0, -30.0, 0.0), 20, 20)
    with pytest.raises(InputError) as error:
        plan_grid(OutputGrid("EPSG:3857", 100.0), [scene])
    message = _one_line(error)
    assert message.startswith("/data/odd.tif: the raster's CRS cannot be used (")
    assert message.endswith("; set a valid one (gdal_edit.py -a_srs)")


@pytest.mark.parametrize(
    ("crs", "resolution", "size", "message"),
    [
        ("EPSG:999999", 10.0, 4096, "--grid EPSG:999999: not a CRS ("),
        ("EPSG:3857", 0.0, 4096, "--resolution 0.0: give a positive pixel side"),
        ("EPSG:3857", float("nan"), 4096, "--resolution nan: give a positive pixel side"),
        ("EPSG:3857", 10.0, 0, "--grid-tile 0: give a positive number of pixels"),
    ],
)
def test_a_grid_without_a_crs_or_with_empty_pixels_is_refused_in_one_line(
    crs, resolution, size, message
):
    with pytest.raises(ConfigError) as error:
        OutputGrid(crs, resolution, size)
    assert _one_line(error).startswith(message)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(merge="blend"), "--grid: --merge blend is not made on a grid yet"),
        (dict(polygons=True), "--grid: --polygons is not made on a grid yet"),
        (dict(verify=True), "--grid: --verify is not made on a grid yet"),
        (dict(estimate=True), "--grid: --estimate is not made on a grid yet"),
        (dict(grid_tile=100), "--grid-tile 100: give a multiple of the model's total stride 8"),
    ],
)
def test_what_a_map_does_not_do_yet_is_refused_in_one_line(options, message):
    from sparkinfer.config import JobConfig
    from sparkinfer.cuts import ChipGrid, Tiling
    from sparkinfer.errors import ConfigError
    from sparkinfer.grid_rasters import check_grid_run

    grid = dict(crs="EPSG:3857", resolution=10, tile_size=options.pop("grid_tile", 4096))
    config = JobConfig(input=["a.tif"], model=["m.keras"], output="out", grid=grid, **options)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        check_grid_run(config.grid, config, Tiling(512, 32, stride=8))
    with pytest.raises(ConfigError, match="a chip classifier's map is not made on a grid yet"):
        check_grid_run(config.grid, config, ChipGrid(32, 32, 4))


def test_newest_puts_the_input_taken_last_first_and_first_keeps_input_order(tmp_path):
    import os

    from sparkinfer.config import GridOptions
    from sparkinfer.grid_rasters import plan_map
    from sparkinfer.raster import StackedItem, read_info

    paths = [write_raster(tmp_path / f"{name}.tif", 8, 8) for name in ("old", "new", "mid")]
    for path, day in zip(paths, (1, 3, 2), strict=True):
        os.utime(path, ns=(day * 86_400 * 10**9, day * 86_400 * 10**9))
    infos = tuple(read_info(str(p)) for p in paths)
    grid = dict(crs="EPSG:32633", resolution=10.0, tile_size=8)

    def order(mosaic, inputs):
        plan = plan_map(GridOptions(**grid, mosaic=mosaic), inputs)
        return [Path(i.path).stem for i in plan.inputs]

    assert order("first", infos) == ["old", "new", "mid"]
    assert order("newest", infos) == ["new", "mid", "old"]
    # A STAC Item's datetime counts, not its file's time.
    item = StackedItem("i", "i.json", "i.json", "<VRTDataset/>", "0", acquired=5 * 86_400.0)
    assert order("newest", (*infos, replace(infos[0], path="item", item=item))) == [
        "item",
        "new",
        "mid",
        "old",
    ]
