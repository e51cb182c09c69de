"""ONNX files, run with onnxruntime: its CUDA provider on a GPU where that build is installed
(`onnxruntime-gpu`), else its CPU provider.

The model takes float32 windows as it ships: channels last (batch, height, width, bands) or
first (batch, bands, height, width, as PyTorch exports), of any size or of one fixed size. The
layout is read from the input's shape: the axis of a fixed, smaller dimension holds the bands.
The cast, the normalisation, the layout and the class rule are done with numpy around the
session's call.
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
    preprocess,
)


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
        try:
            self.session = ort.InferenceSession(model, settings, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise ModelError(f"{name}: cannot load model ({first_line(exc)})") from None
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
        if all(isinstance(d, int) for d in spatial):
            self.fixed_size = tuple(spatial)
        self._input = first.name
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        super().__init__(bands, options, device)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        if self.channels_first:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        scores = self.session.run(None, {self._input: batch})[0]
        # Outputs come in the input's layout (their declared shapes are often wrong).
        return scores.transpose(0, 2, 3, 1) if self.channels_first and scores.ndim == 4 else scores

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scores = self.scores(preprocess(pixels, valid, self.options.normalization))
        scores = activated(scores.astype(np.float32, copy=False), self.options.activation)
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
