"""A GeoTIFF that did not reach the disk whole is never committed (found by the chaos soak: a
full disk at a chunk's close left a file of 0 bytes in place, which every re-run then failed to
read). A file size limit (RLIMIT_FSIZE, no privilege needed) stands in for the full disk: the
writes past it fail as they would with ENOSPC."""

import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio.shutil
from builders import write_raster

from sparkinfer.raster import read_info
from sparkinfer.whole_tiff import check_whole
from sparkinfer.writers import ChunkSpec, ChunkWriter


@contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes of any file fail (EFBIG, not the default SIGXFSZ) in the
    block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", 512, 512, seed=3)


def noise(shape, seed=0) -> np.ndarray:
    """Classes that do not compress: the chunk's tiles hold more bytes than the limit."""
    return np.random.default_rng(seed).integers(0, 10, shape, dtype=np.uint8)


def test_a_chunk_that_did_not_reach_the_disk_whole_is_not_committed(tmp_path, scene):
    spec = ChunkSpec(str(tmp_path), 0, 0, 0, 0, 512, 512)
    writer = ChunkWriter(spec, read_info(str(scene)), channels=3, write_scores=False)
    writer.write(0, 0, noise((512, 512)), None)
    # GDAL writes the tiles and the directory at the close, past the limit: it logs the
    # failed writes, and rasterio's close returns as if all were well.
    with file_size_limit(16_384), pytest.raises(OSError) as failed:
        writer.commit()
    # Named as it would have been committed, not by its hidden staging name.
    assert str(failed.value).startswith(f"{spec.classes_path} was not written whole (tile ")
    assert str(failed.value).endswith("; is its disk full?")
    writer.abort()  # as commit_chunk does on any error
    assert list(tmp_path.iterdir()) == [], "neither the chunk nor its staging file is left"


def test_a_whole_chunk_is_committed(tmp_path, scene):
    spec = ChunkSpec(str(tmp_path), 0, 0, 0, 0, 512, 512)
    writer = ChunkWriter(spec, read_info(str(scene)), channels=3, write_scores=True)
    classes, scores = noise((512, 512)), noise((512, 512, 3), seed=1).astype(np.float32)
    writer.write(0, 0, classes, scores)
    writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chunk_r00000_c00000.scores.tif",
        "chunk_r00000_c00000.tif",
    ]
    with rasterio.open(spec.classes_path) as chunk:
        np.testing.assert_array_equal(chunk.read(1), classes)


def test_check_whole_reads_the_directory_of_every_band_and_overview(tmp_path, scene):
    cog = tmp_path / "scene.cog.tif"
    rasterio.shutil.copy(str(scene), str(cog), driver="COG", BLOCKSIZE=128, OVERVIEWS="AUTO")
    with rasterio.open(cog) as src:
        assert src.count == 4 and src.overviews(1) == [2, 4]
    check_whole(cog)  # whole: no error
    data = cog.read_bytes()
    # The last tile's bytes cut off (a COG keeps its overviews first, full resolution last).
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:-100])
    with pytest.raises(OSError, match=r"cut.tif was not written whole \(tile 3, 3 of band 1"):
        check_whole(cut)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(OSError, match=r"^empty.tif was not written whole \(GDAL cannot open"):
        check_whole(empty)
