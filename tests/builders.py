"""Small rasters and models made by code, for the tests (the TorchGeo way: no fixtures on disk)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def smooth_field(rng: np.random.Generator, height: int, width: int, bands: int) -> np.ndarray:
    """(bands, height, width) values in 1..250 (never 0, a common nodata) at several scales."""
    out = np.zeros((bands, height, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for b in range(bands):
        for scale in (7.0, 19.0, 43.0):
            fy, fx, phase = rng.uniform(0.5, 1.5, 3)
            out[b] += np.sin(yy / scale * fy + phase) * np.cos(xx / scale * fx - phase)
        out[b] += rng.normal(0, 0.3, (height, width))
    out -= out.min()
    return 1 + out / out.max() * 249


def write_raster(
    path: Path,
    height: int,
    width: int,
    bands: int = 4,
    *,
    crs: str = "EPSG:32633",
    transform=None,
    dtype: str = "uint8",
    nodata: float | None = None,
    nodata_mask: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """A georeferenced GeoTIFF of smooth random pixels; `nodata_mask` (True = nodata) is set
    to `nodata` in every band."""
    rng = np.random.default_rng(seed)
    data = smooth_field(rng, height, width, bands).astype(dtype)
    if nodata_mask is not None:
        data[:, nodata_mask] = nodata
    if transform is None:
        transform = (
            from_origin(12.5, 48.2, 0.0001, 0.0001)
            if crs == "EPSG:4326"
            else from_origin(500_000.0, 5_300_000.0, 10.0, 10.0)
        )
    # Multispectral, not RGB(A): GDAL would take a 4th byte band for alpha.
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        photometric="minisblack",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def conv_stack(
    path: Path, bands: int = 4, classes: int = 3, depth: int = 4, seed: int = 1, filters: int = 12
) -> Path:
    """'same' 3x3 convolutions: stride 1, receptive radius `depth`. With `classes` 1, one
    sigmoid channel (binary segmentation)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    activation = "sigmoid" if classes == 1 else "softmax"
    model = keras.Sequential(
        [keras.Input((None, None, bands)), layers.Rescaling(1 / 64)]
        + [layers.Conv2D(filters, 3, padding="same", activation="relu") for _ in range(depth)]
        + [layers.Conv2D(classes, 1, activation=activation)]
    )
    model.save(path)
    return path


def unet(path: Path, bands: int = 4, classes: int = 3, seed: int = 2) -> Path:
    """A small U-Net with two 2x2 poolings: total stride 4."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def block(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu")(x)

    inputs = keras.Input((None, None, bands))
    c1 = block(layers.Rescaling(1 / 64)(inputs), 8)
    c2 = block(layers.MaxPooling2D()(c1), 16)
    bottom = block(layers.MaxPooling2D()(c2), 24)
    u2 = block(layers.Concatenate()([layers.UpSampling2D()(bottom), c2]), 16)
    u1 = block(layers.Concatenate()([layers.UpSampling2D()(u2), c1]), 8)
    outputs = layers.Conv2D(classes, 1, activation="softmax")(u1)
    keras.Model(inputs, outputs).save(path)
    return path


def squeeze_excite(path: Path, bands: int = 4, classes: int = 3, seed: int = 3) -> Path:
    """Convolutions gated by a squeeze-and-excitation block, as in EfficientNet: a global
    average over the window scales every pixel's features, so no halo is exact."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, bands))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(layers.Rescaling(1 / 64)(inputs))
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(8, 1, activation="sigmoid")(gate)
    x = layers.Multiply()([x, gate])
    keras.Model(inputs, layers.Conv2D(classes, 1, activation="softmax")(x)).save(path)
    return path


def dense_classifier(path: Path, bands: int = 4) -> Path:
    """An image-level classifier of any input size: a chip classifier that needs --chip-size."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input((None, None, bands)),
            layers.Conv2D(4, 3),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(path)
    return path


def argmax_model(path: Path, bands: int = 3) -> Path:
    """A 1x1 convolution whose class is the input's brightest band: a class map painted into
    the bands comes out as it was painted (halo 0)."""
    import keras
    from keras import layers

    convolution = layers.Conv2D(bands, 1, use_bias=False, activation="softmax")
    model = keras.Sequential([keras.Input((None, None, bands)), convolution])
    convolution.set_weights([np.eye(bands, dtype=np.float32).reshape(1, 1, bands, bands)])
    model.save(path)
    return path


def whole_image_outputs(model_path: Path, raster_path: Path, stride: int = 1, transforms=None):
    """Reference: the model on the whole raster at once (nodata as 0, padded to the stride).
    With `transforms` ((forward, inverse) pairs of functions of a (1, height, width, bands)
    array), the mean of the model's scores over the transformed rasters, each mapped back."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    with rasterio.open(raster_path) as src:
        pixels = src.read(out_dtype=np.float32)
        valid = src.read_masks().all(axis=0)
    pixels[:, ~valid] = 0
    height, width = valid.shape
    padded_h, padded_w = -(-height // stride) * stride, -(-width // stride) * stride
    batch = np.zeros((1, padded_h, padded_w, pixels.shape[0]), np.float32)
    batch[0, :height, :width] = np.moveaxis(pixels, 0, -1)
    transforms = transforms or [(lambda x: x, lambda x: x)]
    outputs = [
        inverse(np.array(model(np.ascontiguousarray(forward(batch)))))
        for forward, inverse in transforms
    ]
    scores = np.mean(outputs, axis=0, dtype=np.float32)[0, :height, :width]
    classes = scores.argmax(-1).astype(np.uint8)
    classes[~valid] = 255
    scores[~valid] = np.nan
    return classes, scores, valid


def lambda_model(path: Path, bands: int = 4, classes: int = 3) -> Path:
    """A convolutional model holding code (a Lambda layer): refused by Keras safe mode."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((None, None, bands)),
            layers.Lambda(lambda x: x * 2.0),
            layers.Conv2D(classes, 3, padding="same", activation="softmax"),
        ]
    )
    model.save(path)
    return path


def export_savedmodel(keras_path: Path, folder: Path) -> Path:
    """The Keras model as a TensorFlow SavedModel folder; the archive's class table, if any, in
    its assets/."""
    import zipfile

    import keras

    keras.models.load_model(keras_path, compile=False).export(folder, verbose=False)
    with zipfile.ZipFile(keras_path) as archive:
        if "sparkinfer.json" in archive.namelist():
            (folder / "assets").mkdir(exist_ok=True)
            (folder / "assets" / "sparkinfer.json").write_bytes(archive.read("sparkinfer.json"))
    return folder


def export_onnx(keras_path: Path, path: Path) -> Path:
    """The Keras model as an ONNX file (Keras's exporter, tf2onnx): NHWC, free height and
    width; the archive's class table, if any, in the ONNX model's metadata."""
    import contextlib
    import io
    import zipfile

    import keras
    import onnx

    model = keras.models.load_model(keras_path, compile=False)
    model(np.zeros((1, 8, 8, model.inputs[0].shape[-1]), np.float32))  # exporters need a call
    with contextlib.redirect_stdout(io.StringIO()):  # the converter lists every tensor
        model.export(path, format="onnx", verbose=False)
    with zipfile.ZipFile(keras_path) as archive:
        if "sparkinfer.json" in archive.namelist():
            exported = onnx.load(path)
            entry = exported.metadata_props.add()
            entry.key, entry.value = "sparkinfer.json", archive.read("sparkinfer.json").decode()
            onnx.save(exported, path)
    return path


def fault_model(folder: Path) -> Path:
    """The fault tests' model: convolutions slow enough (about 60 ms a 64-pixel tile on a core)
    to leave a window for a fault mid-job, as ONNX: a Python worker that each fault restarts
    loads onnxruntime in 0.3 s, TensorFlow in 8."""
    return export_onnx(conv_stack(folder / "wide.keras", depth=8, filters=64), folder / "wide.onnx")


def onnx_as_shipped(onnx_path: Path, path: Path, size: int | None, logits: bool) -> Path:
    """The ONNX file as PyTorch exports ship: channels first in and out, and, if asked, a fixed
    `size` x `size` input and logits (the final softmax cut off)."""
    import onnx
    from onnx import helper

    model = onnx.load(onnx_path)
    graph = model.graph
    (given,), (result,) = graph.input, graph.output
    bands = given.type.tensor_type.shape.dim[3].dim_value
    produced = result.name
    if logits:  # the softmax's consumers read its input instead
        (softmax,) = [n for n in graph.node if n.op_type == "Softmax"]
        graph.node.remove(softmax)
        for node in graph.node:
            node.input[:] = [softmax.input[0] if i == softmax.output[0] else i for i in node.input]
        if produced == softmax.output[0]:
            produced = softmax.input[0]
    side = size or "height"
    channels_first = helper.make_tensor_value_info(
        "pixels_nchw", onnx.TensorProto.FLOAT, ["batch", bands, side, size or "width"]
    )
    # Declared with the wrong axes, as ukis-csmask's files are: the job reads the real ones.
    scores_nchw = helper.make_tensor_value_info(
        "scores_nchw", onnx.TensorProto.FLOAT, ["batch", "height", "width", "classes"]
    )
    graph.node.insert(
        0, helper.make_node("Transpose", ["pixels_nchw"], [given.name], perm=[0, 2, 3, 1])
    )
    graph.node.append(helper.make_node("Transpose", [produced], ["scores_nchw"], perm=[0, 3, 1, 2]))
    graph.input.remove(given)
    graph.input.append(channels_first)
    graph.output.remove(result)
    graph.output.append(scores_nchw)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tile_counts_of_index_and_cog(output: Path, stem: str) -> tuple[list, list]:
    """Each tile's class counts as the tile index gives them, and as counted in the COG."""
    import pyarrow.parquet as pq

    tiles = pq.read_table(output / f"{stem}.tiles.parquet").to_pylist()
    with rasterio.open(output / f"{stem}.tif") as cog:
        classes = cog.read(1)
    counted = []
    for t in tiles:
        core = classes[
            t["row_off"] : t["row_off"] + t["height"], t["col_off"] : t["col_off"] + t["width"]
        ]
        counted.append(np.bincount(core.ravel(), minlength=256)[: len(t["class_pixels"])].tolist())
    return [t["class_pixels"] for t in tiles], counted


def fixed_size_copy(keras_path: Path, path: Path, size: int) -> Path:
    """The Keras model with its input fixed at `size` x `size` pixels: the same layers and
    weights, as a model exported for one input size ships."""
    import keras

    model = keras.models.load_model(keras_path, compile=False)
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = (None, size, size, layer["config"]["batch_shape"][-1])
    fixed = model.__class__.from_config(config)
    fixed.set_weights(model.get_weights())
    fixed.save(path)
    return path


def keras_ending_in_argmax(keras_path: Path, path: Path) -> Path:
    """The Keras model with `keras.ops.argmax` over its classes after it: int32 class indices
    (batch, height, width) out."""
    import keras

    model = keras.models.load_model(keras_path, compile=False)
    keras.Model(model.inputs, keras.ops.argmax(model.outputs[0], axis=-1)).save(path)
    return path


def onnx_ending_in_argmax(onnx_path: Path, path: Path, keep_class_axis: bool) -> Path:
    """A channels-first ONNX model (`onnx_as_shipped`) with an ArgMax over its classes (axis 1)
    appended, as PyTorch exports `model(x).argmax(dim=1)`: int64 class indices (batch, height,
    width) out, or (batch, 1, height, width) with `keep_class_axis`."""
    import onnx
    from onnx import helper

    model = onnx.load(onnx_path)
    graph = model.graph
    (scores,) = graph.output
    argmax = helper.make_node(
        "ArgMax", [scores.name], ["classes"], axis=1, keepdims=int(keep_class_axis)
    )
    graph.node.append(argmax)
    shape = ["batch", 1, "height", "width"] if keep_class_axis else ["batch", "height", "width"]
    graph.output.remove(scores)
    graph.output.append(helper.make_tensor_value_info("classes", onnx.TensorProto.INT64, shape))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def shifted_copy_in(source: Path, path: Path, crs: str, shift: float) -> Path:
    """`source` moved east by `shift` of its width and warped (bilinear) to `crs`, nodata 0
    where it does not reach: a neighbouring scene in another CRS that overlaps it."""
    from affine import Affine
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(source) as src:
        t = src.transform
        moved = Affine(t.a, t.b, t.c + shift * src.width * t.a, t.d, t.e, t.f)
        left, top = moved.c, moved.f
        right, bottom = moved * (src.width, src.height)
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, left, bottom, right, top
        )
        profile = src.profile | dict(crs=crs, transform=transform, width=width, height=height)
        with rasterio.open(path, "w", **(profile | dict(nodata=0))) as dst:
            for band in range(1, src.count + 1):
                out = np.zeros((height, width), src.dtypes[0])
                reproject(
                    src.read(band),
                    out,
                    src_transform=moved,
                    src_crs=src.crs,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=0,
                    resampling=Resampling.bilinear,
                )
                dst.write(out, band)
    return path
