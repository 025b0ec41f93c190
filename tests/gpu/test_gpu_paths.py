"""GPU paths, run where a CUDA device is present (skipped elsewhere by tests/conftest.py).

The predictor on CUDA (bf16/fp16 autocast, channels-last, pinned non-blocking copies) must agree with
the CPU float32 path, and the feature job must pick the device by itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import to_model_input
from serving.runtime import DEFAULT_MAX_BATCH
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor

pytestmark = pytest.mark.gpu


def _model() -> LightboxModel:
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return LightboxModel(config, Heads(config)).eval()


def _batch(n: int) -> np.ndarray:
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([to_model_input(Image.fromarray(photos[i % len(photos)])) for i in range(n)])


def test_cuda_predictor_matches_cpu_within_half_precision() -> None:
    model = _model()
    cpu = Predictor.from_model(model, "lightbox", "1", device="cpu")
    gpu = Predictor.from_model(_model(), "lightbox", "1", device="cuda")
    assert gpu.device.type == "cuda"
    batch = _batch(8)
    s_cpu, t_cpu = cpu.predict(batch)
    s_gpu, t_gpu = gpu.predict(batch)
    assert s_gpu.dtype == np.float32 and t_gpu.shape == t_cpu.shape
    # bf16 keeps ~3 significant digits; sigmoid outputs in [0, 1] stay within a few hundredths.
    np.testing.assert_allclose(s_gpu, s_cpu, atol=0.05)
    np.testing.assert_allclose(t_gpu, t_cpu, atol=0.05)


def test_cuda_fills_larger_batches() -> None:
    gpu = Predictor.from_model(_model(), "lightbox", "1", device="cuda")
    n = DEFAULT_MAX_BATCH["cuda"]
    scores, tags = gpu.predict(_batch(n))
    assert scores.shape == (n,) and tags.shape == (n, len(TAG_VOCABULARY))
    assert np.isfinite(scores).all() and ((tags >= 0) & (tags <= 1)).all()


def test_calibration_on_cuda_picks_a_batch_that_fits_the_device() -> None:
    from serving.calibration import BATCH_CANDIDATES, calibrate

    gpu = Predictor.from_model(_model(), "lightbox", "1", device="cuda")
    measured = calibrate(gpu.predict, "cuda", streams=1, seconds=0.2)
    assert measured.chosen in BATCH_CANDIDATES["cuda"]
    assert [r.batch for r in measured.rates] == list(BATCH_CANDIDATES["cuda"][: len(measured.rates)])
    # A GPU is far from full at batch 1: per image, the chosen batch must beat it clearly.
    by_batch = {r.batch: r.img_s for r in measured.rates}
    assert by_batch[measured.chosen] > 2 * by_batch[1]
