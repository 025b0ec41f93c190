"""Static int8 quantization of a version's ONNX export (ONNX Runtime, QDQ format).

A quantized model is a candidate like any other (``pipelines.quantize`` registers it as its own
version): the gates measure it on ONNX Runtime int8 and judge its golden metrics against its own fp32
weights within ``gate_int8_max_metric_delta``; it is promoted, served and rolled back like any version.
Its torch weights are the fp32 ones, so on CUDA (and with ``--runtime torch``) it serves as fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

# Its value in the model's logged metadata (``precision``), which the artifact digest covers: what a
# loader reads to know the ONNX file is the quantized graph. Versions logged without it are fp32.
INT8, FP32 = "int8", "fp32"


class QuantizeError(RuntimeError):
    """The export could not be quantized; nothing is registered."""


# What is quantized: the convolutions and their ReLU6 clips (see quantize_int8).
OP_TYPES: tuple[str, ...] = ("Conv", "Clip")


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray, op_types: tuple[str, ...] = OP_TYPES) -> bytes:
    """Static int8 (QDQ) of the convolutions and their ReLU6 clips, calibrated on ``calibration``
    (uint8 [N,3,224,224], the serving decode of real photos). The image statistics, the heads and the
    score mapping stay fp32: they are cheap, and the order statistics need exact values. Per-channel
    weights: depthwise convolutions lose too much with one scale per tensor. The clips are quantized
    with the convolutions so that each activation is quantized after its clip, on [0, 6], not on the
    convolution's wider raw range: outputs moved about five times less from fp32 (docs/benchmarks.md).
    ``op_types``: other choices, for bench/export_variants.py's comparison."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from training.export import INPUT_NAME

    if calibration.ndim != 4 or len(calibration) == 0 or calibration.dtype != np.uint8:
        raise QuantizeError(
            f"calibration needs uint8 images [N,3,224,224] (N >= 1), got {calibration.dtype} "
            f"{calibration.shape}"
        )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT_NAME: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with TemporaryDirectory(prefix="lightbox-int8-") as tmp, _without_preprocessing_advice():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        try:
            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        except Exception as exc:  # whatever the quantizer raises: one line, nothing registered
            raise QuantizeError(f"int8 quantization failed: {type(exc).__name__}: {exc}"[:500]) from exc
        return dst.read_bytes()


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """The quantizer logs twice (on the root logger) that shape inference could run first: the exported
    graph's shapes are already inferred, and the advice, with its URL, would only puzzle a user."""

    def advice(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
