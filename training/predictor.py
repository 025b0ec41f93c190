"""Inference on a loaded model version: a LightboxModel plus its registry identity, and the loader that
follows an alias (what is logged and how it is rebuilt is ``lightbox.adapters.mlflow_registry``'s).

The server, the gates, the upload consumer and batch scoring all predict through this one class, so
what the gates judge is what serving answers; it lives beside the model, not in serving/, so that
pipelines need not import the server.

``Predictor.predict`` is the batch function's body: uint8 images in, numpy scores and tag probabilities
out, under ``torch.inference_mode``. On CUDA it uses pinned host memory with non-blocking copies,
channels-last layout and bf16 (fp16 where bf16 is unsupported) autocast; on CPU it runs fp32 as trained,
on the version's ONNX export under ONNX Runtime when the gates verified it (``pick_runtime``), else on
a frozen TorchScript graph.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lightbox.imaging import MODEL_INPUT_SIZE
from training.model import LightboxModel, ModelConfig, split_output

if TYPE_CHECKING:
    from lightbox.settings import Settings

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    """The registry has no model version under the requested name and alias."""


class RuntimeUnavailable(ValueError):
    """The runtime asked for (LIGHTBOX_SERVE_RUNTIME, --runtime) cannot serve this version on this
    device; the message says why and what to do."""


# What serves a version: ONNX Runtime (CPU only), or torch (TorchScript graph on CPU, eager on CUDA).
RUNTIMES = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # "onnxruntime" or "torch"
    note: str  # why, for the log line and /healthz; a warning when it is a fallback
    fallback: bool = False  # True: a faster runtime exists in principle but this version cannot use it


def pick_runtime(
    requested: str, device: str, tags: dict[str, str], has_onnx: bool, *, quantized: bool = False
) -> RuntimeChoice:
    """The runtime a loader builds for a version (pure: the version's tags say what the gates verified).

    ``auto``: on CPU, ONNX Runtime when the gates verified the version's export and measured it as the
    faster runtime (``runtime.cpu``), else torch, saying why; on CUDA, torch. ``torch``/``onnxruntime``
    force one; forcing ONNX Runtime on a version whose export is not verified, or on CUDA, raises
    RuntimeUnavailable (serving an unchecked graph would bypass the gates). A ``quantized`` version (an
    int8 candidate) serves its verified int8 graph on CPU whatever the timings: being int8 is why it was
    registered and promoted; unverified, it serves its fp32 weights on torch, saying so.
    """
    from lightbox.adapters.mlflow_registry import ONNX_VERIFIED, RUNTIME_CPU_TAG, RUNTIME_ONNX_TAG

    if requested not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {requested!r}: choose one of {', '.join(RUNTIMES)}")
    recorded = tags.get(RUNTIME_ONNX_TAG, "")
    verified = has_onnx and recorded.startswith(ONNX_VERIFIED)
    if requested == "torch":
        return RuntimeChoice("torch", "torch, as requested")
    if device != "cpu":
        if requested == "onnxruntime":
            raise RuntimeUnavailable(
                f"onnxruntime serves on CPU here, not on {device}: serve with --runtime torch (or auto)"
            )
        return RuntimeChoice("torch", f"torch on {device}")
    faster = tags.get(RUNTIME_CPU_TAG, "").startswith("onnxruntime")
    if verified and (requested == "onnxruntime" or faster or quantized):
        return RuntimeChoice("onnxruntime", f"onnxruntime{' int8' if quantized else ''}: export {recorded}")
    if not has_onnx:
        why = "the version has no ONNX export (registered before exports, or the export failed)"
    elif not recorded:
        why = "the gates have not checked its ONNX export"
    elif verified:
        why = f"the gates measured torch as faster ({tags.get(RUNTIME_CPU_TAG, '')})"
    else:
        why = f"its ONNX export did not pass the gates' check ({recorded})"
    if quantized:
        why = f"{why}; its int8 graph is not served, its fp32 weights are"
    if requested == "onnxruntime":
        raise RuntimeUnavailable(f"cannot serve on onnxruntime: {why}; serve with --runtime torch (or auto)")
    return RuntimeChoice("torch", f"torch: {why}", fallback=not verified)


class Predictor:
    """One loaded model version. ``predict`` may run in several threads at once (the batcher's
    concurrent batches): the model is in eval mode under inference_mode, so a forward pass writes no
    shared state."""

    def __init__(
        self,
        model: LightboxModel,
        name: str,
        version: str,
        device: str | torch.device | None = None,
        *,
        trace: bool = True,
        onnx: bytes | None = None,
        quantized: bool = False,
    ):
        """``onnx``: the version's ONNX export, served by ONNX Runtime on CPU (checked against the eager
        model on a probe batch first, as the TorchScript graph is; the torch path serves if it differs).
        ``quantized``: ``onnx`` is an int8 graph (training.quantize), whose answers differ from the
        eager model's by design: the probe checks that it runs and answers the same shape, the gates
        judged its metrics, and the artifact digest says these are the bytes they judged.
        """
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name = name
        self.version = str(version)
        self.tag_names: tuple[str, ...] = tuple(model.tag_names)
        self.config: ModelConfig = model.config
        self._cuda = self.device.type == "cuda"
        model = model.eval().to(self.device)
        # What predict() calls: on CPU a frozen TorchScript graph of the same model (see _graph).
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        if self._cuda:
            # Convolutions run fastest in NHWC with tensor cores; bf16 keeps fp32's range (no overflow
            # in the sigmoid heads), fp16 is the fallback on pre-Ampere GPUs.
            # Module.to accepts memory_format at runtime; torch's overloads for it omit the keyword.
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif onnx is not None and (session := _onnx_session(model, onnx, quantized)) is not None:
            self._forward = session
        elif trace:
            self._forward = _graph(model) or model
        self.model = model  # the eager module: its parameters, tag names and config
        self.traced = self._forward is not model
        self.quantized = isinstance(self._forward, _OnnxForward) and quantized
        self.runtime = (
            ("onnxruntime-int8" if self.quantized else "onnxruntime")
            if isinstance(self._forward, _OnnxForward)
            else "torch-cuda"
            if self._cuda
            else "torchscript"
            if self.traced
            else "torch-eager"
        )

    @classmethod
    def from_model(
        cls, model: LightboxModel, name: str, version: str, device: str | None = None
    ) -> Predictor:
        return cls(model, name, version, device)

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)

    @property
    def has_score(self) -> bool:
        """False for a tags-only model: its scores are NaN, and the APIs answer no score."""
        return self.config.has_score

    @property
    def score_range(self) -> tuple[float, float] | None:
        """(low, high): the scale of the scores ``predict`` returns; None for a tags-only model."""
        return self.config.score_range

    @property
    def score_name(self) -> str | None:
        return self.config.score_name if self.config.has_score else None

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N,3,224,224] -> (scores float32 [N] on the model's score scale, NaN for a tags-only
        model; tag probabilities float32 [N,K])."""
        expected = (3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"expected uint8 [N,{','.join(map(str, expected))}], got {batch.dtype} {batch.shape}"
            )
        if batch.shape[0] == 0:
            return np.zeros(0, np.float32), np.zeros((0, self.num_tags), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        with torch.inference_mode():
            if self._cuda:
                # Pinned memory lets the host->device copy run asynchronously with the launch queue.
                x = x.pin_memory().to(self.device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=self._amp_dtype):
                    out = self._forward(x)
            else:
                out = self._forward(x)
            scores, tags = split_output(out.float())
            return scores.cpu().numpy(), tags.cpu().numpy()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run a forward pass per batch size so the first real request pays no lazy-init cost."""
        for n in batch_sizes:
            self.predict(np.zeros((n, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), np.uint8))

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, version={self.version!r}, device={self.device}, {self.runtime})"


class _OnnxForward:
    """The ONNX Runtime session as a forward function over torch tensors (what ``predict`` calls)."""

    def __init__(self, onnx: bytes) -> None:
        from training.export import OnnxModel

        self.session = OnnxModel(onnx)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session(x.numpy()))


def _onnx_session(model: LightboxModel, onnx: bytes, quantized: bool = False) -> _OnnxForward | None:
    """An ONNX Runtime session over ``onnx``, checked against the eager model on a probe batch; None
    (the torch path serves, with a warning) when it does not load or differs. The gates check the
    same export on the whole golden set; this catches a swapped file or a runtime that reads it
    otherwise, at every load. An int8 graph differs by design (by ~0.1 on noise probes): it must run
    and answer finite numbers where the eager model does."""
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (3, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), dtype=torch.uint8, generator=g)
    try:
        forward = _OnnxForward(onnx)
        with torch.inference_mode():
            diff = _max_difference(forward(probe), model(probe))
    except Exception as exc:  # a broken export leaves the (checked, equal) torch path serving
        log.warning("serving on torch: the ONNX export does not run (%s: %s)", type(exc).__name__, exc)
        return None
    if not (math.isfinite(diff) if quantized else diff <= _ONNX_TOLERANCE):
        log.warning("serving on torch: the ONNX export differs by %.3g on the probe batch", diff)
        return None
    return forward


# The stats' order-statistic ranks are constants of the fixed input size: what tracing warns of. A
# process-wide filter, not catch_warnings(): that one swaps the global filter list and is not
# thread-safe (a hot swap traces in a worker thread while others serve).
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

# Largest difference from the eager model a traced graph may show on the probe batch before it is
# refused. Measured: 2.4e-7 (folding batch norm into the convolutions reorders float sums).
_TRACE_TOLERANCE = 1e-4
# The same for the ONNX export under ONNX Runtime (measured: 3e-7; it fuses the same operations).
_ONNX_TOLERANCE = 1e-4

# Why templates: torch.jit.trace puts every module type and method it makes into TorchScript's one
# process-wide compilation unit, which is never emptied; freezing a traced module clones it there with
# the weights as graph constants, and the profiling executor keeps its plans there too: tracing each
# loaded version kept a copy of its weights alive forever, and memory grew with every hot swap. A module
# from torch.jit.load gets a compilation unit of its own that goes with the module, so each architecture
# is traced once and saved (that one trace stays in the global unit, without weights), and every version
# is a fresh load of that save with its own weights, frozen there.
_MAX_TEMPLATES = 4  # architectures kept; a server sees one or two (the old version and the new)
_templates: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
_templates_lock = threading.Lock()


def _graph(model: LightboxModel) -> torch.jit.ScriptModule | None:
    """The model as a frozen TorchScript graph, checked against the eager model; None if it fails.

    Why: the eager model takes the GIL for each of its ~300 ops, so a busy event loop starves it. In a
    side-by-side run with one pure-Python thread spinning next to two inference threads, the eager model
    fell from 68 to 4 img/s and the graph only from 78 to 56 (a graph runs in C++ and releases the GIL
    for the whole pass; freezing also folds batch norm into the convolutions). The batch dimension
    stays free: no op in the model reads the batch size into a constant.
    """
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (3, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), dtype=torch.uint8, generator=g)
    try:
        template, cached = _template(model, probe[:1], retrace=False)
        graph, diff = _instantiate(template, model, probe)
        if cached and not diff <= _TRACE_TOLERANCE:
            # The template's trace baked in a value this model does not share (one _template_key
            # misses): trace this model itself before giving up on the graph.
            log.warning("the traced template differs by %.3g for this model; tracing it afresh", diff)
            template, _ = _template(model, probe[:1], retrace=True)
            graph, diff = _instantiate(template, model, probe)
    except Exception as exc:  # any failure to trace leaves the (slower, equal) eager model serving
        log.warning("serving the eager model: tracing failed (%s: %s)", type(exc).__name__, exc)
        return None
    if not diff <= _TRACE_TOLERANCE:
        log.warning("serving the eager model: the traced graph differs by %.3g on the probe batch", diff)
        return None
    return graph


def _template_key(model: LightboxModel) -> tuple[object, ...]:
    """What a trace bakes in besides the weights' values: the module classes, every tensor's name,
    shape and dtype, and the config values forward reads as plain numbers (score range, which features
    the score head reads, a tags-only model's NaN column). Training hyperparameters and tag names are
    left out, so successive versions of one architecture share a template."""
    c = model.config
    tensors = tuple((k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items())
    modules = tuple(type(m).__qualname__ for m in model.modules())
    return (modules, tensors, c.has_score, c.score_low, c.score_high, c.score_features)


def _template(model: LightboxModel, example: torch.Tensor, *, retrace: bool) -> tuple[bytes, bool]:
    """The saved trace of the model's architecture, and whether it came from the cache."""
    key = _template_key(model)
    with _templates_lock:  # loads may run in several threads (hot swap, gates): trace each key once
        if not retrace and key in _templates:
            _templates.move_to_end(key)
            return _templates[key], True
        with torch.inference_mode():
            traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        _templates[key] = buffer.getvalue()
        while len(_templates) > _MAX_TEMPLATES:
            _templates.popitem(last=False)
        return _templates[key], False


def _instantiate(
    template: bytes, model: LightboxModel, probe: torch.Tensor
) -> tuple[torch.jit.ScriptModule, float]:
    """A fresh load of the template with the model's weights, frozen and optimized in its own
    compilation unit; and its largest difference from the eager model on the probe batch."""
    module = torch.jit.load(io.BytesIO(template), map_location="cpu")
    module.load_state_dict(model.state_dict())
    graph = torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))
    with torch.inference_mode():
        return graph, _max_difference(graph(probe), model(probe))


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|, NaN where both are NaN counting as equal (a tags-only model's score column);
    infinite when NaNs sit in different places."""
    if a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return math.inf
    return (a - b).nan_to_num(0.0).abs().max().item() if a.numel() else 0.0


@dataclass(frozen=True)
class RegistryLoader:
    """Resolves a registry alias to a version and loads that version: what the server's hot swap follows.
    The MLflow side (what is logged, how it is rebuilt) is ``lightbox.adapters.mlflow_registry``'s."""

    settings: Settings
    alias: str
    device: str | None = None  # None: CUDA when available, else CPU

    def resolve(self) -> str:
        """The version the alias points at now."""
        from lightbox.adapters import mlflow_registry

        mv = mlflow_registry.version_or_none(self.settings, self.alias)
        if mv is None:
            raise ModelNotFound(
                f"no model version at models:/{self.settings.model_name}@{self.alias}: "
                + mlflow_registry.why_no_alias(self.settings, self.alias)
            )
        return str(mv.version)

    def load(self, version: str | None = None) -> Predictor:
        """Load ``version`` (default: the alias's current one) into a Predictor."""
        from lightbox.adapters import mlflow_registry

        version = version or self.resolve()
        loaded = mlflow_registry.load_version(self.settings, version)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        has_onnx, quantized = loaded.onnx is not None, loaded.quantized
        choice = pick_runtime(self.settings.serve_runtime, device, loaded.tags, has_onnx, quantized=quantized)
        uri = mlflow_registry.model_uri(self.settings, version)
        if choice.fallback:
            log.warning("%s serves on %s", uri, choice.note)
        onnx = loaded.onnx if choice.runtime == "onnxruntime" else None
        name = self.settings.model_name
        predictor = Predictor(loaded.model, name, version, device, onnx=onnx, quantized=quantized)
        log.info("loaded %s (alias %s) on %s", uri, self.alias, predictor.runtime)
        return predictor


def load_predictor(settings: Settings, alias: str | None = None) -> Predictor:
    """Load ``models:/{settings.model_name}@{alias}`` (default alias: settings.champion_alias)."""
    return RegistryLoader(settings, alias or settings.champion_alias).load()
