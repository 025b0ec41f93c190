"""Training loop for the heads on precomputed features. Pure torch; used by every Tune trial and
by the final fit, so the two cannot differ.

Scores are learnt on [0, 1] (the label spec's ``normalise``); the model maps them back onto the
dataset's scale. An unlabelled image (NaN score) still teaches the tag head; a tags-only config has no
score loss, a score-only config (no tags) no tag loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.metrics import evaluate
from training.model import Heads, ModelConfig

# Largest positive weight a rare tag gets: sqrt(neg/pos) reaches it at 1 positive in ~100 images.
# Uncapped, a tag with 5 positives in 5000 images would weigh ~32x and wreck its calibration.
MAX_POS_WEIGHT = 10.0


@dataclass(frozen=True)
class Split:
    """Features and labels of one split."""

    x: np.ndarray  # [N, FEATURE_DIM] float32
    score: np.ndarray  # [N] float32, normalised to [0, 1]; NaN where the image has no score label
    tags: np.ndarray  # [N, K] float32 0/1 (K may be 0)

    def __len__(self) -> int:
        return len(self.x)


def tag_pos_weight(tags: np.ndarray) -> np.ndarray:
    """[K] positive weights for the tag loss from the training labels: sqrt(neg/pos), in [1, MAX].

    Why: with a user's vocabulary, most tags are on few images; unweighted BCE learns "never" for them.
    The square root (not neg/pos) and the cap keep probabilities near calibrated for the ECE gate. Only
    rare tags are lifted (floor 1): a common tag needs no help. A tag with no positive gets the cap (it
    has nothing to weigh; training refuses such a tag before it gets here).
    """
    tags = np.asarray(tags, np.float32)
    pos = tags.sum(axis=0)
    neg = len(tags) - pos
    with np.errstate(divide="ignore"):
        ratio = np.where(pos > 0, neg / np.maximum(pos, 1.0), np.inf)
    return np.clip(np.sqrt(ratio), 1.0, MAX_POS_WEIGHT).astype(np.float32)


def loss_fn(
    out: torch.Tensor,
    score: torch.Tensor,
    tags: torch.Tensor,
    config: ModelConfig,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked score BCE (labelled rows only) + ``tag_loss_weight`` x tag BCE (``pos_weight`` per tag)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    total = out.new_zeros(())
    if config.has_score:
        # The score is a soft target in [0, 1]: BCE on the logit keeps the sigmoid output calibrated to
        # it. Masked by multiplication, not indexing: no host sync, and a batch with no labelled row
        # adds exactly 0.
        labelled = ~torch.isnan(score)
        per_row = bce(out[:, 0], torch.where(labelled, score, 0.0), reduction="none")
        total = total + (per_row * labelled).sum() / labelled.sum().clamp_min(1)
    if config.num_tags:
        total = total + config.tag_loss_weight * bce(out[:, 1:], tags, pos_weight=pos_weight)
    return total


def predict(heads: Heads, x: np.ndarray, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(scores on [0, 1] (NaN without a score head), tag probabilities [N, K]) of the heads alone."""
    heads.eval()
    with torch.inference_mode():
        p = torch.sigmoid(heads(torch.from_numpy(x).to(device))).cpu().numpy()
    return p[:, 0], p[:, 1:]


def validation_metrics(
    heads: Heads,
    split: Split,
    config: ModelConfig,
    device: torch.device | str = "cpu",
    pos_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """The loss the trials are ranked by and the metric set.

    The yardstick is the plain loss: score BCE plus the unweighted mean tag BCE. Training's own weights
    stay out of it: ``tag_loss_weight`` is searched (a trial must not look better for shrinking its own
    yardstick), and ``pos_weight`` (up to 10x on rare positives) made the tag term outweigh the score
    term so that trials were ranked on tags alone (a trial with validation SROCC 0 won over one with
    0.72). ``pos_weight`` is accepted for callers that want the weighted figure; the ranking passes none.
    """
    s, t = predict(heads, split.x, device)
    with torch.inference_mode():
        out = heads(torch.from_numpy(split.x).to(device))
        loss = loss_fn(
            out,
            torch.from_numpy(split.score).to(device),
            torch.from_numpy(split.tags).to(device),
            dataclasses.replace(config, tag_loss_weight=1.0),
            None if pos_weight is None else torch.from_numpy(pos_weight).to(device),
        )
    score_pred = s if config.has_score else None
    return {"loss": float(loss)} | evaluate(score_pred, split.score, t, split.tags)


def epoch_metrics(train_loss: float, val: Mapping[str, float] | None = None) -> dict[str, float]:
    """One epoch's metrics under the names every run logs them by, per epoch (step = epoch): ``train_loss``
    and ``val_<metric>``. One function for the Tune trials and the final fit (and the names the fine-tune
    trials use), so MLflow's charts draw any two runs' curves on the same axes."""
    return {"train_loss": train_loss} | {f"val_{k}": v for k, v in (val or {}).items()}


def fit_heads(
    config: ModelConfig,
    train: Split,
    val: Split | None = None,
    epochs: int | None = None,
    report: Callable[[int, dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
    log: list[dict[str, float]] | None = None,
) -> Heads:
    """Train the heads and return the best epoch's weights when there is a validation split (the last
    epoch's otherwise). ``report(epoch, metrics)`` is called after each epoch with the validation
    metrics (``val_*`` keys are added by the caller) and ``train_loss``; Tune hooks in here. ``log``, when
    given, receives one row per epoch, ``{"epoch"}`` and ``epoch_metrics`` (``train_loss``, ``val_loss``
    and the other ``val_*`` metrics), and the kept epoch is ``heads.best_epoch``.

    Why the best epoch: with few images the heads overfit within a few epochs (a trial's validation loss
    was lowest at epoch 4 and 25% higher at epoch 60), and the last epoch is what used to be registered.
    """
    if train.tags.shape[1] != config.num_tags:
        raise ValueError(
            f"the split has {train.tags.shape[1]} tag columns, the config {config.num_tags} tags"
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    heads = Heads(config).to(device)
    heads.set_normalisation(torch.from_numpy(train.x).to(device))
    opt = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = tag_pos_weight(train.tags)
    pos_weight = torch.from_numpy(weights).to(device)
    x = torch.from_numpy(train.x).to(device)
    ys = torch.from_numpy(train.score).to(device)
    yt = torch.from_numpy(train.tags).to(device)
    best_loss, best_epoch, best_state = math.inf, 0, None
    for epoch in range(1, (epochs or config.epochs) + 1):
        heads.train()
        total, seen = 0.0, 0
        for idx in np.array_split(rng.permutation(len(train)), max(1, len(train) // config.batch_size)):
            i = torch.from_numpy(idx).to(device)
            opt.zero_grad()
            loss = loss_fn(heads(x[i]), ys[i], yt[i], config, pos_weight)
            loss.backward()
            opt.step()
            total, seen = total + float(loss) * len(idx), seen + len(idx)
        train_loss = total / max(seen, 1)
        row = {"epoch": float(epoch)} | epoch_metrics(train_loss)
        if val is not None:
            metrics = validation_metrics(heads, val, config, device)
            row |= epoch_metrics(train_loss, metrics)
            if metrics["loss"] < best_loss:  # NaN never wins: a diverged epoch is not kept
                best_loss, best_epoch = metrics["loss"], epoch
                best_state = copy.deepcopy(heads.state_dict())
            if report is not None:
                report(epoch, metrics | {"train_loss": train_loss})
        if log is not None:
            log.append(row)
    if best_state is not None:
        heads.load_state_dict(best_state)
    heads.best_epoch = best_epoch or (epochs or config.epochs)
    return heads.eval()
