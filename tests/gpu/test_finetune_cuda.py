"""The tiny fine-tune on CUDA with bf16 autocast (fp16 + GradScaler where the GPU has no bf16): the loss
falls, and the GPU result stays close to the CPU fp32 reference (skipped without a device)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from finetune_samples import TAGS, tiny_images

from training.finetune import FinetuneParams, fine_tune, finetuned_config, precision_for
from training.model import Heads, LightboxModel, ModelConfig

pytestmark = pytest.mark.gpu


def test_tiny_finetune_on_cuda_in_bf16(tmp_path: Path) -> None:
    train, val = tiny_images(tmp_path / "train", 32), tiny_images(tmp_path / "val", 8, seed=1)
    config = ModelConfig(tag_names=TAGS, dropout=0.0)
    params = FinetuneParams(unfreeze_blocks=1, epochs=2, batch_size=8, head_lr=1e-3)
    torch.manual_seed(0)
    start = LightboxModel(finetuned_config(config, params), Heads(config))
    precision = precision_for(torch.device("cuda"))
    assert precision.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    gpu_model = copy.deepcopy(start)
    rows = fine_tune(gpu_model, params, train, val, device="cuda", workers=2)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert next(gpu_model.parameters()).device.type == "cuda"
    cpu_rows = fine_tune(copy.deepcopy(start), params, train, val, device="cpu")
    # bf16 keeps ~3 significant digits: the losses agree to a few hundredths, not bit for bit.
    assert rows[1]["val_loss"] == pytest.approx(cpu_rows[1]["val_loss"], abs=0.05)
