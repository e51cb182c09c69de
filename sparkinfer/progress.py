"""Progress of the inference stage on the driver: tiles done of the total, rate and ETA.

Done is counted from the chunk files the executors commit in the staging folders (the same
files a rerun resumes from), so it is exact to the chunk and needs nothing from Spark. On a
terminal the line is rewritten in place; otherwise one line is printed every `interval`
seconds, so logs of scheduled runs stay short.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pyarrow as pa

from sparkinfer import storage
from sparkinfer.writers import chunk_files


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Counts the tiles of committed chunks among the chunks this run has to do."""

    def __init__(
        self,
        staging: list[str],
        chunk_tables: list[pa.Table],
        scores: bool,
        **layers,
    ) -> None:
        self.folders = []  # (folder, {name of the file a chunk commits last: tiles})
        for folder, chunks in zip(staging, chunk_tables, strict=True):
            names = [
                chunk_files(r, c, scores, **layers)[-1]
                for r, c in zip(
                    chunks["chunk_row"].to_pylist(), chunks["chunk_col"].to_pylist(), strict=True
                )
            ]
            tiles = dict(zip(names, chunks["tiles"].to_pylist(), strict=True))
            self.folders.append((folder, tiles))
        self.total = sum(sum(tiles.values()) for _, tiles in self.folders)
        self.started = time.monotonic()

    def tiles_done(self) -> int:
        done = 0
        for folder, tiles in self.folders:  # a folder assembled and removed lists empty
            done += sum(tiles.get(name, 0) for name in storage.list_names(folder))
        return done

    def line(self) -> str:
        done = self.tiles_done()
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_duration((self.total - done) / rate)}" if done and rate else ""
        share = 100 * done / self.total if self.total else 100.0
        return (
            f"sparkinfer: {done}/{self.total} tiles ({share:.1f}%), {rate:.1f} tiles/s, "
            f"{_duration(elapsed)} elapsed{eta}"
        )


@contextmanager
def reported(progress: Progress, interval: float, stream: TextIO | None = None) -> Iterator[None]:
    """Report `progress` on `stream` (stderr) every `interval` seconds (never if 0) while the
    body runs."""
    if interval <= 0 or progress.total == 0:
        yield
        return
    stream = stream or sys.stderr
    terminal = stream.isatty()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(1.0 if terminal else interval):
            line = progress.line()
            stream.write(f"\r{line}\x1b[K" if terminal else f"{line}\n")
            stream.flush()

    thread = threading.Thread(target=report, name="sparkinfer-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        stream.write(f"\r{progress.line()}\x1b[K\n" if terminal else f"{progress.line()}\n")
        stream.flush()
