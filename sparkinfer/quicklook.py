"""A quicklook PNG of a class map: the model's colours and a legend, for a person to look at.

Read from the COG's overviews at a bounded size, so it costs the same for any raster size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from sparkinfer import storage
from sparkinfer.cogs import hex_rgb
from sparkinfer.outputs import CLASS_NODATA

MAX_SIDE = 1024
NODATA_RGB = (255, 255, 255)
# Colours for models that bring none (Okabe-Ito, readable by colour-blind people).
FALLBACK = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7")


def write_quicklook(
    classes_path: str, destination: str, names: tuple[str, ...], colors: tuple[str, ...]
) -> None:
    with storage.open_own_raster(classes_path) as src:
        scale = max(src.width, src.height) / MAX_SIDE
        shape = (src.height, src.width)
        if scale > 1:
            shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    present = int(classes[classes != CLASS_NODATA].max(initial=0)) + 1
    names = names or tuple(f"class {i}" for i in range(present))
    colors = colors or tuple(FALLBACK[i % len(FALLBACK)] for i in range(len(names)))
    palette = np.full((256, 3), NODATA_RGB, np.uint8)
    palette[: len(colors)] = [hex_rgb(c) for c in colors]
    image = Image.fromarray(palette[classes])

    font = ImageFont.load_default(size=14)
    swatch, pad = 16, 8
    legend_w = pad * 3 + swatch + max(int(font.getlength(n)) for n in names)
    legend_h = pad + len(names) * (swatch + pad)
    canvas = Image.new("RGB", (image.width + legend_w, max(image.height, legend_h)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        x, y = image.width + pad, pad + i * (swatch + pad)
        draw.rectangle([x, y, x + swatch, y + swatch], fill=hex_rgb(color), outline="black")
        draw.text((x + swatch + pad, y), name, fill="black", font=font)
    with storage.staged(destination) as local:
        canvas.save(local, format="PNG")
