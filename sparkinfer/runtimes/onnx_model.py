"""ONNX files, run with onnxruntime: its CUDA provider on a GPU where that build is installed
(`onnxruntime-gpu`), else its CPU provider.

The model takes float32 (batch, height, width, bands); the cast, the normalisation and the class
rule are done with numpy around the session's call.
"""

from __future__ import annotations

import numpy as np

from sparkinfer.errors import ModelError, first_line
from sparkinfer.runtimes.base import (
    CPU,
    Device,
    Runtime,
    RuntimeOptions,
    classes_of,
    preprocess,
)


class OnnxModel(Runtime):
    format = "onnx"

    def __init__(
        self, model: bytes, name: str, options: RuntimeOptions, gpu: int | None,
        threads: int | None,
    ) -> None:  # fmt: skip
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
        if len(shape) != 4 or not isinstance(shape[-1], int):
            raise ModelError(
                f"{name}: model input has shape {tuple(shape)}; a per-pixel model takes "
                "(batch, height, width, bands) with a fixed number of bands"
            )
        if first.type != "tensor(float)":
            raise ModelError(f"{name}: model input is {first.type}; expected tensor(float)")
        self._input = first.name
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        super().__init__(shape[-1], options, device)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]

    def classify(
        self, pixels: np.ndarray, valid: np.ndarray | None, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scores = self.scores(preprocess(pixels, valid, self.options.normalization))
        scores = scores.astype(np.float32, copy=False)
        return classes_of(scores), (scores if with_scores else None)
