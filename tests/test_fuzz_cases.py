"""What the file fuzzer (benchmarks/fuzz_inputs.py) found, pinned: a corrupt input's one line
says what GDAL found, not where to look for it; a GeoTIFF whose tie point is lost is refused, not
mapped at 0, 0."""

import struct
import warnings

import pyarrow as pa
import pytest
import rasterio
from builders import write_raster
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from sparkinfer.cuts import Tiling
from sparkinfer.errors import InputError, first_line
from sparkinfer.executor.read import WindowReader, planned_chunks
from sparkinfer.plan import RasterPlan
from sparkinfer.raster import read_info


def _zeroed_tile(path):
    """A tiled, deflated GeoTIFF whose second tile of band 1 is zeros: no deflate stream. Its
    metadata reads; its pixels do not."""
    write_raster(path, 64, 64)
    with rasterio.open(path) as src:
        profile = src.profile | {"compress": "deflate", "tiled": True}
        profile |= {"blockxsize": 32, "blockysize": 32}
        data = src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_0", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = bytes(size)
    path.write_bytes(bytes(raw))
    return path


def test_a_failed_read_is_said_in_gdals_words(tmp_path):
    """rasterio raises "Read failed. See previous exception for details." from GDAL's error;
    the line the user gets is the only one, so it carries GDAL's."""
    broken = _zeroed_tile(tmp_path / "broken.tif")
    with rasterio.open(broken) as src, pytest.raises(RasterioIOError) as caught:
        src.read()
    assert str(caught.value) == "Read failed. See previous exception for details."
    assert first_line(caught.value) == str(caught.value.__cause__)

    info = read_info(str(broken))
    plan = RasterPlan(info.height, info.width, Tiling(32, 4))
    chunks = plan.chunks()
    chunks = chunks.append_column("raster_index", pa.array([0] * len(chunks), pa.int64()))
    reader = WindowReader((info,), (1, 2, 3, 4))
    errors = {reader.read(chunk).error for chunk in planned_chunks(chunks.to_batches(), (plan,))}
    reader.close()
    (error,) = errors
    assert error.startswith(f"{broken}: cannot read pixels (broken.tif, band 1: IReadBlock failed")
    assert "TIFFReadEncodedTile() failed" in error
    assert "previous exception" not in error


def test_a_geotiff_without_its_tie_point_has_no_georeference(tmp_path):
    """A flipped byte in an IFD (the fuzzer's c0116 and c0194 of seed 27) renamed the
    ModelTiepoint tag: GDAL finds no geotransform, but rasterio gives the pixel size with the
    origin at 0, 0 (and warns, unnamed, in whichever process opens it). The job took that
    transform and wrote its outputs at 0, 0; it now refuses the raster, in one line."""
    path = write_raster(tmp_path / "lost.tif", 32, 32)
    raw = path.read_bytes()
    tiepoint = struct.pack("<HH", 33922, 12)  # ModelTiepointTag, DOUBLE
    assert raw.count(tiepoint) == 1
    path.write_bytes(raw.replace(tiepoint, struct.pack("<HH", 33923, 12)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            assert not src.transform.is_identity and src.crs is not None
            src.read()  # its pixels are whole
    assert [w.category for w in caught] == [NotGeoreferencedWarning]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing else is shown
        with pytest.raises(InputError) as refused:
            read_info(str(path))
    assert str(refused.value) == f"{path}: raster has no georeference (CRS and transform)"
