"""Fine-tune the backbone end to end from images, starting from the fitted heads.

Pure torch (no Ray, no MLflow): a Tune trial, a Ray Train worker, the benchmark and the tests all run
``fine_tune``, so they cannot differ. Read bottom-up: ``fine_tune`` is the loop, one epoch is
``train_epoch`` + ``validate``, and the data come through a DataLoader whose workers augment
(``ImageDataset``) in the order an ``EpochSampler`` gives, from pixels decoded once per run before the
first epoch (training/decoded.py), not every epoch.

Determinism is by construction, not by luck: the sampler's order and every augmentation draw are
functions of (seed, epoch, index), never of which worker or process handles an image, so one process
with global batch B and two data-parallel workers with B/2 each see the same images in the same batches
(tests/integration/test_finetune.py holds them equal), and a run resumed from a checkpoint continues
exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightbox.feature_schema import FEATURE_VERSION
from lightbox.imaging import decode_image, to_model_input
from training.augment import AugmentPolicy, augment
from training.decoded import CachePolicy, DecodedImages, decode_all
from training.fit import Split, loss_fn, tag_pos_weight, validation_metrics
from training.model import LightboxModel, ModelConfig

# What a fine-tuned model's config records: its extractor is no longer the one the Feast features came
# from, so its features must never be mixed with theirs.
FINETUNED_SUFFIX = "+ft"


@dataclass(frozen=True)
class FinetuneParams:
    """What a fine-tune trial varies (``unfreeze_blocks``, ``backbone_lr_ratio``, ``aug_strength``)
    and what it is given. Recorded in the model's ``ModelConfig.extra`` as ``ft_*`` params."""

    unfreeze_blocks: int = 1  # final backbone blocks trained (plus the head convolution after them)
    backbone_lr_ratio: float = 0.1  # the backbone's learning rate over the heads'
    aug_strength: float = 0.5
    aug_ops: tuple[str, ...] = ("hflip", "crop")
    head_lr: float = 1e-4  # the heads start fitted: a tenth of a typical heads-only rate
    epochs: int = 2
    batch_size: int = 16  # the global batch, whatever the number of data-parallel workers
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "aug_ops", tuple(self.aug_ops))
        if self.unfreeze_blocks < 0:
            raise ValueError(f"unfreeze_blocks must be >= 0, got {self.unfreeze_blocks}")
        if not (self.backbone_lr_ratio > 0 and self.head_lr > 0):
            raise ValueError("learning rates must be > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        self.policy  # noqa: B018  # refuses a label-changing op here, not later in a loader worker

    @property
    def policy(self) -> AugmentPolicy:
        return AugmentPolicy(self.aug_ops, self.aug_strength)

    def to_extra(self) -> dict[str, str]:
        d = dataclasses.asdict(self)
        d["aug_ops"] = ",".join(self.aug_ops)
        return {f"ft_{k}": str(v) for k, v in d.items()}


def finetuned_config(config: ModelConfig, params: FinetuneParams) -> ModelConfig:
    """The config a fine-tuned model carries: the heads' own, marked as fine-tuned, with the fine-tune
    params beside it."""
    base = config.feature_version.removesuffix(FINETUNED_SUFFIX) or FEATURE_VERSION
    return dataclasses.replace(
        config, feature_version=base + FINETUNED_SUFFIX, extra=dict(config.extra) | params.to_extra()
    )


@dataclass(frozen=True)
class Images:
    """Image files and their labels (scores normalised to [0, 1], NaN where unlabelled)."""

    paths: tuple[Path, ...]
    score: np.ndarray  # [N] float32
    tags: np.ndarray  # [N, K] float32 0/1

    def __len__(self) -> int:
        return len(self.paths)


class EpochSampler(Sampler[tuple[int, int]]):
    """(index, epoch) pairs: the permutation of (seed, epoch), cut to whole global batches, every
    ``world``-th from ``rank``. Local batch k of every rank together is global batch k of one process.

    The epoch travels with the index because DataLoader workers hold their own copy of the dataset:
    an attribute set on it in the main process would not reach them.
    """

    def __init__(
        self, n: int, global_batch: int, seed: int, *, shuffle: bool = True, rank: int = 0, world: int = 1
    ) -> None:
        if global_batch % world:
            raise ValueError(f"the global batch {global_batch} must divide among {world} workers")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.shuffle, self.rank, self.world = shuffle, rank, world
        self.epoch = 1
        # Training drops the last partial batch (a batch of 1 is a noisy step, and ranks must stay in
        # step); evaluation (shuffle False) keeps every image.
        self.used = (n // global_batch) * global_batch if shuffle and n >= global_batch else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        for i in order[: self.used][self.rank :: self.world]:
            yield int(i), self.epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.used, self.world))


class ImageDataset(Dataset):
    """Augments (with a policy) in the DataLoader's worker processes, from the pixels ``decoded`` keeps
    (training/decoded.py: decoded once per run) or, without them, decoding the file every time."""

    def __init__(
        self,
        images: Images,
        policy: AugmentPolicy | None,
        seed: int,
        decoded: DecodedImages | None = None,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.images, self.policy, self.seed = images, policy, seed
        self.decoded, self.max_pixels = decoded, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, epoch = key
        if self.decoded is not None and self.policy is None:
            pixels = np.array(self.decoded[i])  # kept as the model input already; a writable copy
        else:
            if self.decoded is not None:
                img = Image.fromarray(self.decoded[i])
            else:
                img = decode_image(self.images.paths[i].read_bytes(), max_pixels=self.max_pixels)
            if self.policy is None:
                pixels = to_model_input(img)
            else:
                pixels = augment(img, self.policy, np.random.default_rng([self.seed, epoch, i])).pixels
        return (
            torch.from_numpy(pixels),
            torch.tensor(self.images.score[i]),
            torch.from_numpy(self.images.tags[i]),
        )


def loader(
    images: Images,
    sampler: EpochSampler,
    policy: AugmentPolicy | None,
    *,
    seed: int,
    workers: int,
    device: torch.device,
    decoded: DecodedImages | None = None,
) -> DataLoader:
    """Workers augment (and, without ``decoded``, decode) in parallel with the device's step, and live
    as long as the loader: one start per run, not one per epoch. Pinned memory for a GPU copy."""
    return DataLoader(
        ImageDataset(images, policy, seed, decoded),
        batch_size=max(1, sampler.global_batch // sampler.world),
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32) and whether a GradScaler is needed (fp16 only)."""

    dtype: torch.dtype | None
    scaled: bool

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def precision_for(device: torch.device) -> Precision:
    """bf16 where the GPU has it (no loss scaling needed), fp16 + GradScaler on older GPUs, fp32 on CPU
    (CPU autocast to bf16 is slower than fp32 on machines without AMX, and the CPU path is the reference)."""
    if device.type != "cuda":
        return Precision(None, False)
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


class Trainee(nn.Module):
    """images -> head logits: the one forward DDP wraps (its hooks sync the gradients)."""

    def __init__(self, model: LightboxModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.heads(self.model.extractor(images)).float()


def unfreeze(model: LightboxModel, blocks: int) -> list[nn.Parameter]:
    """Make the final ``blocks`` backbone blocks and the head convolution after them trainable; returns
    their parameters. 0 trains the heads only (on images: the augmentation still helps)."""
    bb: Any = model.extractor.backbone  # the third-party EfficientNet's private layers are untyped
    if blocks == 0:
        return []
    chosen: list[nn.Module] = [*list(bb._blocks)[-blocks:], bb._conv_head, bb._bn1]
    params = [p for m in chosen for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def set_train_mode(model: LightboxModel) -> None:
    """Heads train (dropout); the backbone stays in eval mode: its batch norms keep their ImageNet
    statistics (a batch of 16 would give noisy ones, and data-parallel workers would each see another
    half-batch), and the blocks' drop-connect stays off as in the features the heads were fitted on."""
    model.train()
    model.extractor.backbone.eval()


def optimizer(model: LightboxModel, backbone: Sequence[nn.Parameter], p: FinetuneParams, config: ModelConfig):
    groups: list[dict[str, Any]] = [{"params": list(model.heads.parameters()), "lr": p.head_lr}]
    if backbone:
        groups.append({"params": list(backbone), "lr": p.head_lr * p.backbone_lr_ratio})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def train_epoch(
    net: nn.Module,
    model: LightboxModel,
    batches: DataLoader,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    config: ModelConfig,
    pos_weight: torch.Tensor,
    device: torch.device,
) -> float:
    """One pass; returns the mean training loss over this process's images."""
    set_train_mode(model)
    total, seen = 0.0, 0
    for x, score, tags in batches:
        x = x.to(device, non_blocking=True)
        score, tags = score.to(device, non_blocking=True), tags.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = net(x)
        loss = loss_fn(logits, score, tags, config, pos_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total, seen = total + float(loss.detach()) * len(x), seen + len(x)
    return total / max(seen, 1)


def features_of(
    model: LightboxModel, batches: DataLoader, precision: Precision, device: torch.device
) -> np.ndarray:
    """The (fine-tuned) extractor's features of every image, in order: what the heads read."""
    model.eval()
    out = []
    with torch.inference_mode():
        for x, _, _ in batches:
            with precision.autocast(device):
                out.append(model.extractor(x.to(device, non_blocking=True)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def validate(
    model: LightboxModel, images: Images, batches: DataLoader, precision: Precision, device: torch.device
) -> dict[str, float]:
    """The heads-only path's yardstick (``training.fit.validation_metrics``) on features from the
    fine-tuned extractor: trials of both modes rank on the same loss."""
    split = Split(x=features_of(model, batches, precision, device), score=images.score, tags=images.tags)
    return validation_metrics(model.heads, split, model.config, device)


@dataclass
class State:
    """What a checkpoint holds: enough to continue at ``epoch + 1`` exactly."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


# Decode once, keep within the default bounds (2 GiB in memory, the rest in the system's temporary folder).
KEEP_DECODED = CachePolicy()

# (epoch, metrics, state) after each epoch: a Tune trial reports and checkpoints here.
Report = Callable[[int, dict[str, float], State], None]


def fine_tune(
    model: LightboxModel,
    params: FinetuneParams,
    train: Images,
    val: Images | None = None,
    *,
    device: torch.device | str = "cpu",
    report: Report | None = None,
    resume: State | None = None,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    cache: CachePolicy | None = KEEP_DECODED,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place (its config must already be the fine-tuned one:
    ``finetuned_config``); returns one row per epoch (``epoch``, ``train_loss``, ``val_*``), those of a
    resumed run's checkpoint first.

    ``resume`` continues from a checkpoint's state. ``rank``/``world``/``wrap`` make it one worker of a
    data-parallel group (``wrap`` is DDP); ``world`` 1 is the plain single-device loop. ``cache``: every
    image is decoded once, before the first epoch, and kept within its bounds (training/decoded.py);
    None decodes every image every epoch (the benchmark's comparison).
    """
    device = torch.device(device)
    torch.manual_seed(params.seed + rank)  # dropout draws; the data order is the sampler's
    config = model.config
    backbone = unfreeze(model, params.unfreeze_blocks)
    model.to(device)
    net: nn.Module = Trainee(model)
    if wrap is not None:
        net = wrap(net)
    precision = precision_for(device)
    opt = optimizer(model, backbone, params, config)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    history: list[dict[str, float]] = []
    start = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        scaler.load_state_dict(resume.scaler)
        history, start = list(resume.history), resume.epoch + 1
    pos_weight = torch.from_numpy(tag_pos_weight(train.tags)).to(device)
    kept: list[DecodedImages] = []
    try:
        train_pixels = val_pixels = None
        if cache is not None and start <= params.epochs:
            # Nothing else runs during the decode pass: it takes the cores the forward/backward pass will
            # (torch's threads) when they are more than the loader's workers.
            decoders = max(workers, torch.get_num_threads())
            decoders = decoders if decoders > 1 else 0  # one decoder: this process, no worker to start
            train_pixels = decode_all(train.paths, final=False, policy=cache, workers=decoders)
            kept.append(train_pixels)
            if val is not None and rank == 0:
                left = CachePolicy(max(0, cache.memory_bytes - train_pixels.memory_bytes), cache.spill_root)
                val_pixels = decode_all(val.paths, final=True, policy=left, workers=decoders)
                kept.append(val_pixels)
        sampler = EpochSampler(len(train), params.batch_size, params.seed, rank=rank, world=world)
        batches = loader(
            train,
            sampler,
            params.policy,
            seed=params.seed,
            workers=workers,
            device=device,
            decoded=train_pixels,
        )
        val_batches = (
            loader(
                val,
                EpochSampler(len(val), params.batch_size, params.seed, shuffle=False),
                None,
                seed=params.seed,
                # Kept evaluation images are the model input already: a copy, no worker needed.
                workers=0 if val_pixels is not None else workers,
                device=device,
                decoded=val_pixels,
            )
            if val is not None and rank == 0
            else None
        )
        for epoch in range(start, params.epochs + 1):
            sampler.set_epoch(epoch)
            row = {"epoch": float(epoch)}
            row["train_loss"] = train_epoch(
                net, model, batches, opt, scaler, precision, config, pos_weight, device
            )
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(
                    f"fine-tuning diverged at epoch {epoch} (train loss {row['train_loss']})"
                )
            if val_batches is not None and val is not None:
                row |= {
                    f"val_{k}": v for k, v in validate(model, val, val_batches, precision, device).items()
                }
            history.append(row)
            if report is not None:
                state = State(epoch, model.state_dict(), opt.state_dict(), scaler.state_dict(), list(history))
                report(epoch, row, state)
    finally:
        for pixels in kept:
            pixels.close()
    model.eval()
    return history
