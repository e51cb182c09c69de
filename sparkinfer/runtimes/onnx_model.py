"""ONNX files, run with onnxruntime: its CUDA provider on a GPU where that build is installed
(`onnxruntime-gpu`), else its CPU provider.

The model takes float32 windows as it ships: channels last (batch, height, width, bands) or
first (batch, bands, height, width, as PyTorch exports), of any size or of one fixed size. The
layout is read from the input's shape: the axis of a fixed, smaller dimension holds the bands.
The cast, the normalisation, the layout and the class rule are done with numpy around the
session's call.

A model that ends in an ArgMax (PyTorch's `argmax(dim=1)`) outputs integer class indices: it
runs as it ships, its indices the class map. For the driver's inspection its scores are
reached too: the ArgMax's input is made a second output of the graph (with the `onnx`
package), which only `scores` asks for. `cut_at_argmax` makes such a model a plain one, whose
output is the ArgMax's input (`--cut-argmax`).
"""

from __future__ import annotations

import numpy as np

from sparkinfer.errors import ModelError, first_line
from sparkinfer.runtimes.base import (
    CPU,
    Device,
    Runtime,
    RuntimeOptions,
    activated,
    classes_of,
    fixed_input_size,
    preprocess,
)

INTEGER_TENSORS = {
    f"tensor({t})" for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
}
# Operations that may follow the final ArgMax and keep its indices, in their order: a cast, or
# a reshape that drops or adds the kept class axis.
INDEX_PRESERVING = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"}


class OnnxModel(Runtime):
    format = "onnx"

    def __init__(
        self,
        model: bytes,
        name: str,
        options: RuntimeOptions,
        gpu: int | None,
        threads: int | None,
    ) -> None:
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.log_severity_level = 3  # errors only: no start-up chatter
        if threads:
            settings.intra_op_num_threads = threads
            settings.inter_op_num_threads = 1
        device, providers = CPU, ["CPUExecutionProvider"]
        if gpu is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            device = Device("gpu", gpu)
            providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]

        def session(model: bytes):
            try:
                return ort.InferenceSession(model, settings, providers=providers)
            except Exception as exc:  # onnxruntime raises its own types for a bad file
                raise ModelError(f"{name}: cannot load model ({first_line(exc)})") from None

        self.session = session(model)
        self._output = self.session.get_outputs()[0].name
        if self.session.get_outputs()[0].type in INTEGER_TENSORS:
            self.output = "classes"
            exposed, self._scores, self._class_axis = exposing_scores(model, name)
            self.session = session(exposed)
        first = self.session.get_inputs()[0]
        shape = first.shape
        self.channels_first = _channels_first(shape)
        if self.channels_first is None:
            raise ModelError(
                f"{name}: model input has shape {tuple(shape)}; a per-pixel model takes "
                "(batch, height, width, bands) or (batch, bands, height, width) with a fixed "
                "number of bands"
            )
        if first.type != "tensor(float)":
            raise ModelError(f"{name}: model input is {first.type}; expected tensor(float)")
        bands, spatial = (shape[1], shape[2:]) if self.channels_first else (shape[3], shape[1:3])
        self.fixed_size = fixed_input_size(spatial)
        self._input = first.name
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        super().__init__(bands, options, device)

    def _run(self, output: str, batch: np.ndarray) -> np.ndarray:
        if self.channels_first:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return self.session.run([output], {self._input: batch})[0]

    def scores(self, batch: np.ndarray) -> np.ndarray:
        if self.output == "classes":  # the ArgMax's input: its axis holds the classes
            return np.moveaxis(self._run(self._scores, batch), self._class_axis, -1)
        scores = self._run(self._output, batch)
        # Outputs come in the input's layout (their declared shapes are often wrong).
        return scores.transpose(0, 2, 3, 1) if self.channels_first and scores.ndim == 4 else scores

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        x = preprocess(pixels, valid, self.options.normalization)
        if self.output == "classes":  # (batch, height, width), or with the class axis kept
            return self._run(self._output, x).reshape(pixels.shape[:3]).astype(np.uint8), None
        scores = activated(self.scores(x).astype(np.float32, copy=False), self.options.activation)
        return classes_of(scores), (scores if with_scores else None)


def _channels_first(shape: list) -> bool | None:
    """Whether a 4-D input shape is (batch, bands, height, width); None if it names no fixed
    number of bands. Bands are the fixed axis of the two ends, or the smaller one."""
    if len(shape) != 4:
        return None
    first, last = (isinstance(shape[i], int) and shape[i] > 0 for i in (1, 3))
    if first and last:
        return shape[1] < shape[3]
    return first if first or last else None


def final_argmax(graph) -> list | None:
    """The nodes that make the graph's first output, from it back to a final ArgMax, after
    which only `INDEX_PRESERVING` operations come (the ArgMax last); None where something else
    makes that output."""
    producers = {output: node for node in graph.node for output in node.output}
    chain = []
    node = producers.get(graph.output[0].name)
    while node is not None and node.op_type in INDEX_PRESERVING:
        chain.append(node)
        node = producers.get(node.input[0])
    return [*chain, node] if node is not None and node.op_type == "ArgMax" else None


def _parsed(model: bytes, name: str):
    """The model's protobuf, read with the onnx package."""
    try:
        import onnx
    except ImportError:
        raise ModelError(
            f"{name}: reading the model's graph for its final ArgMax needs the onnx package "
            "(pip install onnx)"
        ) from None
    return onnx.load_model_from_string(model)


def _axis(argmax) -> int:
    """The axis an ArgMax node takes its maximum along (ONNX's default 0; from the end where
    negative)."""
    return next((a.i for a in argmax.attribute if a.name == "axis"), 0)


def _inferred(parsed, tensor: str) -> tuple[int, int | None]:
    """The element type (float where none is found) and the rank (None where unknown) that
    shape inference finds for `tensor`."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(parsed).graph
    for value in (*inferred.value_info, *inferred.output, *inferred.input):
        if value.name == tensor:
            typed = value.type.tensor_type
            return typed.elem_type, len(typed.shape.dim) if typed.HasField("shape") else None
    return onnx.TensorProto.FLOAT, None


def _output_of(tensor: str, element: int):
    """A graph output for `tensor` of no declared shape: exporters' declared shapes are often
    wrong, and the job reads the real one."""
    from onnx import helper

    return helper.make_tensor_value_info(tensor, element, None)


def exposing_scores(model: bytes, name: str) -> tuple[bytes, str, int]:
    """A model that ends in an ArgMax with the ArgMax's input as a second output: the model,
    that output's name and its class axis."""
    parsed = _parsed(model, name)
    chain = final_argmax(parsed.graph)
    if chain is None:
        raise ModelError(
            f"{name}: the model outputs integers that no final ArgMax makes, so neither its "
            "classes nor its scores can be told; export it with its scores as output"
        )
    scores = chain[-1].input[0]
    if all(output.name != scores for output in parsed.graph.output):
        parsed.graph.output.append(_output_of(scores, _inferred(parsed, scores)[0]))
    return parsed.SerializeToString(), scores, _axis(chain[-1])


def cut_at_argmax(model: bytes, name: str) -> bytes:
    """The model up to its final ArgMax: the ArgMax's input is its output, in place of the
    class indices, and the ArgMax and what follows it are gone. The scores keep the classes on
    the axis of the input's bands, as the job reads scores."""
    parsed = _parsed(model, name)
    chain = final_argmax(parsed.graph)
    if chain is None:
        raise ModelError(
            f"{name}: --cut-argmax cuts a model before the ArgMax that makes its output, and "
            "this model's output comes from no ArgMax; leave --cut-argmax out"
        )
    graph, argmax = parsed.graph, chain[-1]
    element, rank = _inferred(parsed, argmax.input[0])
    dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    bands_axis = 1 if _channels_first(dims) else 3
    if rank in (None, 4) and _axis(argmax) % 4 != bands_axis:  # a per-pixel model's scores
        raise ModelError(
            f"{name}: its final ArgMax takes axis {_axis(argmax)}, but the model's input holds "
            f"the bands on axis {bands_axis}, where the job reads the scores' classes; "
            "--cut-argmax cannot cut it"
        )
    graph.output[0].CopyFrom(_output_of(argmax.input[0], element))
    for node in chain:  # from the old output back: each once nothing reads it any more
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        if read.isdisjoint(node.output):
            graph.node.remove(node)
    return parsed.SerializeToString()
