"""The sample scene as a STAC Item whose bands are separate GeoTIFFs, to try STAC inputs on.

    .venv/bin/python scripts/sample_stac_item.py out/l7-item              # six 28.5 m bands
    .venv/bin/python scripts/sample_stac_item.py out/l7-item --coarse 2   # SWIR bands at 57 m

writes one GeoTIFF per band of data/nc_landsat7_2000.tif (B1.tif ... B7.tif) and item.json, a
STAC Item whose assets point at them (relative hrefs) with their eo:bands common names. With
--coarse N the SWIR bands (B5, B7) are averaged into pixels N times larger, as Sentinel-2's
20 m bands beside its 10 m ones.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.warp
from rasterio.enums import Resampling
from rasterio.transform import from_origin

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "nc_landsat7_2000.tif"
BANDS = {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir16", "B7": "swir22"}
SWIR = ("B5", "B7")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--coarse", type=int, default=1, help="SWIR pixels N times larger")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SAMPLE) as src:
        profile = src.profile | {"count": 1}
        bounds, crs = src.bounds, src.crs
        item = pystac.Item(
            "nc_landsat7_2000",
            geometry=None,
            bbox=list(rasterio.warp.transform_bounds(crs, "EPSG:4326", *bounds)),
            datetime=datetime(2000, 1, 1, tzinfo=UTC),  # the year the sample's names give
            properties={},
        )
        for index, (key, common) in enumerate(BANDS.items(), 1):
            pixels, band_profile = src.read(index), profile
            if key in SWIR and args.coarse > 1:
                size = src.res[0] * args.coarse
                width = math.ceil(src.width / args.coarse)
                height = math.ceil(src.height / args.coarse)
                transform = from_origin(bounds.left, bounds.top, size, size)
                coarse = np.zeros((height, width), pixels.dtype)
                rasterio.warp.reproject(
                    pixels,
                    coarse,
                    src_transform=src.transform,
                    src_crs=crs,
                    src_nodata=0,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=0,
                    resampling=Resampling.average,
                )
                pixels = coarse
                band_profile = profile | {"width": width, "height": height, "transform": transform}
            with rasterio.open(args.folder / f"{key}.tif", "w", **band_profile) as dst:
                dst.write(pixels, 1)
            item.add_asset(
                key,
                pystac.Asset(
                    f"./{key}.tif",
                    media_type=pystac.MediaType.GEOTIFF,
                    roles=["data"],
                    extra_fields={"eo:bands": [{"name": key, "common_name": common}]},
                ),
            )
    path = args.folder / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
