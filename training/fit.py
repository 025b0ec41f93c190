"""Training loop for the heads on precomputed features. Pure torch; used by every Tune trial and
by the final fit, so the two cannot differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.metrics import evaluate
from training.model import Heads, ModelConfig


@dataclass(frozen=True)
class Split:
    """Features and labels of one split."""

    x: np.ndarray  # [N, FEATURE_DIM] float32
    score: np.ndarray  # [N] float32 in [0, 1]
    tags: np.ndarray  # [N, K] float32 0/1

    def __len__(self) -> int:
        return len(self.x)


def loss_fn(out: torch.Tensor, score: torch.Tensor, tags: torch.Tensor, tag_weight: float) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits
    # The score is a soft target in [0, 1]: BCE on the logit keeps the sigmoid output calibrated to it.
    return bce(out[:, 0], score) + tag_weight * bce(out[:, 1:], tags)


def predict(heads: Heads, x: np.ndarray, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    heads.eval()
    with torch.inference_mode():
        p = torch.sigmoid(heads(torch.from_numpy(x).to(device))).cpu().numpy()
    return p[:, 0], p[:, 1:]


def validation_metrics(heads: Heads, split: Split, config: ModelConfig, device="cpu") -> dict[str, float]:
    s, t = predict(heads, split.x, device)
    with torch.inference_mode():
        out = heads(torch.from_numpy(split.x).to(device))
        loss = loss_fn(
            out,
            torch.from_numpy(split.score).to(device),
            torch.from_numpy(split.tags).to(device),
            config.tag_loss_weight,
        )
    return {"loss": float(loss)} | evaluate(s, split.score, t, split.tags)


def fit_heads(
    config: ModelConfig,
    train: Split,
    val: Split | None = None,
    epochs: int | None = None,
    report: Callable[[int, dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
) -> Heads:
    """Train the heads; ``report(epoch, val_metrics)`` is called after each epoch (Tune hooks in here)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    heads = Heads(config).to(device)
    heads.set_normalisation(torch.from_numpy(train.x).to(device))
    opt = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x = torch.from_numpy(train.x).to(device)
    ys = torch.from_numpy(train.score).to(device)
    yt = torch.from_numpy(train.tags).to(device)
    for epoch in range(1, (epochs or config.epochs) + 1):
        heads.train()
        for idx in np.array_split(rng.permutation(len(train)), max(1, len(train) // config.batch_size)):
            i = torch.from_numpy(idx).to(device)
            opt.zero_grad()
            loss_fn(heads(x[i]), ys[i], yt[i], config.tag_loss_weight).backward()
            opt.step()
        if report is not None and val is not None:
            report(epoch, validation_metrics(heads, val, config, device))
    return heads.eval()
