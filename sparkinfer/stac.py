"""STAC Items as inputs: each Item is one raster, whose bands are the assets chosen.

`--assets` names them in the model's order, each by asset key or by the common name of one of an
asset's bands (the eo extension's `eo:bands`, STAC 1.1's `bands`). They are stacked in a GDAL
VRT held as XML text: GDAL opens the text as a dataset name, so nothing is written, and the text
travels to the executors in the raster's `RasterInfo`. The stack has the grid (size,
geotransform, CRS) of the first asset; GDAL resamples an asset of another resolution to it as it
reads each window (`--resampling`), as `rasterio`'s `read(out_shape=...)` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.dtypes import _gdal_typename
from rasterio.errors import RasterioError

from sparkinfer import storage
from sparkinfer.config import Resampling
from sparkinfer.errors import InputError, first_line
from sparkinfer.raster import GDAL_READ_OPTIONS, StackedItem

if TYPE_CHECKING:  # imported when a STAC file is read: runs without one skip its 65-105 ms
    import pystac


def is_stac(location: str) -> bool:
    """Whether an input file is a STAC Item or ItemCollection (JSON), not a raster."""
    return location.lower().endswith(".json")


@dataclass(frozen=True, eq=False)
class ItemInput:
    """One Item of a STAC file, as an input of the job."""

    path: str  # the file's location, with `#id` for an Item of an ItemCollection
    file: str
    item: pystac.Item


def read_items(location: str) -> list[ItemInput]:
    """The Items of a STAC Item or ItemCollection file, local or s3://."""
    import pystac

    try:
        data = json.loads(storage.read_text(location))
    except (OSError, ValueError) as exc:
        raise InputError(f"{location}: cannot read it as JSON ({first_line(exc)})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            return [ItemInput(location, location, pystac.Item.from_dict(data))]
        if kind == "FeatureCollection":
            items = pystac.ItemCollection.from_dict(data).items
        else:
            raise InputError(
                f"{location}: not a STAC Item or ItemCollection (a GeoJSON "
                "Feature or FeatureCollection)"
            )
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        what = "Item" if kind == "Feature" else "ItemCollection"
        raise InputError(f"{location}: not a valid STAC {what} ({first_line(exc)})") from None
    if not items:
        raise InputError(f"{location}: the ItemCollection holds no Items")
    twice = [id_ for id_, count in Counter(i.id for i in items).items() if count > 1]
    if twice:
        raise InputError(
            f"{location}: Item id {twice[0]} appears more than once; ids name "
            "the outputs, so they must differ"
        )
    return [ItemInput(f"{location}#{item.id}", location, item) for item in items]


@dataclass(frozen=True)
class _Choice:
    """A band of the stack: an asset's, by its key, and which of its bands (None: all)."""

    key: str
    band: int | None  # 1-based


def _common_names(asset: pystac.Asset) -> list[str | None]:
    """The common names of an asset's bands, in order."""
    fields = asset.extra_fields
    if "bands" in fields:  # STAC 1.1
        return [band.get("eo:common_name") for band in fields["bands"]]
    return [band.get("common_name") for band in fields.get("eo:bands", [])]


def _choose(path: str, item: pystac.Item, names: list[str] | None) -> list[_Choice]:
    """The assets (or bands of assets) `names` stand for, in their order."""
    keys = ", ".join(item.assets)
    if not names:
        raise InputError(
            f"{path}: the bands of a STAC Item are its assets: name them in the "
            f"model's order with --assets (its assets: {keys})"
        )
    chosen = []
    for name in names:
        if name in item.assets:
            chosen.append(_Choice(name, None))
            continue
        found = [
            _Choice(key, i + 1)
            for key, asset in item.assets.items()
            for i, common in enumerate(_common_names(asset))
            if common == name
        ]
        if len(found) > 1:
            owners = ", ".join(c.key for c in found)
            raise InputError(
                f"{path}: '{name}' is the common name of bands of assets "
                f"{owners}; name the asset instead"
            )
        if not found:
            commons = sorted({c for a in item.assets.values() for c in _common_names(a) if c})
            raise InputError(
                f"{path}: no asset or band common name '{name}' (assets: {keys}; "
                f"common names: {', '.join(commons) or 'none'})"
            )
        chosen.extend(found)
    return chosen


def _location(path: str, key: str, href: str, file: str) -> str:
    """Where an asset is, as the job reads it: an href relative to the Item's file resolved
    against that file's folder."""
    url = urlsplit(href)
    if url.scheme == "file":
        return unquote(url.path)
    if storage.is_s3(href) or storage.is_http(href) or os.path.isabs(href):
        return href
    if url.scheme:
        raise InputError(
            f"{path}: asset {key} is at {href}: assets are read from local paths, "
            "s3:// or http(s)://"
        )
    if storage.is_s3(file):
        folder = storage.parent(file).removeprefix(storage.S3_SCHEME)
        return storage.S3_SCHEME + posixpath.normpath(posixpath.join(folder, href))
    return os.path.normpath(os.path.join(storage.parent(file), href))


@dataclass(frozen=True)
class _Asset:
    """What the stack needs of an asset's raster."""

    key: str
    location: str
    width: int
    height: int
    transform: Affine
    crs: CRS
    dtypes: tuple[str, ...]
    nodatavals: tuple[float | None, ...]
    size: int
    mtime_ns: int


def _read_asset(path: str, key: str, location: str) -> _Asset:
    where = f"{path}: asset {key} ({location})"
    try:
        size, mtime_ns = storage.size_and_mtime(location)
        with (
            storage.gdal_env(**GDAL_READ_OPTIONS),
            rasterio.open(storage.gdal_path(location)) as src,
        ):
            if src.crs is None or src.transform.is_identity:
                raise InputError(f"{where} has no georeference (CRS and transform)")
            if src.transform.b != 0 or src.transform.d != 0:
                raise InputError(
                    f"{where}: the geotransform is rotated or sheared; warp it to "
                    "a north-up grid first (gdalwarp)"
                )
            return _Asset(
                key,
                location,
                src.width,
                src.height,
                src.transform,
                src.crs,
                src.dtypes,
                src.nodatavals,
                size,
                mtime_ns,
            )
    except FileNotFoundError:
        raise InputError(f"{where}: not found") from None
    except (OSError, RasterioError) as exc:
        raise InputError(f"{where}: not a readable raster ({first_line(exc)})") from None


def _vrt(layers: list[tuple[_Asset, int]], resampling: Resampling) -> str:
    """VRT XML of `layers` (asset, band) as bands, on the first's grid, in one data type that
    holds every band's values."""
    grid = layers[0][0]
    g = grid.transform
    dtype = _gdal_typename(np.result_type(*(a.dtypes[b - 1] for a, b in layers)).name)
    lines = [
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
        f"<SRS>{escape(grid.crs.to_wkt())}</SRS>",
        f"<GeoTransform>{', '.join(map(repr, g.to_gdal()))}</GeoTransform>",
    ]
    for index, (asset, band) in enumerate(layers, 1):
        t = asset.transform  # its extent, in pixels of the grid (fractions where not aligned)
        x, y = (t.c - g.c) / g.a, (t.f - g.f) / g.e
        width, height = asset.width * t.a / g.a, asset.height * t.e / g.e
        nodata = asset.nodatavals[band - 1]
        # GDAL's names of the methods are rasterio's without the underscore (cubicspline).
        lines += [
            f'<VRTRasterBand dataType="{dtype}" band="{index}">',
            *([f"<NoDataValue>{nodata!r}</NoDataValue>"] if nodata is not None else []),
            f'<SimpleSource resampling="{resampling.replace("_", "")}">',
            f'<SourceFilename relativeToVRT="0">{escape(storage.gdal_path(asset.location))}'
            "</SourceFilename>",
            f"<SourceBand>{band}</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{asset.width}" ySize="{asset.height}"/>',
            f'<DstRect xOff="{x!r}" yOff="{y!r}" xSize="{width!r}" ySize="{height!r}"/>',
            "</SimpleSource>",
            "</VRTRasterBand>",
        ]
    return "\n".join([*lines, "</VRTDataset>"])


def stack_item(source: ItemInput, names: list[str] | None, resampling: Resampling) -> StackedItem:
    """The Item's assets `names` stacked as bands: one raster, read through a VRT.

    Raises `InputError` for a name that matches no asset or band, an asset that is not a
    readable, georeferenced raster, or assets of different CRSs (not warped here)."""
    path, item = source.path, source.item
    chosen = _choose(path, item, names)
    assets: dict[str, _Asset] = {}
    for choice in chosen:
        if choice.key not in assets:
            href = item.assets[choice.key].href
            location = _location(path, choice.key, href, source.file)
            assets[choice.key] = _read_asset(path, choice.key, location)
    first = assets[chosen[0].key]
    layers = []
    for choice in chosen:
        asset = assets[choice.key]
        if asset.crs != first.crs:
            raise InputError(
                f"{path}: asset {asset.key} is in {asset.crs.to_string()} but "
                f"{first.key} in {first.crs.to_string()}; the assets stacked must "
                "share a CRS"
            )
        if choice.band is not None and choice.band > len(asset.dtypes):
            raise InputError(
                f"{path}: asset {asset.key} lists band {choice.band} but its "
                f"raster has {len(asset.dtypes)}"
            )
        bands = [choice.band] if choice.band else range(1, len(asset.dtypes) + 1)
        layers += [(asset, band) for band in bands]
    vrt = _vrt(layers, resampling)
    files = [(a.location, a.size, a.mtime_ns) for a in assets.values()]
    digest = hashlib.sha256(json.dumps([item.to_dict(), vrt, files], sort_keys=True).encode())
    return StackedItem(
        id=item.id,
        file=source.file,
        href=item.get_self_href() or storage.uri(source.file),
        vrt=vrt,
        digest=digest.hexdigest(),
        acquired=_acquired(item),
    )


def _acquired(item: pystac.Item) -> float | None:
    """When the Item's scene was taken: its datetime, or the start of its range."""
    moment = item.datetime or item.common_metadata.start_datetime
    return None if moment is None else moment.timestamp()
