"""The benchmark models, built in code with random weights (speed does not need training).

- null: one 1x1 convolution; costs next to nothing, so the pipeline around it is measured.
- tiny: three convolutions, 2.6 k parameters. Inference is cheap, so Spark, I/O and writing
  dominate: it measures the job's overhead.
- unet: the U-Net of TensorFlow's segmentation tutorial, a keras.applications MobileNetV2 encoder
  (weights=None) with a transposed-convolution decoder, 6.5 M parameters. Compute dominates.
"""

from __future__ import annotations

from pathlib import Path

BANDS = 4
CLASSES = 8


def null(bands: int = BANDS, classes: int = CLASSES):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, bands))
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1)(inputs), name="null")


def tiny(bands: int = BANDS, classes: int = CLASSES):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, bands))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def mobilenet_unet(bands: int = BANDS, classes: int = CLASSES):
    import keras

    keras.utils.set_random_seed(0)
    encoder = keras.applications.MobileNetV2(
        input_shape=(None, None, bands), include_top=False, weights=None
    )
    names = (
        "block_1_expand_relu",
        "block_3_expand_relu",
        "block_6_expand_relu",
        "block_13_expand_relu",
        "block_16_project",
    )
    skips = [encoder.get_layer(name).output for name in names]
    x = skips[-1]
    for skip, filters in zip(reversed(skips[:-1]), (512, 256, 128, 64), strict=True):
        x = keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Concatenate()([x, skip])
    x = keras.layers.Conv2DTranspose(classes, 3, strides=2, padding="same")(x)
    outputs = keras.layers.Softmax()(x)
    return keras.Model(encoder.input, outputs, name="mobilenet_unet")


BUILDERS = {"null": null, "tiny": tiny, "unet": mobilenet_unet}


def save_model(name: str, folder: Path) -> Path:
    """The model `name` saved as a .keras file in `folder` (built once)."""
    path = folder / f"{name}.keras"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        BUILDERS[name]().save(path)
    return path
