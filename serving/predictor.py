"""The served model: a LightboxModel plus its registry identity, and the one place serving talks to MLflow.

``Predictor.predict`` is the batch function's body: uint8 images in, numpy scores and tag probabilities
out, under ``torch.inference_mode``. On CUDA it uses pinned host memory with non-blocking copies,
channels-last layout and bf16 (fp16 where bf16 is unsupported) autocast; on CPU it runs fp32 as trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lightbox.imaging import MODEL_INPUT_SIZE
from training.model import LightboxModel, split_output

if TYPE_CHECKING:
    from lightbox.settings import Settings

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    """The registry has no model version under the requested name and alias."""


class Predictor:
    """One loaded model version. Thread-safe for one caller at a time (the batcher's executor)."""

    def __init__(
        self, model: LightboxModel, name: str, version: str, device: str | torch.device | None = None
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name = name
        self.version = str(version)
        self.tag_names: tuple[str, ...] = tuple(model.tag_names)
        self._cuda = self.device.type == "cuda"
        model = model.eval().to(self.device)
        if self._cuda:
            # Convolutions run fastest in NHWC with tensor cores; bf16 keeps fp32's range (no overflow
            # in the sigmoid heads), fp16 is the fallback on pre-Ampere GPUs.
            model = model.to(memory_format=torch.channels_last)
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.model = model

    @classmethod
    def from_model(
        cls, model: LightboxModel, name: str, version: str, device: str | None = None
    ) -> Predictor:
        return cls(model, name, version, device)

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N,3,224,224] -> (scores float32 [N], tag probabilities float32 [N,K])."""
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
                    out = self.model(x)
            else:
                out = self.model(x)
            scores, tags = split_output(out.float())
            return scores.cpu().numpy(), tags.cpu().numpy()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run a forward pass per batch size so the first real request pays no lazy-init cost."""
        for n in batch_sizes:
            self.predict(np.zeros((n, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), np.uint8))

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, version={self.version!r}, device={self.device})"


@dataclass(frozen=True)
class RegistryLoader:
    """Resolves a registry alias to a version and loads that version: what the server's hot swap follows."""

    settings: Settings
    alias: str

    def _client(self):  # -> mlflow.MlflowClient; imported here so importing serving stays cheap
        import mlflow

        # Explicit URIs: the server must read the registry named in settings, whatever the env says.
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_registry_uri(self.settings.tracking_uri)
        return mlflow.MlflowClient(
            tracking_uri=self.settings.tracking_uri, registry_uri=self.settings.tracking_uri
        )

    def resolve(self) -> str:
        """The version the alias points at now."""
        from mlflow.exceptions import MlflowException

        name = self.settings.model_name
        try:
            mv = self._client().get_model_version_by_alias(name, self.alias)
        except MlflowException as exc:
            raise ModelNotFound(f"no model version at models:/{name}@{self.alias}: {exc.message}") from exc
        return str(mv.version)

    def load(self, version: str | None = None) -> Predictor:
        """Load ``version`` (default: the alias's current one) into a Predictor."""
        import mlflow.pytorch

        version = version or self.resolve()
        self._client()
        name = self.settings.model_name
        # Load by version, not by alias: the alias may move between resolving and loading, and the
        # version we report must be the one whose weights we hold.
        uri = f"models:/{name}/{version}"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = mlflow.pytorch.load_model(uri, map_location=device)
        if not isinstance(model, LightboxModel):
            raise TypeError(f"{uri} is a {type(model).__name__}, not a LightboxModel")
        _check_metadata(uri, model)
        log.info("loaded %s (alias %s) on %s", uri, self.alias, device)
        return Predictor(model, name, version, device)


def _check_metadata(uri: str, model: LightboxModel) -> None:
    """The tag names logged as metadata must match the model's own: a mismatch means mislabelled answers."""
    from mlflow.models import get_model_info

    logged = (get_model_info(uri).metadata or {}).get("tag_names")
    if logged is not None and tuple(logged) != tuple(model.tag_names):
        raise ValueError(
            f"{uri}: metadata tag_names {logged} differ from the model's {list(model.tag_names)}"
        )


def load_predictor(settings: Settings, alias: str | None = None) -> Predictor:
    """Load ``models:/{settings.model_name}@{alias}`` (default alias: settings.champion_alias)."""
    return RegistryLoader(settings, alias or settings.champion_alias).load()
