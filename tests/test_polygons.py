"""`--polygons`: the class map's regions as GeoParquet, polygonized per chunk on the executors
and merged across chunk borders; rasterized back, they are the class map."""

import json
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.features
import shapely
from builders import argmax_model
from rasterio.transform import from_origin

from sparkinfer.config_sources import load_config
from sparkinfer.errors import ConfigError
from sparkinfer.plan import PixelWindow
from sparkinfer.polygon_merge import merge_regions
from sparkinfer.polygons import chunk_polygons
from sparkinfer.writers import chunk_files, is_committed

DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"
HEIGHT, WIDTH, TILE = 96, 112, 16  # one tile a chunk: 6 x 7 chunks of 16 pixels
PIXEL_AREA = 100.0  # 10 m pixels, m²


def painted_classes() -> np.ndarray:
    """The class map the scene is painted with (255: nodata)."""
    classes = np.zeros((HEIGHT, WIDTH), np.uint8)
    classes[8:88, 8:104] = 1  # a ring, 3 pixels wide, through 22 of the 42 chunks
    classes[11:85, 11:101] = 0  # inside it: another region of class 0 than outside
    classes[:5, :30] = 255  # nodata in a corner
    classes[24:28, 20:90] = 255  # and across five chunks inside the ring
    classes[44:48, 60:64] = 2  # two squares that touch only at a corner, which is a chunk
    classes[48:52, 64:68] = 2  # corner (48, 64): two regions (4-connectivity)
    classes[60, 30] = 2  # 1 pixel
    classes[63:65, 40:42] = 2  # 4 pixels, across a chunk border
    classes[70:73, 47:50] = 2  # 9 pixels, across another
    return classes


def write_painted(path: Path, classes: np.ndarray) -> Path:
    """Three bands, the class's own band brightest (all 0 where nodata): what `argmax_model`
    classifies back into `classes`."""
    bands = np.where(np.arange(3)[:, None, None] == classes, 200, 40).astype(np.uint8)
    bands[:, classes == 255] = 0
    profile = dict(
        driver="GTiff",
        height=HEIGHT,
        width=WIDTH,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_300_000.0, 10.0, 10.0),
        nodata=0,
        photometric="minisblack",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory, spark):
    """The painted scene run with `--polygons` through the command line, in chunks of 16
    pixels, and again with `--min-area 500`."""
    from sparkinfer.cli import main

    folder = tmp_path_factory.mktemp("polygons")
    (folder / "in").mkdir()
    scene = write_painted(folder / "in" / "scene.tif", painted_classes())
    model = argmax_model(folder / "argmax.keras")
    common = [
        "--input",
        scene,
        "--model",
        model,
        "--tile-size",
        TILE,
        "--chunk-tiles",
        1,
        "--polygons",
    ]
    for output, more in (("out", []), ("small", ["--min-area", 500])):
        code = main(
            [str(a) for a in [*common, "--output", folder / output, *more]],
            spark,
            defaults_file=DEFAULTS,
        )
        assert code == 0
    return folder, model


def _polygons(folder: Path) -> geopandas.GeoDataFrame:
    return geopandas.read_parquet(folder / "scene.polygons.parquet")


def test_a_region_across_many_chunks_is_one_polygon(written):
    folder, _ = written
    report = json.loads((folder / "out" / "_run.json").read_text())
    assert report["rasters"][0]["chunks"]["planned"] == 42
    polygons = _polygons(folder / "out")
    painted = painted_classes()
    inside = (painted[11:85, 11:101] == 0).sum()
    expected = sorted(
        [
            (0, int((painted == 0).sum() - inside)),
            (0, int(inside)),
            (1, int((painted == 1).sum())),
            (2, 16),
            (2, 16),
            (2, 1),
            (2, 4),
            (2, 9),
        ]
    )
    found = zip(polygons["class"].tolist(), polygons["pixels"].tolist(), strict=True)
    assert sorted(found) == expected
    (ring,) = polygons[polygons["class"] == 1].geometry
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert ring.bounds == (500_080.0, 5_299_120.0, 500_000.0 + 1040, 5_300_000.0 - 80)
    assert list(polygons.geom_type.unique()) == ["Polygon"]


def test_rasterized_back_the_polygons_are_the_class_map(written):
    folder, _ = written
    polygons = _polygons(folder / "out")
    with rasterio.open(folder / "out" / "scene.tif") as cog:
        classes = cog.read(1)
        transform = cog.transform
    np.testing.assert_array_equal(classes, painted_classes())
    burnt = rasterio.features.rasterize(
        zip(polygons.geometry, polygons["class"].tolist(), strict=True),
        out_shape=classes.shape,
        transform=transform,
        fill=255,
        dtype="uint8",
    )
    np.testing.assert_array_equal(burnt, classes)  # every pixel, nodata where no polygon
    covered = rasterio.features.rasterize(
        ((g, 1) for g in polygons.geometry),
        out_shape=classes.shape,
        transform=transform,
        merge_alg=rasterio.enums.MergeAlg.add,
    )
    assert covered.max() == 1, "no pixel in two polygons"


def test_area_is_pixels_times_the_pixel_s_area_and_the_file_is_geoparquet(written):
    folder, _ = written
    polygons = _polygons(folder / "out")
    assert polygons["area"].tolist() == (polygons["pixels"] * PIXEL_AREA).tolist()
    np.testing.assert_allclose(polygons.area, polygons["area"])
    assert polygons["class_name"].tolist() == [str(c) for c in polygons["class"]]
    assert polygons.crs.to_epsg() == 32633
    geo = json.loads(pq.read_schema(folder / "out" / "scene.polygons.parquet").metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert column["bbox"] == list(polygons.total_bounds) and column["geometry_types"] == ["Polygon"]
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    # geopandas reads the covering column, for filters, and leaves it out of the frame
    boxes = pq.read_table(folder / "out" / "scene.polygons.parquet", columns=["bbox"])["bbox"]
    sides = ("xmin", "ymin", "xmax", "ymax")
    assert [[box[side] for side in sides] for box in boxes.to_pylist()] == (
        polygons.geometry.bounds.to_numpy().tolist()
    )
    item = json.loads((folder / "out" / "scene.stac.json").read_text())
    assert item["assets"]["polygons"]["href"] == "./scene.polygons.parquet"


def test_min_area_leaves_out_exactly_the_smaller_regions(written):
    folder, _ = written
    every, kept = _polygons(folder / "out"), _polygons(folder / "small")
    assert sorted(kept["pixels"]) == sorted(p for p in every["pixels"] if p * PIXEL_AREA >= 500)
    assert sorted(every["pixels"])[:3] == [1, 4, 9]
    assert len(kept) == len(every) - 2


def test_the_polygons_are_an_output_of_the_identity(written):
    from sparkinfer.job import is_complete, prepare_job

    folder, model = written

    def raster(output: str, **options):
        config = load_config(
            dict(
                input=[str(folder / "in" / "scene.tif")],
                model=str(model),
                output=str(folder / output),
                tile_size=TILE,
                chunk_tiles=1,
                **options,
            ),
            defaults_file=DEFAULTS,
        )
        return prepare_job(config).rasters[0]

    done = raster("out", polygons=True)
    assert is_complete(done) and done.polygons_path in done.outputs
    assert raster("out", polygons=True, min_area=500).identity != done.identity
    assert not is_complete(raster("out")), "made with polygons: another identity"
    Path(done.polygons_path).rename(folder / "moved.parquet")
    try:
        assert not is_complete(done), "a raster without its polygons file is redone"
    finally:
        (folder / "moved.parquet").rename(done.polygons_path)


def test_a_chunk_with_polygons_is_committed_only_with_its_polygons_file():
    names = chunk_files(2, 3, scores=True, polygons=True)
    assert names == [
        "chunk_r00002_c00003.tif",
        "chunk_r00002_c00003.scores.tif",
        "chunk_r00002_c00003.polygons.parquet",
    ]
    assert is_committed(set(names), 2, 3, True, polygons=True)
    assert not is_committed(set(names[:2]), 2, 3, True, polygons=True)


def test_min_area_without_polygons_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^command line: min_area applies to polygons"):
        load_config(dict(input=["a.tif"], model="m.keras", output="out", min_area=10.0))


def _merged(classes: np.ndarray, side: int) -> list[tuple[int, shapely.Polygon]]:
    """The regions of `classes` cut into chunks of `side` pixels, polygonized: each chunk's
    whole regions and the regions its parts make once merged."""
    height, width = classes.shape
    rows = [
        [
            chunk_polygons(
                classes[r : r + side, c : c + side].copy(),
                PixelWindow(r, c, min(side, height - r), min(side, width - c)),
                height,
                width,
            )
            for c in range(0, width, side)
        ]
        for r in range(0, height, side)
    ]
    found = [
        (int(k), g)
        for row in rows
        for chunk in row
        for k, g in zip(chunk.classes[~chunk.border], chunk.geometries[~chunk.border], strict=True)
    ]
    for regions in merge_regions([[chunk.parts() for chunk in row] for row in rows]):
        found += zip(regions.classes.tolist(), regions.geometries, strict=True)
    return sorted(found, key=lambda region: (region[0], region[1].bounds, region[1].area))


@pytest.mark.parametrize("side", [3, 7, 16])
def test_merged_chunks_give_the_regions_of_the_whole_map(side):
    """Pure numpy and shapely: the chunks' polygons, merged, are those of the whole map
    polygonized at once (chunks of 3 pixels: most polygons parts)."""
    rng = np.random.default_rng(4)
    classes = painted_classes()[::2, ::2].copy()
    classes[rng.random(classes.shape) < 0.05] = 3  # speckle: regions touching at corners
    classes[30:, 40:] = 255  # whole chunks of nodata
    whole = _merged(classes, max(classes.shape))
    merged = _merged(classes, side)
    assert len(merged) == len(whole) > 50
    for (class_a, a), (class_b, b) in zip(whole, merged, strict=True):
        assert class_a == class_b and a.equals(b) and b.is_valid
