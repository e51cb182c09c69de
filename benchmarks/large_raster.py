"""Make a large 4-band GeoTIFF from the real sample by mirroring it, one strip at a time.

    python -m benchmarks.large_raster --size 16384 --output out/bench/nc_16384.tif

The source scene (data/nc_landsat7_2000.tif, 489 x 443) is small and read once; the output is
written strip by strip, so memory holds one strip of rows, never the whole raster. Mirroring
(reflecting the scene at each edge) keeps the texture of a real scene with no seams. The output
keeps the source's CRS, pixel size and origin, and its nodata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "nc_landsat7_2000.tif"
BANDS = (1, 2, 3, 4)  # blue, green, red, near infrared
STRIP_ROWS = 512


def mirrored_index(length: int, source_length: int) -> np.ndarray:
    """Source index of each of `length` positions when the source is reflected at its edges."""
    position = np.arange(length) % (2 * source_length)
    return np.where(position < source_length, position, 2 * source_length - 1 - position)


def make_large_raster(
    output: Path, size: int, source: Path = SOURCE, bands: tuple[int, ...] = BANDS
) -> Path:
    """Write a size x size mirrored copy of `source`'s `bands` to `output` (if not there yet)."""
    if output.exists():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(source) as src:
        scene = src.read(list(bands))  # 489 x 443 x 4 bytes: the small source, not the output
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": len(bands),
            "dtype": scene.dtype.name,
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
            "predictor": 2,
            "bigtiff": "if_safer",
            "photometric": "minisblack",  # four bands, not RGB + alpha
        }
    columns = mirrored_index(size, scene.shape[2])
    tmp = output.with_name(f".{output.name}.tmp")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(tmp, "w", **profile) as dst:
        for top in range(0, size, STRIP_ROWS):
            rows = mirrored_index(size, scene.shape[1])[top : top + STRIP_ROWS]
            strip = scene[:, rows][:, :, columns]
            dst.write(strip, window=rasterio.windows.Window(0, top, size, len(rows)))
    tmp.replace(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384, help="width and height in pixels")
    parser.add_argument("--output", type=Path, required=True, help="GeoTIFF to write")
    args = parser.parse_args()
    print(make_large_raster(args.output, args.size))


if __name__ == "__main__":
    main()
