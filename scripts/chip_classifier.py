"""Build `data/landcover_chips.keras`, the sample's chip classifier, from the land-cover model.

    .venv/bin/python scripts/chip_classifier.py [--size 32]

A chip of `--size` pixels goes through `data/landcover.keras` and the per-pixel class
probabilities are averaged over the chip: its scores are the chip's expected class shares, and
its class the land cover that covers most of it. The class table (`sparkinfer.json`) is carried
over. No training: the weights are the land-cover model's.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(source: Path, output: Path, size: int) -> Path:
    import keras
    from keras import layers

    segmenter = keras.models.load_model(source, compile=False)
    bands = segmenter.inputs[0].shape[-1]
    inputs = keras.Input((size, size, bands))
    shares = layers.GlobalAveragePooling2D()(segmenter(inputs))
    keras.Model(inputs, shares, name="landcover_chips").save(output)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(output, "a") as dst:
        dst.writestr("sparkinfer.json", src.read("sparkinfer.json"))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="chip side in pixels")
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "landcover_chips.keras")
    args = parser.parse_args()
    print(build(ROOT / "data" / "landcover.keras", args.output, args.size))


if __name__ == "__main__":
    main()
