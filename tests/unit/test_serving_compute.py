"""How the server computes: the CPU/GPU layout it picks, and the traced graph it runs on CPU."""

import concurrent.futures
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import to_model_input
from lightbox.settings import Settings
from serving.runtime import (
    MAX_CPU_BATCH_STREAMS,
    ComputeLayout,
    cgroup_cpu_quota,
    compute_layout,
    usable_cores,
)
from training.model import FeatureExtractor, Heads, LightboxModel, ModelConfig
from training.predictor import Predictor


@pytest.mark.parametrize(
    ("cores", "expected"),
    [
        (1, ComputeLayout(1, 1)),
        (2, ComputeLayout(2, 1)),
        (3, ComputeLayout(3, 1)),
        (8, ComputeLayout(MAX_CPU_BATCH_STREAMS, 8 // MAX_CPU_BATCH_STREAMS)),
    ],
)
def test_cpu_runs_one_single_thread_batch_per_core_up_to_the_cap(
    tmp_path: Path, cores: int, expected: ComputeLayout
) -> None:
    assert compute_layout(Settings(project_dir=tmp_path), "cpu", cores=cores) == expected


def test_settings_override_the_cpu_layout(tmp_path: Path) -> None:
    one_batch = Settings(project_dir=tmp_path, serve_max_concurrent_batches=1)
    assert compute_layout(one_batch, "cpu", cores=8) == ComputeLayout(1, 8)  # the cores go to its threads
    pinned = Settings(project_dir=tmp_path, serve_max_concurrent_batches=3, serve_torch_threads=2)
    assert compute_layout(pinned, "cpu", cores=8) == ComputeLayout(3, 2)


def test_gpu_runs_one_batch_and_leaves_torch_threads_alone(tmp_path: Path) -> None:
    assert compute_layout(Settings(project_dir=tmp_path), "cuda", cores=16) == ComputeLayout(1, None)
    overlap = Settings(project_dir=tmp_path, serve_max_concurrent_batches=2, serve_torch_threads=4)
    assert compute_layout(overlap, "cuda", cores=16) == ComputeLayout(2, 4)


def test_layout_settings_reject_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="serve_torch_threads"):
        Settings(project_dir=tmp_path, serve_torch_threads=0)


@pytest.fixture(scope="module")
def model() -> LightboxModel:
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return LightboxModel(config, Heads(config), FeatureExtractor()).eval()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Eight real, different pictures (plus flips): what the server would feed the model."""
    imgs = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]
    batch = [to_model_input(Image.fromarray(a)) for a in imgs]
    batch += [b[:, :, ::-1] for b in batch]
    return np.ascontiguousarray(np.stack(batch))


def _eager(model: LightboxModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return Predictor(model, "m", "1", "cpu", trace=False).predict(batch)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_traced_graph_answers_as_the_eager_model(model: LightboxModel, photos: np.ndarray, n: int) -> None:
    traced = Predictor(model, "m", "1", "cpu")
    assert traced.traced
    scores, tags = traced.predict(photos[:n])
    ref_scores, ref_tags = _eager(model, photos[:n])
    assert scores.shape == (n,) and tags.shape == (n, len(TAG_VOCABULARY))
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(tags, ref_tags, atol=1e-4)
    if n > 1:  # the batch dimension stayed free: different pictures, different answers
        assert len(set(np.round(scores, 6))) > 1


@pytest.fixture(scope="module")
def extractor(model: LightboxModel) -> FeatureExtractor:
    return model.extractor  # one backbone for every head layout below


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(tag_names=("a", "b"), score_low=1, score_high=10),
        ModelConfig(tag_names=("a", "b", "c"), has_score=False),
        ModelConfig(tag_names=()),
    ],
    ids=["scale-1-10", "tags-only", "score-only"],
)
def test_every_head_layout_traces_and_answers_as_the_eager_model(
    config: ModelConfig, extractor: FeatureExtractor, photos: np.ndarray
) -> None:
    torch.manual_seed(0)
    model = LightboxModel(config, Heads(config), extractor).eval()
    traced = Predictor(model, "m", "1", "cpu")
    assert traced.traced  # a NaN score column or zero tags must not push serving onto the eager model
    scores, tags = traced.predict(photos[:3])
    ref_scores, ref_tags = _eager(model, photos[:3])
    assert tags.shape == (3, config.num_tags)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(tags, ref_tags, atol=1e-4)
    assert traced.has_score is config.has_score and traced.score_range == config.score_range
    if config.has_score:
        low, high = config.score_low, config.score_high
        assert ((scores >= low) & (scores <= high)).all()
    else:
        assert np.isnan(scores).all() and traced.score_name is None


def test_a_model_that_fails_to_trace_is_served_eagerly(
    model: LightboxModel,
    photos: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    # Architectures are traced once per process: an empty cache makes this load trace.
    monkeypatch.setattr("training.predictor._templates", OrderedDict())
    with caplog.at_level(logging.WARNING, logger="training.predictor"):
        p = Predictor(model, "m", "1", "cpu")
    assert not p.traced
    assert "tracing failed" in caplog.text and "unsupported op" in caplog.text
    scores, _ = p.predict(photos[:2])
    np.testing.assert_allclose(scores, _eager(model, photos[:2])[0], atol=1e-6)


def test_a_graph_that_disagrees_with_the_model_is_refused(
    model: LightboxModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_freeze = torch.jit.freeze

    def skewed(module: torch.jit.ScriptModule) -> Callable[[torch.Tensor], torch.Tensor]:
        frozen = real_freeze(module)
        return lambda x: frozen(x) + 0.01  # a graph whose answers are off by 0.01

    monkeypatch.setattr(torch.jit, "freeze", skewed)
    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: m)
    with caplog.at_level(logging.WARNING, logger="training.predictor"):
        p = Predictor(model, "m", "1", "cpu")
    assert not p.traced
    assert "differs" in caplog.text


def test_concurrent_batches_get_their_own_answers(model: LightboxModel, photos: np.ndarray) -> None:
    """The server runs batches side by side on one Predictor: no batch may see another's inputs."""
    p = Predictor(model, "m", "1", "cpu")
    batches = [photos[i : i + 2] for i in range(0, 8, 2)] * 3
    expected = [p.predict(b)[0] for b in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: p.predict(b)[0], batches))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-6)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5),  # docker --cpus 1.5
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == expected


def test_a_cpu_quota_caps_the_usable_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})  # a 4-core mask
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two cores' worth of threads
    assert usable_cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == 4
