"""Repeated hot swaps keep the server's memory flat: each reload builds a Predictor (a TorchScript graph
of the new version, checked against the eager model) and drops the old one, twenty times."""

from __future__ import annotations

import gc

import pytest
import torch

from lightbox.dataset import TAG_VOCABULARY
from training.model import FeatureExtractor, Heads, LightboxModel, ModelConfig
from training.predictor import Predictor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELOADS = 20
# Loose on purpose: allocator noise moves RSS by tens of MB; a leak of one weight copy per reload
# (what tracing each version into TorchScript's global compilation unit did) grows it by hundreds.
MAX_GROWTH_MB = 150.0


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_rss_stays_flat_over_repeated_reloads() -> None:
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    # The real pretrained backbone, shared (as two registry versions of one architecture share it);
    # every reload gets new heads, so each version is a different model with different weights.
    extractor = FeatureExtractor()
    serving: Predictor | None = None
    rss: list[float] = []
    for i in range(RELOADS):
        torch.manual_seed(i)
        new = Predictor(LightboxModel(config, Heads(config), extractor), "lightbox", str(i + 1), "cpu")
        assert new.traced, "the reload fell back to the eager model: nothing of the graph path measured"
        new.warmup((1,))  # what a hot swap does before the swap (runs the graph's executor)
        serving = new  # the swap: the old version is dropped
        del new
        gc.collect()
        rss.append(_rss_mb())
    assert serving is not None and serving.version == str(RELOADS)
    # From the second reload on: the first builds the one-time state (the saved trace, lazy inits).
    growth = max(rss[1:]) - rss[1]
    figures = " ".join(f"{r:.0f}" for r in rss)
    assert growth < MAX_GROWTH_MB, f"RSS grew {growth:.0f} MB over {RELOADS} reloads (MB: {figures})"
