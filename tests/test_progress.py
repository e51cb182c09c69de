"""Progress on the driver: tiles done of the total from committed chunks, rate and ETA."""

import re

from builders import write_raster

from sparkinfer.cuts import Tiling
from sparkinfer.plan import RasterPlan
from sparkinfer.progress import Progress
from sparkinfer.writers import chunk_name, scores_name

LINE = re.compile(
    r"^sparkinfer: (\d+)/(\d+) tiles \((\d+\.\d)%\), (\d+\.\d) tiles/s, "
    r"\d+m\d\ds elapsed(, ETA \d+m\d\ds)?$"
)


def test_progress_counts_the_tiles_of_committed_chunks(tmp_path):
    chunks = RasterPlan(100, 70, Tiling(16, 0, 1, chunk_tiles=2)).chunks()  # 7 x 5 tiles
    progress = Progress([str(tmp_path)], [chunks], scores=False)
    assert progress.total == 35 and progress.tiles_done() == 0
    (tmp_path / chunk_name(0, 0)).touch()  # 2 x 2 tiles
    (tmp_path / chunk_name(3, 2)).touch()  # the corner: 1 x 1
    (tmp_path / ".chunk_r00000_c00001.tif.0123.tmp").touch()  # being written: not done
    assert progress.tiles_done() == 5
    assert LINE.match(progress.line()).group(1, 2, 3) == ("5", "35", "14.3")

    # With scores a chunk is done once its scores file, committed last, is there too.
    with_scores = Progress([str(tmp_path)], [chunks], scores=True)
    assert with_scores.tiles_done() == 0
    (tmp_path / scores_name(chunk_name(0, 0))).touch()
    assert with_scores.tiles_done() == 4


def test_a_run_prints_progress_lines_not_a_flood(tmp_path, run, models, capsys):
    (tmp_path / "in").mkdir()
    raster = write_raster(tmp_path / "in" / "scene.tif", 384, 384, seed=4)
    run(
        input=[str(raster)],
        model=str(models["unet"]),
        output=str(tmp_path / "out"),
        tile_size=32,
        chunk_tiles=1,
        progress_seconds=0.5,
    )
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if " tiles (" in line]
    assert len(lines) >= 2, stderr
    assert all(LINE.match(line) for line in lines), lines
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == sorted(counts) and lines[-1].startswith("sparkinfer: 144/144 tiles (100.0%)")
    assert "\r" not in stderr, "not a terminal: whole lines only"
