"""Models an isolated worker (serving/minions.py) builds in its own process: a module the worker can
import by name (a spawned interpreter gets the test's sys.path), holding picklable factories only."""

from __future__ import annotations

import os
import signal
import time

import torch

from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor


def seeded(name: str, tags: tuple[str, ...], seeds: dict[str, int], version: str | None) -> Predictor:
    """The real pretrained backbone with heads seeded per version (``seeds[version]``; None: the first):
    the same numbers in any process. Eager, one thread: the tests compare answers, not speed."""
    version = version or next(iter(seeds))
    torch.set_num_threads(1)
    torch.manual_seed(seeds[version])
    config = ModelConfig(tag_names=tags)
    return Predictor(LightboxModel(config, Heads(config)), name, version, "cpu", trace=False)


def never_loads(version: str | None) -> Predictor:
    raise FileNotFoundError(f"no files for version {version}")


def dies_at_load(version: str | None) -> Predictor:
    """A worker that crashes hard while loading (a native runtime's segfault)."""
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def refused_once_flagged(
    flag: str, name: str, tags: tuple[str, ...], seeds: dict[str, int], version: str | None
) -> Predictor:
    """``seeded``, until the file ``flag`` exists: then the load is refused as a corrupted artifact is
    (a worker that cannot restart)."""
    from lightbox.adapters.mlflow_registry import ArtifactMismatch

    if os.path.exists(flag):
        raise ArtifactMismatch(f"{name} v{version}: extra_files/model.onnx differs from the recorded digest")
    return seeded(name, tags, seeds, version)
