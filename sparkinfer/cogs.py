"""A raster's Cloud-Optimized GeoTIFFs (its class map, scores and confidence), made from its
committed chunks (`sparkinfer.writers`) through a VRT that places each chunk on the raster's grid:
GDAL's COG driver writes the final file block by block, with overviews, under a temporary name
the caller commits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
import rasterio.shutil

from sparkinfer import storage
from sparkinfer.config import CogOptions
from sparkinfer.outputs import CLASS_NODATA, SCORE_NODATA
from sparkinfer.plan import PixelWindow
from sparkinfer.raster import GDAL_CACHE_BYTES, RasterInfo
from sparkinfer.whole_tiff import check_whole
from sparkinfer.writers import ChunkSpec

LEVELLED = ("deflate", "zstd")  # the compressions that take a level


def hex_rgb(color: str) -> tuple[int, int, int]:
    """'#rrggbb' as an (r, g, b) tuple of 0-255 integers."""
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


@dataclass(frozen=True)
class BandLayout:
    """The bands of a class map, its scores or its confidence, as the COGs and VRTs carry
    them."""

    count: int
    dtype: str
    nodata: float
    descriptions: list[str]
    colors: tuple[str, ...]  # the class map's colour table; none for scores
    resampling: str  # of its overviews
    fastest: bool = False  # compressed at deflate's or zstd's fastest level

    @classmethod
    def of(
        cls,
        scores: bool,
        classes: int,
        channels: int,
        class_names: tuple[str, ...] = (),
        class_colors: tuple[str, ...] = (),
    ) -> BandLayout:
        """The class map carries the model's class names in its band's description and its
        colours in the band's colour table; scores bands are described by class name."""
        names = class_names or tuple(str(i) for i in range(classes))
        if scores:
            # One sigmoid channel is the score of class 1.
            described = names if channels == classes else names[1:]
            return cls(
                channels, "float32", SCORE_NODATA, [f"score {n}" for n in described], (), "AVERAGE"
            )
        listed = ", ".join(f"{i} {name}" for i, name in enumerate(class_names))
        description = f"class ({listed})" if class_names else "class"
        return cls(1, "uint8", CLASS_NODATA, [description], class_colors, "NEAREST")

    @classmethod
    def confidence(cls, measure: str) -> BandLayout:
        """A confidence map's one band (`sparkinfer.confidence`), its overviews averaged. Its
        values are noisy, where higher levels gain nothing: at 8192², deflate's level 6 took
        0.63 s for 44.6 MB, level 1 0.50 s for 43.9 MB (`benchmarks.confidence_parts`)."""
        description = f"confidence ({measure}; 0 to 254 for 0 to 1)"
        return cls(1, "uint8", CLASS_NODATA, [description], (), "AVERAGE", fastest=True)


def vrt_xml(
    raster: RasterInfo,
    sources: list[tuple[str, PixelWindow]],
    layout: BandLayout,
    metadata: dict[str, str],
    relative: bool = False,
) -> str:
    """A GDAL VRT of `raster`'s grid made of `sources`: files, each placed at its window of the
    grid; with `relative`, their names are relative to the VRT's folder."""
    a, b, c, d, e, f = raster.transform
    lines = [
        f'<VRTDataset rasterXSize="{raster.width}" rasterYSize="{raster.height}">',
        f"  <SRS>{escape(raster.crs or '')}</SRS>",
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
        "  <Metadata>",
        *(f'    <MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in metadata.items()),
        "  </Metadata>",
    ]
    vrt_type = {"uint8": "Byte", "float32": "Float32"}[layout.dtype]
    nodata_text = "nan" if math.isnan(layout.nodata) else str(int(layout.nodata))
    name_attribute = ' relativeToVRT="1"' if relative else ""
    for band in range(1, layout.count + 1):
        lines += [
            f'  <VRTRasterBand dataType="{vrt_type}" band="{band}">',
            f"    <Description>{escape(layout.descriptions[band - 1])}</Description>",
            f"    <NoDataValue>{nodata_text}</NoDataValue>",
        ]
        if layout.colors:
            lines += ["    <ColorInterp>Palette</ColorInterp>", "    <ColorTable>"]
            lines += [
                f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>'
                for r, g, b in map(hex_rgb, layout.colors)
            ]
            lines.append("    </ColorTable>")
        for source, window in sources:
            size = f'xSize="{window.width}" ySize="{window.height}"'
            lines += [
                "    <SimpleSource>",
                f"      <SourceFilename{name_attribute}>{escape(source)}</SourceFilename>",
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" {size}/>',
                f'      <DstRect xOff="{window.col_off}" yOff="{window.row_off}" {size}/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def write_chunks_vrt(
    raster: RasterInfo,
    chunks: list[ChunkSpec],
    path: Path,
    *,
    scores: bool,
    classes: int,
    channels: int,
    metadata: dict[str, str],
    class_names: tuple[str, ...] = (),
    class_colors: tuple[str, ...] = (),
    confidence: str | None = None,
) -> BandLayout:
    """A VRT at the local `path` of the raster's class map (or scores, or its `confidence` by
    that measure) made of its chunk files, its bands laid out by `BandLayout`; each also carries
    the class names as a JSON list (tag CLASS_NAMES). Returns the layout."""
    names = class_names or tuple(str(i) for i in range(classes))
    metadata = metadata | {"CLASS_NAMES": json.dumps(list(names))}
    if confidence is not None:
        layout, path_name = BandLayout.confidence(confidence), "confidence_path"
    else:
        layout = BandLayout.of(scores, classes, channels, class_names, class_colors)
        path_name = "scores_path" if scores else "classes_path"
    sources = [
        (
            storage.gdal_path(getattr(chunk, path_name)),
            PixelWindow(chunk.row_off, chunk.col_off, chunk.height, chunk.width),
        )
        for chunk in chunks
    ]
    path.write_text(vrt_xml(raster, sources, layout, metadata), encoding="utf-8")
    return layout


def assemble_cog(
    raster: RasterInfo,
    chunks: list[ChunkSpec],
    path: Path,
    options: CogOptions,
    *,
    scores: bool,
    **band_options,
) -> None:
    """Mosaic chunk files into one COG at the local `path` (a `storage.staged` file: the
    caller commits it), through their VRT (`write_chunks_vrt`, which takes `band_options`)."""
    vrt = path.with_suffix(".vrt")
    layout = write_chunks_vrt(raster, chunks, vrt, scores=scores, **band_options)
    try:
        with storage.gdal_env(
            **storage.NO_LISTING, GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS"
        ):
            rasterio.shutil.copy(
                str(vrt),
                str(path),
                driver="COG",
                COMPRESS=options.compression.upper(),
                PREDICTOR="YES",
                BLOCKSIZE=options.blocksize,
                OVERVIEWS="AUTO",
                RESAMPLING=layout.resampling,
                BIGTIFF="IF_SAFER",
                **({"LEVEL": 1} if layout.fastest and options.compression in LEVELLED else {}),
            )
        check_whole(path)
    finally:
        vrt.unlink(missing_ok=True)
