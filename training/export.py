"""The model as an ONNX graph, and ONNX Runtime as a serving runtime for it.

Every registered version carries ``model.onnx`` beside its torch weights (exported at registration by
``lightbox.adapters.mlflow_registry.log_lightbox_model``); the gates compare its answers with the eager
model's on the golden set and time it, and a version whose export passes serves on ONNX Runtime on CPU
(docs/benchmarks.md: the fastest runtime of the same weights there). On CUDA the torch path serves.

The graph takes the same input as the model (uint8 [N,3,224,224], batch dimension free) and gives the
same output ([N, 1+K]: the score on the dataset's scale, then the tag probabilities).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.model import LightboxModel

ONNX_FILE = "model.onnx"  # its name inside the version's artifact folder (under extra_files/)
INPUT_NAME, OUTPUT_NAME = "images", "output"
# Opset 17: what ONNX Runtime 1.x and OpenVINO both run in full; the model needs nothing newer.
OPSET = 17


class ExportError(RuntimeError):
    """The model did not export to ONNX; the version then serves on torch."""


def export_onnx(model: LightboxModel) -> bytes:
    """The model as ONNX bytes, weights inline (one file; ~16 MB for EfficientNet-Lite0 and its heads).

    The TorchScript-based exporter (``dynamo=False``): the model is one static graph with no data-dependent
    control flow, which it exports in under a second; the dynamo exporter needs onnxscript and takes much
    longer for the same graph.
    """
    import torch

    from lightbox.imaging import MODEL_INPUT_SIZE

    example = torch.zeros((2, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The exporter warns of the fixed ranks of the order statistics (the input size is fixed).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to any file object
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
            )
    except Exception as exc:  # whatever the exporter raises, the version still serves on torch
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}"[:500]) from exc
    return buffer.getvalue()


class OnnxModel:
    """An ONNX Runtime session over the exported graph: ``OnnxModel(bytes)(uint8 batch) -> output``.

    ``run`` releases the GIL and may be called from several threads at once (the batcher's concurrent
    batches): the session is thread-safe for inference.
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Threads per call as torch has them (the server sets one per batch stream, batches side by
        # side), and no spinning: a spinning pool burns the cores the other batches and decoding need.
        options.intra_op_num_threads = threads or _torch_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.threads = options.intra_op_num_threads

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0]


def _torch_threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is always there in this project
        return os.cpu_count() or 1
